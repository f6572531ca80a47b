"""Property: a flow's decisions depend on the history, not on the order it arrived in.

Hypothesis draws one customer's history of the canonical abandoned cart
(carts, orders of this cart or another, identify calls with a time zone,
unsubscribes; ties included), delivers it in a random order, and advances the
state in random steps; the facts must equal those of the history taken in
event time (what the backtest does).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from journeys.flows.backtest import run_history
from journeys.flows.definitions import FlowCatalog, parse_flow
from journeys.flows.engine import FlowEngine, FlowState
from journeys.flows.facts import FlowFact
from journeys.flows.inputs import TrackedInput
from tests.unit.test_flows import MINUTE, T0

CART = tomllib.loads((Path(__file__).parents[2] / "journeys" / "flows.toml").read_text())
FLOW = parse_flow("abandoned_cart", CART["flows"]["abandoned_cart"])
assert FLOW is not None
HORIZON_MIN = 6 * 24 * 60
INSTANTS_MIN = [0, 30, 59, 60, 61, 120, 600, 1500, 1501, 1561, 2880, 4320, 4321, 7000, HORIZON_MIN]


@st.composite
def histories(draw: st.DrawFn) -> list[TrackedInput]:
    count = draw(st.integers(1, 12))
    items = []
    for n in range(count):
        # Few instants, on and around the flow's deadlines (1 h, 25 h, the 3-day goal),
        # so ties and inputs stamped exactly at a deadline are common.
        minute = draw(st.sampled_from(INSTANTS_MIN))
        kind = draw(st.sampled_from(["add", "add", "order", "identify", "unsubscribe"]))
        cart = draw(st.sampled_from(["k1", "k2"]))
        at = T0 + minute * MINUTE
        if kind == "add":
            item = TrackedInput(f"s/{n}", at, "product added", "cart", {"cart_id": cart})
        elif kind == "order":
            item = TrackedInput(f"s/{n}", at, "order completed", "purchase", {"cart_id": cart})
        elif kind == "identify":
            zone = draw(st.sampled_from(["Europe/Berlin", "America/New_York", "Asia/Tokyo"]))
            name = draw(st.sampled_from(["Ada", "Bo"]))
            item = TrackedInput(
                f"s/{n}", at, "identify", "identify", {"first_name": name}, False, zone
            )
        else:
            item = TrackedInput(f"s/{n}", at, "unsubscribed", "other", {"channel": "email"})
        items.append(item)
    return items


def dicts(facts: list[FlowFact]) -> list[dict[str, object]]:
    return [fact.to_dict() for fact in facts]


@settings(max_examples=200, deadline=None)
@given(
    history=histories(),
    order=st.randoms(use_true_random=False),
    stops=st.lists(st.integers(0, HORIZON_MIN), max_size=6),
    customer=st.sampled_from([f"c{i}" for i in range(30)]),
)
def test_arrival_order_and_advancing_in_steps_change_nothing(
    history: list[TrackedInput], order: object, stops: list[int], customer: str
) -> None:
    engine = FlowEngine(FlowCatalog.of([FLOW]))  # type: ignore[list-item]
    end = T0 + (HORIZON_MIN + 4 * 24 * 60) * MINUTE
    expected, _ = run_history(engine, "abandoned_cart", customer, history, end)
    arrived = list(history)
    order.shuffle(arrived)  # type: ignore[attr-defined]
    state = FlowState(customer, "abandoned_cart")
    facts: list[FlowFact] = []
    for item in arrived:
        facts += engine.observe(state, item).facts
    # Every input arrived before the state is advanced: none is late, whatever the steps.
    for stop in sorted(stops):
        facts += engine.advance(state, T0 + stop * MINUTE).facts
    facts += engine.advance(state, end).facts
    assert dicts(facts) == dicts(expected)
    # Saved and loaded between every step changes nothing either.
    again = FlowState(customer, "abandoned_cart")
    replayed: list[FlowFact] = []
    for item in arrived:
        again = FlowState.from_dict(again.to_dict())
        replayed += engine.observe(again, item).facts
    replayed += engine.advance(FlowState.from_dict(again.to_dict()), end).facts
    assert dicts(replayed) == dicts(expected)
