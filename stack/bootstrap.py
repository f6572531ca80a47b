"""Wires adapters to the domain, once per process, from the one Settings object."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from clickhouse_connect.driver.client import Client
from prometheus_client import CollectorRegistry

from api.cors import CorsPolicy
from api.dependencies import AccessKeys, BacklogLimit, Gateway, HealthCheck
from api.metrics import IngestMetrics
from api.rate_limit import TokenBuckets
from api.write_keys import DEV_SOURCE, WriteKeyRegistry
from journeys.application import JourneyApplication
from journeys.segment_definitions import (
    DefinitionError,
    Definitions,
    definitions_from_toml,
    parse_definitions,
)
from journeys.stages import StageRules
from journeys.unsubscribe_links import UnsubscribeLinks
from projections.access import AccessStore
from projections.clickhouse import connect, database_name
from projections.customer_stages import CustomerStageView, StagesInFlight
from projections.dead_letters import DeadLetterLog
from projections.event_log import EventLog
from projections.flow_definition_store import FlowDefinitions
from projections.migrations import migrate
from projections.privacy.vault import SealingSink, Vault
from projections.profiles import ProfileView
from projections.segment_changes import SegmentChangeLog
from projections.segment_definition_store import SegmentDefinitions
from projections.segment_history import SegmentHistory
from projections.segment_reads import SegmentReads
from projections.segment_store import SegmentStore
from projections.write_keys import WriteKeyStore
from stack.access import access_control, build_access_store
from stack.backup import NodeBackups
from stack.flows import FlowsAdmin, build_flow_definitions
from stack.journey_lookup import stored_journeys_query
from stack.metrics import register_node_gauges
from stack.outreach import OutreachAdmin, build_store, segment_reader, unsubscribe_links
from stack.privacy import Privacy, open_vault
from stack.settings import Settings
from streams.app import JourneyStreams
from streams.confluent_sink import ConfluentEventSink
from streams.journal import Journal, JournaledSink, retained_on_disk
from streams.outreach.store import OutreachStore
from streams.pipeline import JourneyPipeline
from streams.producer import KafkaEventSink
from streams.segments import SegmentMaintainer

GatewaySink = KafkaEventSink | ConfluentEventSink | JournaledSink


@dataclass
class Platform:
    """The stores of one process: ClickHouse, the event store and the read models."""

    settings: Settings
    clickhouse: Client
    event_log: EventLog
    stages: CustomerStageView
    journeys: JourneyApplication
    dead_letters: DeadLetterLog
    write_keys: WriteKeyStore
    profiles: ProfileView
    # Outreach timers, deliveries, endpoints (the event store's database).
    outreach: OutreachStore
    # Users, sessions and the audit log (data/access.sqlite, or the event store's PostgreSQL).
    access: AccessStore
    # Customers' data keys and the suppression list; erasure and export over the stores.
    vault: Vault
    privacy: Privacy
    # Customers' segment states and their positions (the event store's database).
    segments: SegmentStore | None = None
    # The trait and segment definitions in force (seeded from the file; admin API).
    segment_definitions: SegmentDefinitions | None = None
    # Signs the unsubscribe link of every message, and checks it when it comes back.
    unsubscribe: UnsubscribeLinks | None = None
    # The journey flows in force and their pauses (seeded from the flows file; admin API).
    flow_definitions: FlowDefinitions | None = None

    def _flows_read_traits(self) -> bool:
        """Some flow in force branches on or renders computed traits (TraitsChanged wanted)."""
        assert self.flow_definitions is not None
        return any(flow.uses_computed_traits for flow in self.flow_definitions.current().flows)

    def pipeline(self, *, reads_clickhouse: bool = True) -> JourneyPipeline:
        """The journey pipeline over these stores (keeping segments when the store is there).

        ``reads_clickhouse`` false: a journey worker writing through the projection feed,
        which cannot read the event log, so no segment backfills, no revision of
        segments by late events and no RFM segments (they read ClickHouse).
        """
        maintainer = None
        if self.segments is not None and self.segment_definitions is not None:
            log = SegmentChangeLog(self.clickhouse, self.event_log.database)
            source = self.segment_definitions.current
            reads = reads_clickhouse
            history = SegmentHistory(self.clickhouse, self.event_log.database) if reads else None
            maintainer = SegmentMaintainer(
                source(),
                self.segments,
                log,
                source,
                history,
                self.settings.topic_partitions,
                segment_reader(self.event_log) if reads else None,  # the buyers' RFM segments
                self._flows_read_traits if self.flow_definitions is not None else None,
                # As the stage rows: held for the API of this process (the node).
                serves_readers=self.stages.in_flight is not None,
            )
        return JourneyPipeline(
            self.journeys,
            self.event_log,
            self.stages,
            self.profiles,
            live_journeys=self.settings.journey_cache_size,
            segments=maintainer,
        )

    def close(self) -> None:
        """Release the stores (the chdb folder lock, the SQLite connection)."""
        self.journeys.close()
        self.outreach.close()
        self.access.close()
        if self.segments is not None:
            self.segments.close()
        if self.segment_definitions is not None:
            self.segment_definitions.close()
        if self.flow_definitions is not None:
            self.flow_definitions.close()
        self.vault.keys.close()
        self.clickhouse.close()


def load_rules(settings: Settings) -> StageRules:
    """The stage rules: ``settings.stage_rules_file``, or the defaults shipped with journeys/."""
    if settings.stage_rules_file is None:
        text = resources.files("journeys").joinpath("stage_rules.toml").read_text("utf-8")
        return StageRules.from_toml(text)
    try:
        return StageRules.from_toml(settings.stage_rules_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"JOURNEYS_STAGE_RULES_FILE={settings.stage_rules_file}: {error}"
        ) from error


def load_segment_definitions(settings: Settings) -> Definitions:
    """Traits and segments: ``settings.segments_file``, or journeys/segments.toml.

    The file seeds the stored definitions (:class:`SegmentDefinitions`) once; the
    worker and the API read the stored ones.
    """
    return parse_definitions(load_segment_document(settings))


def load_segment_document(settings: Settings) -> dict[str, Any]:
    """The definitions file's tables, validated (DefinitionError names the file and node)."""
    if settings.segments_file is None:
        text = resources.files("journeys").joinpath("segments.toml").read_text("utf-8")
        definitions_from_toml(text)
        return tomllib.loads(text)
    try:
        text = settings.segments_file.read_text(encoding="utf-8")
        definitions_from_toml(text)
    except OSError as error:
        raise ValueError(f"JOURNEYS_SEGMENTS_FILE={settings.segments_file}: {error}") from error
    except DefinitionError as error:
        raise DefinitionError(
            [(f"{settings.segments_file}: {path}", message) for path, message in error.errors]
        ) from error
    return tomllib.loads(text)


def event_store_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing environment for the configured event store."""
    return {**_store_env(settings), **_cache_env(settings)}


def _cache_env(settings: Settings) -> dict[str, str]:
    # The library's aggregate cache with fast-forward (its default): a hit costs one
    # read of newer events instead of a snapshot and events, 1.7x the recording rate
    # measured here, and stays right when another worker wrote the journey meanwhile.
    if not settings.journey_cache_size:
        return {}
    return {
        "AGGREGATE_CACHE_MAXSIZE": str(settings.journey_cache_size),
        "AGGREGATE_CACHE_FASTFORWARD": "y",
    }


def _store_env(settings: Settings) -> dict[str, str]:
    if settings.event_store == "postgres":
        if not settings.postgres_dsn:
            raise ValueError("JOURNEYS_POSTGRES_DSN is required when JOURNEYS_EVENT_STORE=postgres")
        dsn = urlsplit(settings.postgres_dsn)
        # libpq's ?host=/socket/dir form (a Unix socket, as the embedded test server uses).
        socket_dir = parse_qs(dsn.query).get("host", [""])[0]
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dsn.path.lstrip("/") or "journeys",
            "POSTGRES_HOST": socket_dir or dsn.hostname or "localhost",
            "POSTGRES_PORT": str(dsn.port or 5432),
            "POSTGRES_USER": unquote(dsn.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(dsn.password or ""),
        }
    settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(settings.sqlite_path),
        # Readers (the API) and the writer (the worker) share the file; wait, don't fail.
        "SQLITE_LOCK_TIMEOUT": "30",
    }


class StoresUnavailable(Exception):
    """The stores of an offline command (replay, verify) could not be opened."""


def open_platform_offline(settings: Settings) -> Platform:
    """``build_platform`` for a command run beside a stopped node; StoresUnavailable says why."""
    try:
        return build_platform(settings)
    except Exception as error:
        raise StoresUnavailable(
            f"cannot open the stores ({type(error).__name__}: {error}); with the embedded "
            "ClickHouse, stop the node first: its data folder takes one process only"
        ) from error


def build_platform(settings: Settings, *, stages_in_flight: bool = False) -> Platform:
    """Connect the stores and bring the ClickHouse schema up to date.

    ``stages_in_flight``: the API and the worker share this process (the node), so
    the stage view serves the worker's decided rows ahead of their inserts.
    """
    load_rules(settings)  # a bad rules file fails the start before ClickHouse is opened
    clickhouse = connect(settings.clickhouse_url, settings.chdb_path)
    return platform_on(settings, clickhouse, stages_in_flight=stages_in_flight)


def platform_on(
    settings: Settings,
    clickhouse: Client,
    *,
    stages_in_flight: bool = False,
    migrate_schema: bool = True,
) -> Platform:
    """The platform's stores over an open ClickHouse client (chdb: one per process).

    ``migrate_schema`` false: the client is a journey worker's projection feed, and
    the node that applies it migrates chdb.
    """
    database = database_name(settings.clickhouse_database)
    in_flight = (
        StagesInFlight(settings.stages_in_flight)
        if stages_in_flight and settings.stages_in_flight
        else None
    )
    if migrate_schema:
        migrate(clickhouse, database)
    with creating_stores(settings):
        journeys = JourneyApplication(rules=load_rules(settings), env=event_store_env(settings))
        journeys.stored_journeys = stored_journeys_query(journeys.recorder)
        outreach = build_store(settings)
        segments = build_segment_store(settings)
        segment_definitions = build_segment_definitions(settings)
        vault = open_vault(settings)
    return Platform(
        settings=settings,
        clickhouse=clickhouse,
        event_log=EventLog(clickhouse, database),
        stages=CustomerStageView(clickhouse, database, in_flight),
        journeys=journeys,
        dead_letters=DeadLetterLog(clickhouse, database),
        write_keys=WriteKeyStore(clickhouse, database),
        profiles=ProfileView(clickhouse, database),
        access=build_access_store(settings),
        outreach=outreach,
        vault=vault,
        privacy=Privacy(
            settings, vault, clickhouse, database, outreach, journeys, segments, in_flight
        ),
        segments=segments,
        segment_definitions=segment_definitions,
        unsubscribe=unsubscribe_links(settings),
        flow_definitions=build_flow_definitions(settings),
    )


@contextlib.contextmanager
def creating_stores(settings: Settings) -> Iterator[None]:
    """One process at a time opens the SQLite stores: `journeys up` starts the node,
    its journey workers and gateways together, and eventsourcing takes a "database is
    locked" while another process first sets up the file for "no tracking table yet",
    then fails on the migration record the other wrote (IntegrityError)."""
    if settings.event_store != "sqlite":
        yield
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.data_dir / "stores.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def segment_reads(platform: Platform) -> SegmentReads | None:
    """Segment definitions and membership for the API (None without a segment store)."""
    if platform.segments is None or platform.segment_definitions is None:
        return None
    log = SegmentChangeLog(platform.clickhouse, platform.event_log.database)
    return SegmentReads(platform.segment_definitions, platform.segments, log)


def build_segment_store(settings: Settings) -> SegmentStore:
    """The segment states in the event store's database."""
    if settings.event_store == "postgres":
        return SegmentStore(postgres_dsn=settings.postgres_dsn)
    return SegmentStore(sqlite_path=settings.sqlite_path)


def build_segment_definitions(settings: Settings) -> SegmentDefinitions:
    """The stored definitions (event store's database), seeded from the file the first time."""
    if settings.event_store == "postgres":
        stored = SegmentDefinitions(postgres_dsn=settings.postgres_dsn)
    else:
        stored = SegmentDefinitions(sqlite_path=settings.sqlite_path)
    if not stored.version():
        stored.seed(load_segment_document(settings))
    return stored


def settle_heap() -> None:
    """Keep what start-up built (modules, schemas, stores) out of the garbage collector's scans.

    A process holds a few hundred thousand such objects, and every full
    collection walked them all: 20 % of the gateway's main thread under
    ``/v1/batch`` (py-spy). Frozen, they are never collected, which they never
    were going to be; what requests allocate is collected as before.
    """
    gc.collect()
    gc.freeze()


def event_sink(settings: Settings, journal: Journal | None = None) -> GatewaySink:
    """The gateway's producer, as ``JOURNEYS_GATEWAY_PRODUCER`` chooses (see architecture.md),
    behind the ingest journal when there is one."""
    kind = ConfluentEventSink if settings.gateway_producer == "confluent" else KafkaEventSink
    producer = kind(
        settings.kafka_bootstrap_servers,
        settings.events_topic,
        settings.dead_letter_topic,
        idempotence=settings.kafka_idempotence,
    )
    if journal is None:
        return producer
    return JournaledSink(producer, journal, settings.topic_partitions)


def open_journal(settings: Settings, directory: Path | None = None) -> Journal:
    """The node's ingest journal, or one in ``directory`` (not yet opened), sized by the
    settings."""
    mib = 1024 * 1024
    return Journal(
        directory or settings.journal_path,
        settings.kafka_epoch,
        segment_bytes=settings.journal_segment_mib * mib,
        segment_age_s=settings.journal_segment_s,
        max_bytes=settings.journal_max_mib * mib,
    )


def build_gateway(
    platform: Platform,
    sink: GatewaySink,
    streams: JourneyStreams | None,
    registry: CollectorRegistry | None = None,
) -> Gateway:
    """The API's collaborators, with a health check per component.

    ``registry``: where /metrics reads, with the worker's histograms when the
    process has a worker (the node); the gateway's counters and gauges join it.

    Called once a process has started up: it also settles the heap (see
    :func:`settle_heap`).
    """
    settle_heap()
    settings = platform.settings

    async def broker() -> dict[str, Any]:
        return {"ok": await sink.connected(), "bootstrap_servers": settings.kafka_bootstrap_servers}

    async def clickhouse() -> dict[str, Any]:
        version = await asyncio.to_thread(platform.clickhouse.command, "SELECT version()")
        engine = "chdb" if settings.uses_embedded_clickhouse else "server"
        return {"ok": True, "engine": engine, "version": str(version)}

    async def event_store() -> dict[str, Any]:
        position = await asyncio.to_thread(platform.journeys.consumed_position, "health-probe")
        return {"ok": position == 0, "kind": settings.event_store}

    registry = registry if registry is not None else CollectorRegistry()
    checks: dict[str, HealthCheck] = {
        "broker": broker,
        "clickhouse": clickhouse,
        "event_store": event_store,
    }
    if isinstance(sink, JournaledSink):
        journal = sink.journal

        async def journal_check() -> dict[str, Any]:
            # Not ok once full: ingest answers 503 until the worker catches up.
            retained = journal.retained_bytes
            return {
                "ok": retained < journal.max_bytes,
                "retained_bytes": retained,
                "segments": len(journal.segments),
            }

        checks["journal"] = journal_check
    # Made by `journeys up` when it runs gateways.
    if streams is not None and settings.gateways_path.is_dir():

        async def gateway_journals_check() -> dict[str, Any]:
            # The ingest gateways' journals (`journeys up`), trimmed by each gateway as
            # this worker's positions pass them; always ok: a full one answers 503 there.
            journals = settings.gateway_journal_paths().items()
            held = {str(index): retained_on_disk(path) for index, path in journals}
            return {
                "ok": True,
                "segments": sum(segments for segments, _ in held.values()),
                "retained_bytes": sum(size for _, size in held.values()),
                "gateways": {
                    name: {"segments": segments, "retained_bytes": size}
                    for name, (segments, size) in held.items()
                },
            }

        checks["gateway_journals"] = gateway_journals_check
    backlog: BacklogLimit | None = None
    if streams is not None:

        async def worker() -> dict[str, Any]:
            # Reads the event store's positions: off the event loop.
            return await asyncio.to_thread(streams.status)

        checks["worker"] = worker
        # The gateway's acks and the consumer's progress, in memory: cheap per request.
        sink.on_delivered = streams.backlog.delivered
        backlog = limit = BacklogLimit(
            streams.backlog, settings.ingest_max_lag_events, settings.ingest_max_lag_s
        )

        async def backlog_check() -> dict[str, Any]:
            # Past the lag limit ingest answers 503 ("accepting": false) until it catches up.
            return limit.state()

        checks["backlog"] = backlog_check
    journaled = sink.journal if isinstance(sink, JournaledSink) else None
    register_node_gauges(registry, streams.backlog if streams else None, journaled)
    backups = None
    if (
        streams is not None
        and settings.event_store == "sqlite"
        and settings.uses_embedded_clickhouse
    ):
        # The node holds the chdb folder and the worker: only it can take a backup.
        partitions = range(settings.topic_partitions)
        backups = NodeBackups(
            settings,
            platform.clickhouse,
            lambda: streams.consumed_positions(list(partitions)),
            streams.between_batches,
        )
    return Gateway(
        # Sealed before the journal, the broker or the dead letters see anything.
        sink=SealingSink(sink, platform.vault),
        keys=AccessKeys(
            write_keys=frozenset(k for k in [settings.write_key] if k),
            read_keys=frozenset(k for k in [settings.read_key] if k),
            admin_keys=frozenset(k for k in [settings.admin_key] if k),
        ),
        event_log=platform.event_log,
        stages=platform.stages,
        health_checks=checks,
        write_keys=WriteKeyRegistry(
            platform.write_keys,
            {settings.write_key: DEV_SOURCE} if settings.write_key else {},
            cache_seconds=settings.write_key_cache_s,
        ),
        dead_letters=platform.dead_letters,
        rate_limit=TokenBuckets(settings.ingest_rate_per_s, settings.ingest_burst),
        cors=CorsPolicy(settings.ingest_origin_list, settings.dashboard_origin_list),
        profiles=platform.profiles,
        journeys=platform.journeys,
        outreach=OutreachAdmin(settings, platform.outreach),
        backlog=backlog,
        metrics=IngestMetrics(registry, counted_elsewhere=settings.gateway_metrics_dir is not None),
        access=access_control(settings, platform.access),
        privacy=platform.privacy,
        segments=segment_reads(platform),
        flows=FlowsAdmin(
            settings,
            platform.clickhouse,
            platform.event_log.database,
            platform.outreach,
            platform.flow_definitions,
        ),
        backups=backups,
        unsubscribe=platform.unsubscribe,
    )
