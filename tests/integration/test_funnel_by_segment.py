"""Funnels broken down by segment membership at the customer's first step-1 event (chdb).

The rule: a customer is "in" when the segment's recorded changes say they were
a member at the instant of their first event matching step 1 in the range
(the last change at or before it is an entry), else "not in".
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from clickhouse_connect.driver.client import Client

from events import EventType
from journeys.funnels import Funnel, FunnelStep
from journeys.segment_state import MembershipChange, to_ms
from projections.analytics.funnels import FunnelQueries
from projections.analytics.reports import Period, Reports, RetentionMode
from projections.event_log import EventLog
from projections.migrations import migrate
from projections.segment_changes import SegmentChangeLog
from tests.conftest import T0, make_event

pytestmark = pytest.mark.integration

MINUTE = timedelta(minutes=1)


def at(minutes: int) -> int:
    return to_ms(T0 + minutes * MINUTE)


@pytest.mark.parametrize("by", ["name", "type"])
def test_a_funnel_breaks_down_by_membership_at_the_first_step(clickhouse: Client, by: str) -> None:
    db = f"db_{uuid.uuid4().hex[:12]}"
    migrate(clickhouse, db)
    EventLog(clickhouse, db).append(
        [
            make_event("a1", "ann", "Product Viewed", 10),
            make_event("a2", "ann", "Order Completed", 20, order_id="a", revenue=5),
            make_event("b1", "bob", "Product Viewed", 5),
            make_event("b2", "bob", "Order Completed", 30, order_id="b", revenue=5),
            make_event("c1", "cat", "Product Viewed", 1),
            make_event("d1", "dan", "Product Viewed", 4),
            make_event("d2", "dan", "Order Completed", 6, order_id="d", revenue=5),
            make_event("e1", "eve", "Product Viewed", 2),
            make_event("e2", "eve", "Product Viewed", 50),
        ]
    )
    SegmentChangeLog(clickhouse, db).append(
        [
            ("ann", MembershipChange("vip", True, at(0))),  # in before her first view
            ("bob", MembershipChange("vip", True, at(15))),  # entered after his first view
            ("dan", MembershipChange("vip", True, at(0))),
            ("dan", MembershipChange("vip", False, at(3))),  # left before his first view
            ("eve", MembershipChange("vip", True, at(2))),  # entered at the view's instant
            ("ann", MembershipChange("other", False, at(1))),  # another segment: ignored
        ]
    )
    if by == "name":
        steps = (FunnelStep(event_name="Product Viewed"), FunnelStep(event_name="Order Completed"))
    else:
        steps = (
            FunnelStep(event_type=EventType.BROWSE),
            FunnelStep(event_type=EventType.PURCHASE),
        )
    report = FunnelQueries(clickhouse, db).run(
        Funnel(steps=steps, window=timedelta(days=1), breakdown_segment="vip")
    )
    assert report.breakdown is not None
    counts = {group: [s.customers for s in stats] for group, stats in report.breakdown.items()}
    assert counts == {"in": [2, 1], "not in": [3, 2]}  # in: ann, eve; not in: bob, cat, dan
    assert [s.customers for s in report.steps] == [5, 3]


@pytest.mark.parametrize("mode", [RetentionMode.FIRST_TIME, RetentionMode.RECURRING])
def test_retention_breaks_down_by_membership_at_the_cohort_first_event(
    clickhouse: Client, mode: RetentionMode
) -> None:
    """Daily cohorts of views, returns by orders; each cohort entry grouped by membership at
    the customer's first view of the cohort's day."""
    db = f"db_{uuid.uuid4().hex[:12]}"
    migrate(clickhouse, db)
    day = 24 * 60
    EventLog(clickhouse, db).append(
        [
            make_event("a1", "ann", "Product Viewed", 10),
            make_event("a2", "ann", "Order Completed", day + 10, order_id="a", revenue=5),
            make_event("b1", "bob", "Product Viewed", 5),
            make_event("b2", "bob", "Product Viewed", day + 5),  # bob's second cohort entry
            make_event("b3", "bob", "Order Completed", 2 * day + 5, order_id="b", revenue=5),
            make_event("c1", "cat", "Product Viewed", 1),
        ]
    )
    SegmentChangeLog(clickhouse, db).append(
        [
            ("ann", MembershipChange("vip", True, at(0))),  # in at her first view
            ("bob", MembershipChange("vip", True, at(600))),  # entered after day 0's view
            ("cat", MembershipChange("vip", True, at(1))),  # entered at the view's instant
        ]
    )
    reports = Reports(clickhouse, db)
    args = (
        FunnelStep(event_name="Product Viewed"),
        FunnelStep(event_name="Order Completed"),
        Period.DAY,
        mode,
        3,
    )
    overall, groups = reports.retention_by_segment(*args, "vip")
    table = {g: [(c.size, c.retained) for c in cohorts] for g, cohorts in groups.items()}
    if mode is RetentionMode.FIRST_TIME:
        # Day 0: ann, cat in; bob not in. Ann back on day 1, bob on day 2.
        assert table == {"in": [(2, [1, 0, 0])], "not in": [(1, [0, 1, 0])]}
    else:
        # Bob's day-1 entry: he was in by then, back the next day.
        assert table == {
            "in": [(2, [1, 0, 0]), (1, [1, 0, 0])],
            "not in": [(1, [0, 1, 0])],
        }
    # The groups add up to the plain table.
    plain = reports.retention(*args)
    assert [(c.start, c.size, c.retained) for c in overall] == [
        (c.start, c.size, c.retained) for c in plain
    ]
