"""Benchmark: the outreach worker's fact path, in this process (no Kafka, no Faust loop).

    .venv/bin/python bench/outreach.py [events] [--profile]

The synthetic storefront's events go through the journey pipeline once (in
process, 4 partitions, batches of 2000) to get the stage changes it publishes
for them; then the events and those stage changes, batch by batch and
partition by partition as the trigger consumer hands them over, go through the
outreach worker's fact path (facts and consumed positions in the trigger
store, SQLite; no flow). Prints the fact path's events
per CPU second, median of 3 (each run on a fresh store); ``--profile`` prints
cProfile's top functions of one more run instead.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import faust

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from stack.bootstrap import build_platform
from stack.settings import Settings
from streams.app import JourneyStreams
from streams.batches import BatchLoop
from streams.consumer import TopicRecords
from streams.outreach.store import OutreachStore
from streams.outreach.worker import OutreachWorker
from streams.pipeline import JourneyPipeline, PartitionBatch

PARTITIONS = 4
BATCH = 2000


def trigger_batches(payloads: list[tuple[bytes, bytes]], settings: Settings) -> list[TopicRecords]:
    """What the trigger consumer reads for ``payloads``: per batch, each topic's partitions.

    The stage changes (and identity messages back to the events topic) are the
    journey pipeline's own for these events, as the journey agent publishes them.
    """
    batches: list[TopicRecords] = []
    topics = (settings.events_topic, settings.stage_changes_topic)
    offsets = {topic: [0] * PARTITIONS for topic in topics}

    def add(records: TopicRecords, topic: str, key: bytes, value: bytes) -> None:
        partition = zlib.crc32(key) % PARTITIONS
        records.setdefault(topic, {}).setdefault(partition, []).append(
            (offsets[topic][partition], value)
        )
        offsets[topic][partition] += 1

    # The journey agent's records, without its Faust app and producer (no broker here).
    outcomes = JourneyStreams.__new__(JourneyStreams)
    outcomes.settings = settings
    with tempfile.TemporaryDirectory() as folder:
        platform = build_platform(Settings(data_dir=Path(folder)))
        try:
            pipeline = JourneyPipeline(
                platform.journeys, platform.event_log, platform.stages, live_journeys=10_000
            )
            for first in range(0, len(payloads), BATCH):
                records: TopicRecords = {}
                for key, value in payloads[first : first + BATCH]:
                    add(records, settings.events_topic, key, value)
                events = records[settings.events_topic]
                prepared = pipeline.prepare_many(
                    [PartitionBatch(f"bench#{p}", items) for p, items in sorted(events.items())]
                )
                pipeline.commit_many(prepared)
                for one in prepared:
                    # Stage changes and identity messages as the journey agent publishes them.
                    for topic, keyed, record in outcomes._outcomes(one):
                        if keyed is not None and topic in topics:
                            add(records, topic, keyed, record)
                batches.append(records)
        finally:
            platform.close()
    return batches


def fact_path_cpu_seconds(batches: list[TopicRecords], folder: Path, settings: Settings) -> float:
    """CPU seconds of the worker's fact path over ``batches``, on a fresh trigger store."""
    settings = settings.model_copy(update={"data_dir": folder})
    store = OutreachStore(sqlite_path=folder / "events.sqlite")
    app = faust.App("bench-outreach", broker="kafka://localhost:1", web_enabled=False)
    worker = OutreachWorker(settings, BatchLoop(app, BATCH, 0.1), store)
    try:
        started = time.process_time()
        for records in batches:
            # As the trigger consumer's handler does, without its thread hops.
            for topic, apply in (
                (settings.events_topic, worker._apply_events),
                (settings.stage_changes_topic, worker._apply_stages),
            ):
                for partition, items in sorted(records.get(topic, {}).items()):
                    apply(partition, items)
        return time.process_time() - started
    finally:
        store.close()


def main() -> None:
    """Print the fact path's events per CPU second (median of 3), or a profile."""
    args = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
    events = int(args[0]) if args else 30_000
    from bench.run import storefront_events

    settings = Settings()
    batches = trigger_batches(storefront_events(events, seed=1), settings)
    changes = sum(
        len(items)
        for records in batches
        for items in records.get(settings.stage_changes_topic, {}).values()
    )
    if "--profile" in sys.argv:
        profile = cProfile.Profile(time.process_time)  # CPU, as the rates: not fsync waits
        with tempfile.TemporaryDirectory() as folder:
            profile.enable()
            fact_path_cpu_seconds(batches, Path(folder), settings)
            profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(35)
        return
    rates = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as folder:
            rates.append(events / fact_path_cpu_seconds(batches, Path(folder), settings))
    print(
        f"outreach fact path: {events} events and {changes} stage changes, "
        f"{statistics.median(rates):,.0f} events per CPU second "
        f"(median of 3: {', '.join(f'{rate:,.0f}' for rate in rates)})"
    )


if __name__ == "__main__":
    main()
