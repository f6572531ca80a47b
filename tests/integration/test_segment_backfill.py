"""Backfill of new and changed segments from the event log, then live: equal to from scratch.

On the real parts (chdb event log and segment_changes, SQLite states and
definitions, the broker for journey.segments). One worker keeps segments live
while a segment is added and another changed over the admin store; each is
backfilled from history in small chunks, interleaved with live batches, and
once the worker crashes between writing a chunk's changes and saving it. A
second worker over fresh stores has the final definitions from the start and
folds the same batches live. Their recorded changes and memberships are
equal; the backfilled ones are flagged, on the table and the topic.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from events import TrackedEvent
from journeys.application import JourneyApplication
from journeys.segment_definitions import TRAITS_BACKFILL
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.migrations import migrate
from projections.segment_changes import SegmentChangeLog
from projections.segment_definition_store import SegmentDefinitions
from projections.segment_history import SegmentHistory
from projections.segment_store import SegmentStore
from stack.bootstrap import event_store_env
from stack.settings import Settings
from streams.journal import partition_of
from streams.outcomes import OutcomePublisher
from streams.pipeline import JourneyPipeline, PartitionBatch
from streams.segment_timers import SegmentTimers
from streams.segments import SegmentMaintainer
from streams.topics import ensure_topics
from tests.conftest import T0, make_event
from tests.topic_records import topic_values

pytestmark = pytest.mark.integration

PARTITIONS = 2
MINUTE = timedelta(minutes=1)
TRAITS = {
    "orders": {"op": "count", "event": "Order Completed"},
    "spend": {"op": "sum", "property": "revenue", "event": "Order Completed"},
}
FIRST = {
    "viewers": {"where": {"event": "Product Viewed", "within": "1h", "count": 2}},
}
FINAL = {
    # Changed: a longer window.
    "viewers": {"where": {"event": "Product Viewed", "within": "2h", "count": 2}},
    # New: entered by time alone too, an hour after the last order.
    "lapsed": {
        "where": {
            "and": [
                {"trait": "orders", "gte": 1},
                {"event": "Order Completed", "within": "1h", "absent": True},
            ]
        }
    },
    "spenders": {"where": {"and": [{"trait": "spend", "gt": 15}, {"segment": "viewers"}]}},
}


def history(start: int, end: int) -> list[TrackedEvent]:
    """Deterministic events of 12 customers between minutes ``start`` and ``end``."""
    events = []
    for minute in range(start, end, 3):
        for n in range(12):
            if (minute * 7 + n * 5) % 11 < 3:
                name = "Order Completed" if (minute + n) % 4 == 0 else "Product Viewed"
                props: dict[str, Any] = {"revenue": 5 + n} if name == "Order Completed" else {}
                events.append(make_event(f"e{minute}-{n}", f"c{n:02d}", name, minute, **props))
    return events


def batches(events: list[TrackedEvent], offsets: dict[int, int]) -> list[PartitionBatch]:
    """The events on their customers' partitions (as the producers put them)."""
    found: dict[int, list[tuple[int, bytes]]] = {}
    for event in events:
        partition = partition_of(event.customer_key.encode(), PARTITIONS)
        found.setdefault(partition, []).append((offsets.get(partition, 0), event.to_json()))
        offsets[partition] = offsets.get(partition, 0) + 1
    return [PartitionBatch(f"journey.events#{p}", records) for p, records in sorted(found.items())]


class Worker:
    """What a (re)started worker builds over its stores; ``backfill``: with the history."""

    def __init__(
        self,
        settings: Settings,
        clickhouse: Client,
        now: list[datetime],
        backfill: bool,
        seed: dict[str, Any] | None = None,
    ) -> None:
        database = settings.clickhouse_database
        migrate(clickhouse, database)
        self.definitions = SegmentDefinitions(sqlite_path=settings.sqlite_path)
        if seed is not None:
            self.definitions.seed(seed)
        self.store = SegmentStore(sqlite_path=settings.sqlite_path)
        self.log = SegmentChangeLog(clickhouse, database)
        source = self.definitions.current
        self.maintainer = SegmentMaintainer(
            source(),
            self.store,
            self.log,
            source,
            SegmentHistory(clickhouse, database) if backfill else None,
            PARTITIONS,
        )
        self.pipeline = JourneyPipeline(
            JourneyApplication(env=event_store_env(settings)),
            EventLog(clickhouse, database),
            CustomerStageView(clickhouse, database),
            segments=self.maintainer,
        )
        self.timers = SegmentTimers(
            self.maintainer,
            lambda: list(range(PARTITIONS)),
            threading.Lock(),
            OutcomePublisher(settings.kafka_bootstrap_servers).publish,
            settings.segments_topic,
            clock=lambda: now[0].timestamp(),
        )
        if self.timers.backfill is not None:
            self.timers.backfill.chunk = 3  # several chunks per partition

    def process(self, events: list[TrackedEvent], offsets: dict[int, int]) -> None:
        for one in batches(events, offsets):
            self.pipeline.process(one)

    def settle(self) -> None:
        """Timers and backfill until nothing is left to do at the clock's instant."""
        self.timers.reload_definitions()
        self.timers.fire_due()
        while self.timers.backfill_due(budget_s=60):
            pass
        self.timers.fire_due()

    def close(self) -> None:
        self.store.close()
        self.definitions.close()


def recorded(log: SegmentChangeLog, segment: str) -> list[tuple[str, datetime, bool]]:
    return [(c, at, entered) for c, at, entered, _ in log.backfilled_changes(segment)]


def test_backfill_then_live_equals_a_from_scratch_evaluation(
    settings: Settings, clickhouse: Client, tmp_path: Path
) -> None:
    ensure_topics(settings.kafka_bootstrap_servers, [settings.segments_topic], 1, 1)
    # The clock stays before the next batch's events: one stamped at or before it
    # arrives late, after a window slid at that instant (see docs: late events).
    now = [T0 + 89 * MINUTE]
    worker = Worker(
        settings, clickhouse, now, backfill=True, seed={"traits": TRAITS, "segments": FIRST}
    )
    offsets: dict[int, int] = {}
    # Live under the first definitions; "viewers" is backfilled once (never was).
    worker.process(history(0, 90), offsets)
    worker.settle()
    assert worker.maintainer.backfills["viewers"].finished

    # Changed and new segments: backfilled a chunk at a time, live batches in between.
    for sid, body in FINAL.items():
        worker.definitions.change("segments", sid, body)
    worker.timers.reload_definitions()
    assert sorted(worker.maintainer.backfills) == ["lapsed", "spenders", "viewers"]
    backfill = worker.timers.backfill
    assert backfill is not None
    for start in (90, 105):
        now[0] = T0 + (start - 1) * MINUTE
        chunk = backfill.next_chunk([0, 1], int(now[0].timestamp() * 1000))
        assert chunk is not None
        backfill.write(chunk)
        backfill.commit(chunk)
        worker.process(history(start, start + 15), offsets)
    now[0] = T0 + 119 * MINUTE
    # A crash after a chunk's changes are written, before it is saved.
    while (chunk := backfill.next_chunk([0, 1], int(now[0].timestamp() * 1000))) is not None:
        backfill.write(chunk)
        if chunk.changes:
            break  # the worker dies with this one written, not saved
        backfill.commit(chunk)
    assert chunk is not None and chunk.changes
    worker.close()
    worker = Worker(settings, clickhouse, now, backfill=True)
    resumed = worker.maintainer.backfills[chunk.segment]
    assert not resumed.parts[chunk.partition].finished and resumed.progress < 1  # resumes there
    worker.settle()
    assert all(b.finished for b in worker.maintainer.backfills.values())
    worker.process(history(120, 200), offsets)
    now[0] = T0 + 400 * MINUTE
    worker.settle()

    # From scratch: the final definitions from the start, every batch live.
    fresh = settings.model_copy(
        update={
            "data_dir": tmp_path / "scratch",
            "clickhouse_database": f"{settings.clickhouse_database}_scratch",
        }
    )
    scratch_now = [T0 + 400 * MINUTE]
    scratch = Worker(
        fresh, clickhouse, scratch_now, backfill=False, seed={"traits": TRAITS, "segments": FINAL}
    )
    scratch.process(history(0, 200), {})
    scratch.settle()

    for sid in FINAL:
        expected = recorded(scratch.log, sid)
        assert expected, sid  # the history does exercise every segment
        assert recorded(worker.log, sid) == expected, sid
    keys = [f"c{n:02d}" for n in range(12)]
    assert {k: s.members for k, s in worker.store.states(keys).items()} == {
        k: s.members for k, s in scratch.store.states(keys).items()
    }
    # What the backfill found is flagged; what the worker saw happen afterwards is not.
    end_of_backfill = T0 + 119 * MINUTE
    for customer, at, _, flag in worker.log.backfilled_changes("viewers"):
        if at > end_of_backfill:
            assert not flag, (customer, at)
    assert {flag for *_, flag in worker.log.backfilled_changes("viewers")} == {True, False}
    published = [r for r in _topic(settings) if r["segment"] == "viewers"]
    assert {r["backfill"] for r in published} == {True, False}
    assert not any(
        r["backfill"] for r in published if r["at_ms"] > end_of_backfill.timestamp() * 1000
    )
    worker.close()
    scratch.close()


def _topic(settings: Settings) -> list[dict[str, Any]]:
    return topic_values(settings.kafka_bootstrap_servers, settings.segments_topic)


def test_a_trait_changed_alone_is_backfilled_from_history(
    settings: Settings, clickhouse: Client
) -> None:
    """No segment compares the trait: its change starts the traits' own backfill."""
    ensure_topics(settings.kafka_bootstrap_servers, [settings.segments_topic], 1, 1)
    now = [T0 + 89 * MINUTE]
    seed = {"traits": {"orders": {"op": "count", "event": "Order Completed"}}, "segments": {}}
    worker = Worker(settings, clickhouse, now, backfill=True, seed=seed)
    events = history(0, 90)
    worker.process(events, {})
    worker.settle()
    assert worker.maintainer.backfills[TRAITS_BACKFILL].finished
    keys = sorted({e.customer_key for e in events})

    def values() -> dict[str, Any]:
        evaluator = worker.maintainer.evaluator
        at = int(now[0].timestamp() * 1000)
        states = worker.store.states(keys)
        return {k: evaluator.trait_values(states[k], at)["orders"] for k in keys}

    orders = values()
    placed = {
        k: sum(e.customer_key == k and e.event_name == "Order Completed" for e in events)
        for k in keys
    }
    assert orders == placed and any(orders.values())
    worker.definitions.change("traits", "orders", {"op": "count", "event": "Product Viewed"})
    worker.settle()
    assert worker.maintainer.backfills[TRAITS_BACKFILL].finished
    expected = {
        k: sum(e.customer_key == k and e.event_name == "Product Viewed" for e in events)
        for k in keys
    }
    # Without the backfill the changed trait would count from its change on: all 0.
    assert values() == expected and any(expected.values())
    # Nothing was recorded as a membership change by the traits' backfill.
    assert _topic(settings) == []
    worker.close()


def test_an_entry_received_after_the_backfill_started_is_live(
    settings: Settings, clickhouse: Client
) -> None:
    """Issue 17: an order arriving before the customer is covered is not history."""
    ensure_topics(settings.kafka_bootstrap_servers, [settings.segments_topic], 1, 1)
    now = [T0 + 10 * MINUTE]  # the worker takes the definition then
    seed = {"traits": {}, "segments": {"buyers": {"where": {"event": "Order Completed"}}}}
    worker = Worker(settings, clickhouse, now, backfill=True, seed=seed)
    # Both folded before any backfill chunk: neither customer is covered yet, so the
    # live fold records nothing and the backfill finds both entries in the log.
    worker.process(
        [
            make_event("old", "c-old", "Order Completed", 5),  # received before the start
            make_event("new", "c-new", "Order Completed", 20),  # received after it
        ],
        {},
    )
    now[0] = T0 + 30 * MINUTE
    worker.settle()
    assert worker.maintainer.backfills["buyers"].finished
    flags = {c: flag for c, _, entered, flag in worker.log.backfilled_changes("buyers")}
    assert flags == {"c-old": True, "c-new": False}
    published = {r["customer_key"]: r["backfill"] for r in _topic(settings)}
    assert published == {"c-old": True, "c-new": False}
    worker.close()
