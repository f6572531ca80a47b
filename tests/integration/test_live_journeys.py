"""The pipeline's in-memory journeys never stand in for a journey they no longer match.

Real SQLite event store and real chdb: two pipelines over the same stores play two
workers that take a partition from each other.
"""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client

from events import TrackedEvent
from journeys.application import JourneyApplication
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.migrations import migrate
from stack.bootstrap import event_store_env
from stack.settings import Settings
from streams.pipeline import JourneyPipeline, PartitionBatch
from tests.conftest import make_event

pytestmark = pytest.mark.integration

SOURCE = "journey.events#0"


def worker(settings: Settings, clickhouse: Client) -> JourneyPipeline:
    """A worker's pipeline that keeps the journeys it commits in memory."""
    migrate(clickhouse, settings.clickhouse_database)
    return JourneyPipeline(
        JourneyApplication(env=event_store_env(settings)),
        EventLog(clickhouse, settings.clickhouse_database),
        CustomerStageView(clickhouse, settings.clickhouse_database),
        live_journeys=100,
    )


def batch(events: list[TrackedEvent], first_offset: int) -> PartitionBatch:
    return PartitionBatch(
        source=SOURCE, records=[(first_offset + i, e.to_json()) for i, e in enumerate(events)]
    )


EVENTS = [
    make_event("a1", "alice", "Product Viewed", 0),
    make_event("b1", "bob", "Product Viewed", 1),
    make_event("a2", "alice", "Product Added", 2, product_id="p1", price=20.0),
    make_event("c1", "carol", "Product Viewed", 3),
    make_event("b2", "bob", "Product Added", 4),
    make_event("a3", "alice", "Order Completed", 5, order_id="o1", revenue=20.0),
]


def stored_touchpoints(settings: Settings, customer: str) -> int:
    """What a freshly started process reads from the event store."""
    journey = JourneyApplication(env=event_store_env(settings)).journey(customer)
    assert journey is not None
    return journey.touchpoints


def test_a_partition_another_worker_wrote_meanwhile_is_read_again(
    settings: Settings, clickhouse: Client
) -> None:
    first = worker(settings, clickhouse)
    first.process(batch(EVENTS[:2], 0))
    assert set(first.live.journeys) == {"alice", "bob"}

    # A rebalance gave the partition to another worker, which went on with it...
    second = worker(settings, clickhouse)
    second.process(batch(EVENTS[2:4], 2))
    # ...and back: the first worker's alice misses a2 and must not be used.
    first.process(batch(EVENTS[4:], 4))

    assert stored_touchpoints(settings, "alice") == 3
    assert stored_touchpoints(settings, "bob") == 2
    assert first.live.journeys["alice"].touchpoints == 3


def test_a_batch_never_committed_is_recorded_afresh_when_it_comes_again(
    settings: Settings, clickhouse: Client
) -> None:
    pipeline = worker(settings, clickhouse)
    pipeline.process(batch(EVENTS[:2], 0))
    pipeline.prepare(batch(EVENTS[2:4], 2))  # the commit never happens (the worker failed)

    again = pipeline.process(batch(EVENTS[2:4], 2))

    assert again is not None
    assert [e.event_id for e in again.update.recorded] == ["a2", "c1"]
    assert stored_touchpoints(settings, "alice") == 2
