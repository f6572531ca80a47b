"""`journeys verify` on real stores (SQLite event store, chdb): clean when they agree,
and each planted difference named."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from clickhouse_connect.driver.client import Client

from events import TrackedEvent
from stack.bootstrap import Platform, platform_on
from stack.settings import Settings
from stack.verify import format_report, verify
from streams.pipeline import PartitionBatch
from tests.conftest import make_event

pytestmark = pytest.mark.integration


def storefront() -> list[TrackedEvent]:
    return [
        make_event("a1", "alice", "Product Viewed", 0),
        make_event("b1", "bob", "Product Viewed", 1),
        make_event("a2", "alice", "Product Added", 2, product_id="p1", price=20.0),
        make_event("a3", "alice", "Order Completed", 5, order_id="o1", revenue=20.0),
    ]


def processed(settings: Settings, clickhouse: Client, events: list[TrackedEvent]) -> Platform:
    platform = platform_on(settings, clickhouse)
    records = [(i, event.to_json()) for i, event in enumerate(events)]
    platform.pipeline().process(PartitionBatch(source="t.events#0", records=records))
    return platform


def test_consistent_stores_verify_clean_even_with_uncollapsed_replays(
    settings: Settings, clickhouse: Client
) -> None:
    events = storefront()
    platform = processed(settings, clickhouse, events)
    try:
        # A batch whose effects were written and whose commit never came is
        # written again on replay: identical rows, which FINAL collapses.
        platform.event_log.append(events[:2])
        report = verify(platform)
        assert report.clean, format_report(report)
        assert (report.journeys, report.events, report.rows) == (2, 4, 4)
        assert report.unmerged_rows == 2
        assert "the stores agree" in format_report(report)
    finally:
        platform.journeys.close()


def test_verify_names_a_second_row_of_an_event_a_lost_row_and_a_wrong_counter(
    settings: Settings, clickhouse: Client
) -> None:
    events = storefront()
    platform = processed(settings, clickhouse, events)
    db = settings.clickhouse_database
    try:
        # A re-send with a new receive time that reached the log: a second row under FINAL.
        resent = replace(events[1], timestamp=events[1].timestamp + timedelta(hours=1))
        platform.event_log.append([resent])
        # A row gone from the log, a counter that is off, a row of nobody's journey.
        clickhouse.command(
            f"DELETE FROM {db}.events WHERE event_id = 'a2'",
            settings={"lightweight_delete_mode": "lightweight_update"},
        )
        alice = platform.journeys.journey("alice")
        assert alice is not None
        platform.stages.upsert([{**alice.summary(), "event_count": 9, "version": 99}])
        platform.event_log.append([make_event("z1", "zed", "Product Viewed", 9)])
        report = verify(platform)
        text = format_report(report)
        assert not report.clean
        found = report.differences

        def named(text: str) -> bool:
            return any(text in difference for difference in found)

        assert named("events: bob has event id 'b1' (source '') in 2 rows")
        assert named("events: bob has 1 rows its journey did not record: b1")
        assert named("events: alice lacks 1 of its journey's events: a2")
        assert named("customer_stages: alice counts 9 events, its journey recorded 3")
        assert named("events: zed has 1 rows and no journey")
        assert len(report.differences) == 5, text
        assert "5 differences between the stores" in text
    finally:
        platform.journeys.close()
