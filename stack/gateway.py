"""An ingest gateway process (`journeys gateway`): parse, validate, journal, produce.

`journeys up` runs several on the API's one listening socket (the supervisor's),
so the kernel spreads connections among them and single calls use every core.
A gateway holds no ClickHouse and writes no event store: what it needs of the
node's stores it reads cheaply —

- write keys: the node's ``GET /v1/write-keys/active`` (digests), over the
  node's private socket, cached ``JOURNEYS_WRITE_KEY_CACHE_S`` like any replica;
- the lag limit: the worker's committed positions (the event store's tracking
  records, read-only) and the broker's end offsets, every
  ``JOURNEYS_GATEWAY_LAG_POLL_S`` (streams/gateway_lag.py);
- customers' data keys: the key store (SQLite beside the event store, one
  transaction per new customer; erasures reach it through the suppression list,
  re-read every ``JOURNEYS_WRITE_KEY_CACHE_S``).

Each gateway has its own ingest journal (``JOURNEYS_JOURNAL_DIR``), replayed by
its own next start and trimmed by itself against the worker's positions: a 200
still means the record is fsynced and acknowledged. Every other path is
forwarded to the node (api/forwarding.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx
import uvicorn
from prometheus_client import CollectorRegistry

from api.app import create_ingest_api, ingest_routes
from api.cors import CorsPolicy
from api.dependencies import AccessKeys, BacklogLimit, Gateway
from api.forwarding import IngestOrNode, NodeForwarder
from api.metrics import IngestMetrics
from api.rate_limit import TokenBuckets
from api.write_keys import DEV_SOURCE, WriteKeyRegistry
from journeys.application import JourneyApplication
from projections.privacy.vault import SealingSink, Vault
from stack.bootstrap import (
    creating_stores,
    event_sink,
    event_store_env,
    open_journal,
    settle_heap,
)
from stack.privacy import open_vault
from stack.processes import api_server
from stack.settings import Settings
from streams.backlog import Backlog
from streams.gateway_lag import BacklogPoller
from streams.journal import JournaledSink, trim_periodically
from streams.pipeline import source_name

log = logging.getLogger(__name__)

# At SIGTERM, how long calls in flight may take before they are cancelled. A call
# forwarded to a node that is down (its probe, a read) waits with no deadline in the
# node's socket: unbounded, the stop waited for it until the supervisor's SIGKILL,
# which also skipped the flush and trim below. An ingest call is done in milliseconds.
GRACEFUL_SHUTDOWN_S = 5


class NodeWriteKeys:
    """The node's active write keys (digests), read over its private socket."""

    def __init__(self, socket_path: str, admin_key: str) -> None:
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=socket_path),
            base_url="http://node",
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=10.0,
        )

    def active_digests(self) -> dict[str, tuple[str, str, tuple[str, ...]]]:
        """Key id → (digest, name, origins), as :class:`WriteKeyStore` answers it."""
        response = self._client.get("/v1/write-keys/active")
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return {
            key_id: (key["digest"], key["name"], tuple(key["allowed_origins"]))
            for key_id, key in found.items()
        }

    def close(self) -> None:
        self._client.close()


def _refresh_suppressed(vault: Vault) -> None:
    """Take erasures made through the node: their ids suppressed, their keys forgotten."""
    erased = vault.keys.suppressed() - vault.suppressed
    if erased:
        vault.forget(erased)


class IngestGateway:
    """One gateway's parts, started and stopped around serving."""

    def __init__(self, settings: Settings) -> None:
        if not settings.node_socket:
            raise SystemExit("`journeys gateway` needs JOURNEYS_NODE_SOCKET (set by `journeys up`)")
        self.settings = settings
        self.journal = open_journal(settings) if settings.uses_journal else None
        self.sink = event_sink(settings, self.journal)
        self.vault = open_vault(settings)
        # Only for the worker's committed positions (tracking records): nothing is written.
        # (No stage rules: nothing is decided here, and a bad rules file is the node's to report.)
        with creating_stores(settings):
            self.positions_store = JourneyApplication(env=event_store_env(settings))
        self.write_key_source = NodeWriteKeys(settings.node_socket, settings.admin_key)
        self.backlog = Backlog()
        self.sink.on_delivered = self.backlog.delivered
        self.poller = BacklogPoller(
            self.backlog,
            settings.kafka_bootstrap_servers,
            settings.events_topic,
            settings.topic_partitions,
            lambda partition: self._position(settings.kafka_epoch, partition),
            settings.gateway_lag_poll_s,
        )
        self.registry = CollectorRegistry()
        self.gateway = self._gateway()
        self.forwarder = NodeForwarder(settings.node_socket)
        self.app = IngestOrNode(create_ingest_api(self.gateway), ingest_routes(), self.forwarder)
        self._tasks: list[asyncio.Task[None]] = []

    def _position(self, epoch: str, partition: int) -> int:
        topic = self.settings.events_topic
        return self.positions_store.consumed_position(source_name(topic, partition, epoch))

    def _gateway(self) -> Gateway:
        settings = self.settings
        settle_heap()
        return Gateway(
            sink=SealingSink(self.sink, self.vault),
            keys=AccessKeys(
                write_keys=frozenset(k for k in [settings.write_key] if k),
                read_keys=frozenset(),
                admin_keys=frozenset(),
            ),
            # The ingest app has no read route: nothing asks for these stores.
            event_log=None,  # type: ignore[arg-type]
            stages=None,  # type: ignore[arg-type]
            write_keys=WriteKeyRegistry(
                self.write_key_source,  # type: ignore[arg-type]  # the store's one method
                {settings.write_key: DEV_SOURCE} if settings.write_key else {},
                cache_seconds=settings.write_key_cache_s,
            ),
            rate_limit=TokenBuckets(settings.ingest_rate_per_s, settings.ingest_burst),
            cors=CorsPolicy(settings.ingest_origin_list, settings.dashboard_origin_list),
            backlog=BacklogLimit(
                self.backlog, settings.ingest_max_lag_events, settings.ingest_max_lag_s
            ),
            metrics=IngestMetrics(self.registry),
        )

    async def start(self) -> None:
        """Producer up, this gateway's journal replayed (before any new event), then tasks."""
        unproduced = self.journal.open() if self.journal is not None else []
        await self.sink.start()
        if isinstance(self.sink, JournaledSink):
            await self.sink.replay(unproduced, self._position)
            self._tasks.append(
                asyncio.ensure_future(
                    trim_periodically(self._trim_once, self.settings.journal_trim_s)
                )
            )
        await self.poller.start()
        self._tasks.append(asyncio.ensure_future(self._watch_erasures()))

    async def stop(self) -> None:
        """Flush the producer, trim once more, release the stores."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.poller.stop()
        await self.sink.stop()
        await self.forwarder.aclose()
        if self.journal is not None:
            await asyncio.to_thread(self._trim_once)
            self.journal.close()
        self.write_key_source.close()
        self.positions_store.close()
        self.vault.keys.close()

    def _trim_once(self) -> None:
        assert self.journal is not None
        # This epoch's positions as the lag poller last read them (no read of its own:
        # each costs the worker time); another epoch's (an old segment) from the store.
        latest = self.poller.latest
        positions: dict[tuple[str, int], int] = {}

        def position(epoch: str, partition: int) -> int:
            if epoch == self.settings.kafka_epoch and partition in latest:
                return latest[partition]
            if (epoch, partition) not in positions:
                positions[epoch, partition] = self._position(epoch, partition)
            return positions[epoch, partition]

        self.journal.trim(position)

    async def _watch_erasures(self) -> None:
        while True:
            await asyncio.sleep(max(self.settings.write_key_cache_s, 1.0))
            try:
                await asyncio.to_thread(_refresh_suppressed, self.vault)
            except Exception:
                log.exception("could not read the suppression list")


def run_gateway(settings: Settings) -> None:
    """Serve ingest on the supervisor's socket until SIGTERM (uvicorn's handlers)."""
    logging.basicConfig(level=settings.log_level.upper())
    # Not a line per forwarded request.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    gateway = IngestGateway(settings)
    config, sockets = api_server(gateway.app, settings)
    config.timeout_graceful_shutdown = GRACEFUL_SHUTDOWN_S
    server = uvicorn.Server(config)

    async def serve() -> None:
        await gateway.start()
        try:
            await server.serve(sockets=sockets)
        finally:
            await gateway.stop()

    asyncio.run(serve())
