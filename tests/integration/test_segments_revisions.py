"""Segment histories revised as the journey revises stages: identity merges and late events.

Through the real pipeline (SQLite event store and segment store, chdb): the
identity messages the journeys ask to send are fed back as the worker would
consume them, on their own partitions. Checked: a merged anonymous history is
folded into the customer's segment state, with SegmentEntered at the time of
the event that caused it (the anonymous key leaves at the merge; what it
recorded before stays), and a late event that undoes an entry re-derives the
customer's recorded changes, so reads of an instant before it are right.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from clickhouse_connect.driver.client import Client

from events import TrackedEvent
from journeys.application import JourneyApplication
from journeys.segment_definitions import parse_definitions
from journeys.segment_state import MembershipChange, to_ms
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.migrations import migrate
from projections.segment_changes import SegmentChangeLog
from projections.segment_history import SegmentHistory
from projections.segment_reads import SegmentReads
from projections.segment_store import SegmentStore
from stack.bootstrap import event_store_env
from stack.settings import Settings
from streams.pipeline import JourneyPipeline, PartitionBatch, PreparedBatch
from streams.segment_backfill import SegmentBackfill
from streams.segments import SegmentMaintainer
from tests.conftest import T0, make_event
from tests.integration.analytics_data import identify as identify_call

pytestmark = pytest.mark.integration

MINUTE = timedelta(minutes=1)
DEFINITIONS = parse_definitions(
    {
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
        },
    }
)


class Worker:
    """One worker's pipeline with segments backfilled (over an empty log: at once)."""

    def __init__(self, settings: Settings, clickhouse: Client) -> None:
        database = settings.clickhouse_database
        migrate(clickhouse, database)
        self.store = SegmentStore(sqlite_path=settings.sqlite_path)
        self.log = SegmentChangeLog(clickhouse, database)
        maintainer = SegmentMaintainer(
            DEFINITIONS,
            self.store,
            self.log,
            history=SegmentHistory(clickhouse, database),
            partitions=2,
        )
        backfill = SegmentBackfill(maintainer)
        backfill.start()
        while (chunk := backfill.next_chunk([0, 1], to_ms(T0))) is not None:
            backfill.write(chunk)
            backfill.commit(chunk)
        self.pipeline = JourneyPipeline(
            JourneyApplication(env=event_store_env(settings)),
            EventLog(clickhouse, database),
            CustomerStageView(clickhouse, database),
            segments=maintainer,
        )
        self.reads = SegmentReads(DEFINITIONS, self.store, self.log)

    def feed(self, partition: int, events: list[TrackedEvent]) -> PreparedBatch:
        """Process ``events`` as the next records of ``partition``."""
        source = f"journey.events#{partition}"
        start = self.pipeline.journeys.consumed_position(source)
        records = [(start + i, e.to_json()) for i, e in enumerate(events)]
        prepared = self.pipeline.process(PartitionBatch(source=source, records=records))
        assert prepared is not None
        return prepared


def anonymous(event: TrackedEvent, anonymous_id: str) -> TrackedEvent:
    return replace(
        event, customer_key=f"anon:{anonymous_id}", user_id=None, anonymous_id=anonymous_id
    )


def test_a_merged_anonymous_history_enters_the_customer_at_the_time_that_caused_it(
    settings: Settings, clickhouse: Client
) -> None:
    worker = Worker(settings, clickhouse)
    views = [
        anonymous(make_event("v1", "-", "Product Viewed", 0, category="shoes"), "dev-1"),
        anonymous(make_event("v2", "-", "Product Viewed", 5, category="shoes"), "dev-1"),
    ]
    worker.feed(0, views)
    # Uma, known, viewed shoes once herself before identifying as the visitor.
    worker.feed(1, [make_event("u1", "uma", "Product Viewed", 2, category="shoes")])
    identified = worker.feed(1, [identify_call("i1", "uma", "dev-1", T0 + 10 * MINUTE)])
    [link] = identified.update.forwards
    merged = worker.feed(0, [link])
    assert merged.segments is not None
    # The visitor leaves at the merge, stamped with the link.
    leaves = MembershipChange("shoe_lookers", False, to_ms(T0 + 10 * MINUTE), link.event_id)
    assert merged.segments.changes == [("anon:dev-1", leaves)]
    [history] = merged.update.forwards
    absorbed = worker.feed(1, [history])
    assert absorbed.segments is not None
    # The visitor's view at +0 and uma's own at +2 make two: she entered at +2 (u1).
    entry = MembershipChange("shoe_lookers", True, to_ms(T0 + 2 * MINUTE), "u1")
    assert absorbed.segments.revised == [("uma", entry, False)]
    assert worker.log.changes("shoe_lookers") == [
        ("anon:dev-1", T0 + 5 * MINUTE, True, "v2"),
        ("anon:dev-1", T0 + 10 * MINUTE, False, link.event_id),
        ("uma", T0 + 2 * MINUTE, True, "u1"),
    ]
    # As of any instant: the visitor's membership as it was; uma's as revised.
    assert worker.reads.customer("uma", T0 + 3 * MINUTE)[1] == ["shoe_lookers"]
    assert worker.reads.customer("uma", T0 + 1 * MINUTE)[1] == []
    assert worker.reads.customer("anon:dev-1", T0 + 7 * MINUTE)[1] == ["shoe_lookers"]
    assert worker.reads.customer("anon:dev-1", T0 + 11 * MINUTE)[1] == []
    assert worker.reads.members("shoe_lookers", T0 + 11 * MINUTE) == ["uma"]
    # The merged key never comes back by time alone, and its due instant is cleared.
    assert worker.store.due([0], to_ms(T0 + timedelta(days=30)), 10) == []

    # A re-sent merge changes nothing; an anonymous event after it is uma's.
    again = worker.feed(1, [history])
    assert again.segments is None or again.segments.revised == []
    late = worker.feed(0, [anonymous(make_event("o1", "-", "Order Completed", 30), "dev-1")])
    worker.feed(1, late.update.forwards)
    assert worker.reads.customer("uma", T0 + 31 * MINUTE)[1] == []
    assert worker.log.changes("shoe_lookers")[-1] == ("uma", T0 + 30 * MINUTE, False, "o1")


def test_a_late_event_that_undoes_an_entry_revises_the_recorded_history(
    settings: Settings, clickhouse: Client
) -> None:
    worker = Worker(settings, clickhouse)
    worker.feed(
        0,
        [
            make_event("v1", "alice", "Product Viewed", 0, category="shoes"),
            make_event("v2", "alice", "Product Viewed", 5, category="shoes"),
            make_event("b1", "bob", "Product Viewed", 1, category="shoes"),
            make_event("b2", "bob", "Product Viewed", 6, category="shoes"),
            make_event("p1", "alice", "Page Viewed", 20),
        ],
    )
    assert worker.reads.members("shoe_lookers", T0 + 7 * MINUTE) == ["alice", "bob"]
    # Alice's order at +3 arrives late: she never was a shoe looker (it was inside
    # the hour at both views), and still is not after it leaves the hour at +63.
    late = worker.feed(0, [make_event("o1", "alice", "Order Completed", 3, order_id="o1")])
    assert late.segments is not None
    entry = MembershipChange("shoe_lookers", True, to_ms(T0 + 5 * MINUTE), "v2")
    assert late.segments.untrue == [("alice", entry)]
    assert worker.log.changes("shoe_lookers") == [("bob", T0 + 6 * MINUTE, True, "b2")]
    for minutes in (4, 6, 30, 62):
        assert worker.reads.customer("alice", T0 + minutes * MINUTE)[1] == []
    for minutes in (6, 30):  # bob's first view leaves the hour at +61
        assert worker.reads.members("shoe_lookers", T0 + minutes * MINUTE) == ["bob"]
    assert worker.reads.sizes("shoe_lookers", [T0 + 2 * MINUTE, T0 + 6 * MINUTE]) == [0, 1]

    # A late event that makes an entry: it is recorded at the time of the event
    # that completed the condition, not at the late event's own time.
    worker.feed(0, [make_event("c2", "carol", "Product Viewed", 50, category="shoes")])
    worker.feed(0, [make_event("c3", "carol", "Page Viewed", 55)])
    worker.feed(0, [make_event("c1", "carol", "Product Viewed", 40, category="shoes")])
    carol = [c for c in worker.log.changes("shoe_lookers") if c[0] == "carol"]
    assert carol == [("carol", T0 + 50 * MINUTE, True, "c2")]
    assert worker.reads.customer("carol", T0 + 45 * MINUTE)[1] == []
    assert worker.reads.customer("carol", T0 + 52 * MINUTE)[1] == ["shoe_lookers"]
