"""Funnels and retention filtered on computed traits (chdb, SQLite segment states).

The rule (docs/architecture.md, "Segments and computed traits"): a trait filter
keeps the customers whose computed trait, as the worker keeps it in their
stored segment state, meets the comparison **now** (rolling windows slid to the
request's instant). Here the states are folded by the worker's evaluator and
saved to a real segment store; the answers are compared with the reference
funnel and retention over the customers a plain-Python computation of each
trait admits.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from api.app import create_api
from api.dependencies import AccessKeys, Gateway
from events import EventType, TrackedEvent
from journeys.funnels import Funnel, FunnelStep, OrderMode
from journeys.segment_definitions import Comparison, TraitCondition, parse_definitions
from journeys.segment_state import SegmentEvaluator, SegmentState, segment_event_from
from projections.analytics import reference
from projections.analytics.funnels import FunnelQueries
from projections.analytics.reports import Period, Reports, RetentionMode
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.migrations import migrate
from projections.segment_changes import SegmentChangeLog
from projections.segment_reads import SegmentReads
from projections.segment_store import SegmentStore
from tests.conftest import T0, make_event
from tests.integration.test_analytics_api import READ, NoSink

pytestmark = pytest.mark.integration

TRAITS = {
    "lifetime_revenue": {"op": "sum", "event": "Order Completed", "property": "revenue"},
    "orders_30d": {"op": "count", "event": "Order Completed", "within": "30d"},
    "favourite_category": {"op": "most_frequent", "type": "browse", "property": "category"},
}
CATEGORIES = ("shoes", "bags", "hats")


def _history(rng: random.Random, now: datetime) -> list[TrackedEvent]:
    """40 customers over the last 120 days: views, carts, orders with revenue."""
    offset = (now - T0) / timedelta(minutes=1)
    events = []
    for c in range(40):
        customer = f"c{c:02d}"
        for n in range(rng.randint(1, 9)):
            minutes = offset - rng.uniform(0, 120 * 24 * 60)
            name = rng.choice(["Product Viewed"] * 3 + ["Product Added", "Order Completed"])
            props: dict[str, Any] = {"category": rng.choice(CATEGORIES)}
            if name == "Order Completed":
                props = {"order_id": f"{customer}-{n}", "revenue": rng.choice([40, 120, 300])}
            events.append(make_event(f"{customer}-{n}", customer, name, minutes, **props))
    return events


def _plain_traits(events: list[TrackedEvent], now: datetime) -> dict[str, dict[str, Any]]:
    """Each customer's traits at ``now``, computed straight from the events."""
    out: dict[str, dict[str, Any]] = {}
    for customer in {e.customer_key for e in events}:
        own = [e for e in events if e.customer_key == customer]
        orders = [e for e in own if e.event_name == "Order Completed"]
        views = Counter(e.properties["category"] for e in own if e.event_type == EventType.BROWSE)
        # most views; a tie goes to the smallest value
        ranked = sorted(views.items(), key=lambda kv: (-kv[1], kv[0]))
        out[customer] = {
            "lifetime_revenue": float(sum(e.properties["revenue"] for e in orders)),
            "orders_30d": sum(1 for e in orders if now - timedelta(days=30) < e.timestamp <= now),
            "favourite_category": ranked[0][0] if ranked else None,
        }
    return out


@pytest.fixture
def world(clickhouse: Client, tmp_path: Path) -> Any:
    db = f"db_{uuid.uuid4().hex[:12]}"
    migrate(clickhouse, db)
    now = datetime.now(UTC)
    events = _history(random.Random(17), now)
    EventLog(clickhouse, db).append(events)
    definitions = parse_definitions({"traits": TRAITS})
    evaluator = SegmentEvaluator(definitions)
    states: dict[str, SegmentState] = {}
    for e in events:
        state = states.setdefault(e.customer_key, SegmentState())
        evaluator.advance(state, [segment_event_from(e)])
    store = SegmentStore(sqlite_path=tmp_path / "events.sqlite")
    store.save([("events:0", 1, states)])
    reads = SegmentReads(definitions, store, SegmentChangeLog(clickhouse, db))
    yield clickhouse, db, events, now, reads
    store.close()
    clickhouse.command(f"DROP DATABASE {db}")


def _keep(
    events: list[TrackedEvent], plain: dict[str, dict[str, Any]], test: Callable[[Any], bool]
) -> list[TrackedEvent]:
    return [e for e in events if test(plain[e.customer_key])]


CASES: list[tuple[list[TraitCondition], Callable[[dict[str, Any]], bool]]] = [
    (
        [TraitCondition("t", "lifetime_revenue", Comparison("gt", 300))],
        lambda t: t["lifetime_revenue"] > 300,
    ),
    (
        [
            TraitCondition("t", "orders_30d", Comparison("gte", 1)),
            TraitCondition("t", "lifetime_revenue", Comparison("lte", 500)),
        ],
        lambda t: t["orders_30d"] >= 1 and t["lifetime_revenue"] <= 500,
    ),
    (
        [TraitCondition("t", "favourite_category", Comparison("in", ["shoes", "hats"]))],
        lambda t: t["favourite_category"] in ("shoes", "hats"),
    ),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("mode", [OrderMode.ORDERED, OrderMode.ANY_ORDER, OrderMode.STRICT])
def test_a_funnel_filtered_on_traits_equals_the_reference(
    world: Any, case: int, mode: OrderMode
) -> None:
    clickhouse, db, events, now, reads = world
    conditions, test = CASES[case]
    plain = _plain_traits(events, now)
    customers = reads.with_traits(conditions, now)
    assert customers == sorted(c for c, t in plain.items() if test(t))
    kept = _keep(events, plain, test)
    assert 0 < len(customers) < 40  # the filter keeps some and not all
    for steps in (
        (FunnelStep(event_name="Product Viewed"), FunnelStep(event_name="Order Completed")),
        (FunnelStep(event_name="Product Viewed"), FunnelStep(event_name="Product Added")),
    ):
        funnel = Funnel(steps=steps, window=timedelta(days=20), mode=mode)
        got = FunnelQueries(clickhouse, db).run(funnel, customers)
        want = reference.funnel_report(kept, funnel)
        assert [s.customers for s in got.steps] == [s.customers for s in want.steps]
        assert [s.median_seconds for s in got.steps] == [s.median_seconds for s in want.steps]
        total, page = FunnelQueries(clickhouse, db).dropped(funnel, 2, 1000, 0, customers)
        assert page == reference.dropped(kept, funnel, 2) and total == len(page)


def test_by_type_and_retention_filtered_on_traits(world: Any) -> None:
    clickhouse, db, events, now, reads = world
    conditions, test = CASES[0]
    plain = _plain_traits(events, now)
    customers = reads.with_traits(conditions, now)
    kept = _keep(events, plain, test)
    funnel = Funnel(
        steps=(FunnelStep(event_type=EventType.BROWSE), FunnelStep(event_type=EventType.PURCHASE)),
        window=timedelta(days=20),
    )
    got = FunnelQueries(clickhouse, db).run(funnel, customers)
    assert got.source == "customer_type_times"
    want = reference.funnel_report(kept, funnel)
    assert [s.customers for s in got.steps] == [s.customers for s in want.steps]
    args = (
        FunnelStep(event_name="Product Viewed"),
        FunnelStep(event_name="Order Completed"),
        Period.WEEK,
        RetentionMode.FIRST_TIME,
        8,
    )
    cohorts = Reports(clickhouse, db).retention(*args, customers=customers)
    expected = reference.retention(kept, *args)
    assert [(c.start, c.size, c.retained) for c in cohorts] == [
        (c.start, c.size, c.retained) for c in expected
    ]
    # An empty answer keeps nobody (not everybody).
    nobody = FunnelQueries(clickhouse, db).run(funnel, [])
    assert [s.customers for s in nobody.steps] == [0, 0]


def test_the_api_filters_a_funnel_on_a_trait(world: Any) -> None:
    clickhouse, db, events, now, reads = world
    gateway = Gateway(
        sink=NoSink(),
        keys=AccessKeys(write_keys=frozenset({"wk"}), read_keys=frozenset({"rk_test"})),
        event_log=EventLog(clickhouse, db),
        stages=CustomerStageView(clickhouse, db),
        segments=reads,
    )
    body = {
        "steps": [{"event": "Product Viewed"}, {"event": "Order Completed"}],
        "window_seconds": 20 * 86400,
        "trait_filters": [{"trait": "lifetime_revenue", "op": "gt", "value": 300}],
    }
    with TestClient(create_api(gateway)) as client:
        answer = client.post("/v1/funnels", json=body, headers=READ)
    assert answer.status_code == 200, answer.text
    test = CASES[0][1]
    funnel = Funnel(
        steps=(FunnelStep(event_name="Product Viewed"), FunnelStep(event_name="Order Completed")),
        window=timedelta(days=20),
    )
    want = reference.funnel_report(_keep(events, _plain_traits(events, now), test), funnel)
    assert [s["customers"] for s in answer.json()["steps"]] == [s.customers for s in want.steps]
