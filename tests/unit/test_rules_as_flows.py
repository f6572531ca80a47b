"""The trigger rules as flows: each shipped lifecycle flow replays its rule's scenarios
with the sends (instants, channels) and suppressions written out (what the rule engine
decided, before it was removed), and migrating the rules that shipped
(tests/data/lifecycle_rules.toml) gives the shipped flows."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from events import TrackedEvent, event_type_for
from journeys.flows.backtest import run_history
from journeys.flows.definitions import FlowCatalog, parse_flow
from journeys.flows.engine import FlowEngine, FlowState
from journeys.flows.facts import FlowFact, Sent, Skipped
from journeys.flows.inputs import (
    FlowInput,
    StageInput,
    rfm_segment_inputs,
    to_ms,
    tracked_input,
)
from journeys.flows.migration import flows_from_rules, flows_toml
from journeys.outreach_rules import parse_rules
from journeys.triggers import CustomerFacts

ROOT = Path(__file__).parents[2]
RULES_FILE = ROOT / "tests/data/lifecycle_rules.toml"
RULES = {r.id: r for r in parse_rules(tomllib.loads(RULES_FILE.read_text()))}
SHIPPED = tomllib.loads((ROOT / "journeys/flows.toml").read_text())["flows"]
LIFECYCLE = [rule_id for rule_id in RULES if rule_id != "abandoned_cart"]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = 24 * 60
GRACE = timedelta(minutes=15)


def touch(
    n: int, event: str, minutes: float, call_type: str = "track", **props: Any
) -> TrackedEvent:
    at = T0 + timedelta(minutes=minutes)
    context = props.pop("_context", {})
    return TrackedEvent(
        event_id=f"e{n}",
        customer_key="c1",
        call_type=call_type,
        event_type=event_type_for(call_type, event),
        event_name=event,
        timestamp=at,
        received_at=at,
        properties=props,
        context=context,
    )


@dataclass(frozen=True)
class Stage:
    stage: str
    minutes: float


@dataclass(frozen=True)
class Segment:
    """The worker's RFM scan saw this segment at ``minutes`` (after the events before)."""

    segment: str
    minutes: float


Step = TrackedEvent | Stage | Segment


def _at(step: Step) -> datetime:
    return (
        step.timestamp if isinstance(step, TrackedEvent) else T0 + timedelta(minutes=step.minutes)
    )


def flow_outcomes(
    flow_id: str, table: dict[str, Any], steps: Sequence[Step], until: float
) -> list[tuple[Any, ...]]:
    """The flow's sends grouped by instant (one rule trigger went to all its channels)
    and its suppressions, over the same history."""
    inputs: list[FlowInput] = []
    facts = CustomerFacts("c1")  # what the worker's scan stamps RFM segments by
    segment: str | None = None
    for step in steps:
        if isinstance(step, TrackedEvent):
            facts.observe(step)
            inputs.append(tracked_input(step))
        elif isinstance(step, Stage):
            inputs.append(StageInput(f"stage{step.minutes}", to_ms(_at(step)), step.stage))
        else:
            # Observed at the scan's instant; stamped by the order that earned the place.
            for item in rfm_segment_inputs(segment, step.segment, facts.latest_order()):
                inputs.append(item)
            segment = step.segment
    enabled = {**table, "enabled": True}
    engine = FlowEngine(FlowCatalog.of([parse_flow(flow_id, enabled)]))  # type: ignore[list-item]
    found, _ = run_history(engine, flow_id, "c1", inputs, to_ms(T0 + timedelta(minutes=until)))
    return _grouped(found)


def _grouped(found: list[FlowFact]) -> list[tuple[Any, ...]]:
    sends: dict[int, list[str]] = {}
    outcomes: list[tuple[Any, ...]] = []
    for fact in found:
        if isinstance(fact, Sent):
            if fact.at_ms not in sends:
                sends[fact.at_ms] = []
                outcomes.append(("sent", fact.at_ms, sends[fact.at_ms]))
            sends[fact.at_ms].append(fact.channel)
        elif isinstance(fact, Skipped) and fact.reason == "cap" and fact.channel == "webhook":
            outcomes.append(("capped", fact.at_ms))
    return [(o[0], o[1], tuple(o[2])) if o[0] == "sent" else o for o in outcomes]


def ms(minutes: float) -> int:
    return to_ms(T0 + timedelta(minutes=minutes))


BERLIN = {"_context": {"timezone": "Europe/Berlin"}}
# Each rule's scenarios (the rule engine's tests', and the suppressions), with the sends
# the rule made: the flow decides the same.
SCENARIOS: dict[str, list[tuple[list[Step], float, list[tuple[Any, ...]]]]] = {
    "review_request": [
        # Two orders ten days apart: a request 7 days after each.
        (
            [touch(1, "Order Completed", 0, revenue=60), touch(2, "Order Completed", 10 * DAY)],
            30 * DAY,
            [
                ("sent", ms(7 * DAY), ("webhook", "email")),
                ("sent", ms(17 * DAY), ("webhook", "email")),
            ],
        ),
        # Refunded after the order: none.
        (
            [touch(1, "Order Completed", 0), touch(2, "Order Refunded", DAY)],
            30 * DAY,
            [],
        ),
        # Due at 21:30 in Berlin (quiet hours): held until 08:00 there.
        (
            [touch(1, "Order Completed", 8.5 * 60, **BERLIN)],
            30 * DAY,
            [("sent", to_ms(datetime(2026, 3, 9, 7, 0, tzinfo=UTC)), ("webhook", "email"))],
        ),
        # A second order before the first request was due: one request, 7 days after it.
        (
            [touch(1, "Order Completed", 0), touch(2, "Order Completed", 3 * DAY)],
            30 * DAY,
            [("sent", ms(10 * DAY), ("webhook", "email"))],
        ),
    ],
    "satisfaction_survey": [
        (
            [
                touch(1, "Ticket Created", 10 * DAY, ticket_id="t1"),
                touch(2, "Ticket Resolved", 10 * DAY + 30, ticket_id="t1"),
            ],
            20 * DAY,
            [("sent", ms(10 * DAY + 90), ("webhook", "email"))],
        ),
        # A new ticket within the hour: no survey for the one resolved.
        (
            [
                touch(1, "Ticket Resolved", 0, ticket_id="t1"),
                touch(2, "Ticket Created", 20, ticket_id="t2"),
            ],
            DAY,
            [],
        ),
    ],
    "ticket_escalation": [
        (
            [touch(1, "Ticket Created", 10 * DAY, ticket_id="t1")],
            20 * DAY,
            [("sent", ms(12 * DAY), ("webhook",))],
        ),
        (
            [
                touch(1, "Ticket Created", 10 * DAY, ticket_id="t1"),
                touch(2, "Ticket Resolved", 10 * DAY + 30, ticket_id="t1"),
            ],
            20 * DAY,
            [],
        ),
        # Two open, the older resolved: the younger's 48 hours.
        (
            [
                touch(1, "Ticket Created", 0, ticket_id="t1"),
                touch(2, "Ticket Created", 600, ticket_id="t2"),
                touch(3, "Ticket Resolved", 1200, ticket_id="t1"),
            ],
            10 * DAY,
            [("sent", ms(600 + 2 * DAY), ("webhook",))],
        ),
    ],
    "repurchase_reminder": [
        (
            [touch(1, "Order Completed", 0), touch(2, "Order Completed", 10 * DAY)],
            40 * DAY,
            [("sent", ms(20 * DAY), ("webhook", "email"))],
        ),
        ([touch(1, "Order Completed", 0)], 40 * DAY, []),
        # A third order before the second's cycle came due: one cycle (7.5 days) on from
        # it, 00:00 UTC, in the quiet hours: at their end.
        (
            [
                touch(1, "Order Completed", 0),
                touch(2, "Order Completed", 10 * DAY),
                touch(3, "Order Completed", 15 * DAY),
            ],
            40 * DAY,
            [("sent", ms(22.5 * DAY + 8 * 60), ("webhook", "email"))],
        ),
    ],
    "win_back": [
        (
            [
                touch(1, "Order Completed", 10 * DAY),
                Stage("loyalty", 10 * DAY),
                touch(2, "Product Viewed", 10 * DAY + 30),
            ],
            100 * DAY,
            [("sent", ms(70 * DAY + 30), ("webhook", "email"))],
        ),
        # Reached on imported events: nothing until live activity.
        (
            [
                touch(1, "Order Completed", 0, _context={"historical": True}),
                touch(2, "Order Completed", 60, _context={"historical": True}),
                Stage("loyalty", 60),
                touch(3, "Product Viewed", 90),
            ],
            100 * DAY,
            [("sent", ms(60 * DAY + 90), ("webhook", "email"))],
        ),
        # Back within the 60 days: the clock restarts from the new activity.
        (
            [
                touch(1, "Order Completed", 0),
                Stage("loyalty", 0),
                touch(2, "Product Viewed", 50 * DAY),
            ],
            120 * DAY,
            [("sent", ms(110 * DAY), ("webhook", "email"))],
        ),
    ],
    "birthday": [
        (
            [touch(1, "Identify", 0, "identify", birthday="1990-03-05", timezone="Asia/Tokyo")],
            400 * DAY,
            [
                ("sent", to_ms(datetime(2026, 3, 5, 0, 0, tzinfo=UTC)), ("webhook", "email")),
                ("sent", to_ms(datetime(2027, 3, 5, 0, 0, tzinfo=UTC)), ("webhook", "email")),
            ],
        ),
        # Known on the day after 09:00 local: the next year's.
        (
            [touch(1, "Identify", 0, "identify", birthday="1990-03-01")],
            400 * DAY,
            [("sent", to_ms(datetime(2027, 3, 1, 9, 0, tzinfo=UTC)), ("webhook", "email"))],
        ),
    ],
    "high_value_welcome": [
        # Loyal, then a champion on a later order: welcomed at that order; out and in again
        # on a newer order is capped; out and in with no new order is nothing.
        (
            [
                touch(1, "Order Completed", 0, revenue=50),
                Segment("loyal", 5),
                touch(2, "Order Completed", 30, revenue=70),
                Segment("champions", 35),
                Segment("loyal", 40),
                touch(3, "Order Completed", 60, revenue=10),
                Segment("champions", 65),
                Segment("at_risk", 70),
                Segment("champions", 75),
            ],
            DAY,
            [("sent", ms(30), ("webhook", "email")), ("capped", ms(60))],
        ),
        # Earned by an imported order: never.
        (
            [
                touch(1, "Order Completed", 0, revenue=900, _context={"historical": True}),
                Segment("champions", 5),
            ],
            DAY,
            [],
        ),
    ],
}


@pytest.mark.parametrize(
    ("rule_id", "index"),
    [(rule_id, i) for rule_id, cases in SCENARIOS.items() for i in range(len(cases))],
)
def test_each_shipped_flow_decides_as_its_rule(rule_id: str, index: int) -> None:
    steps, until, expected = SCENARIOS[rule_id][index]
    assert flow_outcomes(rule_id, SHIPPED[rule_id], steps, until) == expected


def test_every_lifecycle_rule_has_a_shipped_flow_and_scenarios() -> None:
    assert sorted(SCENARIOS) == sorted(LIFECYCLE)
    assert all(SHIPPED[rule_id]["enabled"] is False for rule_id in LIFECYCLE)  # see flows.toml


def test_migrating_the_shipped_rules_gives_the_shipped_flows() -> None:
    migrated = flows_from_rules(list(RULES.values()))
    assert sorted(migrated) == sorted(RULES)
    for rule_id in LIFECYCLE:
        assert {**migrated[rule_id], "enabled": False} == SHIPPED[rule_id], rule_id
    # What the command writes parses back to the same tables.
    assert tomllib.loads(flows_toml(migrated, "migrated"))["flows"] == migrated


def test_the_migrated_abandoned_cart_rule_decides_as_the_rule() -> None:
    # Not the shipped canonical flow (that one waits for the cart's order, reminds, then
    # sends a coupon): the rule's own single reminder, one hour after the last activity.
    flow = flows_from_rules([RULES["abandoned_cart"]])["abandoned_cart"]
    both = ("webhook", "email")
    cases: list[tuple[list[Step], float, list[tuple[Any, ...]]]] = [
        (
            [
                touch(1, "Product Added", 0, product_id="p1", price=20, quantity=2),
                touch(2, "Product Added", 5, product_id="p2", price=5.5),
                touch(3, "Product Removed", 6, product_id="p2"),
                touch(4, "Product Added", 7, product_id="p3", price=1, cart_id="k1"),
            ],
            DAY,
            [("sent", ms(67), both)],  # an hour after the last activity
        ),
        # Bought within the hour; added before an order (that order's cart): nothing.
        (
            [touch(1, "Product Added", 0, product_id="p1"), touch(2, "Order Completed", 59)],
            DAY,
            [],
        ),
        (
            [touch(2, "Order Completed", 10), touch(1, "Product Added", 5, product_id="p1")],
            DAY,
            [],
        ),
        (
            [
                touch(1, "Product Added", 0, product_id="p1", price=1),
                touch(2, "Product Added", 90, product_id="p2", price=1),
                touch(3, "Product Added", 60 * 26, product_id="p3"),
            ],
            3 * DAY,
            # The second activity's clock falls in the first send's day: capped.
            [("sent", ms(60), both), ("capped", ms(150)), ("sent", ms(1620), both)],
        ),
    ]
    for steps, until, expected in cases:
        assert flow_outcomes("abandoned_cart", flow, steps, until) == expected, steps


def test_a_replayed_welcome_due_long_ago_expires_as_the_rule() -> None:
    # Earned by an order stamped long before the scan saw it (a replay): past the grace.
    flow = {**SHIPPED["high_value_welcome"], "enabled": True}
    engine = FlowEngine(
        FlowCatalog.of([parse_flow("high_value_welcome", flow)]),  # type: ignore[list-item]
        grace_ms=int(GRACE.total_seconds() * 1000),
    )
    facts = CustomerFacts("c1")
    order = touch(1, "Order Completed", 0, revenue=900)
    facts.observe(order)
    state = FlowState("c1", "high_value_welcome")
    wall = ms(3 * DAY)
    found = engine.observe(state, tracked_input(order), wall).facts
    found += engine.advance(state, wall, wall).facts
    for item in rfm_segment_inputs(None, "champions", facts.latest_order()):
        found += engine.observe(state, item, wall).facts
    found += engine.advance(state, wall, wall).facts
    assert [(f.reason, f.channel) for f in found if isinstance(f, Skipped)] == [
        ("expired", "webhook"),
        ("expired", "email"),
    ]
    assert not any(isinstance(f, Sent) for f in found)
