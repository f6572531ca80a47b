"""Processes of the platform: the embedded node (worker and API in one), or either alone.

chdb allows one process per data folder, so on one machine the worker (which
writes ClickHouse) and the API (which queries it) share a process and one
event loop. In scale-out, against a ClickHouse server, they run apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

import faust
import uvicorn
from clickhouse_connect.driver.client import Client
from fastapi import FastAPI
from mode import Service
from mode.types import ServiceT
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from api.app import create_api
from projections.clickhouse import TableInsert
from projections.feed_positions import FeedPositions
from stack.backup import NodeBackups
from stack.bootstrap import (
    Platform,
    build_gateway,
    build_platform,
    event_sink,
    open_journal,
    platform_on,
)
from stack.flows import load_flows
from stack.flows_switch import switch_to_flows
from stack.metrics import (
    register_gateway_counters,
    register_journey_worker_metrics,
    register_node_gauges,
    write_metrics_file,
)
from stack.outreach import segment_reader
from stack.processes import api_server
from stack.settings import Settings
from streams.app import JourneyStreams
from streams.gateway_lag import BacklogPoller
from streams.journal import (
    Journal,
    JournaledSink,
    Position,
    ReplayReport,
    Segment,
    trim_periodically,
)
from streams.metrics import WorkerMetrics
from streams.outreach.flows import FlowRunner
from streams.outreach.worker import OutreachWorker
from streams.pipeline import source_name
from streams.projection_feed import ProjectionApplier, ProjectionFeed, ProjectionRecorder
from streams.topics import end_offsets

log = logging.getLogger(__name__)

# How long a stopping node waits for the worker to catch up with what was accepted.
DRAIN_TIMEOUT_S = 60.0
# Threads of the worker's loops (each holds at most one at a time, waiting on a lock
# included) and of the API's requests: two pools, so neither starves the other.
WORKER_THREADS = 32
API_THREADS = 16

# True in the tasks serving an API request: their blocking calls take the API's threads.
_SERVING_API: contextvars.ContextVar[bool] = contextvars.ContextVar("serving_api", default=False)


class NodeThreads(ThreadPoolExecutor):
    """The node's default executor (``asyncio.to_thread``): the worker's threads, and the
    API's apart.

    With the one default pool (6 threads on 2 cores) the worker's loops waiting on the
    event store's write lock (a journey batch, the segment timers, the outreach loops,
    each up to SQLite's 30 s) took every thread, and the API's reads queued behind
    them: the node stopped answering while its worker waited.
    """

    def __init__(self, worker_threads: int = WORKER_THREADS, api_threads: int = API_THREADS):
        super().__init__(worker_threads, thread_name_prefix="worker")
        self.api = ThreadPoolExecutor(api_threads, thread_name_prefix="api")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn`` on the API's threads when an API request asks, else the worker's."""
        if _SERVING_API.get():
            return self.api.submit(fn, *args, **kwargs)
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Both pools."""
        self.api.shutdown(wait, cancel_futures=cancel_futures)
        super().shutdown(wait, cancel_futures=cancel_futures)


def serving_api(app: ASGIApp) -> ASGIApp:
    """``app`` with its requests' blocking calls on the API's threads (:class:`NodeThreads`)."""

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn runs each request in a task of its own: the mark stays in it.
        token = _SERVING_API.set(True)
        try:
            await app(scope, receive, send)
        finally:
            _SERVING_API.reset(token)

    return marked


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the Faust worker owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer(Service):
    """The gateway, run as a service of the Faust worker.

    Stopping it stops ingest first, then (when the broker keeps its log only in
    memory) waits until the worker has committed everything that was accepted,
    so a clean shutdown loses nothing.
    """

    def __init__(
        self,
        platform: Platform,
        streams: JourneyStreams | None,
        journal: Journal | None = None,
        unproduced: Sequence[Segment] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__()
        self.platform = platform
        self.streams = streams
        settings = platform.settings
        # The journal's segments to produce again before taking traffic (a new broker).
        self.journal = journal
        self.unproduced = list(unproduced)
        self._trimming: asyncio.Task[None] | None = None
        self._backing_up: asyncio.Task[None] | None = None
        self.sink = event_sink(settings, journal)
        self.gateway = build_gateway(platform, self.sink, streams, registry)
        api = serving_api(create_api(self.gateway))
        config, self._sockets = api_server(api, settings)
        self.server = _EmbeddedUvicorn(config)
        self._serving: asyncio.Future[None] | None = None

    async def on_start(self) -> None:
        """Connect the producer, produce what the journal holds for a new broker, then serve."""
        # First of the node's services: before any blocking call takes a thread.
        asyncio.get_running_loop().set_default_executor(NodeThreads())
        await self.sink.start()
        if isinstance(self.sink, JournaledSink):
            # Before any new event: one customer's events stay in the order first accepted.
            await self.sink.replay(self.unproduced, self._position)
            self.unproduced = []
            self._trimming = asyncio.ensure_future(
                trim_periodically(self._trim_once, self.platform.settings.journal_trim_s)
            )
        backups = self.gateway.backups
        if isinstance(backups, NodeBackups) and self.platform.settings.backup_every_h:
            self._backing_up = asyncio.ensure_future(backups.scheduled())
        self._serving = asyncio.ensure_future(self.server.serve(sockets=self._sockets))
        while not self.server.started:
            if self._serving.done():
                self._serving.result()  # re-raises why it could not serve (port in use…)
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.05)

    async def on_stop(self) -> None:
        """Stop taking events, flush the producer, then let the worker catch up."""
        self.server.should_exit = True
        if self._serving is not None:
            await self._serving
        await self.sink.stop()
        if self.streams is not None and self.platform.settings.kafka_epoch:
            await drain(self.streams, self.platform.settings)
        for task in (self._trimming, self._backing_up):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.journal is not None:
            await asyncio.to_thread(self._trim_once)

    def _position(self, epoch: str, partition: int) -> int:
        """The journey pipeline's tracked position of ``partition`` in broker ``epoch``."""
        topic = self.platform.settings.events_topic
        return self.platform.journeys.consumed_position(source_name(topic, partition, epoch))

    def _trim_once(self) -> None:
        assert self.journal is not None
        positions: dict[tuple[str, int], int] = {}

        def position(epoch: str, partition: int) -> int:
            # One event-store read per partition per round, however many segments.
            if (epoch, partition) not in positions:
                positions[epoch, partition] = self._position(epoch, partition)
            return positions[epoch, partition]

        self.journal.trim(position)


async def drain(streams: JourneyStreams, settings: Settings) -> bool:
    """Wait until every accepted event is committed by the journey worker.

    The worker adds to the topic while it drains: a batch's identity messages
    (links, merged histories, re-keyed events) are produced before its commit. So
    once the positions reach the end offsets, the ends are read again, and the
    drain is over only when they did not move: otherwise a merge produced by the
    last batches would wait for the next start, and the stopped stores disagree.
    """
    ends = await end_offsets(settings.kafka_bootstrap_servers, settings.events_topic)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    if not await _drain_journeys(streams, settings, ends, deadline):
        return False
    if streams.feed is not None:
        # The journey workers (stopped before the node) wrote ClickHouse over the feed.
        return await _drain_feed(streams, settings, deadline)
    return True


async def _drain_journeys(
    streams: JourneyStreams, settings: Settings, ends: dict[int, int], deadline: float
) -> bool:
    while True:
        if not streams.consuming:
            # A crash marks every service of the worker crashed, the journey
            # consumer too: its positions cannot move. The next start re-reads.
            log.warning("the journey consumer has stopped; not waiting for it to catch up")
            return False
        positions = await asyncio.to_thread(streams.consumed_positions, list(ends))
        behind = {p: ends[p] - positions[p] for p in ends if positions[p] < ends[p]}
        if not behind:
            now = await end_offsets(settings.kafka_bootstrap_servers, settings.events_topic)
            if now == ends:
                return True
            ends = now
            continue
        if time.monotonic() > deadline:
            log.warning("stopping with events not yet processed, per partition: %s", behind)
            return False
        await asyncio.sleep(0.1)


async def _drain_feed(streams: JourneyStreams, settings: Settings, deadline: float) -> bool:
    ends = await end_offsets(settings.kafka_bootstrap_servers, settings.projections_topic)
    while streams.consuming:
        applied = await asyncio.to_thread(streams.feed_positions, list(ends))
        behind = {p: ends[p] - applied[p] for p in ends if applied[p] < ends[p]}
        if not behind:
            return True
        if time.monotonic() > deadline:
            log.warning("stopping with projection records not yet applied: %s", behind)
            return False
        await asyncio.sleep(0.1)
    log.warning("the projection consumer has stopped; not waiting for it to catch up")
    return False


class NodeWorker(faust.Worker):
    """Faust's worker with the node's API: the API starts first and stops first.

    Started first, the API takes events again while the worker's consumers still
    join their groups (each join takes half the session timeout on Tansu, seconds
    that would otherwise be an ingest pause at every start, crash or broker roll).
    Stopped first, before any other service (mode stops the rest in reverse): the
    API's stop drains into consumers that still run.
    """

    def __init__(self, app: faust.App, *services: ServiceT, api: Service | None, **kw: Any):
        self.api = api
        super().__init__(app, *services, **kw)

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        """The API, the app, then the other services."""
        first = [self.api] if self.api is not None else []
        services = [s for s in super().on_init_dependencies() if s not in (self.app, self.api)]
        return [*first, self.app, *services]

    async def on_stop(self) -> None:
        """Stop the API (ingest, then the drain) before mode stops the other services."""
        if self.api is not None:
            await self.api.stop()
        await super().on_stop()


class Drained(Service):
    """A journey worker's last service to stop: it waits for the worker to catch up.

    Stopped first (``NodeWorker(api=)``), while the journey consumer still runs.
    """

    def __init__(self, streams: JourneyStreams, settings: Settings) -> None:
        super().__init__()
        self.streams = streams
        self.settings = settings

    async def on_stop(self) -> None:
        if self.settings.kafka_epoch:  # the embedded broker's log goes with it
            await drain(self.streams, self.settings)


class BacklogPolling(Service):
    """The node's backlog, read from the event store and the broker (workers run apart)."""

    def __init__(self, poller: BacklogPoller) -> None:
        super().__init__()
        self.poller = poller

    async def on_start(self) -> None:
        await self.poller.start()

    async def on_stop(self) -> None:
        await self.poller.stop()


class Periodic(Service):
    """Runs ``rounds`` (what each does, and it: in a thread) every ``every_s`` while the
    process runs, and once more at its stop: a journey worker's journal trim and metrics
    file."""

    def __init__(self, rounds: Sequence[tuple[str, Callable[[], object]]], every_s: float) -> None:
        super().__init__()
        self.rounds = list(rounds)
        self.every_s = every_s
        self._rounds_running: list[asyncio.Task[None]] = []

    async def on_start(self) -> None:
        self._rounds_running = [
            asyncio.ensure_future(trim_periodically(one, self.every_s, what=what))
            for what, one in self.rounds
        ]

    async def on_stop(self) -> None:
        for task in self._rounds_running:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, one in self.rounds:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(one)


def run_journey_worker(settings: Settings) -> None:
    """One of `journeys up`'s journey workers: its partitions' journeys, in a group with
    the others, writing ClickHouse through the projection feed (the node owns chdb)."""
    # A Faust group of their own (their app's agent, dead letters, is not the node's):
    # one group of members subscribing to different topics is not Faust's shape.
    settings = settings.model_copy(update={"worker_group": f"{settings.worker_group}-journeys"})
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    # Its projection records stay on disk until the node applied them: a broker that
    # dies between the worker's commit and the node's apply would take them otherwise.
    journal = open_journal(settings) if settings.uses_journal else None
    unproduced = journal.open() if journal is not None else []
    # Its identity messages (links, merged histories, re-keyed events) to journey.events,
    # until the pipeline processed them: the batch that sent them is committed, so a
    # broker dying before their receiver's commit would take the merge (as the node's).
    identities = (
        open_journal(settings, settings.journey_worker_identity_journal_path())
        if settings.uses_journal
        else None
    )
    unsent_identities = identities.open() if identities is not None else []
    recorder = ProjectionRecorder(
        settings.kafka_bootstrap_servers,
        settings.projections_topic,
        idempotence=settings.kafka_idempotence,
        journal=journal,
    )
    applied = FeedPositions(settings.feed_positions_path)

    def feed_position(epoch: str, partition: int) -> int:
        # The node's position on journey.projections in ``epoch``: what it has applied.
        return applied.position(source_name(settings.projections_topic, partition, epoch))

    if journal is not None:
        # Before any new batch: the node applies what the last broker lost first.
        metrics.replayed("projections", recorder.replay(unproduced, feed_position))
    # The recorder takes every call the projection writers make of a client (see it).
    platform = platform_on(settings, cast(Client, recorder), migrate_schema=False)

    def event_position(epoch: str, partition: int) -> int:
        # The journey pipeline's tracked position in ``epoch`` (every worker's: one store).
        topic = settings.events_topic
        return platform.journeys.consumed_position(source_name(topic, partition, epoch))

    if identities is not None:
        # Before this worker consumes: a merge's messages go round before newer events.
        report = asyncio.run(
            replay_event_journal(settings, identities, unsent_identities, event_position)
        )
        metrics.replayed("identity", report)
    # Dead letters are kept here too (over the feed): the node's Faust app has its own agents.
    streams = JourneyStreams(
        settings,
        platform.pipeline(reads_clickhouse=False),
        platform.dead_letters,
        identities,
        metrics=metrics,
    )
    rounds: list[tuple[str, Callable[[], object]]] = [
        (
            "write the metrics file",
            functools.partial(write_metrics_file, registry, settings.journey_worker_metrics_file),
        )
    ]
    if journal is not None:
        rounds.append(("trim the journal", functools.partial(journal.trim, feed_position)))
    if identities is not None:
        trim = functools.partial(identities.trim, event_position)
        rounds.append(("trim the identity journal", trim))
    worker = NodeWorker(
        streams.app,
        streams.journey_consumer,
        Periodic(rounds, settings.journal_trim_s),
        api=Drained(streams, settings),
        loglevel=settings.log_level,
    )
    try:
        worker.execute_from_commandline()
    finally:
        platform.close()
        for one in (journal, identities):
            if one is not None:
                one.close()
        applied.close()


async def replay_event_journal(
    settings: Settings, journal: Journal, segments: Sequence[Segment], position: Position
) -> ReplayReport:
    """Produce a journal of journey.events records (``segments``) again, keyed as they were."""
    if not segments:
        return ReplayReport(0, 0, 0, 0, 0.0)
    sink = event_sink(settings, journal)
    assert isinstance(sink, JournaledSink)
    await sink.start()
    try:
        return await sink.replay(segments, position)
    finally:
        await sink.stop()


def _chdb_feed(platform: Platform) -> ProjectionFeed:
    """The node's side of the projection feed: applied to its ClickHouse, positions saved."""
    client = platform.clickhouse
    inserts: dict[tuple[str, tuple[str, ...]], TableInsert] = {}

    def insert(table: str, columns: list[str], rows: list[list[Any]]) -> None:
        key = (table, tuple(columns))
        if key not in inserts:
            inserts[key] = TableInsert(client, table, columns)
        inserts[key].insert(rows)

    def command(sql: str, parameters: dict[str, Any]) -> None:
        client.command(sql, parameters=parameters)

    positions = FeedPositions(platform.settings.feed_positions_path)
    return ProjectionFeed(ProjectionApplier(insert, command), positions.position, positions.save)


def run_node(settings: Settings) -> None:
    """The embedded shape: journey worker and API in this process, until SIGTERM/SIGINT."""
    _run_worker(settings, with_api=True)


def run_worker(settings: Settings) -> None:
    """The journey worker alone (scale-out: one per partition group)."""
    _run_worker(settings, with_api=False)


def _run_worker(settings: Settings, *, with_api: bool) -> None:
    # With journey workers apart (`journeys up`, JOURNEYS_JOURNEY_WORKERS), the node
    # applies their projection feed instead of consuming journey events.
    apart = with_api and settings.journey_workers > 0
    platform = build_platform(settings, stages_in_flight=with_api and not apart)
    # Before any event is consumed: a store restored from before an erasure forgets it again.
    platform.privacy.reapply_ledger()
    # The node journals what its gateway accepts (and its worker's identity messages).
    journal = open_journal(settings) if with_api and settings.uses_journal else None
    unproduced = journal.open() if journal is not None else []
    # /metrics (the node's API) reads the worker's histograms from this registry too.
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    streams = JourneyStreams(
        settings,
        platform.pipeline(),
        None if apart else platform.dead_letters,  # apart, the journey workers keep them
        journal,
        metrics=metrics,
        feed=_chdb_feed(platform) if apart else None,
    )
    if platform.flow_definitions is not None:
        # Before anything is consumed: the lifecycle flows on, the rules' history seeded.
        switch_to_flows(settings, platform.flow_definitions, platform.outreach)
    # The trigger and outreach agents share the worker's Faust app.
    outreach = OutreachWorker(
        settings,
        streams.batches,
        platform.outreach,
        segment_reader(platform.event_log),
        lateness=metrics.trigger_lateness_seconds.observe,
        vault=platform.vault,
        flows=lambda worker: FlowRunner(
            platform.outreach,
            platform.flow_definitions or load_flows(settings),
            worker.delivery_targets,
            int(settings.trigger_grace.total_seconds() * 1000),
        ),
        unsubscribe_url=platform.unsubscribe.url if platform.unsubscribe else None,
    )
    register_node_gauges(registry, None, None, outreach.consumer_lag)
    register_gateway_counters(registry, settings.gateway_metrics_dir)
    if apart:
        register_journey_worker_metrics(registry, settings.journey_worker_metrics_dir)
    services: list[ServiceT] = [streams.journey_consumer, outreach.trigger_consumer]
    if streams.feed_consumer is not None:
        poller = BacklogPoller(
            streams.backlog,
            settings.kafka_bootstrap_servers,
            settings.events_topic,
            settings.topic_partitions,
            streams.consumed_position,
            settings.gateway_lag_poll_s,
        )
        services = [streams.feed_consumer, outreach.trigger_consumer, BacklogPolling(poller)]
    api = ApiServer(platform, streams, journal, unproduced, registry) if with_api else None
    node = NodeWorker(streams.app, *services, api=api, loglevel=settings.log_level)
    try:
        node.execute_from_commandline()
    finally:
        if journal is not None:
            journal.close()
        platform.close()


def standalone_api(settings: Settings, *, journaled: bool = False) -> tuple[FastAPI, Platform]:
    """The API in a process of its own: its producer starts and stops with the app.

    ``journaled``: behind an ingest journal that nothing trims (no worker here):
    for measuring the journal's cost (bench/ingest.py); `journeys api` never is.
    """
    platform = build_platform(settings)
    journal = open_journal(settings) if journaled else None
    sink = event_sink(settings, journal)
    api = create_api(build_gateway(platform, sink, streams=None))

    @contextlib.asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        if journal is not None:
            journal.open()
        await sink.start()
        try:
            yield
        finally:
            await sink.stop()
            if journal is not None:
                journal.close()

    api.router.lifespan_context = lifespan
    return api, platform


def run_api(settings: Settings) -> None:
    """The API alone (scale-out), against a ClickHouse server."""
    if settings.uses_embedded_clickhouse:
        raise SystemExit(
            "the API alone needs a ClickHouse server (JOURNEYS_CLICKHOUSE_URL): chdb's data "
            "folder can be opened by one process only, the worker's; use `journeys node`"
        )
    api, platform = standalone_api(settings)
    try:
        uvicorn.run(
            api,
            host=settings.api_host,
            port=settings.api_port,
            log_level=settings.log_level,
            access_log=False,
        )
    finally:
        platform.close()
