"""Benchmark: record a synthetic store's journeys, then replay them into the projections.

    .venv/bin/python bench/replay.py [customers] [events-per-customer]

Prints the recording rate (customer events/s through JourneyApplication, one
transaction per 2000 events, SQLite) and the replay rates (domain events/s of
``journeys replay`` and of ``journeys replay --rules``), each on this machine.

    .venv/bin/python bench/replay.py --pipeline [events]

Instead: the journey pipeline in this process (no Kafka, no Faust) over the
synthetic storefront, with and without the journeys it keeps in memory
(:class:`streams.pipeline.LiveJourneys`), alternating, CPU seconds, medians of 3.

    .venv/bin/python bench/replay.py --phases [events] [batch]

Instead: the pipeline in this process, what each phase of a batch costs per
event (recording the journeys, writing the ClickHouse effects, committing the
event store), wall and thread-CPU microseconds; batches of 2000 events, or
``batch`` (1: what a batch costs whatever its size, as at low load).

    .venv/bin/python bench/replay.py --arrival [events]

Instead: the pipeline in this process over the same events in time order, with
a tenth of them late, and shuffled: what revising histories costs, CPU seconds,
medians of 3, each beside the in-order rate.

    .venv/bin/python bench/replay.py --domain-events [events]

Instead: what each step costs per domain event in the eventsourcing library
(recording with the decisions, applying alone, collecting, transcoding with the
library's transcoder and with orjson's, storing in SQLite), CPU microseconds,
best of 3 (the least disturbed by other work on the machine).
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import Mapper, Tracking

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from events import TrackedEvent, event_type_for
from journeys.application import JourneyApplication
from journeys.stages import StageRules
from stack.bootstrap import Platform, build_platform
from stack.replay import rebuild, what_if
from stack.settings import Settings
from streams.pipeline import JourneyPipeline, PartitionBatch

NAMES = ["Product Viewed"] * 6 + ["Products Searched", "Product Added", "Order Completed"]


def synthetic(customers: int, per_customer: int) -> list[TrackedEvent]:
    """Interleaved events of many customers, a year of them, in time order."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    rng = random.Random(7)
    events = []
    for c in range(customers):
        for i in range(per_customer):
            name = rng.choice(NAMES)
            when = start + timedelta(days=rng.uniform(0, 365))
            events.append(
                TrackedEvent(
                    event_id=f"c{c}-{i}",
                    customer_key=f"c{c}",
                    call_type="track",
                    event_type=event_type_for("track", name),
                    event_name=name,
                    timestamp=when,
                    received_at=when,
                    user_id=f"c{c}",
                    properties={"category": rng.choice(["a", "b", "c"]), "revenue": 20},
                )
            )
    events.sort(key=lambda e: e.timestamp)
    return events


def pipeline_cpu_rate(payloads: list[tuple[bytes, bytes]], live_journeys: int) -> float:
    """Events per CPU second through the pipeline: 4 partitions, batches of 2000."""
    with tempfile.TemporaryDirectory() as folder:
        # The library's aggregate cache stays as configured: only the pipeline's changes.
        platform = build_platform(Settings(data_dir=Path(folder)))
        try:
            pipeline = pipeline_of(platform, live_journeys)
            started = time.process_time()
            run_batches(pipeline, payloads)
            return len(payloads) / (time.process_time() - started)
        finally:
            platform.close()


def pipeline_of(platform: Platform, live_journeys: int) -> JourneyPipeline:
    """The worker's journey pipeline over ``platform``'s stores."""
    return JourneyPipeline(
        platform.journeys,
        platform.event_log,
        platform.stages,
        platform.profiles,
        live_journeys=live_journeys,
    )


def run_batches(
    pipeline: JourneyPipeline, payloads: list[tuple[bytes, bytes]], size: int = 2000
) -> None:
    """``payloads`` through ``pipeline`` as the worker would: 4 partitions, batches of ``size``."""
    offsets = [0] * 4
    for first in range(0, len(payloads), size):
        records: dict[int, list[tuple[int, bytes]]] = {}
        for key, value in payloads[first : first + size]:
            partition = zlib.crc32(key) % 4
            records.setdefault(partition, []).append((offsets[partition], value))
            offsets[partition] += 1
        batches = [PartitionBatch(f"bench#{p}", r) for p, r in sorted(records.items())]
        pipeline.commit_many(pipeline.prepare_many(batches))


def phase_costs(events: int, size: int) -> None:
    """Print wall and thread-CPU microseconds per event of each phase of the pipeline."""
    from bench.run import storefront_events

    payloads = storefront_events(events, seed=1)
    spent: dict[str, list[float]] = {}

    def timed(name: str, step: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return step(*args, **kwargs)
            finally:
                found = spent.setdefault(name, [0.0, 0.0])
                found[0] += time.perf_counter() - wall
                found[1] += time.thread_time() - cpu

        return run

    with tempfile.TemporaryDirectory() as folder:
        platform = build_platform(Settings(data_dir=Path(folder)))
        try:
            pipeline = pipeline_of(platform, 10_000)
            # The phases, wrapped on this instance only.
            pipeline._record = timed("record journeys", pipeline._record)  # type: ignore[method-assign]
            pipeline._write_effects = timed("ClickHouse effects", pipeline._write_effects)  # type: ignore[method-assign]
            pipeline.commit = timed("event-store commit", pipeline.commit)  # type: ignore[method-assign]
            started = time.perf_counter()
            run_batches(pipeline, payloads, size)
            wall = time.perf_counter() - started
        finally:
            platform.close()
    print(f"{events} events in batches of {size}: {events / wall:,.0f} events/s")
    for name, (seconds, cpu) in spent.items():
        print(
            f"{name:>20}: {seconds * 1e6 / events:5.0f} us wall, "
            f"{cpu * 1e6 / events:5.0f} us thread CPU per event"
        )


def compare_live_journeys(events: int) -> None:
    """Print the pipeline's rate with and without live journeys (medians of 3, alternating)."""
    from bench.run import storefront_events

    payloads = storefront_events(events, seed=1)
    rates: dict[int, list[float]] = {0: [], 10_000: []}
    for _ in range(3):
        for size, found in rates.items():
            found.append(pipeline_cpu_rate(payloads, size))
    for size, found in rates.items():
        print(
            f"pipeline in-process, live journeys {size:>6}: "
            f"{statistics.median(found):,.0f} events per CPU second"
        )


def compare_arrival_orders(events: int) -> None:
    """Print the pipeline's rate for the same events in three arrival orders (medians of 3).

    In time order (the storefront as generated: the raw figure beside the
    others), with every tenth event held back to the end (late: each revises its
    customer's history from all their facts), and shuffled whole.
    """
    from bench.run import storefront_events

    in_order = storefront_events(events, seed=1)
    late = [p for i, p in enumerate(in_order) if i % 10] + in_order[::10]
    shuffled = random.Random(1).sample(in_order, len(in_order))
    arrivals = {"in time order": in_order, "10% late": late, "shuffled": shuffled}
    rates: dict[str, list[float]] = {name: [] for name in arrivals}
    for _ in range(3):
        for name, payloads in arrivals.items():
            rates[name].append(pipeline_cpu_rate(payloads, 10_000))
    base = statistics.median(rates["in time order"])
    for name, found in rates.items():
        rate = statistics.median(found)
        print(
            f"pipeline in-process, {name:>13}: {rate:,.0f} events per CPU second "
            f"({rate / base:.2f} of in time order)"
        )


def domain_event_costs(events: int) -> None:
    """Print CPU microseconds per domain event of each step (best of 3)."""
    from bench.run import storefront_events

    tracked = [TrackedEvent.from_json(value) for _, value in storefront_events(events, seed=1)]
    costs: dict[str, list[float]] = {}
    for _ in range(3):
        with tempfile.TemporaryDirectory() as folder:
            # Recorded in memory (no journey lookups in SQLite), stored in SQLite.
            memory = JourneyApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
            env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": f"{folder}/e.db"}
            app = JourneyApplication(env=env)
            library = Application.construct_transcoder(app)
            started = time.process_time()
            update = memory.record(tracked, Tracking("bench", len(tracked)))
            steps = {"record (decisions, build, apply)": time.process_time() - started}
            pending = [e for j in update.journeys.values() for e in j.pending_events]
            started = time.process_time()
            for journey in update.journeys.values():
                copy = None
                for domain_event in journey.pending_events:
                    copy = domain_event.mutate(copy)
            steps["apply alone (reconstruct)"] = time.process_time() - started
            started = time.process_time()
            update.processing.collect_events(*update.journeys.values())
            steps["collect"] = time.process_time() - started
            for name, transcoder in (("library JSON", library), ("orjson", app.mapper.transcoder)):
                mapper: Mapper[UUID] = Mapper(transcoder=transcoder)
                started = time.process_time()
                stored = [mapper.to_stored_event(e) for e in pending]
                steps[f"to stored event, {name}"] = time.process_time() - started
            started = time.process_time()
            app.recorder.insert_events(stored, tracking=update.processing.tracking)
            steps["insert (SQLite, one transaction)"] = time.process_time() - started
            for step, seconds in steps.items():
                costs.setdefault(step, []).append(seconds * 1e6 / len(pending))
            app.close()
            memory.close()
    print(f"{len(pending)} domain events of {len(tracked)} tracked events")
    for step, found in costs.items():
        print(f"{step:>36}: {min(found):6.1f} us per domain event")


def main() -> None:
    """Run the benchmark and print the rates."""
    if sys.argv[1:2] == ["--pipeline"]:
        compare_live_journeys(int(sys.argv[2]) if len(sys.argv) > 2 else 40_000)
        return
    if sys.argv[1:2] == ["--phases"]:
        phase_costs(
            int(sys.argv[2]) if len(sys.argv) > 2 else 30_000,
            int(sys.argv[3]) if len(sys.argv) > 3 else 2000,
        )
        return
    if sys.argv[1:2] == ["--arrival"]:
        compare_arrival_orders(int(sys.argv[2]) if len(sys.argv) > 2 else 40_000)
        return
    if sys.argv[1:2] == ["--domain-events"]:
        domain_event_costs(int(sys.argv[2]) if len(sys.argv) > 2 else 20_000)
        return
    customers = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    per_customer = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(data_dir=Path(folder), clickhouse_database="bench")
        platform = build_platform(settings)
        try:
            events = synthetic(customers, per_customer)
            started = time.monotonic()
            for offset in range(0, len(events), 2000):
                chunk = events[offset : offset + 2000]
                app = platform.journeys
                app.commit(app.record(chunk, Tracking("bench", offset + len(chunk))))
            seconds = time.monotonic() - started
            print(
                f"recorded {len(events)} customer events in {seconds:.1f} s: "
                f"{len(events) / seconds:,.0f}/s (no ClickHouse writes)"
            )
            report = rebuild(platform)
            print(
                f"replay: {report.events} domain events of {report.journeys} journeys in "
                f"{report.seconds:.1f} s: {report.events_per_second:,.0f} events/s"
            )
            _, other, _ = what_if(platform, StageRules(consideration_product_views=3))
            print(f"replay --rules: {other.events_per_second:,.0f} events/s")
        finally:
            platform.close()


if __name__ == "__main__":
    main()
