"""Journey flows, pure: definitions and their errors, the engine in event time, the tally."""

from __future__ import annotations

import copy
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from events import event_type_for
from journeys.flows.backtest import BacktestTally, run_history
from journeys.flows.definitions import (
    FlowCatalog,
    FlowError,
    flows_from_toml,
    parse_flow,
    parse_flows,
)
from journeys.flows.engine import FlowEngine, FlowState, render_message, sticky_bucket
from journeys.flows.facts import FlowFact, Left, Sent, Skipped, fact_from_dict
from journeys.flows.inputs import (
    FlowInput,
    SegmentInput,
    StageInput,
    TrackedInput,
    TraitsInput,
    input_from_dict,
    to_ms,
)
from journeys.flows.nodes import SendNode

T0 = to_ms(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))  # a Monday, 10:00 UTC
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
FLOWS_FILE = Path(__file__).parents[2] / "journeys" / "flows.toml"
CART = tomllib.loads(FLOWS_FILE.read_text())["flows"]["abandoned_cart"]


def ev(
    n: int | str, event: str, minutes: float, call_type: str = "track", /, **props: Any
) -> TrackedInput:
    return TrackedInput(
        event_id=f"src/e{n}",
        at_ms=T0 + int(minutes * MINUTE),
        name=event.strip().lower(),
        type=event_type_for(call_type, event).value,
        properties=props,
        historical=bool(props.pop("_historical", False)),
        timezone=str(props.pop("_timezone", "")),
    )


def customer(group: str, flow: str = "abandoned_cart", node: str = "holdout_split") -> str:
    """A customer key the split puts in ``group`` (holdout: bucket < 10)."""
    for i in range(1000):
        key = f"{group}-{i}"
        if (sticky_bucket(flow, node, "", key) < 10) == (group == "holdout"):
            return key
    raise AssertionError("no such customer")


def run(
    flows: list[dict[str, Any]] | dict[str, Any],
    inputs: list[FlowInput],
    until: float,
    key: str = "",
    flow_id: str = "abandoned_cart",
) -> tuple[list[FlowFact], FlowState]:
    tables = flows if isinstance(flows, list) else [flows]
    catalog = FlowCatalog.of(parse_flow(flow_id, table) for table in tables)  # type: ignore[misc]
    engine = FlowEngine(catalog)
    return run_history(
        engine, flow_id, key or customer("treatment"), inputs, T0 + int(until * MINUTE)
    )


def kinds(facts: list[FlowFact]) -> list[str]:
    return [f"{f.type}:{f.node}" for f in facts]


def sent(facts: list[FlowFact]) -> list[Sent]:
    return [f for f in facts if isinstance(f, Sent)]


def text(message: Sent, table: dict[str, Any], flow_id: str = "abandoned_cart") -> tuple[str, str]:
    """The message's subject and body, rendered as the delivery renders them."""
    flow = parse_flow(flow_id, table)
    assert flow is not None
    node = flow.nodes[message.node]
    assert isinstance(node, SendNode)
    return render_message(node, message.variables)


def left(facts: list[FlowFact]) -> Left:
    found = [f for f in facts if isinstance(f, Left)]
    assert len(found) == 1, kinds(facts)
    return found[0]


ADD = {"cart_id": "k1", "product_id": "p1", "name": "Mug", "price": 12.0}


# --- the canonical abandoned cart, branch by branch ----------------------------------------


def test_bought_within_the_hour_gets_nothing_and_converts() -> None:
    facts, state = run(
        CART,
        [ev(1, "Product Added", 0, **ADD), ev(2, "Order Completed", 40, cart_id="k1")],
        10 * 24 * 60,
    )
    assert sent(facts) == []
    assert kinds(facts)[:4] == [
        "Entered:cart_started",
        "NodeReached:holdout_split",
        "NodeReached:wait_for_order",
        "Waiting:wait_for_order",
    ]
    assert [f.type for f in facts][-2:] == ["GoalReached", "Left"]
    assert left(facts).reason == "converted" and left(facts).at_ms == T0 + 40 * MINUTE
    assert state.run is None


def test_bought_after_the_reminder_gets_the_reminder_only() -> None:
    facts, _ = run(
        CART, [ev(1, "Product Added", 0, **ADD), ev(2, "Order Completed", 150)], 10 * 24 * 60
    )
    (reminder,) = sent(facts)
    assert reminder.node == "reminder" and reminder.channel == "webhook"
    assert reminder.at_ms == T0 + HOUR  # due when the wait timed out, in event time
    assert text(reminder, CART)[1] == "Hi, Mug is still in your cart."
    assert left(facts).reason == "converted"


def test_never_bought_gets_reminder_then_coupon_and_leaves_when_the_goal_window_closes() -> None:
    facts, state = run(
        CART,
        [ev(0, "Identify", -5, "identify", first_name="Ada"), ev(1, "Product Added", 0, **ADD)],
        10 * 24 * 60,
    )
    reminder, coupon = sent(facts)
    assert (reminder.node, coupon.node) == ("reminder", "coupon")
    assert coupon.at_ms == T0 + HOUR + DAY and coupon.channel == "email"
    subject, body = text(coupon, CART)
    assert subject == "Ada, your cart is waiting: 10 % off"
    assert "Use the code CART10" in body and body.startswith("Hi Ada,")
    end = left(facts)
    assert (end.reason, end.at_ms, end.holdout) == ("completed", T0 + 3 * DAY, False)
    assert reminder.message_id != coupon.message_id and state.run is None


def test_the_holdout_gets_nothing_but_its_conversion_counts() -> None:
    key = customer("holdout")
    facts, _ = run(
        CART, [ev(1, "Product Added", 0, **ADD), ev(2, "Order Completed", 2000)], 10 * 24 * 60, key
    )
    assert sent(facts) == []
    skipped = [f for f in facts if isinstance(f, Skipped)]
    assert [(s.node, s.reason) for s in skipped] == [("reminder", "holdout"), ("coupon", "holdout")]
    end = left(facts)
    assert (end.reason, end.holdout, end.group) == ("converted", True, "holdout")


def test_the_split_is_sticky_and_near_its_percentages() -> None:
    keys = [f"c{i}" for i in range(4000)]
    holdout = [k for k in keys if sticky_bucket("abandoned_cart", "holdout_split", "", k) < 10]
    assert 0.08 < len(holdout) / len(keys) < 0.12
    again = [k for k in keys if sticky_bucket("abandoned_cart", "holdout_split", "", k) < 10]
    assert holdout == again


# --- event time ------------------------------------------------------------------------------


def engine_for(
    *tables: dict[str, Any], flow_id: str = "abandoned_cart", grace_ms: int | None = None
) -> FlowEngine:
    return FlowEngine(FlowCatalog.of(parse_flow(flow_id, t) for t in tables), grace_ms)  # type: ignore[misc]


def test_a_late_order_stamped_before_the_wait_ended_is_honoured() -> None:
    engine = engine_for(CART)
    state = FlowState(customer("treatment"), "abandoned_cart")
    facts = engine.observe(state, ev(1, "Product Added", 0, **ADD)).facts
    facts += engine.advance(state, T0 + 59 * MINUTE).facts
    # Arrives after the hour (wall time) but stamped at 58 min; the state was
    # not advanced past the hour yet (the worker waits until it has caught up).
    facts += engine.observe(state, ev(2, "Order Completed", 58, cart_id="k1")).facts
    facts += engine.advance(state, T0 + 3 * HOUR).facts
    assert sent(facts) == [] and left(facts).reason == "converted"


def test_an_order_pending_when_the_deadline_passes_is_taken_first() -> None:
    engine = engine_for(CART)
    state = FlowState(customer("treatment"), "abandoned_cart")
    engine.observe(state, ev(1, "Product Added", 0, **ADD))
    engine.advance(state, T0)
    engine.observe(state, ev(2, "Order Completed", 60, cart_id="k1"))  # at the deadline: in time
    step = engine.advance(state, T0 + 5 * HOUR)
    assert sent(step.facts) == [] and left(step.facts).reason == "converted"


def test_an_order_stamped_after_the_timeout_comes_after_the_reminder() -> None:
    engine = engine_for(CART)
    state = FlowState(customer("treatment"), "abandoned_cart")
    engine.observe(state, ev(1, "Product Added", 0, **ADD))
    engine.observe(state, ev(2, "Order Completed", 61))
    step = engine.advance(state, T0 + 5 * HOUR)
    assert [s.node for s in sent(step.facts)] == ["reminder"]
    assert left(step.facts).reason == "converted"


def test_the_wait_is_correlated_by_cart_id() -> None:
    flow = copy.deepcopy(CART)
    del flow["goal"]  # only the wait decides here
    other_cart = ev(2, "Order Completed", 30, cart_id="other")
    facts, _ = run(flow, [ev(1, "Product Added", 0, **ADD), other_cart], 3 * 24 * 60)
    assert [s.node for s in sent(facts)] == ["reminder", "coupon"]
    same_cart = ev(2, "Order Completed", 30, cart_id="k1")
    facts, _ = run(flow, [ev(1, "Product Added", 0, **ADD), same_cart], 3 * 24 * 60)
    assert sent(facts) == [] and left(facts).reason == "completed"


def test_history_never_enters_and_a_replayed_send_expires() -> None:
    facts, _ = run(CART, [ev(1, "Product Added", 0, _historical=True, **ADD)], 5 * 24 * 60)
    assert facts == []
    engine = engine_for(CART, grace_ms=15 * MINUTE)
    state = FlowState(customer("treatment"), "abandoned_cart")
    engine.observe(state, ev(1, "Product Added", 0, **ADD))
    step = engine.advance(state, T0 + 2 * HOUR, wall_now_ms=T0 + 30 * DAY)  # a replay, long after
    skipped = [f for f in step.facts if isinstance(f, Skipped)]
    assert [(s.node, s.reason) for s in skipped] == [("reminder", "expired")]
    assert sent(step.facts) == []


def test_decisions_do_not_depend_on_arrival_order_or_on_advancing_in_steps() -> None:
    history = [
        ev(0, "Identify", -10, "identify", first_name="Bo", _timezone="Europe/Paris"),
        ev(1, "Product Added", 0, **ADD),
        ev(2, "Product Added", 5, cart_id="k1", product_id="p2"),
        ev(3, "Order Completed", 200),
        ev(4, "Product Added", 9000, cart_id="k2"),
    ]
    expected, _ = run(CART, history, 20 * 24 * 60)
    engine = engine_for(CART)
    state = FlowState(customer("treatment"), "abandoned_cart")
    for item in reversed(history):
        engine.observe(state, item)
    facts: list[FlowFact] = []
    for stop in (30, 61, 200, 5000, 20 * 24 * 60):
        facts += engine.advance(state, T0 + stop * MINUTE).facts
    assert [f.to_dict() for f in facts] == [f.to_dict() for f in expected]


def test_a_state_saved_mid_run_continues_the_same() -> None:
    engine = engine_for(CART)
    key = customer("treatment")
    whole = FlowState(key, "abandoned_cart")
    engine.observe(whole, ev(1, "Product Added", 0, **ADD))
    first = engine.advance(whole, T0 + 2 * HOUR).facts
    saved = FlowState.from_dict(copy.deepcopy(whole.to_dict()))
    assert saved.to_dict() == whole.to_dict()
    rest = engine.advance(saved, T0 + 10 * DAY).facts
    assert [f.node for f in sent(first + rest)] == ["reminder", "coupon"]
    assert all(fact_from_dict(f.to_dict()) == f for f in first + rest)


# --- re-entry and versions -------------------------------------------------------------------


def simple(reentry: str, **extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "reentry": reentry,
        **extra,
        "nodes": {
            "start": {"kind": "entry", "event": "Product Added", "next": "hello"},
            "hello": {
                "kind": "send",
                "channel": "webhook",
                "body": "v{{ flow.version }}",
                "next": "pause",
            },
            "pause": {"kind": "wait", "duration": "1d"},
        },
    }


@pytest.mark.parametrize(
    ("reentry", "extra", "entered", "refused"),
    [
        ("never", {}, [0], 2),
        ("cooldown", {"cooldown": "7d"}, [0, 10], 1),
        ("always", {}, [0, 2, 10], 0),
    ],
)
def test_reentry_policies(
    reentry: str, extra: dict[str, Any], entered: list[int], refused: int
) -> None:
    days = [0, 0.5, 2, 10]  # 0.5: still inside (the wait lasts a day): never a second run
    inputs = [ev(i, "Product Added", d * 24 * 60) for i, d in enumerate(days)]
    facts, _ = run(simple(reentry, **extra), inputs, 20 * 24 * 60, key="c1", flow_id="f")
    assert [(f.at_ms - T0) // DAY for f in sent(facts)] == entered
    refusals = [f for f in facts if isinstance(f, Skipped) and f.reason == "reentry"]
    assert len(refusals) == refused
    assert all(f.node == "start" for f in refusals)


def test_customers_inside_finish_on_the_version_they_entered() -> None:
    v1 = simple("always")
    v2 = copy.deepcopy(v1)
    v2["version"] = 2
    v2["nodes"]["pause"]["duration"] = "2d"
    v2["nodes"]["hello"]["body"] = "second {{ flow.version }}"
    engine = FlowEngine(FlowCatalog.of([parse_flow("f", v1)]))  # type: ignore[list-item]
    inside = FlowState("c1", "f")
    engine.observe(inside, ev(1, "Product Added", 0))
    engine.advance(inside, T0 + HOUR)
    engine.catalog = engine.catalog.with_version(parse_flow("f", v2))  # type: ignore[arg-type]
    newcomer = FlowState("c2", "f")
    engine.observe(newcomer, ev(2, "Product Added", 60))
    new = engine.advance(newcomer, T0 + 5 * DAY).facts
    old = engine.advance(inside, T0 + 5 * DAY).facts
    assert [text(f, v2, "f")[1] for f in sent(new)] == ["second 2"]
    assert left(old).version == 1 and left(old).at_ms == T0 + DAY  # v1's one-day wait
    assert left(new).version == 2 and left(new).at_ms == T0 + HOUR + 2 * DAY
    gone = FlowEngine(FlowCatalog.of([parse_flow("f", v2)]))  # type: ignore[list-item]
    stranded = FlowState("c3", "f")
    only_v1 = FlowEngine(FlowCatalog.of([parse_flow("f", v1)]))  # type: ignore[list-item]
    only_v1.observe(stranded, ev(3, "Product Added", 0))
    only_v1.advance(stranded, T0 + MINUTE)
    assert left(gone.advance(stranded, T0 + 3 * DAY).facts).reason == "version_removed"


# --- sends: caps, quiet hours, consent, templates ---------------------------------------------


def two_sends(**extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        **extra,
        "nodes": {
            "start": {"kind": "entry", "event": "Product Added", "next": "one"},
            "one": {"kind": "send", "channel": "webhook", "body": "one", "next": "gap"},
            "gap": {"kind": "wait", "duration": "2h", "next": "two"},
            "two": {"kind": "send", "channel": "webhook", "body": "two"},
        },
    }


def test_frequency_cap_per_channel() -> None:
    facts, _ = run(two_sends(frequency_cap="3h"), [ev(1, "Product Added", 0)], 600, flow_id="f")
    assert [s.node for s in sent(facts)] == ["one"]
    (capped,) = [f for f in facts if isinstance(f, Skipped)]
    assert (capped.node, capped.reason, capped.detail) == (
        "two",
        "cap",
        "sent on webhook 7200 s before",
    )


def test_quiet_hours_defer_or_skip_in_the_customers_time_zone() -> None:
    quiet = {"start": "21:00", "end": "08:00"}
    # 20:30 in Berlin (UTC+1 in March) is 19:30 UTC: the second send (21:30 local) is quiet.
    start = 9 * 60 + 30
    entry = ev(1, "Product Added", start, _timezone="Europe/Berlin")
    facts, _ = run(two_sends(quiet_hours=quiet), [entry], 3 * 24 * 60, flow_id="f")
    one, two = sent(facts)
    assert one.at_ms == T0 + start * MINUTE
    assert two.at_ms == to_ms(datetime(2026, 3, 3, 7, 0, tzinfo=UTC))  # 08:00 in Berlin
    assert any(f.type == "Waiting" and getattr(f, "reason", "") == "quiet_hours" for f in facts)
    facts, _ = run(
        two_sends(quiet_hours={**quiet, "policy": "skip"}), [entry], 3 * 24 * 60, flow_id="f"
    )
    assert [s.node for s in sent(facts)] == ["one"]
    assert [(f.node, f.reason) for f in facts if isinstance(f, Skipped)] == [("two", "quiet_hours")]


def test_an_unsubscribed_channel_is_skipped_with_reason_consent() -> None:
    inputs = [ev(0, "Unsubscribed", -1, channel="webhook"), ev(1, "Product Added", 0)]
    facts, _ = run(two_sends(), inputs, 600, flow_id="f")
    assert sent(facts) == []
    assert {f.reason for f in facts if isinstance(f, Skipped)} == {"consent"}
    inputs += [ev(2, "Subscribed", 60, channel="webhook")]
    facts, _ = run(two_sends(), inputs, 600, flow_id="f")
    assert [s.node for s in sent(facts)] == ["two"]


def test_a_missing_trait_renders_its_documented_default() -> None:
    facts, _ = run(CART, [ev(1, "Product Added", 0, cart_id="k9")], 5 * 24 * 60)
    reminder, coupon = sent(facts)
    assert text(reminder, CART)[1] == "Hi, your item is still in your cart."
    assert text(coupon, CART)[0].startswith("Hello, your cart")


# --- triggers and branches -----------------------------------------------------------------------


def test_branch_on_trait_stage_and_segment_and_entry_on_a_segment() -> None:
    flow = {
        "version": 1,
        "exit": [{"stage": "lapsed"}],
        "nodes": {
            "vip": {"kind": "entry", "segment": "vip", "on": "entered", "next": "route"},
            "route": {
                "kind": "branch",
                "cases": [
                    {"when": {"trait": "plan", "eq": "pro"}, "next": "pro"},
                    {"when": {"and": [{"stage": "loyalty"}, {"segment": "vip"}]}, "next": "loyal"},
                ],
                "else": "other",
            },
            "pro": {"kind": "send", "channel": "webhook", "body": "pro", "next": "hold"},
            "loyal": {"kind": "send", "channel": "webhook", "body": "loyal", "next": "hold"},
            "other": {"kind": "send", "channel": "webhook", "body": "other", "next": "hold"},
            "hold": {"kind": "wait", "duration": "10d"},
        },
    }
    stage = StageInput("src/e0", T0 - MINUTE, "loyalty")
    entered = SegmentInput("src/e1", T0, "vip", True)
    facts, _ = run(flow, [stage, entered], 60, key="c1", flow_id="f")
    assert [text(s, flow, "f")[1] for s in sent(facts)] == ["loyal"]
    pro = ev(5, "Identify", -3, "identify", plan="pro")
    facts, state = run(flow, [stage, entered, pro], 60, key="c1", flow_id="f")
    assert [text(s, flow, "f")[1] for s in sent(facts)] == ["pro"] and state.run is not None
    lapsed = StageInput("src/e9", T0 + HOUR, "lapsed")
    facts, state = run(flow, [stage, entered, lapsed], 120, key="c1", flow_id="f")
    assert (left(facts).reason, left(facts).detail) == ("exit", "stage lapsed")


# Entered by an order; after a day, a branch on the computed trait the worker reported.
BIG_SPENDER = {
    "version": 1,
    "nodes": {
        "ordered": {"kind": "entry", "event": "Order Completed", "next": "later"},
        "later": {"kind": "wait", "duration": "1d", "next": "route"},
        "route": {
            "kind": "branch",
            "cases": [
                {
                    "when": {"computed_trait": "lifetime_revenue", "gt": 500},
                    "next": "thanks",
                }
            ],
            "else": "nudge",
        },
        "thanks": {
            "kind": "send",
            "channel": "webhook",
            "body": "{{ computed_traits.lifetime_revenue }} spent, "
            "{{ computed_traits.favourite_brand | default('no brand') }}",
        },
        "nudge": {"kind": "send", "channel": "webhook", "body": "nudge"},
    },
}


def traits(n: int, minutes: float, **values: Any) -> TraitsInput:
    return TraitsInput(f"src/e{n}", T0 + int(minutes * MINUTE), values)


def test_branch_on_a_computed_trait_at_the_decision_and_render_it() -> None:
    order = ev(1, "Order Completed", 0, order_id="o1")
    # The worker reported 420 after the order, then 620 after another order at 12 h.
    history = [
        order,
        traits(1, 0, lifetime_revenue=420.0),
        traits(2, 12 * 60, lifetime_revenue=620),
    ]
    facts, state = run(BIG_SPENDER, history, 2 * 24 * 60, key="c1", flow_id="f")
    (message,) = sent(facts)
    assert message.node == "thanks" and message.at_ms == T0 + DAY
    assert text(message, BIG_SPENDER, "f")[1] == "620 spent, no brand"
    assert message.variables["computed_traits"] == {"lifetime_revenue": 620}
    assert state.computed == [{"lifetime_revenue": 620}, T0 + 12 * HOUR]
    # A value reported after the decision's instant does not count (event time decides),
    # whatever order the inputs arrive in: the later report comes first here.
    late = [traits(2, 25 * 60, lifetime_revenue=620), order, traits(1, 0, lifetime_revenue=420.0)]
    facts, _ = run(BIG_SPENDER, late, 2 * 24 * 60, key="c1", flow_id="f")
    assert [text(s, BIG_SPENDER, "f")[1] for s in sent(facts)] == ["nudge"]
    # No value reported: the comparison is false and the template's default renders.
    facts, _ = run(BIG_SPENDER, [order], 2 * 24 * 60, key="c1", flow_id="f")
    assert [s.node for s in sent(facts)] == ["nudge"]
    # A report is an input kept in the state and read back as it was written.
    item = traits(3, 5, lifetime_revenue=1.5, favourite_brand="acme")
    assert input_from_dict(item.to_dict()) == item


def test_wanting_answers_as_wants_per_flow_and_follows_the_catalog() -> None:
    """The live runner asks ``wanting`` once per input over all the flows: the same flows,
    in the same order, as asking ``wants`` of each (whatever the input's kind)."""
    on = FLOWS_FILE.read_text().replace("enabled = false", "enabled = true")
    shipped = flows_from_toml(on)  # the lifecycle flows (sharing memory) on
    page = copy.deepcopy(simple("always"))
    page["nodes"]["start"] = {"kind": "entry", "type": "browse", "next": "hello"}
    costly = copy.deepcopy(simple("always"))
    costly["nodes"]["start"] = {
        "kind": "entry",
        "event": "Order Completed",
        "properties": {"revenue": {"gt": 100}},
        "next": "hello",
    }
    catalog = FlowCatalog.of(
        [
            *shipped,
            parse_flow("s", simple("always")),
            parse_flow("p", page),
            parse_flow("o", costly),
        ]  # type: ignore[list-item]
    )
    engine = FlowEngine(catalog)
    ids = catalog.flow_ids()
    items: list[FlowInput] = [
        ev(1, "Product Added", 0),
        ev(2, "Order Completed", 1, revenue=150),
        ev(3, "Order Completed", 2, revenue=50),
        ev(4, "Home", 3, "page"),
        ev(5, "Product Viewed", 4),
        ev(6, "Identify", 5, "identify", email="a@example.com"),
        ev(7, "Unsubscribed", 6),
        ev(8, "Product Viewed", 7, _timezone="Europe/Berlin"),
        StageInput("src/e9", T0, "customer"),
        SegmentInput("src/e10", T0, "vip", True),
        traits(11, 0, lifetime_revenue=1.0),
    ]
    answers = {}
    for item in items:
        answers[item.event_id] = per_flow = [f for f in ids if engine.wants(f, item)]
        assert engine.wanting(ids, item) == per_flow, item
        alone = [f for f in ids if not engine.shares_memory(f)]
        assert engine.wanting(alone, item) == [f for f in per_flow if f in alone], item
    # Not all or nothing: the inputs reach different flows (a filter, a type, a name).
    assert "o" in answers["src/e2"] and "o" not in answers["src/e3"]
    assert "p" in answers["src/e4"] and "s" not in answers["src/e4"]
    assert "s" in answers["src/e1"] and "p" not in answers["src/e1"]
    # A new catalog: the index is built again for it.
    assert engine.wanting(["p", "s"], ev(12, "Product Added", 8)) == ["s"]
    engine.catalog = FlowCatalog.of([parse_flow("p", page)])  # type: ignore[list-item]
    assert engine.wanting(["p", "s"], ev(12, "Product Added", 8)) == []
    assert engine.wanting(["p", "s"], ev(13, "Home", 9, "page")) == ["p"]


def test_computed_traits_reach_only_the_flows_that_read_them() -> None:
    catalog = FlowCatalog.of(
        [parse_flow("f", BIG_SPENDER), parse_flow("abandoned_cart", CART)]  # type: ignore[list-item]
    )
    engine = FlowEngine(catalog)
    item = traits(1, 0, lifetime_revenue=1.0)
    assert engine.wants("f", item) and not engine.wants("abandoned_cart", item)
    rendering = copy.deepcopy(simple("always"))
    rendering["nodes"]["hello"]["body"] = "{{ computed_traits.orders_90d }}"
    catalog = FlowCatalog.of([parse_flow("r", rendering)])  # type: ignore[list-item]
    assert FlowEngine(catalog).wants("r", item)
    # Sends of a flow that does not render them carry no computed_traits (ids unchanged).
    facts, _ = run(simple("always"), [ev(1, "Product Added", 0), item], 60, flow_id="s")
    assert sent(facts) and all("computed_traits" not in s.variables for s in sent(facts))


def test_entry_property_filters() -> None:
    flow = copy.deepcopy(CART)
    flow["nodes"]["cart_started"]["properties"] = {"price": {"gte": 50}}
    facts, _ = run(flow, [ev(1, "Product Added", 0, **ADD)], 60)
    assert facts == []
    facts, _ = run(flow, [ev(1, "Product Added", 0, **{**ADD, "price": 80})], 60)
    assert facts[0].type == "Entered"


# --- validation ----------------------------------------------------------------------------------


def errors_of(flow: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(FlowError) as caught:
        parse_flows({"flows": {"f": flow}})
    return dict(caught.value.errors)


def test_the_shipped_flows_file_is_valid() -> None:
    flows = parse_flows(tomllib.loads(FLOWS_FILE.read_text()))
    flow = flows[0]  # the canonical one first; then the rules as flows (test_rules_as_flows.py)
    assert flow.id == "abandoned_cart" and flow.reentry == "cooldown" and flow.enabled
    assert len(flows) == 8 and not any(other.enabled for other in flows[1:])
    assert [b.percent for b in flow.nodes["holdout_split"].branches] == [10, 90]  # type: ignore[attr-defined]


def test_errors_name_the_node_and_the_field() -> None:
    flow = copy.deepcopy(CART)
    nodes = flow["nodes"]
    nodes["reminder"]["body"] = "{{ cart.total }}"
    nodes["coupon"]["subject"] = "{{ traits.name | no_such_filter }}"
    nodes["wait_a_day"]["on_timeout"] = "nowhere"
    nodes["wait_for_order"]["timeout"] = "soon"
    nodes["holdout_split"]["branches"][1]["percent"] = 80
    nodes["extra"] = {"kind": "teleport"}
    flow["reentry"] = "sometimes"
    flow["goal"] = {"event": "Order Completed"}
    found = errors_of(flow)
    prefix = "flows.f"
    assert found[f"{prefix}.nodes.reminder.body"].startswith("unknown variable 'cart'")
    assert "no_such_filter" in found[f"{prefix}.nodes.coupon.subject"]
    assert found[f"{prefix}.nodes.wait_for_order.timeout"].startswith("must be a duration")
    assert "add up to 100" in found[f"{prefix}.nodes.holdout_split.branches"]
    assert found[f"{prefix}.nodes.extra.kind"].startswith("must be one of entry, wait")
    assert found[f"{prefix}.reentry"] == "must be one of never, cooldown, always"
    assert found[f"{prefix}.goal.within"].startswith("is required")


def test_graph_errors() -> None:
    flow = copy.deepcopy(CART)
    flow["nodes"]["wait_a_day"]["on_timeout"] = "nowhere"
    assert errors_of(flow)["flows.f.nodes.wait_a_day.on_timeout"] == "unknown node 'nowhere'"
    flow = copy.deepcopy(CART)
    flow["nodes"]["coupon"]["next"] = "reminder"
    assert "lead back to themselves" in next(iter(errors_of(flow).values()))
    flow = copy.deepcopy(CART)
    flow["nodes"]["lonely"] = {"kind": "wait", "duration": "1h"}
    assert errors_of(flow)["flows.f.nodes.lonely"] == "is not reachable from an entry node"
    flow = copy.deepcopy(CART)
    flow["nodes"]["cart_started"]["kind"] = "wait"
    found = errors_of(flow)
    assert "flows.f.nodes.cart_started.event" in found  # a wait has no event
    flow = copy.deepcopy(CART)
    flow["reentry"] = "cooldown"
    del flow["cooldown"]
    assert errors_of(flow)["flows.f.cooldown"].startswith("is required")
    assert errors_of({"nodes": {}})["flows.f.version"].startswith("is required")


# --- the backtest tally -------------------------------------------------------------------------


def test_backtest_tally_counts_paths_messages_and_the_holdout() -> None:
    flow = parse_flow("abandoned_cart", CART)
    assert flow is not None
    engine = FlowEngine(FlowCatalog.of([flow]))
    tally = BacktestTally(flow, T0, T0 + 10 * DAY)
    people = [
        (customer("treatment"), [ev(1, "Product Added", 0, **ADD)]),
        (
            customer("treatment") + "b",
            [ev(2, "Product Added", 0, **ADD), ev(3, "Order Completed", 30)],
        ),
        (customer("holdout"), [ev(4, "Product Added", 0, **ADD), ev(5, "Order Completed", 300)]),
    ]
    for key, inputs in people:
        if key.endswith("b"):
            while sticky_bucket("abandoned_cart", "holdout_split", "", key) < 10:
                key += "b"
        facts, state = run_history(engine, "abandoned_cart", key, inputs, T0 + 10 * DAY)
        tally.add(key, facts, state)
    report = tally.report()
    assert report["entered"] == {"customers": 3, "runs": 3}
    assert report["messages"] == {"webhook": 1, "email": 1}
    assert report["skipped"] == {"holdout": 1}  # the reminder; the holdout bought before the coupon
    assert report["nodes"]["reminder"]["reached"] == 2
    assert report["conversions"]["treatment"] == {"runs": 2, "converted": 1, "rate": 0.5}
    assert report["conversions"]["holdout"] == {"runs": 1, "converted": 1, "rate": 1.0}
    assert report["conversions"]["difference"] == -0.5
    assert report["left"] == {"completed": 1, "converted": 2}
    assert report["messages_per_day"] == [
        {"day": "2026-03-02", "channel": "webhook", "count": 1},
        {"day": "2026-03-03", "channel": "email", "count": 1},
    ]


def test_every_kind_of_fact_explains_itself_as_recorded() -> None:
    from journeys.flows.facts import FACT_TYPES, explain

    for kind in FACT_TYPES.values():
        fact = kind(flow_id="f", version=2, customer_key="c", run_id="r", at_ms=0, node="n")
        sentence = explain(fact.to_dict())
        assert sentence and sentence == fact.why(), kind
    skipped = FACT_TYPES["Skipped"](
        flow_id="f",
        version=1,
        customer_key="c",
        run_id="r",
        at_ms=0,
        node="coupon",
        channel="email",
        reason="consent",
    )
    assert explain(skipped.to_dict()) == "coupon not sent: not subscribed to the channel"


def test_a_held_input_waits_for_the_resume_even_when_late() -> None:
    """``hold`` (a paused flow): an order stamped before the clock is not taken at once,
    as ``observe`` would take it, but on the next advance, in event time; once only."""
    engine = FlowEngine(FlowCatalog.of([parse_flow("abandoned_cart", CART)]))  # type: ignore[list-item]
    state = FlowState(customer("treatment"), "abandoned_cart")
    engine.observe(state, ev(1, "Product Added", 0, cart_id="k1"))
    entered = engine.advance(state, T0 + 40 * MINUTE)
    assert [f.type for f in entered.facts][:1] == ["Entered"]
    order = ev(2, "Order Completed", 30, cart_id="k1")  # before the clock (40 min)
    held = engine.hold(state, order)
    assert held.facts == [] and state.inside
    assert held.wake_ms == order.at_ms  # due at once when resumed
    engine.hold(state, order)  # a re-sent copy is kept once
    assert len(state.pending) == 1
    resumed = engine.advance(state, T0 + 50 * MINUTE)
    assert [(f.type, getattr(f, "reason", "")) for f in resumed.facts][-2:] == [
        ("GoalReached", ""),
        ("Left", "converted"),
    ]
    assert not state.inside and sent(resumed.facts) == []


def test_computed_trait_conditions_are_validated_by_field() -> None:
    flow = copy.deepcopy(BIG_SPENDER)
    flow["nodes"]["route"]["cases"][0]["when"] = {"computed_trait": "lifetime_revenue", "gt": "x"}
    flow["nodes"]["thanks"]["body"] = "{{ computed_trait.x }}"
    errors = errors_of(flow)
    assert errors["flows.f.nodes.route.cases[0].when.gt"] == "must be a number"
    assert errors["flows.f.nodes.thanks.body"].startswith("unknown variable 'computed_trait'")
