"""Segments kept by the journey pipeline on real SQLite and the real ClickHouse engine.

Checked: each change of membership is one ``segment_changes`` row at the event
time that caused it; a batch replayed after a crash (before the segment commit,
or between it and the journeys' commit) folds nothing twice; a window sliding
past an event is recorded at the instant it slid when the next event arrives,
and read at any instant exactly before that (SegmentReads).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from clickhouse_connect.driver.client import Client

from events import TrackedEvent
from journeys.application import JourneyApplication
from journeys.segment_definitions import parse_definitions
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.migrations import migrate
from projections.segment_changes import SegmentChangeLog
from projections.segment_reads import SegmentReads
from projections.segment_store import SegmentStore
from stack.bootstrap import event_store_env
from stack.settings import Settings
from streams.pipeline import JourneyPipeline, PartitionBatch
from streams.segments import SegmentMaintainer
from tests.conftest import T0, make_event

pytestmark = pytest.mark.integration

SOURCE = "journey.events#0"
DEFINITIONS = parse_definitions(
    {
        "traits": {"orders": {"op": "count", "event": "Order Completed"}},
        "segments": {
            "shoe_lookers": {
                "where": {
                    "and": [
                        {
                            "event": "Product Viewed",
                            "properties": {"category": "shoes"},
                            "within": "1h",
                            "count": 2,
                        },
                        {"event": "Order Completed", "within": "1h", "absent": True},
                    ]
                }
            },
            "repeat_buyers": {"where": {"trait": "orders", "gte": 2}},
        },
    }
)


def pipeline_for(settings: Settings, clickhouse: Client) -> tuple[JourneyPipeline, SegmentStore]:
    """A pipeline as a (re)started worker builds it: fresh objects over the same stores."""
    migrate(clickhouse, settings.clickhouse_database)
    store = SegmentStore(sqlite_path=settings.sqlite_path)
    log = SegmentChangeLog(clickhouse, settings.clickhouse_database)
    pipeline = JourneyPipeline(
        JourneyApplication(env=event_store_env(settings)),
        EventLog(clickhouse, settings.clickhouse_database),
        CustomerStageView(clickhouse, settings.clickhouse_database),
        segments=SegmentMaintainer(DEFINITIONS, store, log, serves_readers=True),
    )
    return pipeline, store


def batch(events: list[TrackedEvent], first_offset: int = 0) -> PartitionBatch:
    return PartitionBatch(
        source=SOURCE, records=[(first_offset + i, e.to_json()) for i, e in enumerate(events)]
    )


def history() -> list[TrackedEvent]:
    return [
        make_event("v1", "alice", "Product Viewed", 0, category="shoes"),
        make_event("o1", "bob", "Order Completed", 1, order_id="o1", revenue=10),
        make_event("v2", "alice", "Product Viewed", 5, category="shoes"),
        make_event("o2", "bob", "Order Completed", 7, order_id="o2", revenue=10),
        make_event("v3", "carol", "Product Viewed", 8, category="hats"),
    ]


def test_changes_are_recorded_once_whatever_crashes(settings: Settings, clickhouse: Client) -> None:
    log = SegmentChangeLog(clickhouse, settings.clickhouse_database)
    pipeline, store = pipeline_for(settings, clickhouse)
    # Crash 1: effects written, nothing committed.
    prepared = pipeline.prepare(batch(history()))
    assert prepared is not None and prepared.segments is not None
    # Folded and not saved: the API's readers see the membership already; the worker
    # folds the next batch from the saved states.
    reads = SegmentReads(DEFINITIONS, store, log)
    assert reads.customer("bob", T0 + timedelta(minutes=8), held=True) == (
        {"orders": 2},
        ["repeat_buyers"],
    )
    assert reads.customer("bob", T0 + timedelta(minutes=8)) == ({"orders": 0}, [])
    assert store.states(["bob"]) == {}
    store.close()
    # Crash 2: the restarted worker commits the segment states, then dies before the journeys.
    pipeline, store = pipeline_for(settings, clickhouse)
    prepared = pipeline.prepare(batch(history()))
    assert prepared is not None and prepared.segments is not None
    assert pipeline.segments is not None
    pipeline.segments.commit([prepared.segments])
    store.close()
    # The next worker replays the batch: the segments have folded it already.
    pipeline, store = pipeline_for(settings, clickhouse)
    prepared = pipeline.process(batch(history()))
    assert prepared is not None and prepared.segments is None
    assert store.position(SOURCE) == len(history())
    bob = store.states(["bob"])["bob"]
    assert bob.members == {"repeat_buyers"}
    evaluator = pipeline.segments.evaluator
    assert evaluator.trait_values(bob, bob.clock or 0) == {"orders": 2}  # not 4

    minute = timedelta(minutes=1)
    assert log.changes("shoe_lookers") == [("alice", T0 + 5 * minute, True, "v2")]
    assert log.changes("repeat_buyers") == [("bob", T0 + 7 * minute, True, "o2")]

    # Alice's first view leaves the hour at T0 + 60 min; she comes back the next day.
    later = [make_event("p1", "alice", "Page Viewed", 60 * 24)]
    pipeline.process(batch(later, first_offset=len(history())))
    assert log.changes("shoe_lookers") == [
        ("alice", T0 + 5 * minute, True, "v2"),
        ("alice", T0 + 60 * minute, False, ""),
    ]
    assert log.members_as_of("shoe_lookers", T0 + 30 * minute) == ["alice"]
    assert log.members_as_of("shoe_lookers", T0 + 61 * minute) == []
    # Dana views twice and goes quiet: no event records her exit, the read computes it.
    quiet = [
        make_event("d1", "dana", "Product Viewed", 100, category="shoes"),
        make_event("d2", "dana", "Product Viewed", 101, category="shoes"),
    ]
    pipeline.process(batch(quiet, first_offset=len(history()) + 1))
    reads = SegmentReads(DEFINITIONS, store, log)
    assert reads.members("shoe_lookers", T0 + 30 * minute) == ["alice"]
    assert reads.members("shoe_lookers", T0 + 100 * minute) == []  # before her 2nd view
    assert reads.members("shoe_lookers", T0 + 101 * minute) == ["dana"]
    assert reads.members("shoe_lookers", T0 + 159 * minute) == ["dana"]
    assert reads.members("shoe_lookers", T0 + 160 * minute) == []  # d1 left the hour
    assert log.members_as_of("shoe_lookers", T0 + 160 * minute) == ["dana"]  # not yet recorded
    # Sizes over time (GET /v1/segments/{id}/sizes): the same reads at each instant.
    assert reads.sizes(
        "shoe_lookers", [T0 + 30 * minute, T0 + 101 * minute, T0 + 160 * minute]
    ) == [
        1,
        1,
        0,
    ]
    # One customer (GET /v1/customers/{id}): traits after their latest event, segments always.
    assert reads.customer("bob", T0 + 10 * minute) == ({"orders": 2}, ["repeat_buyers"])
    assert reads.customer("alice", T0 + 6 * minute) == (None, ["shoe_lookers"])
    assert reads.customer("dana", T0 + 160 * minute) == ({"orders": 0}, [])
    # Erasure takes a customer's segment state with it.
    assert store.forget_customers(["bob", "nobody"]) == {"segment_states": 1}
    assert "bob" not in store.states(["bob", "alice"])
    store.close()
