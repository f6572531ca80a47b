"""A journey worker's batch path with and without its journals, beside the raw fsync.

    .venv/bin/python -m bench.worker_journal --events 20000 --batch 500 --repeats 3

What a journey worker (`journeys up` with JOURNEYS_JOURNEY_WORKERS) does per
batch, in this process over a real broker: the journey pipeline records the
batch, its projection writes go through a ``ProjectionRecorder`` onto
journey.projections, its outcomes (stage changes, segment changes, identity
messages) through the ``OutcomePublisher``, then it commits
(``JourneyStreams._apply_journey_batch``, as the worker calls it; only Kafka's
consume is left out). Plain: no journal; journaled: the projection journal and
the identity journal, each record appended and fdatasync'ed before its call
returns. The runs alternate (plain, journaled, plain, …), each over a fresh
event store; the medians are printed. The journal's cost (per batch, per event,
per journaled record) stands beside its raw limit measured in the same run: the
batch's fdatasync calls at the median of a 4 KiB append plus fdatasync on the
same disk (probed before and after the runs), which no journal that fsyncs
before the call returns can go below.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from clickhouse_connect.driver.client import Client

from bench.run import node_settings, storefront_events
from stack.bootstrap import open_journal, platform_on
from stack.broker import EmbeddedBroker
from stack.settings import Settings
from streams import journal as journal_module
from streams.app import JourneyStreams
from streams.journal import Journal, partition_of
from streams.pipeline import PartitionBatch, source_name
from streams.projection_feed import ProjectionRecorder
from streams.topics import ensure_topics


@dataclass(frozen=True)
class Run:
    """One pass over the events: seconds of wall and of this process's CPU, and the journals'."""

    wall_s: float
    cpu_s: float
    records: int  # journaled projection records (0 plain)
    identities: int  # journaled identity messages (0 plain)
    fsyncs: int
    fsync_s: float  # wall spent in the journals' fdatasync calls
    journaled_bytes: int  # what the journals appended (0 plain)


class TimedFsync:
    """Wraps the journal's ``os.fdatasync`` (bench only): how long its fsyncs took."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._real = os.fdatasync

    def __call__(self, fd: int) -> None:
        started = time.perf_counter()
        self._real(fd)
        self.seconds += time.perf_counter() - started


FSYNC = TimedFsync()


def batches(
    payloads: list[tuple[bytes, bytes]], settings: Settings, size: int
) -> list[list[PartitionBatch]]:
    """The events as the worker gets them: ``size`` per round, split by partition, offsets."""
    partitions = settings.topic_partitions
    offsets: dict[int, int] = defaultdict(int)
    rounds = []
    for start in range(0, len(payloads), size):
        by_partition: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        for key, value in payloads[start : start + size]:
            partition = partition_of(key, partitions)
            by_partition[partition].append((offsets[partition], value))
            offsets[partition] += 1
        rounds.append(
            [
                PartitionBatch(source_name(settings.events_topic, p, settings.kafka_epoch), items)
                for p, items in sorted(by_partition.items())
            ]
        )
    return rounds


def one_run(
    folder: Path,
    bootstrap: str,
    attempt: int,
    payloads: list[tuple[bytes, bytes]],
    size: int,
    journaled: bool,
) -> Run:
    settings = node_settings(folder, bootstrap, attempt)
    ensure_topics(
        bootstrap, [*settings.all_topics, settings.projections_topic], settings.topic_partitions, 1
    )
    journals: list[Journal] = []
    projections = identities = None
    if journaled:
        projections = open_journal(settings, settings.data_dir / "journal")
        identities = open_journal(settings, settings.data_dir / "identities")
        journals = [projections, identities]
        for journal in journals:
            journal.open()
    recorder = ProjectionRecorder(bootstrap, settings.projections_topic, journal=projections)
    platform = platform_on(settings, cast(Client, recorder), migrate_schema=False)
    streams = JourneyStreams(
        settings, platform.pipeline(reads_clickhouse=False), platform.dead_letters, identities
    )
    rounds = batches(payloads, settings, size)
    in_fsync = FSYNC.seconds
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        for one in rounds:
            streams._apply_journey_batch(one)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        platform.close()
        recorder.close()
        for journal in journals:
            journal.close()
    held = [sum(s.records for s in j.segments.values()) for j in journals] or [0, 0]
    fsyncs = sum(j.fsyncs for j in journals)
    appended = sum(s.size for j in journals for s in j.segments.values())
    return Run(wall, cpu, held[0], held[1], fsyncs, FSYNC.seconds - in_fsync, appended)


def raw_fsync_ms(folder: Path, count: int) -> list[float]:
    """``count`` times one 4 KiB append plus fdatasync, in ms, on ``folder``'s disk."""
    path = folder / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    block = os.urandom(4096)
    took = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            took.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return took


def p50_p99(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[500, 50], help="events per worker batch"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fsyncs", type=int, default=500, help="raw fdatasync probes")
    args = parser.parse_args(argv)
    payloads = storefront_events(args.events, seed=5)
    # The journals call os.fdatasync through their module's ``os``: time those calls.
    journal_module.os = SimpleNamespace(**{**vars(os), "fdatasync": FSYNC})  # type: ignore[assignment]
    runs: dict[tuple[int, bool], list[Run]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="journeys-worker-journal-") as tmp:
        folder = Path(tmp)
        broker = EmbeddedBroker(folder / "broker.log")
        broker.start()
        try:
            # A warm-up (imports, first connections), not counted.
            size = args.batch[0]
            one_run(folder, broker.bootstrap_servers, 0, payloads[:size], size, True)
            attempt = 1
            fsync_before = raw_fsync_ms(folder, args.fsyncs)
            for _ in range(args.repeats):
                for size in args.batch:
                    for journaled in (False, True):
                        run = one_run(
                            folder, broker.bootstrap_servers, attempt, payloads, size, journaled
                        )
                        runs[size, journaled].append(run)
                        attempt += 1
            fsync_after = raw_fsync_ms(folder, args.fsyncs)
        finally:
            broker.stop()
    print(f"{args.events} storefront events, {args.repeats} runs each, alternating (medians)")
    print()
    for name, samples in (("before", fsync_before), ("after", fsync_after)):
        p50, p99 = p50_p99(samples)
        print(f"{'raw fdatasync 4 KiB, ms p50 / p99 (' + name + ')':44}{p50:14.3f}{p99:15.3f}")
    # The raw limit beside every figure: both probes' samples together.
    raw_ms = p50_p99(fsync_before + fsync_after)[0]
    for size in args.batch:
        render(args.events, size, runs[size, False], runs[size, True], raw_ms)
    return 0


def render(
    events: int, size: int, plain: list[Run], journaled: list[Run], raw_fsync_ms: float
) -> None:
    """One batch size's table: both paths, then the journal's cost beside its raw limit."""
    print()
    print(
        f"{str(size) + ' events per batch':44}{'µs CPU/event':>14}{'µs wall/event':>15}"
        f"{'CPU range':>14}{'records':>9}{'identity':>9}{'fsyncs':>8}"
    )
    med: dict[bool, tuple[float, float]] = {}
    for journal, name, done in ((False, "plain", plain), (True, "journaled", journaled)):
        per = [r.cpu_s / events * 1e6 for r in done]
        cpu, wall = statistics.median(per), statistics.median(r.wall_s for r in done) / events * 1e6
        med[journal] = (cpu, wall)
        spread = f"{min(per):.1f}-{max(per):.1f}"
        print(
            f"{'worker batch path, ' + name:44}{cpu:14.1f}{wall:15.1f}{spread:>14}"
            f"{int(statistics.median(r.records for r in done)):9}"
            f"{int(statistics.median(r.identities for r in done)):9}"
            f"{int(statistics.median(r.fsyncs for r in done)):8}"
        )
    print(
        f"{'journaled / plain, CPU / wall':44}"
        f"{med[True][0] / med[False][0]:14.3f}{med[True][1] / med[False][1]:15.3f}"
    )
    rounds = -(-events // size)
    records = statistics.median(r.records + r.identities for r in journaled)
    fsyncs = statistics.median(r.fsyncs for r in journaled) / rounds
    in_fsync = statistics.median(r.fsync_s for r in journaled) / rounds * 1000
    appended = statistics.median(r.journaled_bytes for r in journaled)
    cpu_delta, wall_delta = med[True][0] - med[False][0], med[True][1] - med[False][1]
    # The floor of any journal that fsyncs before the call returns: its fsyncs, each
    # at the raw cost of one on this disk; the CPU has no such floor (—).
    floor_batch_ms = fsyncs * raw_fsync_ms
    rows: list[tuple[str, float, float | None]] = [
        ("journal per batch: fsyncs", fsyncs, None),
        ("journal per batch: in fdatasync, ms", in_fsync, floor_batch_ms),
        ("journal per batch: extra wall, ms", wall_delta * size / 1000, floor_batch_ms),
        ("journal per event: extra wall, µs", wall_delta, floor_batch_ms * 1000 / size),
        ("journal per event: extra CPU, µs", cpu_delta, None),
        (
            "journal per record: extra wall, µs",
            wall_delta * events / records,
            floor_batch_ms * 1000 * rounds / records,
        ),
        ("journal per fsync: KiB appended", appended / 1024 / max(1.0, fsyncs * rounds), 4.0),
    ]
    head = "the journal's cost (raw: its fsyncs at p50)"
    print(f"{head:44}{'measured':>14}{'raw limit':>15}{'÷ raw':>14}")
    for name, measured, limit in rows:
        if limit is None:
            print(f"{name:44}{measured:14.2f}{'—':>15}{'—':>14}")
        else:
            ratio = f"{measured / limit:14.2f}" if limit else f"{'—':>14}"
            print(f"{name:44}{measured:14.2f}{limit:15.2f}{ratio}")


if __name__ == "__main__":
    raise SystemExit(main())
