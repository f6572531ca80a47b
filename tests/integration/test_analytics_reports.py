"""Retention, paths, trends, stage flow and RFM against the plain-Python reference."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import pytest
from clickhouse_connect.driver.client import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import TrackedEvent
from journeys.domainmodel import StageChange
from journeys.funnels import FunnelStep
from journeys.stages import PROGRESSION, Stage
from projections.analytics import QueryProblem, reference
from projections.analytics.reports import Period, Reports, RetentionMode, segment, tier
from projections.event_log import EventLog
from tests.integration.analytics_data import CUSTOMERS, CUTS, T0, database, event_lists, steps

pytestmark = pytest.mark.integration

FAST = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
COPIES = st.lists(st.integers(0, 100), max_size=5)


def logged(events: list[TrackedEvent], *named: FunnelStep) -> bool:
    """Whether every step given by name names an event in ``events``."""
    names = {e.event_name for e in events}
    return all(step.event_name is None or step.event_name in names for step in named)


@FAST
@given(
    events=event_lists(days=70),
    copies=COPIES,
    cut=CUTS,
    start=steps(),
    back=steps(),
    period=st.sampled_from(list(Period)),
    mode=st.sampled_from(list(RetentionMode)),
    periods=st.integers(1, 4),
)
def test_retention_equals_the_reference(
    clickhouse: Client,
    events: list[TrackedEvent],
    copies: list[int],
    cut: int,
    start: FunnelStep,
    back: FunnelStep,
    period: Period,
    mode: RetentionMode,
    periods: int,
) -> None:
    with database(clickhouse, events, copies, cut) as db:
        reports = Reports(clickhouse, db)
        if not logged(events, start, back):
            with pytest.raises(QueryProblem, match="no event named"):
                reports.retention(start, back, period, mode, periods)
            return
        got = reports.retention(start, back, period, mode, periods)
        assert got == reference.retention(events, start, back, period, mode, periods)


@FAST
@given(
    events=event_lists(),
    copies=COPIES,
    cut=CUTS,
    anchor=steps(),
    direction=st.sampled_from(["next", "previous"]),
    n=st.integers(1, 3),
    limit=st.integers(1, 5),
)
def test_paths_equal_the_reference(
    clickhouse: Client,
    events: list[TrackedEvent],
    copies: list[int],
    cut: int,
    anchor: FunnelStep,
    direction: str,
    n: int,
    limit: int,
) -> None:
    with database(clickhouse, events, copies, cut) as db:
        reports = Reports(clickhouse, db)
        if not logged(events, anchor):
            with pytest.raises(QueryProblem, match="no event named"):
                reports.paths(anchor, direction, n, limit)
            return
        got = reports.paths(anchor, direction, n, limit)
        assert got == reference.paths(events, anchor, direction, n, limit)


@FAST
@given(
    events=event_lists(days=3, names=("Order Completed", "Order Completed", "Product Viewed")),
    copies=COPIES,
    cut=CUTS,
    as_of_minutes=st.integers(0, 5000),
)
def test_trends_and_rfm_equal_the_reference(
    clickhouse: Client,
    events: list[TrackedEvent],
    copies: list[int],
    cut: int,
    as_of_minutes: int,
) -> None:
    as_of = T0 + timedelta(minutes=as_of_minutes)
    with database(clickhouse, events, copies, cut) as db:
        reports = Reports(clickhouse, db)
        assert reports.trends(None, None) == reference.trends(events)
        expected = reference.rfm(events, as_of)
        assert reports.rfm(as_of) == expected
        for customer in CUSTOMERS:
            mine = [row for row in expected if row.customer_key == customer]
            assert reports.customer_rfm(customer, as_of) == (mine[0] if mine else None)


@st.composite
def stage_changes(draw: st.DrawFn) -> list[StageChange]:
    # The journey reaches a given stage at most once at a given instant, so
    # (customer, at, stage) — the table's key — is unique among distinct changes;
    # re-sent identical rows are drawn separately (``resend``).
    changes = []
    keys = set()
    for i in range(draw(st.integers(0, 20))):
        stage = draw(st.sampled_from(list(Stage)))
        previous = draw(st.sampled_from([None, *(s for s in Stage if s is not stage)]))
        customer = draw(st.sampled_from(CUSTOMERS))
        at = T0 + timedelta(minutes=draw(st.integers(0, 30)))
        if (customer, at, stage) in keys:
            continue
        keys.add((customer, at, stage))
        changes.append(
            StageChange(
                customer_key=customer,
                stage=stage,
                previous=previous,
                reason="test",
                at_event_id=f"e{i}",
                at=at,
            )
        )
    return changes


@FAST
@given(
    changes=stage_changes(), resend=st.booleans(), lo=st.integers(0, 30), span=st.integers(1, 30)
)
def test_stage_flow_and_stage_funnel_equal_the_reference(
    clickhouse: Client, changes: list[StageChange], resend: bool, lo: int, span: int
) -> None:
    start, end = T0 + timedelta(minutes=lo), T0 + timedelta(minutes=lo + span)
    with database(clickhouse, [], []) as db:
        log = EventLog(clickhouse, db)
        log.append_stage_changes(changes)
        if resend:
            log.append_stage_changes(changes)
        unique = {(c.customer_key, c.at, c.stage): c for c in reversed(changes)}
        inside = [c for c in unique.values() if start <= c.at < end]
        flow: dict[tuple[str, str], int] = defaultdict(int)
        reached: dict[str, set[str]] = defaultdict(set)
        for c in inside:
            flow[(c.previous.value if c.previous else "", c.stage.value)] += 1
            reached[c.stage.value].add(c.customer_key)
        reports = Reports(clickhouse, db)
        assert reports.stage_flow(start, end) == [(p, s, n) for (p, s), n in sorted(flow.items())]
        assert reports.stage_funnel(start, end) == [
            (s.value, len(reached[s.value])) for s in PROGRESSION
        ]


def test_segments_and_tiers_cover_every_score() -> None:
    names = {segment(r, f) for r in range(1, 6) for f in range(1, 6)}
    assert names == {
        "champions",
        "loyal",
        "cannot_lose",
        "at_risk",
        "new_customers",
        "potential_loyalists",
        "hibernating",
    }
    assert segment(5, 5) == "champions" and segment(1, 1) == "hibernating"
    assert segment(2, 4) == "at_risk"
    assert [tier(5, 5), tier(3, 2), tier(1, 1)] == ["high_value", "medium", "low_activity"]


def test_bad_report_questions_are_named(clickhouse: Client) -> None:
    with database(clickhouse, [], []) as db:
        reports = Reports(clickhouse, db)
        anchor = FunnelStep(event_name="Product Viewed")
        with pytest.raises(QueryProblem, match="steps"):
            reports.paths(anchor, "next", 9)
        with pytest.raises(QueryProblem, match="direction"):
            reports.paths(anchor, "sideways", 2)
        with pytest.raises(QueryProblem, match="periods"):
            reports.retention(anchor, anchor, Period.DAY, RetentionMode.RECURRING, 0)
