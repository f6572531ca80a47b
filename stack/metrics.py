"""The node's gauges for /metrics, read at scrape time from what the process holds in memory."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
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


def write_metrics_file(registry: CollectorRegistry, path: Path) -> None:
    """A journey worker's metrics, as the text /metrics serves, replaced in one rename
    (the node reads whole files only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_bytes(generate_latest(registry))
    temporary.replace(path)


class JourneyWorkerFiles(Collector):
    """The journey workers' metrics in the node's /metrics, read from their files at
    scrape time, with a ``journey_worker`` label each.

    Renamed ``journeys_journey_worker_*`` (``journeys_batch_duration_seconds`` →
    ``journeys_journey_worker_batch_duration_seconds``): the node has families of
    the same names of its own, and one exposition may not hold a name twice. A dead
    worker's last file stays until its restart rewrites it: its figures as last seen.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for path in sorted(self.folder.glob("*.prom")):
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            worker = path.stem
            for family in text_string_to_metric_families(text):
                name = _worker_name(family.name)
                if name not in merged:
                    merged[name] = Metric(name, family.documentation, family.type)
                target = merged[name]
                for sample in family.samples:
                    target.add_sample(
                        _worker_name(sample.name),
                        {"journey_worker": worker, **sample.labels},
                        sample.value,
                    )
        yield from merged.values()


def _worker_name(name: str) -> str:
    return "journeys_journey_worker_" + name.removeprefix("journeys_")


def register_journey_worker_metrics(registry: CollectorRegistry, folder: Path) -> None:
    """The journey workers' figures (`journeys up` with JOURNEYS_JOURNEY_WORKERS) in /metrics."""
    registry.register(JourneyWorkerFiles(folder))
