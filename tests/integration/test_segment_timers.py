"""Segment timers: time passing alone changes membership, recorded once across crashes.

On the real parts: the broker (journey.segments), chdb (segment_changes) and
SQLite (states and due instants). First in-process, with a clock the test
moves, so a crash can be placed between writing the changes and saving the
states; then through a running node with a window of seconds, killed while a
customer's exit is pending.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from clickhouse_connect.driver.client import Client

from journeys.application import JourneyApplication
from journeys.segment_definitions import parse_definitions
from journeys.segment_state import to_ms
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.migrations import migrate
from projections.segment_changes import SegmentChangeLog
from projections.segment_store import SegmentStore
from stack.bootstrap import event_store_env
from stack.processes import wait_until
from stack.settings import Settings
from streams.outcomes import OutcomePublisher
from streams.pipeline import JourneyPipeline, PartitionBatch
from streams.segment_timers import SegmentTimers
from streams.segments import SegmentMaintainer
from streams.topics import ensure_topics
from tests.conftest import T0, make_event
from tests.node_process import query_chdb_folder, started_node
from tests.topic_records import topic_values

pytestmark = pytest.mark.integration

SOURCE = "journey.events#0"
HOUR = timedelta(hours=1)
DEFINITIONS = parse_definitions(
    {
        "traits": {"orders": {"op": "count", "event": "Order Completed"}},
        "segments": {
            "recent_viewers": {"where": {"event": "Product Viewed", "within": "1h"}},
            # Entered by time alone: an hour after the last order.
            "lapsed_buyers": {
                "where": {
                    "and": [
                        {"trait": "orders", "gte": 1},
                        {"event": "Order Completed", "within": "1h", "absent": True},
                    ]
                }
            },
        },
    }
)


def topic_records(settings: Settings, topic: str) -> list[dict[str, Any]]:
    return topic_values(settings.kafka_bootstrap_servers, topic)


class Worker:
    """The pipeline and timer loop a (re)started worker builds over the same stores."""

    def __init__(self, settings: Settings, clickhouse: Client, now: list[datetime]) -> None:
        migrate(clickhouse, settings.clickhouse_database)
        self.store = SegmentStore(sqlite_path=settings.sqlite_path)
        self.maintainer = SegmentMaintainer(
            DEFINITIONS, self.store, SegmentChangeLog(clickhouse, settings.clickhouse_database)
        )
        self.pipeline = JourneyPipeline(
            JourneyApplication(env=event_store_env(settings)),
            EventLog(clickhouse, settings.clickhouse_database),
            CustomerStageView(clickhouse, settings.clickhouse_database),
            segments=self.maintainer,
        )
        self.publisher = OutcomePublisher(settings.kafka_bootstrap_servers)
        self.timers = SegmentTimers(
            self.maintainer,
            lambda: [0],
            threading.Lock(),
            self.publisher.publish,
            settings.segments_topic,
            clock=lambda: now[0].timestamp(),
        )

    def close(self) -> None:
        self.store.close()


def test_time_alone_records_exits_and_entries_once_across_a_crash(
    settings: Settings, clickhouse: Client
) -> None:
    ensure_topics(settings.kafka_bootstrap_servers, [settings.segments_topic], 1, 1)
    log = SegmentChangeLog(clickhouse, settings.clickhouse_database)
    now = [T0]
    worker = Worker(settings, clickhouse, now)
    history = [
        make_event("v1", "alice", "Product Viewed", 0),
        make_event("v2", "alice", "Product Viewed", 10),
        make_event("o1", "bob", "Order Completed", 5, order_id="o1", revenue=10),
    ]
    worker.pipeline.process(
        PartitionBatch(SOURCE, [(i, e.to_json()) for i, e in enumerate(history)])
    )
    # Alice's first view leaves the hour at T0+60min, Bob's order at T0+65min.
    assert worker.store.due([0], to_ms(T0 + 2 * HOUR), 10) == [("alice", 0), ("bob", 0)]
    now[0] = T0 + 30 * timedelta(minutes=1)
    assert worker.timers.fire_due() == 0  # nothing due yet

    # Alice's last view leaves the hour at T0+70min: she exits, Bob enters at T0+65min.
    now[0] = T0 + 2 * HOUR
    ticked = worker.maintainer.tick(worker.store.due([0], to_ms(now[0]), 10), to_ms(now[0]))
    worker.maintainer.write([ticked])  # the changes are in ClickHouse, then the worker dies
    worker.close()

    now[0] += timedelta(minutes=5)  # the restarted worker ticks later: the stamps hold
    worker = Worker(settings, clickhouse, now)
    assert worker.timers.fire_due() == 2
    assert worker.timers.fire_due() == 0  # the due instants moved on: nothing twice
    minute = timedelta(minutes=1)
    assert log.changes("recent_viewers") == [
        ("alice", T0, True, "v1"),
        ("alice", T0 + 70 * minute, False, ""),
    ]
    assert log.changes("lapsed_buyers") == [("bob", T0 + 65 * minute, True, "")]
    # (The pipeline's own records are published by the worker app, not here.)
    records = topic_records(settings, settings.segments_topic)
    assert sorted((r["type"], r["segment"], r["customer_key"], r["at_ms"]) for r in records) == [
        ("SegmentEntered", "lapsed_buyers", "bob", to_ms(T0 + 65 * minute)),
        ("SegmentExited", "recent_viewers", "alice", to_ms(T0 + 70 * minute)),
    ]
    alice = worker.store.states(["alice"])["alice"]
    assert alice.members == set() and alice.clock == to_ms(now[0])
    assert worker.store.due([0], to_ms(T0 + 1000 * HOUR), 10) == []  # nothing left to slide

    # Alice's next event changes nothing already recorded (no second exit).
    later = [make_event("v3", "alice", "Page Viewed", 180)]
    worker.pipeline.process(PartitionBatch(SOURCE, [(len(history), later[0].to_json())]))
    assert len(log.changes("recent_viewers")) == 2
    # Erasure drops the customer's due instant with the state.
    worker.pipeline.process(
        PartitionBatch(
            SOURCE, [(len(history) + 1, make_event("v4", "carol", "Product Viewed", 200).to_json())]
        )
    )
    assert worker.store.due([0], to_ms(T0 + 5 * HOUR), 10) == [("carol", 0)]
    worker.store.forget_customers(["carol"])
    assert worker.store.due([0], to_ms(T0 + 5 * HOUR), 10) == []
    worker.close()


def test_a_node_records_a_window_exit_without_any_event_and_after_a_kill(
    settings: Settings, tmp_path: Path
) -> None:
    definitions = tmp_path / "segments.toml"
    definitions.write_text(
        '[segments.recent_viewers]\nwhere = { event = "Product Viewed", within = "4s" }\n'
    )
    settings = settings.model_copy(update={"segments_file": definitions})
    node = started_node(settings)

    def view(customer: str) -> int:
        at = datetime.now(UTC)
        body = {
            "userId": customer,
            "event": "Product Viewed",
            "messageId": f"{customer}-view",
            "timestamp": at.isoformat(),
        }
        answer = httpx.post(
            f"{node.base}/v1/track", json=body, auth=(settings.write_key, ""), timeout=30
        )
        assert answer.status_code == 200, answer.text
        return to_ms(at)

    def changes_of(customer: str) -> list[tuple[str, int]]:
        return [
            (r["type"], r["at_ms"])
            for r in topic_records(settings, settings.segments_topic)
            if r["customer_key"] == customer and r["type"] != "TraitsChanged"
        ]

    def running() -> bool:
        return node.process is not None and node.process.poll() is None

    try:
        seen_at = view("ann")
        assert wait_until(lambda: len(changes_of("ann")) >= 2, 30, running), node.log_tail()
        # No event of Ann's since her view: the timer recorded her exit as the window slid.
        assert changes_of("ann") == [
            ("SegmentEntered", seen_at),
            ("SegmentExited", seen_at + 4000),
        ]
        # Ben enters; the node is killed before his exit is due and restarted after it.
        ben_at = view("ben")
        assert wait_until(lambda: len(changes_of("ben")) >= 1, 30, running), node.log_tail()
        node.kill()
        time.sleep(max(0.0, (ben_at + 4500) / 1000 - time.time()))
        node.start()
        assert wait_until(lambda: len(changes_of("ben")) >= 2, 30, running), node.log_tail()
        assert changes_of("ben")[-1] == ("SegmentExited", ben_at + 4000)
    finally:
        if node.process is not None:
            node.stop()
    rows = query_chdb_folder(
        settings.chdb_path,
        "SELECT customer_key, toUnixTimestamp64Milli(at), entered FROM "
        f"{settings.clickhouse_database}.segment_changes FINAL ORDER BY 1, 2",
    )
    assert [tuple(row) for row in rows] == [
        ("ann", seen_at, 1),
        ("ann", seen_at + 4000, 0),
        ("ben", ben_at, 1),
        ("ben", ben_at + 4000, 0),
    ]
