"""The node's gauges for /metrics, read at scrape time from what the process holds in memory."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.backlog import Backlog
from streams.journal import Journal


class NodeGauges(Collector):
    """Consumer lag per partition and in seconds, and the ingest journal's retained bytes."""

    def __init__(self, backlog: Backlog | None, journal: Journal | None) -> None:
        self.backlog = backlog
        self.journal = journal

    def collect(self) -> Iterator[Metric]:
        """One sample per gauge (and per partition), as of now."""
        if self.backlog is not None:
            lag = GaugeMetricFamily(
                "journeys_consumer_lag_events",
                "Accepted events the journey worker has not processed, per partition",
                labels=["partition"],
            )
            for partition, events in self.backlog.partitions().items():
                lag.add_metric([str(partition)], events)
            yield lag
            yield GaugeMetricFamily(
                "journeys_consumer_lag_seconds",
                "Age of the oldest accepted event the journey worker has not processed",
                value=self.backlog.seconds(),
            )
        if self.journal is not None:
            yield GaugeMetricFamily(
                "journeys_journal_retained_bytes",
                "Bytes the ingest journal keeps until the worker has processed them",
                value=self.journal.retained_bytes,
            )


def register_node_gauges(
    registry: CollectorRegistry, backlog: Backlog | None, journal: Journal | None
) -> None:
    """Add the gauges this process can answer (none for an API without worker or journal)."""
    if backlog is not None or journal is not None:
        registry.register(NodeGauges(backlog, journal))
