"""Funnels in ClickHouse against the plain-Python reference, on random timelines."""

from __future__ import annotations

from datetime import timedelta

import pytest
from clickhouse_connect.driver.client import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import EventType, TrackedEvent
from journeys.funnels import Funnel, FunnelStep, OrderMode
from projections.analytics import QueryProblem, reference
from projections.analytics.funnels import FunnelQueries, by_type
from tests.integration.analytics_data import CUTS, T0, database, event_lists, steps

pytestmark = pytest.mark.integration

IDENTIFY = EventType.IDENTIFY

FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def funnels(draw: st.DrawFn, filtered: bool = True) -> Funnel:
    """A random funnel: 2-4 steps, any mode, maybe exclusions, breakdown, date range."""
    mode = draw(st.sampled_from(list(OrderMode)))
    chosen = tuple(draw(st.lists(steps(filtered), min_size=2, max_size=4)))
    exclusions: tuple[FunnelStep, ...] = ()
    if mode is not OrderMode.STRICT and draw(st.booleans()):
        exclusions = (draw(steps(filtered)),)
    breakdown = draw(st.sampled_from([None, "category", "campaign"])) if filtered else None
    start = end = None
    if draw(st.booleans()):
        start = T0 + timedelta(minutes=draw(st.integers(0, 8)))
        end = start + timedelta(minutes=draw(st.integers(1, 12)))
    return Funnel(
        steps=chosen,
        window=timedelta(minutes=draw(st.sampled_from([1, 2, 3, 5, 10, 600]))),
        mode=mode,
        exclusions=exclusions,
        breakdown=breakdown,
        start=start,
        end=end,
    )


def check(
    clickhouse: Client, events: list[TrackedEvent], copies: list[int], cut: int, funnel: Funnel
) -> None:
    with database(clickhouse, events, copies, cut) as db:
        queries = FunnelQueries(clickhouse, db)
        names = {e.event_name for e in events}
        unknown = [s.event_name for s in funnel.steps + funnel.exclusions if s.event_name]
        if any(name not in names for name in unknown):
            with pytest.raises(QueryProblem, match="no event named"):
                queries.validate(funnel)
        got = queries.run(funnel)
        want = reference.funnel_report(events, funnel)
        assert got.steps == want.steps
        assert got.breakdown == want.breakdown
        for step in range(2, len(funnel.steps) + 1):
            total, page = queries.dropped(funnel, step, limit=1000, offset=0)
            expected = reference.dropped(events, funnel, step)
            assert (total, page) == (len(expected), expected)


@FAST
@given(
    events=event_lists(),
    copies=st.lists(st.integers(0, 100), max_size=5),
    cut=CUTS,
    funnel=funnels(),
)
def test_funnels_equal_the_reference(
    clickhouse: Client, events: list[TrackedEvent], copies: list[int], cut: int, funnel: Funnel
) -> None:
    """Any mode, filters, exclusions, breakdowns, date ranges; on the event log."""
    check(clickhouse, events, copies, cut, funnel)


@FAST
@given(
    events=event_lists(),
    copies=st.lists(st.integers(0, 100), max_size=5),
    cut=CUTS,
    funnel=funnels(filtered=False),
)
def test_funnels_from_customer_timelines_equal_the_reference(
    clickhouse: Client, events: list[TrackedEvent], copies: list[int], cut: int, funnel: Funnel
) -> None:
    """Type and name steps only: the pre-aggregated per-customer arrays answer."""
    source = FunnelQueries(clickhouse, "x").per_customer_sql(funnel, reference_params())[1]
    if by_type(funnel):
        assert source == "customer_type_times"
    elif funnel.mode is not OrderMode.STRICT:
        assert source == "customer_timelines"
    check(clickhouse, events, copies, cut, funnel)


@st.composite
def type_funnels(draw: st.DrawFn) -> Funnel:
    """Ordered funnels over types only (repeats allowed), maybe a date range."""
    chosen = tuple(
        FunnelStep(event_type=draw(st.sampled_from([t for t in EventType if t is not IDENTIFY])))
        for _ in range(draw(st.integers(2, 4)))
    )
    start = end = None
    if draw(st.booleans()):
        start = T0 + timedelta(minutes=draw(st.integers(0, 8)))
        end = start + timedelta(minutes=draw(st.integers(1, 12)))
    window = timedelta(minutes=draw(st.sampled_from([1, 2, 3, 5, 10, 600])))
    return Funnel(steps=chosen, window=window, start=start, end=end)


@FAST
@given(
    events=event_lists(),
    copies=st.lists(st.integers(0, 100), max_size=5),
    cut=CUTS,
    funnel=type_funnels(),
)
def test_ordered_funnels_by_type_equal_the_reference(
    clickhouse: Client, events: list[TrackedEvent], copies: list[int], cut: int, funnel: Funnel
) -> None:
    """The fast path: per-type time arrays of ``customer_type_times``, re-sent blocks too."""
    assert FunnelQueries(clickhouse, "x").per_customer_sql(funnel, reference_params())[1] == (
        "customer_type_times"
    )
    check(clickhouse, events, copies, cut, funnel)


def reference_params():  # type: ignore[no-untyped-def]
    from projections.analytics.sql import Params

    return Params()
