"""The node kinds the trigger rules became flows with: date anchors, a wait until a
local time of day, paired (ticket) waits, RFM segments seen at the edge, ``data``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from events import event_type_for
from journeys.flows.backtest import run_history
from journeys.flows.definitions import FlowCatalog, FlowError, parse_flow
from journeys.flows.engine import CustomerMemory, CustomerStep, FlowEngine, FlowState
from journeys.flows.facts import FlowFact, Sent, Skipped
from journeys.flows.inputs import FlowInput, StageInput, TrackedInput, rfm_segment_inputs, to_ms
from journeys.triggers import CustomerFacts

T0 = to_ms(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000


def ev(n: int, event: str, at_ms: int, call_type: str = "track", **props: Any) -> TrackedInput:
    return TrackedInput(
        event_id=f"src/e{n}",
        at_ms=at_ms,
        name=event.strip().lower(),
        type=event_type_for(call_type, event).value,
        properties=props,
        historical=bool(props.pop("_historical", False)),
        timezone=str(props.pop("_timezone", "")),
    )


def flow(nodes: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"version": 1, "reentry": "always", "nodes": nodes, **extra}


def send(next_node: str | None = None, body: str = "hi") -> dict[str, Any]:
    found: dict[str, Any] = {"kind": "send", "channel": "webhook", "body": body}
    if next_node:
        found["next"] = next_node
    return found


def replay(
    table: dict[str, Any], inputs: list[FlowInput], until_ms: int
) -> tuple[list[FlowFact], FlowState]:
    engine = FlowEngine(FlowCatalog.of([parse_flow("f", table)]))  # type: ignore[list-item]
    return run_history(engine, "f", "c1", inputs, until_ms)


def sent_at(facts: list[FlowFact]) -> list[tuple[str, int]]:
    return [(f.node, f.at_ms) for f in facts if isinstance(f, Sent)]


ORDER_PLUS_7D = flow(
    {
        "after_order": {"kind": "date_entry", "anchor": "last_order", "after": "7d", "next": "s"},
        "s": send(),
    },
    exit=[{"event": "Order Refunded"}],
)


def test_a_date_anchor_enters_after_the_last_order_and_a_later_order_moves_it() -> None:
    orders = [ev(1, "Order Completed", T0, revenue=5), ev(2, "Order Completed", T0 + 2 * DAY)]
    facts, state = replay(ORDER_PLUS_7D, orders, T0 + 30 * DAY)
    assert sent_at(facts) == [("s", T0 + 9 * DAY)]  # one clock, restarted by the second order
    assert state.anchored["after_order"][0][:2] == [T0 + 2 * DAY, T0 + 9 * DAY]
    # An exit stamped after the anchor cancels it; an imported order never enters.
    refunded = [*orders, ev(3, "Order Refunded", T0 + 3 * DAY)]
    assert sent_at(replay(ORDER_PLUS_7D, refunded, T0 + 30 * DAY)[0]) == []
    imported = ev(4, "Order Completed", T0, _historical=True)
    facts, state = replay(ORDER_PLUS_7D, [imported], T0 + 30 * DAY)
    assert sent_at(facts) == [] and state.anchored["after_order"][0][2] == "historical"


def test_a_wait_until_a_local_time_of_day_in_the_customers_zone() -> None:
    table = flow(
        {
            "on_view": {"kind": "entry", "event": "Product Viewed", "next": "nine"},
            "nine": {"kind": "wait_until_time", "at": "09:00", "next": "s"},
            "s": send(),
        }
    )
    # 20:30 UTC is 21:30 in Berlin: the next 09:00 there is 08:00 UTC the next day.
    berlin = ev(1, "Product Viewed", T0 + 10 * HOUR + 30 * MINUTE, _timezone="Europe/Berlin")
    assert sent_at(replay(table, [berlin], T0 + 2 * DAY)[0]) == [("s", T0 + 22 * HOUR)]
    # Already 09:00 local: on at once. Unknown zone: UTC.
    at_nine = ev(2, "Product Viewed", T0 - HOUR)
    assert sent_at(replay(table, [at_nine], T0 + 2 * DAY)[0]) == [("s", T0 - HOUR)]


PAIRED = flow(
    {
        "opened": {"kind": "entry", "event": "Ticket Created", "next": "resolved"},
        "resolved": {
            "kind": "wait_paired",
            "opens": {"event": "Ticket Created"},
            "closes": {"event": "Ticket Resolved"},
            "by": "ticket_id",
            "timeout": "48h",
            "on_timeout": "escalate",
            "on_closed": "thanks",
        },
        "escalate": send(body="{{ data.open_tickets | join(',') }}"),
        "thanks": send(),
    }
)


def test_a_paired_wait_times_out_from_the_oldest_ticket_still_open() -> None:
    inputs = [
        ev(1, "Ticket Created", T0, ticket_id="t1"),
        ev(2, "Ticket Created", T0 + 10 * HOUR, ticket_id="t2"),
        ev(3, "Ticket Resolved", T0 + 20 * HOUR, ticket_id="t1"),
    ]
    facts, _ = replay(PAIRED, inputs, T0 + 5 * DAY)
    assert sent_at(facts) == [("escalate", T0 + 58 * HOUR)]  # t2's 48 hours
    (message,) = [f for f in facts if isinstance(f, Sent)]
    assert message.variables["data"]["open_tickets"] == ["t2"]
    # Every ticket closed in time (the last one late, stamped before its timeout): no escalation.
    closed = [*inputs, ev(4, "Ticket Resolved", T0 + 57 * HOUR, ticket_id="t2")]
    assert sent_at(replay(PAIRED, closed, T0 + 5 * DAY)[0]) == [("thanks", T0 + 57 * HOUR)]
    # Resolved without saying which: all of them.
    anyone = [inputs[0], ev(5, "Ticket Resolved", T0 + HOUR)]
    assert sent_at(replay(PAIRED, anyone, T0 + 5 * DAY)[0]) == [("thanks", T0 + HOUR)]


def test_inactivity_at_a_stage_counts_from_the_last_activity() -> None:
    table = flow(
        {
            "lapsed": {
                "kind": "date_entry",
                "anchor": "inactivity",
                "after": "60d",
                "stage": "loyalty",
                "next": "s",
            },
            "s": send(),
        }
    )
    inputs: list[FlowInput] = [
        ev(1, "Order Completed", T0),
        StageInput("st1", T0, "loyalty"),
        ev(2, "Product Viewed", T0 + 10 * DAY),
    ]
    assert sent_at(replay(table, inputs, T0 + 100 * DAY)[0]) == [("s", T0 + 70 * DAY)]
    # A stage reached on imported events starts no clock; live activity afterwards does.
    imported: list[FlowInput] = [
        ev(3, "Order Completed", T0, _historical=True),
        StageInput("st2", T0, "loyalty"),
    ]
    facts, state = replay(table, imported, T0 + 100 * DAY)
    assert sent_at(facts) == [] and state.anchored["lapsed"][0][2] == "historical"
    later = [*imported, ev(4, "Product Viewed", T0 + HOUR)]
    assert sent_at(replay(table, later, T0 + 100 * DAY)[0]) == [("s", T0 + 60 * DAY + HOUR)]


def test_purchase_cycle_and_birthday_anchors() -> None:
    cycle = flow(
        {
            "due": {"kind": "date_entry", "anchor": "purchase_cycle", "next": "s"},
            "s": send(),
        }
    )
    orders = [ev(1, "Order Completed", T0), ev(2, "Order Completed", T0 + 10 * DAY)]
    assert sent_at(replay(cycle, orders[:1], T0 + 90 * DAY)[0]) == []  # one order: no cycle
    assert sent_at(replay(cycle, orders, T0 + 90 * DAY)[0]) == [("s", T0 + 20 * DAY)]
    birthday = flow(
        {
            "bday": {"kind": "date_entry", "anchor": "birthday", "at": "09:00", "next": "s"},
            "s": send(),
        }
    )
    who = ev(3, "Identify", T0, "identify", birthday="1990-03-05", timezone="Asia/Tokyo")
    facts, state = replay(birthday, [who], to_ms(datetime(2027, 4, 1, tzinfo=UTC)))
    # 09:00 in Tokyo is 00:00 UTC; a year on, the next one.
    assert sent_at(facts) == [
        ("s", to_ms(datetime(2026, 3, 5, tzinfo=UTC))),
        ("s", to_ms(datetime(2027, 3, 5, tzinfo=UTC))),
    ]
    assert state.anchors["bday"][1] == to_ms(datetime(2028, 3, 5, tzinfo=UTC))


def test_rfm_segments_seen_at_the_edge_are_segment_inputs_stamped_by_the_order() -> None:
    facts = CustomerFacts("c1")
    assert rfm_segment_inputs(None, "loyal", facts.latest_order()) == []  # no order: no stamp
    facts.orders.append({"at": "2026-03-02T10:30:00+00:00", "order_id": "o1", "revenue": 9})
    moved = rfm_segment_inputs("loyal", "champions", facts.latest_order())
    assert [(i.segment, i.entered, i.at_ms) for i in moved] == [
        ("rfm:loyal", False, T0 + 30 * MINUTE),
        ("rfm:champions", True, T0 + 30 * MINUTE),
    ]
    assert moved[1].key == rfm_segment_inputs(None, "champions", facts.latest_order())[0].key
    assert rfm_segment_inputs("champions", "champions", facts.latest_order()) == []


def test_data_carries_the_rules_payloads_and_cart_lines() -> None:
    table = flow(
        {
            "cart": {"kind": "date_entry", "anchor": "cart", "after": "1h", "next": "s"},
            "s": send(body="{{ data.cart.lines | length }} items, {{ data.cart.value }}"),
        },
        exit=[{"event": "Order Completed"}],
    )
    inputs = [
        ev(1, "Order Completed", T0, revenue=30),
        ev(2, "Product Added", T0 + MINUTE, product_id="p1", price=20, quantity=2, name="Mug"),
        ev(3, "Product Added", T0 + 5 * MINUTE, product_id="p2", price=1, cart_id="k1"),
    ]
    facts, _ = replay(table, inputs, T0 + DAY)
    (message,) = [f for f in facts if isinstance(f, Sent)]
    assert message.at_ms == T0 + 65 * MINUTE
    data = message.variables["data"]
    assert data["cart"]["value"] == 41.0 and data["cart"]["cart_id"] == "k1"
    assert [i["product_id"] for i in data["cart"]["lines"]] == ["p1", "p2"]
    assert data["orders"] == 1 and data["lifetime_revenue"] == 30.0


def test_an_anchor_due_while_a_run_is_inside_is_skipped() -> None:
    table = flow(
        {
            "after_order": {"kind": "date_entry", "anchor": "last_order", "next": "w"},
            "w": {"kind": "wait", "duration": "1d", "next": "s"},
            "s": send(),
        }
    )
    orders = [ev(1, "Order Completed", T0), ev(2, "Order Completed", T0 + HOUR)]
    facts, _ = replay(table, orders, T0 + 3 * DAY)
    assert sent_at(facts) == [("s", T0 + DAY)]
    (skipped,) = [f for f in facts if isinstance(f, Skipped)]
    assert skipped.reason == "reentry" and skipped.at_ms == T0 + HOUR


@pytest.mark.parametrize(
    ("node", "field"),
    [
        ({"kind": "date_entry", "anchor": "someday"}, "anchor"),
        ({"kind": "date_entry", "anchor": "birthday", "at": "9"}, "at"),
        ({"kind": "date_entry", "anchor": "inactivity", "stage": "vip"}, "stage"),
        ({"kind": "date_entry", "anchor": "event"}, "event"),
        ({"kind": "date_entry", "anchor": "last_order", "colour": 1}, "colour"),
    ],
)
def test_bad_anchors_name_the_field(node: dict[str, Any], field: str) -> None:
    with pytest.raises(FlowError) as raised:
        parse_flow("f", flow({"start": node}))
    assert [path for path, _ in raised.value.errors] == [f"flows.f.nodes.start.{field}"]


def test_bad_paired_waits_and_local_times_name_the_field() -> None:
    bad = flow(
        {
            "start": {"kind": "entry", "event": "Ticket Created", "next": "pair"},
            "pair": {"kind": "wait_paired", "opens": {"stage": "loyalty"}, "closes": {}},
            "late": {"kind": "wait_until_time", "at": "25:00"},
        }
    )
    with pytest.raises(FlowError) as raised:
        parse_flow("f", bad)
    paths = {path for path, _ in raised.value.errors}
    assert {
        "flows.f.nodes.pair.opens",
        "flows.f.nodes.pair.closes",
        "flows.f.nodes.pair.by",
        "flows.f.nodes.pair.timeout",
        "flows.f.nodes.late.at",
    } <= paths


def test_a_state_is_returned_as_changed_whenever_it_changed() -> None:
    """The worker saves only the states a call returns (streams/outreach/flows.py): an
    imported order taken late is settled as history with the plan as before (none), and
    a state read back without that settlement planned the anchor again and sent."""
    engine = FlowEngine(FlowCatalog.of([parse_flow("f", ORDER_PLUS_7D)]))  # type: ignore[list-item]
    memory = CustomerMemory("c1")
    stored: dict[str, dict[str, Any]] = {}

    def states() -> dict[str, FlowState]:
        return {"f": FlowState.from_dict(stored["f"]) if "f" in stored else FlowState("c1", "f")}

    def kept(state: FlowState) -> dict[str, Any]:
        # planned_version only says the plan is current; a state read back without it is
        # planned again from the same facts
        return {**state.to_dict(), "planned_version": None}

    def saved(step: CustomerStep, given: dict[str, FlowState], before: dict[str, Any]) -> None:
        returned = {state.flow_id for state in step.states}
        for flow_id, state in given.items():
            if flow_id not in returned:
                assert kept(state) == before[flow_id], "changed but not returned"
        stored.update((state.flow_id, state.to_dict()) for state in step.states)

    sends: list[FlowFact] = []
    for call in range(3):
        given = states()
        before = {flow_id: kept(state) for flow_id, state in given.items()}
        if call == 1:  # stamped before the clock: taken at once
            imported = ev(1, "Order Completed", T0 - HOUR, _historical=True)
            step = engine.observe_customer(memory, given, imported, T0)
        else:
            step = engine.advance_customer(memory, given, T0 + call * 8 * DAY, T0)
        saved(step, given, before)
        sends += step.facts
    assert sent_at(sends) == []
    assert stored["f"]["anchored"]["after_order"][0][2] == "historical"
