"""Segment and computed-trait definitions: parsing, validation, incremental evaluation."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest

from events.ecommerce import MAX_MONEY
from journeys.segment_definitions import DAY_MS, DefinitionError, parse_definitions
from journeys.segment_state import SegmentEvaluator, SegmentEvent, SegmentState

T0 = 1_780_000_000_000  # an instant in 2026, ms

EXAMPLE = """
[traits.lifetime_revenue]
op = "sum"
property = "revenue"
event = "Order Completed"

[traits.orders_90d]
op = "count"
event = "Order Completed"
within = "90d"

[traits.last_viewed_category]
op = "last"
property = "category"
event = "Product Viewed"

[traits.favourite_brand]
op = "most_frequent"
property = "brand"
type = "browse"

[traits.days_since_last_order]
op = "days_since_last"
event = "Order Completed"

[segments.shoe_lookers]
name = "Viewed shoes 3 times this week, no order"
where.and = [
  { event = "Product Viewed", properties = { category = "shoes" }, within = "7d", count = 3 },
  { event = "Order Completed", within = "7d", absent = true },
]

[segments.big_spenders]
name = "Spent over 500"
where = { trait = "lifetime_revenue", gt = 500 }

[segments.lapsing_loyal]
name = "Loyal, no order in 60 days"
where.and = [
  { stage = "loyalty" },
  { trait = "days_since_last_order", gte = 60 },
]

[segments.vip]
name = "Big spender on the pro plan"
where.and = [{ segment = "big_spenders" }, { identify = "plan", eq = "pro" }]
"""


def event(name: str, at: int, i: int, type_: str = "browse", **props: Any) -> SegmentEvent:
    return SegmentEvent(f"e{i:03}", at, name, type_, props)


def definitions() -> Any:
    return parse_definitions(tomllib.loads(EXAMPLE))


def test_the_example_parses_with_references_first() -> None:
    parsed = definitions()
    assert set(parsed.traits) == {
        "lifetime_revenue",
        "orders_90d",
        "last_viewed_category",
        "favourite_brand",
        "days_since_last_order",
    }
    order = list(parsed.segments)
    assert order.index("big_spenders") < order.index("vip")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {
                "segments": {
                    "cart_abandoners": {
                        "where": {"and": [{"event": "x"}, {"event": "y", "count": -1}]}
                    }
                }
            },
            "segments.cart_abandoners.where.and[1].count: must be an integer >= 0",
        ),
        (
            {"segments": {"s": {"where": {"event": "x", "within": "soon"}}}},
            "segments.s.where.within: must be a duration",
        ),
        (
            {"segments": {"s": {"where": {"type": "nope"}}}},
            "segments.s.where.type: must be one of browse",
        ),
        (
            {"segments": {"s": {"where": {"event": "x", "properties": {"price": {"gt": "a"}}}}}},
            "segments.s.where.properties.price.gt: must be a number",
        ),
        (
            {"segments": {"s": {"where": {"trait": "nope", "gt": 1}}}},
            "segments.s.where.trait: unknown trait 'nope'",
        ),
        (
            {"segments": {"s": {"where": {"stage": "asleep"}}}},
            "segments.s.where.stage: must be one of awareness",
        ),
        (
            {"traits": {"t": {"op": "sum", "event": "x"}}},
            "traits.t.property: is required for op sum",
        ),
        (
            {"traits": {"t": {"op": "median", "event": "x"}}},
            "traits.t.op: must be one of count",
        ),
        (
            {"segments": {"s": {"where": {"not": {"event": "x"}, "extra": 1}}}},
            "segments.s.where.extra: unknown field",
        ),
        (
            {"segments": {"s": {"where": {"trait": "x"}}}, "traits": {"x": {"op": "count"}}},
            "segments.s.where: needs exactly one of eq",
        ),
    ],
)
def test_errors_name_the_path_and_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definitions(raw)
    assert message in str(caught.value)
    assert caught.value.errors


def test_segments_that_refer_to_each_other_are_refused() -> None:
    raw = {
        "segments": {
            "a": {"where": {"segment": "b"}},
            "b": {"where": {"or": [{"segment": "c"}, {"event": "x"}]}},
            "c": {"where": {"segment": "a"}},
        }
    }
    with pytest.raises(DefinitionError, match="refer to each other: a -> b -> c -> a"):
        parse_definitions(raw)


def test_traits_over_a_customer_history() -> None:
    evaluator = SegmentEvaluator(definitions())
    state = SegmentState()
    history = [
        event("Product Viewed", T0, 1, category="shoes", brand="acme"),
        event("Product Viewed", T0 + 1000, 2, category="hats", brand="zed"),
        event("Product Viewed", T0 + 2000, 3, category="shoes", brand="acme"),
        event("Order Completed", T0 + 3000, 4, "purchase", revenue=300),
        event("Order Completed", T0 - 100 * DAY_MS, 5, "purchase", revenue=250),  # late, old
    ]
    evaluator.advance(state, history)
    values = evaluator.trait_values(state, T0 + 10 * DAY_MS)
    assert values == {
        "lifetime_revenue": 550.0,
        "orders_90d": 1,
        "last_viewed_category": "shoes",
        "favourite_brand": "acme",
        "days_since_last_order": 9,
    }


def test_entering_and_leaving_with_the_window() -> None:
    evaluator = SegmentEvaluator(definitions())
    state = SegmentState()
    views = [event("Product Viewed", T0 + i * 1000, i, category="shoes") for i in range(3)]
    changes = evaluator.advance(state, views)
    assert [(c.segment, c.entered, c.at_ms, c.event_id) for c in changes] == [
        ("shoe_lookers", True, T0 + 2000, "e002")
    ]
    # The first view leaves the 7-day window: that is when membership ends, not later.
    due = evaluator.next_change(state, T0 + 2000)
    assert due == T0 + 7 * DAY_MS
    later = event("Page Viewed", T0 + 30 * DAY_MS, 9)
    changes = evaluator.advance(state, [later])
    assert [(c.segment, c.entered, c.at_ms, c.event_id) for c in changes] == [
        ("shoe_lookers", False, T0 + 7 * DAY_MS, "")
    ]
    # An order within the week, arriving late, keeps a new run of views out.
    state = SegmentState()
    evaluator.advance(state, views)
    order = event("Order Completed", T0 + 500, 20, "purchase", revenue=10)
    changes = evaluator.advance(state, [order])
    assert [(c.segment, c.entered, c.at_ms) for c in changes] == [("shoe_lookers", False, T0 + 500)]


def test_stage_identify_traits_and_segment_references() -> None:
    evaluator = SegmentEvaluator(definitions())
    state = SegmentState()
    evaluator.advance(
        state,
        [
            event("Order Completed", T0, 1, "purchase", revenue=600),
            event("Identify", T0 + 1, 2, "identify", plan="pro"),
        ],
        stage="loyalty",
    )
    assert state.members == {"big_spenders", "vip"}
    assert evaluator.next_change(state, T0 + 1) == T0 + DAY_MS
    changes = evaluator.tick(state, T0 + 60 * DAY_MS)
    assert [(c.segment, c.entered, c.at_ms) for c in changes] == [
        ("lapsing_loyal", True, T0 + 60 * DAY_MS)
    ]
    evaluator.advance(state, [event("Identify", T0 + 61 * DAY_MS, 3, "identify", plan="free")])
    assert state.members == {"big_spenders", "lapsing_loyal"}


def test_values_an_older_gateway_let_through_never_break_a_trait() -> None:
    """NaN, inf and 1e307 (accepted before the bounds): not summed whole, state stays JSON."""
    evaluator = SegmentEvaluator(definitions())
    state = SegmentState()
    hostile = [float("nan"), float("inf"), float("-inf"), 1e307, 1e307]
    evaluator.advance(
        state,
        [
            event("Order Completed", T0 + i, i, "purchase", revenue=value)
            for i, value in enumerate(hostile)
        ],
    )
    again = SegmentState.from_dict(json.loads(json.dumps(state.to_dict(), allow_nan=False)))
    revenue = evaluator.trait_values(again, T0 + DAY_MS)["lifetime_revenue"]
    assert revenue == 2 * MAX_MONEY  # the two 1e307, clamped; NaN and inf left out
    assert "big_spenders" in evaluator.members(again, T0 + DAY_MS)


def test_state_round_trips_and_a_changed_definition_starts_afresh() -> None:
    evaluator = SegmentEvaluator(definitions())
    state = SegmentState()
    evaluator.advance(state, [event("Order Completed", T0, 1, "purchase", revenue=600)])
    again = SegmentState.from_dict(state.to_dict())
    assert again == state
    changed = tomllib.loads(EXAMPLE.replace('property = "revenue"', 'property = "total"'))
    other = SegmentEvaluator(parse_definitions(changed))
    other.forget_stale(again)
    assert "lifetime_revenue" not in again.traits
    assert other.trait_values(again, T0)["lifetime_revenue"] == 0.0


def test_state_stays_bounded_per_condition() -> None:
    evaluator = SegmentEvaluator(definitions())
    state = SegmentState()
    views = [event("Product Viewed", T0 + i, i, category="shoes", brand="b") for i in range(500)]
    evaluator.advance(state, views)
    (times,) = [v["t"] for v in state.conditions.values() if "t" in v]
    assert len(times) == 4  # count = 3: the newest 3 + 1 decide it


LOYAL_LAPSING = """
[segments.loyal_lapsing]
name = "Loyal but no order in 60 days"
where.and = [
  { stage = "loyalty" },
  { event = "Order Completed", within = "60d", absent = true },
]
"""


def test_a_stage_condition_reads_the_stage_of_each_instant_in_a_batch() -> None:
    """A page view, then the order that makes the shopper loyal, folded in one batch: at
    the view they were not loyal yet, so "loyal but no order in 60 days" never held (a
    flow on entering it would have sent a win-back to someone buying)."""
    evaluator = SegmentEvaluator(parse_definitions(tomllib.loads(LOYAL_LAPSING)))
    view = event("Product Viewed", T0, 1)
    order = event("Order Completed", T0 + 1000, 2, "purchase", revenue=10)
    state = SegmentState(stage="purchase")
    changes = evaluator.advance(state, [view, order], "loyalty", [(T0 + 1000, "loyalty")])
    assert changes == [] and state.stage == "loyalty"
    # Read with the stage after the batch throughout, the view was "loyal".
    throughout = SegmentState(stage="purchase")
    changes = evaluator.advance(throughout, [view, order], "loyalty")
    assert [(c.segment, c.entered, c.at_ms) for c in changes] == [
        ("loyal_lapsing", True, T0),
        ("loyal_lapsing", False, T0 + 1000),
    ]
    # Sixty days after the order they lapse, as ever.
    changes = evaluator.tick(state, T0 + 1000 + 61 * DAY_MS)
    assert [(c.segment, c.entered, c.at_ms) for c in changes] == [
        ("loyal_lapsing", True, T0 + 1000 + 60 * DAY_MS)
    ]
    # A stage after the batch that no event's instant carries (a merge) is taken last.
    merged = SegmentState(stage="purchase")
    changes = evaluator.advance(merged, [view], "loyalty", [(T0 - 5, "consideration")])
    assert merged.stage == "loyalty"
    assert [(c.segment, c.entered, c.at_ms, c.event_id) for c in changes] == [
        ("loyal_lapsing", True, T0, "")
    ]
