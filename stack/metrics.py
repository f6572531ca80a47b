"""The node's gauges for /metrics, read at scrape time from what the process holds in memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from streams.backlog import Backlog
from streams.journal import Journal


class NodeGauges(Collector):
    """Consumer lag per partition and in seconds, and the ingest journal's retained bytes."""

    def __init__(
        self,
        backlog: Backlog | None,
        journal: Journal | None,
        trigger_lag: Callable[[], dict[tuple[str, int], int]] | None = None,
    ) -> None:
        self.backlog = backlog
        self.journal = journal
        self.trigger_lag = trigger_lag

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
        if self.trigger_lag is not None:
            triggers = GaugeMetricFamily(
                "journeys_trigger_consumer_lag_events",
                "Records the trigger consumer has not handled, per topic and partition "
                "(against the high-water mark it last fetched)",
                labels=["topic", "partition"],
            )
            for (topic, partition), records in self.trigger_lag().items():
                triggers.add_metric([topic, str(partition)], records)
            yield triggers
        if self.journal is not None:
            yield GaugeMetricFamily(
                "journeys_journal_retained_bytes",
                "Bytes the ingest journal keeps until the worker has processed them",
                value=self.journal.retained_bytes,
            )


def register_gateway_counters(registry: CollectorRegistry, folder: Path | None) -> None:
    """The ingest gateways' counters, summed over every gateway process that ran in this
    stack (a restarted one's dead files included: counters never go back)."""
    if folder is not None:
        MultiProcessCollector(registry, path=str(folder))


def register_node_gauges(
    registry: CollectorRegistry,
    backlog: Backlog | None,
    journal: Journal | None,
    trigger_lag: Callable[[], dict[tuple[str, int], int]] | None = None,
) -> None:
    """Add the gauges this process can answer (none for an API without worker or journal)."""
    if backlog is not None or journal is not None or trigger_lag is not None:
        registry.register(NodeGauges(backlog, journal, trigger_lag))
