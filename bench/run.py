"""The platform's benchmark: every figure beside the raw limit measured in the same run.

    .venv/bin/python bench/run.py                 # default sizes
    .venv/bin/python bench/run.py --pipeline-events 1000000 --repeats 1   # the 1M run
    .venv/bin/python bench/run.py --events 2000   # tiny, as the test suite runs it

Starts its own broker (Tansu, embedded) and node in a temporary folder; prints a
table and writes JSON to bench/results/ so runs can be compared over time. The
machine is shared and noisy: repeated figures are medians.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KafkaPartition

from events.segment import IdentifyCall, PageCall, SegmentCall, TrackCall, to_tracked_event
from simulation.storefront import Storefront
from stack.bootstrap import build_platform
from stack.broker import EmbeddedBroker
from stack.processes import free_port, spawn, stop, wait_until
from stack.replay import rebuild
from stack.settings import Settings
from streams.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent

CALL_MODELS: dict[str, type[SegmentCall]] = {
    "track": TrackCall,
    "page": PageCall,
    "identify": IdentifyCall,
}


@dataclass
class Figure:
    """One measured figure and, where there is one, the raw limit beside it."""

    name: str
    value: float
    unit: str
    raw_name: str = ""
    raw_value: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """value / raw limit, when both are rates."""
        if self.raw_value in (None, 0):
            return None
        return self.value / self.raw_value


@dataclass
class Run:
    """Everything one run measured."""

    started_at: str
    machine: dict[str, Any]
    sizes: dict[str, int]
    figures: list[Figure] = field(default_factory=list)


# --- raw limits ---------------------------------------------------------------------


def raw_produce_rate(bootstrap: str, topic: str, payloads: list[tuple[bytes, bytes]]) -> float:
    """Events/s a librdkafka producer (acks=all) gets into ``topic``."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    started = time.perf_counter()
    for key, value in payloads:
        while True:
            try:
                producer.produce(topic, value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    if remaining:
        raise RuntimeError(f"{remaining} events not acknowledged")
    return len(payloads) / elapsed


async def raw_consume_rate(bootstrap: str, topic: str, expected: int) -> float:
    """Events/s an aiokafka consumer group reads and JSON-parses from ``topic``."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-{time.time_ns()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    try:
        seen = 0
        started: float | None = None
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                if started is None:
                    started = time.perf_counter()
                for record in records:
                    orjson.loads(record.value)
                seen += len(records)
        assert started is not None
        return expected / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def faust_floor_rate(bootstrap: str, topic: str, expected: int) -> float:
    """Events/s a Faust agent that does nothing takes from ``topic`` (bench/faust_floor.py)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.faust_floor", bootstrap, topic, str(expected)],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    # The Faust worker writes terminal control codes before the line.
    found = re.search(r'\{"events_per_s": [^}]+\}', done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"the Faust floor did not finish: {done.stderr[-3000:]}")
    return float(json.loads(found.group())["events_per_s"])


# --- the platform -------------------------------------------------------------------


class PeakMemory:
    """Samples the resident memory of processes in the background; keeps each peak."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self._watched: dict[str, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int) -> None:
        """Start sampling process ``pid`` under ``name``."""
        self._watched[name] = psutil.Process(pid)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for name, process in list(self._watched.items()):
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                self.peaks[name] = max(self.peaks.get(name, 0), rss)

    def close(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


def storefront_call_stream(count: int, seed: int) -> Iterator[dict[str, Any]]:
    """``count`` Segment calls from the synthetic storefront (about 12 per shopper)."""
    shoppers = max(1, count // 12)
    made = 0
    while made < count:
        for call in Storefront(seed=seed + made, shoppers=shoppers).calls():
            yield call
            made += 1
            if made == count:
                break


def storefront_calls(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` Segment calls from the synthetic storefront, as a list."""
    return list(storefront_call_stream(count, seed))


def storefront_events(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    """``count`` canonical events from the synthetic storefront, as (key, JSON)."""
    received = datetime.now(UTC)
    out: list[tuple[bytes, bytes]] = []
    for call in storefront_call_stream(count, seed):
        event = to_tracked_event(CALL_MODELS[call["type"]].model_validate(call), received)
        out.append((event.customer_key.encode(), event.to_json()))
    return out


def customer_base_events(customers: int, seed: int) -> Iterator[tuple[bytes, bytes]]:
    """One event for each of ``customers`` distinct customers, as (key, JSON), made as sent.

    A large customer base rather than a realistic session mix: what the worker
    keeps per customer (journeys, trigger facts, RFM segments) is what this
    measures. Every fifth customer buys, so RFM ranks and the high-value rule
    have buyers; the rest view a product. Generated lazily: a million events
    held at once would measure the load generator.
    """
    rng = random.Random(seed)
    received = datetime.now(UTC)
    start = received - timedelta(days=365)
    catalogue = Storefront(seed=seed, shoppers=0).catalogue
    for index in range(customers):
        product = rng.choice(catalogue)
        call: dict[str, Any] = {
            "type": "track",
            "userId": f"base-{index:07d}",
            "messageId": f"base-{seed}-{index}",
            "timestamp": (start + timedelta(seconds=rng.uniform(0, 365 * 86400))).isoformat(),
        }
        if index % 5 == 0:
            price = product.price * rng.randint(1, 3)
            call |= {
                "event": "Order Completed",
                "properties": {
                    "order_id": f"base-order-{index}",
                    "revenue": price,
                    "currency": "USD",
                    "products": [product.properties()],
                },
            }
        else:
            call |= {"event": "Product Viewed", "properties": product.properties()}
        event = to_tracked_event(TrackCall.model_validate(call), received)
        yield event.customer_key.encode(), event.to_json()


def consumed_total(sqlite_path: Path) -> int:
    """Events the worker has committed, summed over partitions (from tracking records)."""
    import sqlite3

    if not sqlite_path.exists():
        return 0
    with sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True, timeout=10) as db:
        try:
            rows = db.execute("SELECT notification_id FROM tracking").fetchall()
        except sqlite3.OperationalError:
            return 0
    return sum(int(row[0]) for row in rows)


class BenchNode:
    """A `journeys node` of the benchmark's own, in a temporary folder."""

    def __init__(
        self, settings: Settings, folder: Path, memory: PeakMemory, name: str = "node"
    ) -> None:
        self.settings = settings
        self.folder = folder
        self.memory = memory
        self.base = f"http://127.0.0.1:{settings.api_port}"
        self.process = spawn(
            [sys.executable, "-m", "stack.cli", "node"], folder / "node.log", env=settings.to_env()
        )
        memory.watch(name, self.process.pid)
        process = self.process
        if not wait_until(self._healthy, 120, alive=lambda: process.poll() is None):
            raise RuntimeError(f"node did not start; see {folder / 'node.log'}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        """Stop the node (it drains first)."""
        stop(self.process, timeout=120)


def wait_drained(node: BenchNode, timeout: float = 3600) -> None:
    """Wait until the worker has committed everything the events topic holds."""
    settings = node.settings
    watermarks = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "bench-watermarks"}
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            end = sum(
                watermarks.get_watermark_offsets(
                    KafkaPartition(settings.events_topic, partition), timeout=10
                )[1]
                for partition in range(settings.topic_partitions)
            )
            if consumed_total(settings.sqlite_path) >= end:
                return
            if time.monotonic() > deadline or node.process.poll() is not None:
                raise RuntimeError("the worker did not drain the events topic")
            time.sleep(0.2)
    finally:
        watermarks.close()


async def ingest_rate(node: BenchNode, calls: list[dict[str, Any]], concurrency: int = 16) -> float:
    """Events/s ``/v1/batch`` accepts (100 calls a request; a 200 means broker-acknowledged)."""
    bodies = [
        (orjson.dumps({"batch": calls[i : i + 100]}), len(calls[i : i + 100]))
        for i in range(0, len(calls), 100)
    ]
    auth = (node.settings.write_key, "")
    headers = {"Content-Type": "application/json"}
    pending = iter(bodies)
    accepted = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=node.base, timeout=120, limits=limits) as client:

        async def sender() -> None:
            nonlocal accepted
            for body, count in pending:
                response = await client.post("/v1/batch", content=body, auth=auth, headers=headers)
                if response.status_code != 200:
                    status = response.status_code
                    raise RuntimeError(f"/v1/batch answered {status}: {response.text}")
                accepted += count

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return accepted / (time.perf_counter() - started)


def assigned_partitions(node: BenchNode) -> list[int] | None:
    """The node's assigned partitions, or None while it is not healthy (rebalancing)."""
    try:
        response = httpx.get(f"{node.base}/health", timeout=5)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return list(response.json()["components"]["worker"]["assigned_partitions"])


def scale_out_rate(
    folder: Path,
    bootstrap: str,
    memory: PeakMemory,
    workers: int,
    partitions: int,
    payloads: list[tuple[bytes, bytes]],
) -> float:
    """Events/s of ``workers`` nodes in one group sharing a topic of ``partitions``.

    Each node keeps its own SQLite and chdb (the embedded stack has no shared
    stores), which holds while no partition moves: the rate is taken only once
    every partition is assigned, each to one node.
    """
    base = node_settings(folder, bootstrap, 0)
    shared = {
        "kafka_epoch": f"scale{workers}",
        "topic_prefix": f"scale{workers}",
        "worker_group": f"scale{workers}",
        "topic_partitions": partitions,
    }
    nodes: list[BenchNode] = []
    try:
        for index in range(workers):
            settings = base.model_copy(
                update={
                    **shared,
                    "data_dir": folder / f"scale{workers}-{index}",
                    "api_port": free_port(),
                }
            )
            if index == 0:
                ensure_topics(bootstrap, settings.all_topics, partitions, 1)
            nodes.append(BenchNode(settings, settings.data_dir, memory, f"worker {index + 1}"))
        balanced = 0
        deadline = time.monotonic() + 180
        while balanced < 3:  # the same assignment three times in a row
            found = [assigned_partitions(node) for node in nodes]
            # Partitions of every topic the worker consumes (all have ``partitions``).
            covered = sorted({p for one in found if one for p in one})
            complete = all(found) and covered == list(range(partitions))
            balanced = balanced + 1 if complete else 0
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers never shared the partitions: {found}")
            time.sleep(1)
        producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "partitioner": "murmur2_random"}
        )
        started = time.perf_counter()
        for key, value in payloads:
            while True:
                try:
                    producer.produce(nodes[0].settings.events_topic, value, key=key)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.flush(120)
        deadline = time.monotonic() + 3600
        while sum(consumed_total(node.settings.sqlite_path) for node in nodes) < len(payloads):
            if time.monotonic() > deadline or any(n.process.poll() is not None for n in nodes):
                raise RuntimeError("the workers did not finish the stream")
            time.sleep(0.1)
        return len(payloads) / (time.perf_counter() - started)
    finally:
        # All at once: a worker left alone would be given the partitions of the
        # others, whose journeys are in their stores, and start them from 0.
        for node in nodes:
            node.process.send_signal(signal.SIGTERM)
        for node in nodes:
            node.close()


def replay_rate(settings: Settings) -> float:
    """Domain events/s to rebuild the projections from the event store (node stopped)."""
    platform = build_platform(settings)
    try:
        return rebuild(platform, io.StringIO()).events_per_second  # no progress bar
    finally:
        platform.close()


def pipeline_rate(node: BenchNode, payloads: Iterable[tuple[bytes, bytes]]) -> float:
    """Events/s from the events topic through the journey agent to committed state.

    ``payloads`` may be a generator: producing runs ahead of the worker, so
    making the events is timed with the rest.
    """
    sqlite_path = node.settings.sqlite_path
    already = consumed_total(sqlite_path)
    produced = 0
    producer = Producer(
        {
            "bootstrap.servers": node.settings.kafka_bootstrap_servers,
            "acks": "all",
            "linger.ms": 5,
            # The platform's keying contract: Java's partitioner, as the gateway and Faust.
            "partitioner": "murmur2_random",
        }
    )
    started = time.perf_counter()
    for key, value in payloads:
        produced += 1
        while True:
            try:
                producer.produce(node.settings.events_topic, value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(120)
    target = already + produced
    deadline = time.monotonic() + 3600
    while consumed_total(sqlite_path) < target:
        if time.monotonic() > deadline or node.process.poll() is not None:
            raise RuntimeError("the worker did not finish the stream")
        time.sleep(0.05)
    return produced / (time.perf_counter() - started)


def post_request(
    host: str, port: int, body: bytes, write_key: str, path: str = "/v1/batch"
) -> bytes:
    """A whole HTTP/1.1 POST of ``body`` with the write key, built before the clock starts."""
    credentials = base64.b64encode(f"{write_key}:".encode()).decode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Basic {credentials}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response on a keep-alive connection: its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    return status, await reader.readexactly(length)


class ServesApi(Protocol):
    """What the latency measure needs of a stack: its settings (broker, keys, port), its URL."""

    settings: Settings
    base: str


async def track_to_stage_latency(
    node: ServesApi,
    rate: float,
    seconds: float,
    probes_per_s: float = 50,
    senders: int = 64,
    through_api: bool = False,
) -> dict[str, float]:
    """p50/p99 ms from a /v1/track 200 to the customer's stage visible through the API.

    Offers ``rate`` track calls/s for ``seconds``; about ``probes_per_s`` of them
    are probes, each a new customer. The pipeline publishes a stage change only
    after the customer's row is in the stage projection, so the change arriving
    on the stage-changes topic is a moment the API already shows the stage: the
    bench listens there instead of polling the API (which would load the node it
    measures) and checks a few probes through the API to confirm.

    ``through_api``: where that does not hold (journey workers apart: the node applies
    their ClickHouse writes after the stage change is out), each accepted probe is
    read through the API every 20 ms until it answers, at 10 probes/s.
    """
    if through_api:
        probes_per_s = min(probes_per_s, 10)
    settings = node.settings
    probe_every = max(1, round(rate / probes_per_s))
    accepted_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}
    accepted_calls = 0
    # No consumer group: assigned and positioned at the end before the first probe
    # (a group join takes seconds, and "latest" would skip what came meanwhile).
    listener = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
    )
    await listener.start()
    topic = settings.stage_changes_topic
    partitions = [TopicPartition(topic, p) for p in listener.partitions_for_topic(topic) or []]
    listener.assign(partitions)
    await listener.seek_to_end(*partitions)
    for partition in partitions:
        await listener.position(partition)

    async def listen() -> None:
        # Every probe's first change, even one that comes before its 200 is read (the
        # node publishes a stage once decided: its 200 may still be on its way).
        async for record in listener:
            customer = (record.key or b"").decode()
            if customer.startswith("lat-") and customer not in seen_at:
                seen_at[customer] = time.perf_counter()

    async def poll_api() -> None:
        reader = {"Authorization": f"Bearer {settings.read_key}"}
        async with httpx.AsyncClient(base_url=node.base, timeout=60) as api:
            while True:
                waiting = [c for c in accepted_at if c not in seen_at]
                answers = await asyncio.gather(
                    *(api.get(f"/v1/customers/{c}", headers=reader) for c in waiting)
                )
                for customer, answer in zip(waiting, answers, strict=True):
                    if answer.status_code == 200:
                        seen_at[customer] = time.perf_counter()
                await asyncio.sleep(0.02)

    listening = asyncio.create_task(poll_api() if through_api else listen())
    host, port = "127.0.0.1", settings.api_port
    async with httpx.AsyncClient(base_url=node.base, timeout=60) as client:
        sent = 0
        started = time.perf_counter()

        async def sender() -> None:
            # Paced senders on kept-alive connections: call ``index`` is due at
            # index / rate; one that cannot go on time goes late (offered < rate).
            # A plain HTTP/1.1 client (bench/ingest.py): httpx with 64 connections
            # could offer only ~100 calls/s on this machine.
            nonlocal sent, accepted_calls
            reader, writer = await asyncio.open_connection(host, port)
            # Stops at ``seconds``: a node slower than ``rate`` is offered what it took.
            while (due := sent / rate) < seconds and time.perf_counter() - started < seconds:
                index = sent
                sent += 1
                await asyncio.sleep(max(0.0, started + due - time.perf_counter()))
                probe = index % probe_every == 0
                customer = f"lat-{index}-{time.time_ns()}" if probe else f"load-{index % 5000}"
                body = {
                    "userId": customer,
                    "event": "Product Viewed",
                    "messageId": f"{customer}-{index}",
                }
                writer.write(
                    post_request(host, port, orjson.dumps(body), settings.write_key, "/v1/track")
                )
                status, _ = await read_answer(reader)
                if status == 200:
                    accepted_calls += 1
                    if probe:
                        accepted_at[customer] = time.perf_counter()
            writer.close()

        await asyncio.gather(*(sender() for _ in range(senders)))
        offered_for = time.perf_counter() - started
        accepted_rate = accepted_calls / (time.perf_counter() - started)
        deadline = time.perf_counter() + 120
        while any(c not in seen_at for c in accepted_at) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        seen_at = {c: at for c, at in seen_at.items() if c in accepted_at}
        reader = {"Authorization": f"Bearer {settings.read_key}"}
        unseen = [c for c in accepted_at if c not in seen_at]
        unseen_stages = {
            c: (await client.get(f"/v1/customers/{c}", headers=reader)).status_code for c in unseen
        }
        for customer in list(seen_at)[:5]:
            check = await client.get(f"/v1/customers/{customer}", headers=reader)
            if check.status_code != 200:
                raise RuntimeError(f"stage of {customer} announced but not visible: {check.text}")
    listening.cancel()
    await listener.stop()
    if len(seen_at) < len(accepted_at):
        raise RuntimeError(
            f"{len(accepted_at) - len(seen_at)} probes never announced a stage; "
            f"the API answers for them: {unseen_stages}"
        )
    if not seen_at:
        raise RuntimeError("no probe was accepted")
    # Seen before its 200 was read: visible by then (0 ms after the 200).
    ordered = sorted(max(0.0, seen_at[c] - accepted_at[c]) * 1000 for c in seen_at)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "offered_per_s": sent / offered_for,
        "accepted_per_s": accepted_rate,
        "probes": len(ordered),
    }


# --- the run ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much each stage of the run gets."""

    events: int
    pipeline_events: int
    ingest_events: int
    repeats: int
    latency_rate: float
    latency_seconds: float
    # A second latency measure at a load the node takes with room to spare.
    latency_low_rate: float = 100
    # Local scale-out: worker counts, over this many partitions (none: skipped).
    workers: tuple[int, ...] = ()
    partitions: int = 8
    # A node given this many distinct customers, one event each (0: skipped).
    customers: int = 0


def node_settings(folder: Path, bootstrap: str, attempt: int) -> Settings:
    """A benchmark node's settings: its own topics, group and data folder; no rate limit."""
    return Settings(
        data_dir=folder / f"node{attempt}",
        kafka_bootstrap_servers=bootstrap,
        kafka_epoch=f"bench{attempt}",
        topic_prefix=f"bench{attempt}",
        worker_group=f"bench{attempt}",
        api_port=free_port(),
        write_key="wk_bench",
        read_key="rk_bench",
        ingest_rate_per_s=0,
    )


def raw_limits(run: Run, broker: EmbeddedBroker, sizes: Sizes) -> tuple[float, float, float]:
    """The raw producer, raw consumer and do-nothing Faust agent rates (medians)."""
    payloads = storefront_events(sizes.events, seed=1)
    size = statistics.mean(len(v) for _, v in payloads)
    raw_produce, raw_consume, faust_floor = [], [], []
    for attempt in range(sizes.repeats):
        topic = f"bench.raw.{attempt}"
        ensure_topics(broker.bootstrap_servers, [topic], 4, 1)
        raw_produce.append(raw_produce_rate(broker.bootstrap_servers, topic, payloads))
        raw_consume.append(
            asyncio.run(raw_consume_rate(broker.bootstrap_servers, topic, len(payloads)))
        )
        faust_floor.append(faust_floor_rate(broker.bootstrap_servers, topic, len(payloads)))
    limits = (
        statistics.median(raw_produce),
        statistics.median(raw_consume),
        statistics.median(faust_floor),
    )
    run.figures += [
        Figure("raw producer (librdkafka, acks=all)", limits[0], "events/s", note=f"{size:.0f} B"),
        Figure("raw consumer (aiokafka + JSON parse)", limits[1], "events/s"),
        Figure(
            "Faust agent doing nothing (take_events)",
            limits[2],
            "events/s",
            "raw consumer",
            limits[1],
            note=f"batches of {Settings().batch_max_events}",
        ),
    ]
    return limits


def measure(sizes: Sizes) -> Run:
    """Run every measurement once (rates ``repeats`` times, median kept)."""
    run = Run(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine={
            "cpus": psutil.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
        },
        sizes={
            "events": sizes.events,
            "pipeline_events": sizes.pipeline_events,
            "ingest_events": sizes.ingest_events,
            "repeats": sizes.repeats,
            "partitions": sizes.partitions,
            "customers": sizes.customers,
        },
    )
    memory = PeakMemory()
    memory.watch("bench (load generator)", psutil.Process().pid)
    with tempfile.TemporaryDirectory(prefix="journeys-bench-") as tmp:
        folder = Path(tmp)
        broker = EmbeddedBroker(folder / "broker.log")
        broker.start()
        memory.watch("broker", broker.process.pid)  # type: ignore[union-attr]
        try:
            produce_limit, consume_limit, _ = raw_limits(run, broker, sizes)
            calls = storefront_calls(sizes.ingest_events, seed=2)
            payloads = storefront_events(sizes.pipeline_events, seed=3)
            ingest, rates, replays = [], [], []
            for attempt in range(sizes.repeats):
                settings = node_settings(folder, broker.bootstrap_servers, attempt)
                ensure_topics(
                    broker.bootstrap_servers, settings.all_topics, settings.topic_partitions, 1
                )
                node = BenchNode(settings, folder / f"node{attempt}", memory)
                try:
                    ingest.append(asyncio.run(ingest_rate(node, calls)))
                    wait_drained(node)
                    rates.append(pipeline_rate(node, payloads))
                    if attempt == sizes.repeats - 1:
                        latency = asyncio.run(
                            track_to_stage_latency(node, sizes.latency_rate, sizes.latency_seconds)
                        )
                        wait_drained(node)  # the low-load probes do not queue behind the load
                        floor = asyncio.run(
                            track_to_stage_latency(
                                node, sizes.latency_low_rate, sizes.latency_seconds
                            )
                        )
                except Exception:
                    log = folder / f"node{attempt}" / "node.log"
                    print(log.read_text(errors="replace")[-6000:], file=sys.stderr)
                    raise
                finally:
                    node.close()
                replays.append(replay_rate(settings))
            if sizes.customers:
                run.figures.append(customer_base_rate(folder, broker, memory, sizes, consume_limit))
            # The scale-out takes --events, not --pipeline-events: three runs of 1M is long.
            spread = storefront_events(sizes.events, seed=4) if sizes.workers else []
            scale = {
                count: scale_out_rate(
                    folder, broker.bootstrap_servers, memory, count, sizes.partitions, spread
                )
                for count in sizes.workers
            }
            run.figures += [
                Figure(
                    "ingest: /v1/batch (100 events, broker-acked)",
                    statistics.median(ingest),
                    "events/s",
                    "raw producer",
                    produce_limit,
                    note="API and worker share the node process",
                ),
                Figure(
                    "pipeline: journey agent → event store + ClickHouse",
                    statistics.median(rates),
                    "events/s",
                    "raw consumer",
                    consume_limit,
                    note=f"{sizes.pipeline_events:,} events per run",
                ),
                Figure(
                    "latency p50: /v1/track 200 → stage visible",
                    latency["p50_ms"],
                    "ms",
                    note=(
                        f"offered {latency['offered_per_s']:.0f}/s, "
                        f"accepted {latency['accepted_per_s']:.0f}/s, "
                        f"{latency['probes']:.0f} probes"
                    ),
                ),
                Figure("latency p99: /v1/track 200 → stage visible", latency["p99_ms"], "ms"),
                Figure(
                    "latency p50 at low load",
                    floor["p50_ms"],
                    "ms",
                    note=(
                        f"offered {floor['offered_per_s']:.0f}/s, {floor['probes']:.0f} probes: "
                        "what one batch costs"
                    ),
                ),
                Figure("latency p99 at low load", floor["p99_ms"], "ms"),
                Figure(
                    "replay: event store → projections",
                    statistics.median(replays),
                    "events/s",
                    note="domain events, node stopped",
                ),
            ]
            run.figures += [
                Figure(
                    f"scale-out: {count} worker(s), {sizes.partitions} partitions",
                    rate,
                    "events/s",
                    f"{min(scale)} worker(s)",
                    scale[min(scale)],
                    note=f"own SQLite and chdb per worker, {sizes.events:,} events",
                )
                for count, rate in scale.items()
            ]
        finally:
            broker.stop()
            memory.close()
    for name, peak in sorted(memory.peaks.items()):
        run.figures.append(Figure(f"peak memory: {name}", peak / 2**20, "MiB"))
    return run


def customer_base_rate(
    folder: Path, broker: EmbeddedBroker, memory: PeakMemory, sizes: Sizes, consume_limit: float
) -> Figure:
    """A fresh node given ``sizes.customers`` distinct customers: its rate (and peak memory)."""
    settings = node_settings(folder, broker.bootstrap_servers, sizes.repeats)
    ensure_topics(broker.bootstrap_servers, settings.all_topics, settings.topic_partitions, 1)
    node = BenchNode(
        settings, settings.data_dir, memory, f"node with {sizes.customers:,} customers"
    )
    try:
        rate = pipeline_rate(node, customer_base_events(sizes.customers, seed=5))
    except Exception:
        print((settings.data_dir / "node.log").read_text(errors="replace")[-6000:], file=sys.stderr)
        raise
    finally:
        node.close()
    return Figure(
        f"pipeline: {sizes.customers:,} new customers, one event each",
        rate,
        "events/s",
        "raw consumer",
        consume_limit,
        note="generated while sent",
    )


def render(run: Run) -> str:
    """The run as a table: figure, value, raw limit, ratio."""
    lines = [f"{'figure':<54} {'value':>14}   {'raw limit (same run)':<24} {'ratio':>6}", "-" * 104]
    for f in run.figures:
        value = f"{f.value:,.0f} {f.unit}" if f.value >= 100 else f"{f.value:,.1f} {f.unit}"
        raw = f"{f.raw_name}: {f.raw_value:,.0f}" if f.raw_value is not None else ""
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
        lines.append(
            f"{f.name:<54} {value:>14}   {raw:<24} {ratio:>6}" + (f"  ({f.note})" if f.note else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events", type=int, default=200_000, help="events of the raw limits (and the default)"
    )
    parser.add_argument(
        "--pipeline-events", type=int, default=0, help="events through the pipeline (--events)"
    )
    parser.add_argument(
        "--ingest-events", type=int, default=0, help="events through /v1/batch (--events / 4)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per rate; the median is kept")
    parser.add_argument(
        "--latency-rate", type=float, default=5000, help="offered /v1/track calls per second"
    )
    parser.add_argument("--latency-seconds", type=float, default=10)
    parser.add_argument(
        "--latency-low-rate",
        type=float,
        default=100,
        help="offered /v1/track calls per second of the low-load latency",
    )
    parser.add_argument(
        "--workers", default="", help="local scale-out, worker counts: e.g. 1,2,4 (default: none)"
    )
    parser.add_argument("--partitions", type=int, default=8, help="partitions of the scale-out")
    parser.add_argument(
        "--customers",
        type=int,
        default=0,
        help="also a fresh node given this many customers, one event each (default: none)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    sizes = Sizes(
        events=args.events,
        pipeline_events=args.pipeline_events or args.events,
        ingest_events=args.ingest_events or max(100, args.events // 4),
        repeats=args.repeats,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds,
        latency_low_rate=args.latency_low_rate,
        workers=tuple(int(count) for count in args.workers.split(",") if count),
        partitions=args.partitions,
        customers=args.customers,
    )
    run = measure(sizes)
    print(render(run))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"run-{run.started_at.replace(':', '')}.json"
    path.write_text(json.dumps(asdict(run), indent=2))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
