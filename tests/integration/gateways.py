"""The ingest gateway over real stores, as the gateway tests build it (no key cache wait)."""

from __future__ import annotations

from typing import Any

from clickhouse_connect.driver.client import Client
from starlette.types import ASGIApp

from api.app import create_api, create_ingest_api, ingest_routes
from api.dependencies import AccessKeys, Gateway
from api.forwarding import IngestOrNode
from api.rate_limit import TokenBuckets
from api.write_keys import DEV_SOURCE, WriteKeyRegistry
from events.sink import EventSink
from projections.customer_stages import CustomerStageView
from projections.dead_letters import DeadLetterLog
from projections.event_log import EventLog
from projections.write_keys import WriteKeyStore
from stack.settings import Settings


def ingest_gateway(
    settings: Settings, clickhouse: Client, sink: EventSink, **overrides: Any
) -> Gateway:
    """A Gateway on ``sink`` and ClickHouse: settings' keys, no rate limit; ``overrides`` win."""
    database = settings.clickhouse_database
    parts: dict[str, Any] = {
        "sink": sink,
        "keys": AccessKeys(
            write_keys=frozenset(),
            read_keys=frozenset({settings.read_key}),
            admin_keys=frozenset({settings.admin_key}),
        ),
        "event_log": EventLog(clickhouse, database),
        "stages": CustomerStageView(clickhouse, database),
        "write_keys": WriteKeyRegistry(
            WriteKeyStore(clickhouse, database), {settings.write_key: DEV_SOURCE}, 60
        ),
        "dead_letters": DeadLetterLog(clickhouse, database),
        "rate_limit": TokenBuckets(rate=0, burst=1),
    }
    return Gateway(**{**parts, **overrides})


# The two ways a process serves ingest: the node's whole app (`journeys node`,
# `journeys api`), and an ingest gateway's (its lean single-call route and its
# ingest app), which hands every other path to the node (here in process).
LAYOUTS = ("node", "gateway")


def served(gateway: Gateway, layout: str) -> ASGIApp:
    """The app that answers in ``layout`` (one of :data:`LAYOUTS`)."""
    if layout == "node":
        return create_api(gateway)
    return IngestOrNode(create_ingest_api(gateway), ingest_routes(), create_api(gateway))
