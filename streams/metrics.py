"""The worker's Prometheus histograms, in the registry the composition root hands in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from streams.journal import ReplayReport

# A batch takes ~0.1-2 s here (docs/performance.md); ClickHouse inserts ~80 ms.
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Triggers fire ~0.1 s after their fire time when the worker keeps up.
_LATENESS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 900.0)


class WorkerMetrics:
    """Journey batches, their ClickHouse inserts, how late triggers fire, journal replays."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_seconds = Histogram(
            "journeys_batch_duration_seconds",
            "One journey batch: record, ClickHouse inserts, publish, commit",
            buckets=_SECONDS,
            registry=registry,
        )
        self.batch_events = Histogram(
            "journeys_batch_events",
            "Records per journey batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=registry,
        )
        self.clickhouse_insert_seconds = Histogram(
            "journeys_clickhouse_insert_seconds",
            "The ClickHouse inserts of one journey batch (events, stages, orders, profiles)",
            buckets=_SECONDS,
            registry=registry,
        )
        self.trigger_lateness_seconds = Histogram(
            "journeys_trigger_lateness_seconds",
            "How long after its fire time a trigger fired",
            buckets=_LATENESS,
            registry=registry,
        )
        # A journey worker's journals (projection records, identity messages) at its start:
        # what a new broker did not hold, produced again, and what the node or the
        # pipeline had already applied in the old epoch, skipped.
        self.journal_replayed = Counter(
            "journeys_journal_replayed_records",
            "Journal records produced again at start into a new broker",
            ["journal"],
            registry=registry,
        )
        self.journal_replay_skipped = Counter(
            "journeys_journal_replay_skipped_records",
            "Journal records not produced again at start: applied in their old epoch",
            ["journal"],
            registry=registry,
        )

    def replayed(self, journal: str, report: ReplayReport) -> None:
        """Count one start-up replay of ``journal``."""
        self.journal_replayed.labels(journal).inc(report.produced)
        self.journal_replay_skipped.labels(journal).inc(report.skipped)
