"""Wiring of outreach: the trigger store, a configured rules file, the admin API's collaborator."""

from __future__ import annotations

import contextlib
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from journeys.outreach_rules import TriggerRule, parse_rules
from journeys.toml_text import load_toml
from journeys.unsubscribe_links import UnsubscribeLinks
from projections.analytics.reports import Reports
from projections.event_log import EventLog
from stack.privacy import write_private
from stack.settings import Settings
from streams.outreach.store import Endpoint, OutreachStore
from streams.outreach.worker import SegmentReader


def build_store(settings: Settings) -> OutreachStore:
    """The trigger store in the event store's database."""
    if settings.event_store == "postgres":
        return OutreachStore(postgres_dsn=settings.postgres_dsn)
    return OutreachStore(sqlite_path=settings.sqlite_path)


def declared_rules(settings: Settings) -> list[TriggerRule]:
    """The configured rules file's rules (none when no file is configured): what the
    switch at start migrates into the lifecycle flows."""
    if not settings.trigger_rules_file:
        return []
    path = Path(settings.trigger_rules_file)
    return parse_rules(load_toml(path.read_text(encoding="utf-8")))


def unsubscribe_links(settings: Settings) -> UnsubscribeLinks:
    """The unsubscribe links' signer: the configured key, else the key file (made once)."""
    if settings.unsubscribe_secret:
        key = settings.unsubscribe_secret.encode()
    else:
        path = settings.unsubscribe_key_path
        if not path.exists():
            # Written aside, then linked into place: of processes starting together
            # (the node, the gateways) the first one's key wins, complete.
            fresh = path.with_name(f".{path.name}.{os.getpid()}")
            write_private(fresh, secrets.token_urlsafe(32) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(fresh, path)
            fresh.unlink()
        key = path.read_text().strip().encode()
    return UnsubscribeLinks(key, settings.public_base_url)


def segment_reader(events: EventLog) -> SegmentReader:
    """Every buyer's RFM segment, from the analysis read side (all buyers rank together)."""
    reports = Reports(events.client, events.database)

    def segments(as_of: datetime) -> list[tuple[str, str]]:
        return [(score.customer_key, score.segment) for score in reports.rfm(as_of)]

    return segments


class OutreachAdmin:
    """The admin API's view of outreach, over the store."""

    def __init__(self, settings: Settings, store: OutreachStore) -> None:
        self.settings = settings
        self.store = store

    def endpoints(self) -> list[dict[str, Any]]:
        """Subscribed endpoints, secrets withheld."""
        return [
            {"id": e.endpoint_id, "url": e.url, "rules": list(e.rules), "created_at": e.created_at}
            for e in self.store.endpoints()
        ]

    def add_endpoint(self, url: str, rules: list[str], secret: str | None) -> dict[str, Any]:
        """Subscribe an endpoint; a secret is generated unless given."""
        endpoint = Endpoint(
            endpoint_id=f"wh_{secrets.token_hex(8)}",
            url=url,
            secret=secret or f"whsec_{secrets.token_hex(24)}",
            rules=tuple(rules),
            created_at=datetime.now(UTC).isoformat(),
        )
        self.store.add_endpoint(endpoint)
        return {
            "id": endpoint.endpoint_id,
            "url": url,
            "rules": rules,
            "secret": endpoint.secret,
            "created_at": endpoint.created_at,
        }

    def remove_endpoint(self, endpoint_id: str) -> bool:
        """Unsubscribe."""
        return self.store.remove_endpoint(endpoint_id)

    def retired(self) -> str:
        """What replaced the rules' routes: the rules became the lifecycle flows."""
        return (
            "outreach runs on flows: the rules became the lifecycle flows; read and change "
            "them with GET|PUT /v1/flows/{id} (a customer's waits: GET /v1/customers/{id}/flows)"
        )

    def triggers(self, limit: int, customer_id: str | None) -> list[dict[str, Any]]:
        """Recent triggers with deliveries."""
        return self.store.recent_triggers(limit, customer_id)

    def timers(self, customer_id: str | None, limit: int) -> list[dict[str, Any]]:
        """Running timers: the flows' states waiting to wake."""
        return self.store.flow_waits(customer_id, limit)

    def redeliver(self, trigger_id: str) -> int | None:
        """Dead deliveries back to pending."""
        if self.store.trigger(trigger_id) is None:
            return None
        return self.store.redeliver(trigger_id)
