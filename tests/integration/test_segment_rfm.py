"""RFM conditions in segments: the buyers' RFM segments, ranked by ClickHouse, scanned in.

On the real parts: chdb (the event log the RFM report ranks, segment_changes),
SQLite (states), the broker (journey.segments). Orders go through the journey
pipeline; the timer loop's scan brings each buyer's RFM segment into their
state; membership equals the RFM report's answer, and a buyer who stops being
a champion (others ordered more) leaves, stamped at the scan.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from clickhouse_connect.driver.client import Client

from journeys.application import JourneyApplication
from journeys.segment_definitions import parse_definitions
from projections.analytics.reports import Reports
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.migrations import migrate
from projections.segment_changes import SegmentChangeLog
from projections.segment_store import SegmentStore
from stack.bootstrap import event_store_env
from stack.settings import Settings
from streams.outcomes import OutcomePublisher
from streams.pipeline import JourneyPipeline, PartitionBatch
from streams.segment_timers import SegmentTimers
from streams.segments import SegmentMaintainer
from streams.topics import ensure_topics
from tests.conftest import T0, make_event
from tests.topic_records import topic_values

pytestmark = pytest.mark.integration

DEFINITIONS = parse_definitions(
    {
        "segments": {
            "champions": {"where": {"rfm": "champions"}},
            "slipping": {"where": {"rfm": ["at_risk", "hibernating", "cannot_lose"]}},
        }
    }
)
DAY = timedelta(days=1)


def orders(customer: str, count: int, first_day: int) -> list:
    return [
        make_event(
            f"{customer}-o{n}",
            customer,
            "Order Completed",
            (first_day + n) * 24 * 60,
            order_id=f"{customer}-{n}",
            revenue=20 + n,
        )
        for n in range(count)
    ]


def test_rfm_conditions_follow_the_rfm_report_scan_by_scan(
    settings: Settings, clickhouse: Client
) -> None:
    ensure_topics(settings.kafka_bootstrap_servers, [settings.segments_topic], 1, 1)
    database = settings.clickhouse_database
    migrate(clickhouse, database)
    reports = Reports(clickhouse, database)
    store = SegmentStore(sqlite_path=settings.sqlite_path)
    log = SegmentChangeLog(clickhouse, database)
    maintainer = SegmentMaintainer(
        DEFINITIONS,
        store,
        log,
        rfm=lambda at: [(s.customer_key, s.segment) for s in reports.rfm(at)],
    )
    pipeline = JourneyPipeline(
        JourneyApplication(env=event_store_env(settings)),
        EventLog(clickhouse, database),
        CustomerStageView(clickhouse, database),
        segments=maintainer,
    )
    now = [T0 + 40 * DAY]
    timers = SegmentTimers(
        maintainer,
        lambda: [0],
        threading.Lock(),
        OutcomePublisher(settings.kafka_bootstrap_servers).publish,
        settings.segments_topic,
        clock=lambda: now[0].timestamp(),
    )
    offset = [0]

    def process(events: list) -> None:
        pipeline.process(
            PartitionBatch(
                "journey.events#0", [(offset[0] + i, e.to_json()) for i, e in enumerate(events)]
            )
        )
        offset[0] += len(events)

    def members(segment: str) -> set[str]:
        evaluator = maintainer.evaluator
        at = int(now[0].timestamp() * 1000)
        return {k for k, s in store.all_states() if segment in evaluator.members(s, at)}

    def report(names: set[str]) -> set[str]:
        return {s.customer_key for s in reports.rfm(now[0]) if s.segment in names}

    # Ten buyers: frequent and recent ones, and one-offs long ago.
    history = []
    for n in range(10):
        history += orders(f"c{n}", 1 + n % 5, 30 - 3 * n if n % 2 else 35)
    process(history)
    assert members("champions") == set()  # nothing scanned yet
    assert timers.scan_rfm() > 0
    champions = report({"champions"})
    assert champions and members("champions") == champions
    slipping = report({"at_risk", "hibernating", "cannot_lose"})
    assert slipping and members("slipping") == slipping
    assert timers.scan_rfm() == 0  # nothing moved: no change twice

    # c9 becomes the most frequent, most recent buyer; the others' ranks move.
    now[0] += 10 * DAY
    process(orders("c9", 8, 41))
    assert "c9" in report({"champions"})
    timers.scan_rfm()
    assert "c9" in members("champions")
    assert members("champions") == report({"champions"})
    left = champions - members("champions")
    recorded = {(c, entered) for c, at, entered, _ in log.changes("champions")}
    assert {("c9", True)} | {(c, False) for c in left} <= recorded
    published = topic_values(settings.kafka_bootstrap_servers, settings.segments_topic)
    assert {r["customer_key"] for r in published if r["segment"] == "champions"} >= {"c9"}
    # Stamped at the scan, by no event.
    stamps = [(at, event) for c, at, entered, event in log.changes("champions") if c == "c9"]
    assert stamps and all(isinstance(at, datetime) and event == "" for at, event in stamps)
    store.close()
