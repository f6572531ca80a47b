"""Trigger rules, pure: given facts and a clock, what is due, cancelled, fired."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events import TrackedEvent, event_type_for
from journeys.outreach_rules import QuietHours, RuleError, TriggerRule, parse_rule, parse_rules
from journeys.triggers import CustomerFacts, Timer, TriggerEngine, trigger_id

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CART = TriggerRule(
    id="abandoned_cart",
    trigger="abandoned_cart",
    delay=timedelta(hours=1),
    frequency_cap=timedelta(hours=24),
    exit_events=("order completed",),
)
GRACE = timedelta(minutes=15)


def touch(
    n: int,
    event: str,
    minutes: float,
    call_type: str = "track",
    context: dict[str, Any] | None = None,
    **props: Any,
) -> TrackedEvent:
    at = T0 + timedelta(minutes=minutes)
    return TrackedEvent(
        event_id=f"e{n}",
        customer_key="c1",
        call_type=call_type,
        event_type=event_type_for(call_type, event),
        event_name=event,
        timestamp=at,
        received_at=at,
        properties=props,
        context=context or {},
    )


def feed(engine: TriggerEngine, facts: CustomerFacts, *touches: TrackedEvent) -> list[Timer]:
    for item in touches:
        engine.observe(facts, item)
    return engine.plan(facts)


def only(timers: list[Timer], rule_id: str = "abandoned_cart") -> Timer:
    found = [t for t in timers if t.rule_id == rule_id]
    assert len(found) == 1, timers
    return found[0]


def test_abandoned_cart_fires_once_with_contents_and_value() -> None:
    engine, facts = TriggerEngine([CART], GRACE), CustomerFacts("c1")
    timers = feed(
        engine,
        facts,
        touch(1, "Product Added", 0, product_id="p1", price=20, quantity=2, name="Mug"),
        touch(2, "Product Added", 5, product_id="p2", price=5.5),
        touch(3, "Product Removed", 6, product_id="p2"),
        touch(4, "Product Added", 7, product_id="p3", price=1, cart_id="k1", currency="EUR"),
    )
    timer = only(timers)
    assert timer.due_at == T0 + timedelta(minutes=67)  # the clock restarted at the last activity
    decision = engine.decide(facts, timer, timer.due_at + timedelta(milliseconds=300))
    assert decision.outcome == "fired" and decision.fired is not None
    data = decision.fired.data
    assert data["value"] == 41.0 and data["cart_id"] == "k1" and data["currency"] == "EUR"
    assert [(i["product_id"], i["quantity"]) for i in data["items"]] == [("p1", 2), ("p3", 1)]
    assert decision.fired.trigger_id == trigger_id("c1", "abandoned_cart", timer.anchor)
    assert engine.plan(facts) == []  # the clock ended: it cannot fire twice
    assert engine.decide(facts, timer, timer.due_at).outcome == "cancelled"


def test_purchase_before_due_cancels_even_when_it_arrives_late() -> None:
    engine, facts = TriggerEngine([CART], GRACE), CustomerFacts("c1")
    timer = only(feed(engine, facts, touch(1, "Product Added", 0, product_id="p1", price=9)))
    # Stamped 59 minutes in, known only after the due time has passed on the wall clock.
    assert feed(engine, facts, touch(2, "Order Completed", 59, revenue=9)) == []
    assert engine.decide(facts, timer, timer.due_at + timedelta(seconds=30)).outcome == "cancelled"


def test_cart_event_stamped_before_an_order_belongs_to_that_order() -> None:
    engine, facts = TriggerEngine([CART], GRACE), CustomerFacts("c1")
    feed(engine, facts, touch(2, "Order Completed", 10, revenue=9))
    assert feed(engine, facts, touch(1, "Product Added", 5, product_id="p1", price=9)) == []
    # A later add opens a new cart.
    timer = only(feed(engine, facts, touch(3, "Product Added", 20, product_id="p2", price=3)))
    assert timer.anchor == T0 + timedelta(minutes=20)


def test_empty_cart_exits_and_resent_event_counts_once() -> None:
    engine, facts = TriggerEngine([CART], GRACE), CustomerFacts("c1")
    add = touch(1, "Product Added", 0, product_id="p1", price=9)
    feed(engine, facts, add, add)
    assert facts.cart["p1"]["quantity"] == 1
    assert feed(engine, facts, touch(2, "Product Removed", 3, product_id="p1")) == []


def test_history_and_old_replays_never_fire() -> None:
    engine, facts = TriggerEngine([CART], GRACE), CustomerFacts("c1")
    historical = {"historical": True}
    assert (
        feed(engine, facts, touch(1, "Product Added", 0, context=historical, product_id="p")) == []
    )
    # A replay of a cart due long ago: scheduled, but expires instead of firing.
    other = CustomerFacts("c2")
    timer = only(feed(engine, other, touch(2, "Product Added", 0, product_id="p", price=1)))
    assert engine.decide(other, timer, timer.due_at + timedelta(days=2)).outcome == "expired"
    assert engine.plan(other) == []


def test_frequency_cap_allows_one_trigger_per_window() -> None:
    engine, facts = TriggerEngine([CART], GRACE), CustomerFacts("c1")
    first = only(feed(engine, facts, touch(1, "Product Added", 0, product_id="p1", price=1)))
    assert engine.decide(facts, first, first.due_at).outcome == "fired"
    second = only(feed(engine, facts, touch(2, "Product Added", 90, product_id="p2", price=1)))
    assert engine.decide(facts, second, second.due_at).outcome == "capped"
    third = only(feed(engine, facts, touch(3, "Product Added", 60 * 26, product_id="p3")))
    assert engine.decide(facts, third, third.due_at).outcome == "fired"


def test_quiet_hours_hold_until_they_end_in_the_customers_zone() -> None:
    quiet = parse_rule(_quiet()).quiet_hours
    assert isinstance(quiet, QuietHours)
    rule = replace(CART, quiet_hours=quiet)
    engine, facts = TriggerEngine([rule], GRACE), CustomerFacts("c1")
    # 20:30 UTC is 21:30 in Berlin (winter): inside 21:00-08:00 local.
    tz = {"timezone": "Europe/Berlin"}
    timer = only(
        feed(engine, facts, touch(1, "Product Added", 60 * 7.5, context=tz, product_id="p"))
    )
    assert timer.due_at == T0 + timedelta(hours=8, minutes=30)
    assert timer.fire_at == datetime(2026, 3, 2, 7, 0, tzinfo=UTC)  # 08:00 Berlin
    assert engine.decide(facts, timer, timer.due_at).outcome == "held"
    assert engine.decide(facts, timer, timer.fire_at).outcome == "fired"


def _quiet() -> dict[str, Any]:
    return {
        "id": "q",
        "trigger": "abandoned_cart",
        "quiet_hours": {"start": "21:00", "end": "08:00"},
    }


def test_lifecycle_rules_start_their_clocks() -> None:
    rules = parse_rules(
        {
            "rule": [
                {
                    "id": "review",
                    "trigger": "post_purchase",
                    "delay": "7d",
                    "exit": ["Order Refunded"],
                },
                {"id": "survey", "trigger": "ticket_resolved", "delay": "1h"},
                {"id": "escalate", "trigger": "ticket_open", "delay": "48h"},
                {"id": "again", "trigger": "repurchase", "delay": 0},
                {"id": "winback", "trigger": "win_back", "delay": "60d"},
                {"id": "bday", "trigger": "birthday", "conditions": {"local_hour": 9}},
                {"id": "vip", "trigger": "high_value", "conditions": {"segment": "champions"}},
            ]
        }
    )
    engine, facts = TriggerEngine(rules, GRACE), CustomerFacts("c1")
    day = 24 * 60
    timers = feed(
        engine,
        facts,
        touch(1, "Identify", 0, call_type="identify", birthday="1990-03-05", timezone="Asia/Tokyo"),
        touch(2, "Order Completed", 0, revenue=60),
        touch(3, "Order Completed", 10 * day, revenue=60),
        touch(4, "Ticket Created", 10 * day, ticket_id="t1"),
    )
    assert engine.observe_segment(facts, "champions")
    timers = engine.plan(facts)
    by_rule = {t.rule_id: t for t in timers}
    assert by_rule["review"].due_at == T0 + timedelta(days=17)
    assert by_rule["again"].due_at == T0 + timedelta(days=20)  # one 10-day purchase cycle on
    assert by_rule["escalate"].due_at == T0 + timedelta(days=10, hours=48)
    assert by_rule["vip"].anchor == T0 + timedelta(days=10)  # the order that made a champion
    # 09:00 in Tokyo on 5 March 2026 is 00:00 UTC.
    assert by_rule["bday"].due_at == datetime(2026, 3, 5, 0, 0, tzinfo=UTC)
    assert "survey" not in by_rule and "winback" not in by_rule
    timers = feed(engine, facts, touch(5, "Ticket Resolved", 10 * day + 30, ticket_id="t1"))
    by_rule = {t.rule_id: t for t in timers}
    assert "escalate" not in by_rule
    assert by_rule["survey"].due_at == T0 + timedelta(days=10, minutes=90)
    facts.observe_stage("loyalty", T0 + timedelta(days=10))
    winback = only(engine.plan(facts), "winback")
    assert winback.due_at == T0 + timedelta(days=70, minutes=30)
    assert feed(engine, facts, touch(6, "Order Refunded", 11 * day)) and "review" not in {
        t.rule_id for t in engine.plan(facts)
    }
    # After the birthday fired, the next one is a year on.
    bday = only(engine.plan(facts), "bday")
    assert engine.decide(facts, bday, bday.fire_at).outcome == "fired"
    assert only(engine.plan(facts), "bday").due_at == datetime(2027, 3, 5, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"id": "Bad Id", "trigger": "abandoned_cart"}, "rule.id"),
        ({"id": "x", "trigger": "nope"}, "rule.trigger"),
        ({"id": "x", "trigger": "birthday", "delay": "soon"}, "rule.delay"),
        ({"id": "x", "trigger": "birthday", "delay": 1e20}, "rule.delay"),
        (
            {"id": "x", "trigger": "birthday", "conditions": {"local_hour": 25}},
            "rule.conditions.local_hour",
        ),
        (
            {"id": "x", "trigger": "win_back", "conditions": {"stage": "vip"}},
            "rule.conditions.stage",
        ),
        ({"id": "x", "trigger": "win_back", "conditions": {"colour": 1}}, "rule.conditions.colour"),
        ({"id": "x", "trigger": "birthday", "channels": ["sms"]}, "rule.channels"),
        ({"id": "x", "trigger": "birthday", "quiet_hours": {"start": "9"}}, "rule.quiet_hours"),
    ],
)
def test_bad_rules_name_the_field(rule: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as raised:
        parse_rule(rule)
    assert raised.value.field == field


def test_shipped_rules_file_parses() -> None:
    import tomllib
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "journeys" / "rules.toml"
    rules = parse_rules(tomllib.loads(path.read_text()))
    assert {r.trigger for r in rules} == {
        "abandoned_cart",
        "post_purchase",
        "ticket_resolved",
        "ticket_open",
        "repurchase",
        "win_back",
        "birthday",
        "high_value",
    }


def test_facts_count_a_messageid_once_per_source() -> None:
    facts = CustomerFacts("c1")
    added = replace(touch(1, "Product Added", 0, product_id="p1", price=2), source="web")
    other = replace(touch(1, "Product Added", 1, product_id="p2", price=3), source="app")
    assert [facts.observe(t) for t in (added, other, added, other)] == [True, True, False, False]
    assert sorted(facts.cart) == ["p1", "p2"]
    # Facts stored before ids were kept per source hold bare ids: still a re-send.
    stored = CustomerFacts.from_dict({**CustomerFacts("c1").to_dict(), "recent_ids": ["e1"]})
    assert stored.observe(added) is False


def test_a_replayed_journal_changes_no_facts() -> None:
    """The journal produces acknowledged events again after a broker loss, byte-identical."""
    engine, facts = TriggerEngine([CART], GRACE), CustomerFacts("c1")
    events = [
        touch(1, "Product Viewed", 0, product_id="p1"),
        touch(2, "Product Added", 1, product_id="p1", price=2),
        touch(3, "Order Completed", 2, order_id="o1", revenue=2),
        touch(4, "Product Added", 3, product_id="p2", price=5),
    ]
    replayed = [TrackedEvent.from_json(event.to_json()) for event in events]
    feed(engine, facts, *events)
    before, timers = facts.to_dict(), engine.plan(facts)
    assert [engine.observe(facts, event) for event in replayed] == [False] * 4
    assert facts.to_dict() == before
    assert engine.plan(facts) == timers


def test_an_order_replayed_past_the_recent_ids_is_still_one_order() -> None:
    facts = CustomerFacts("c1")
    order = touch(1, "Order Completed", 0, order_id="o1", revenue=10)
    facts.observe(order)
    for n in range(2, 700):  # more events since than the facts keep ids of
        facts.observe(touch(n, "Product Viewed", n, product_id=f"p{n}"))
    assert facts.observe(TrackedEvent.from_json(order.to_json())) is True  # id forgotten
    assert len(facts.orders) == 1
    assert facts.observe(touch(900, "Order Completed", 900, order_id="o2", revenue=5))
    assert [o["order_id"] for o in facts.orders] == ["o1", "o2"]


def test_a_stage_moved_into_the_past_by_a_revision_changes_no_facts() -> None:
    facts = CustomerFacts("c1")
    facts.observe_stage("loyalty", T0 + timedelta(days=2))
    facts.observe_stage("awareness", T0)  # revised: the history's start moved back
    assert (facts.stage, facts.stage_at) == ("loyalty", (T0 + timedelta(days=2)).isoformat())
    facts.observe_stage("lapsed", T0 + timedelta(days=200))  # later: taken
    assert facts.stage == "lapsed"


def test_an_order_copy_stamped_earlier_is_the_order() -> None:
    facts = CustomerFacts("c1")
    facts.observe(touch(1, "Order Completed", 10, order_id="o1", revenue=10))
    facts.observe(touch(2, "Order Completed", 5, order_id="o2", revenue=7))
    facts.observe(touch(3, "Order Completed", 0, order_id="o1", revenue=12))  # same order
    assert [(o["order_id"], o["revenue"]) for o in facts.orders] == [("o1", 12.0), ("o2", 7.0)]
    assert facts.orders[0]["at"] < facts.orders[1]["at"]
    facts.observe(touch(4, "Order Completed", 20, order_id="o1", revenue=99))  # later copy
    assert [o["revenue"] for o in facts.orders] == [12.0, 7.0]


VIP = TriggerRule(
    id="vip",
    trigger="high_value",
    delay=timedelta(0),
    frequency_cap=timedelta(days=365),
    conditions={"segment": "champions"},
)


def test_entering_the_top_segment_fires_once_stamped_by_the_order_that_earned_it() -> None:
    engine, facts = TriggerEngine([VIP], GRACE), CustomerFacts("c1")
    feed(engine, facts, touch(1, "Order Completed", 0, revenue=50))
    assert engine.observe_segment(facts, "loyal") and engine.plan(facts) == []
    feed(engine, facts, touch(2, "Order Completed", 30, revenue=70))
    assert engine.observe_segment(facts, "champions")
    assert not engine.observe_segment(facts, "champions")  # still there: nothing new
    vip = only(engine.plan(facts), "vip")
    assert vip.anchor == vip.due_at == T0 + timedelta(minutes=30)
    decision = engine.decide(facts, vip, vip.fire_at + timedelta(seconds=1))
    assert decision.outcome == "fired" and decision.fired is not None
    assert decision.fired.data == {
        "orders": 2,
        "lifetime_revenue": 120.0,
        "last_order_at": (T0 + timedelta(minutes=30)).isoformat(),
        "segment": "champions",
    }
    assert engine.plan(facts) == []
    # Out and back in on a later order: a new clock, held back by the frequency cap.
    engine.observe_segment(facts, "loyal")
    feed(engine, facts, touch(3, "Order Completed", 60, revenue=10))
    engine.observe_segment(facts, "champions")
    again = only(engine.plan(facts), "vip")
    assert engine.decide(facts, again, again.fire_at).outcome == "capped"
    # Out and back in with no new order: the same clock, already settled.
    engine.observe_segment(facts, "at_risk")
    engine.observe_segment(facts, "champions")
    assert engine.plan(facts) == []


def test_entering_the_top_segment_by_old_or_imported_orders_never_fires() -> None:
    engine = TriggerEngine([VIP], GRACE)
    imported = CustomerFacts("c1")
    old_order = touch(1, "Order Completed", 0, context={"historical": True}, revenue=900)
    feed(engine, imported, old_order)
    engine.observe_segment(imported, "champions")
    assert engine.plan(imported) == []
    assert imported.settled["vip"][0]["outcome"] == "historical"
    # Earned by an order stamped long before the scan saw it (a replay): expires.
    replayed = CustomerFacts("c2")
    feed(engine, replayed, touch(2, "Order Completed", 0, revenue=900))
    engine.observe_segment(replayed, "champions")
    vip = only(engine.plan(replayed), "vip")
    assert engine.decide(replayed, vip, T0 + timedelta(days=3)).outcome == "expired"
    assert engine.plan(replayed) == []


def test_rule_segments_are_the_read_sides_segments() -> None:
    from journeys.outreach_rules import RFM_SEGMENTS
    from projections.analytics.reports import SEGMENTS, segment

    assert {name for name, *_ in SEGMENTS} | {segment(0, 0)} == RFM_SEGMENTS


def test_a_stage_reached_on_imported_events_starts_no_win_back() -> None:
    winback = TriggerRule(
        id="winback", trigger="win_back", delay=timedelta(days=60), conditions={"stage": "loyalty"}
    )
    engine, facts = TriggerEngine([winback], GRACE), CustomerFacts("c1")
    imported = {"historical": True}
    feed(
        engine,
        facts,
        touch(1, "Order Completed", 0, context=imported, revenue=10),
        touch(2, "Order Completed", 60, context=imported, revenue=10),
    )
    # The journey worker's stage change for the import comes after the events.
    engine.observe_stage(facts, "loyalty", T0 + timedelta(minutes=60))
    assert engine.plan(facts) == []
    assert facts.settled["winback"][0]["outcome"] == "historical"
    # Live activity afterwards starts a live clock.
    timers = feed(engine, facts, touch(3, "Product Viewed", 90))
    assert only(timers, "winback").due_at == T0 + timedelta(days=60, minutes=90)


def test_a_welcome_stays_fired_across_a_restart() -> None:
    engine, facts = TriggerEngine([VIP], GRACE), CustomerFacts("c1")
    feed(engine, facts, touch(1, "Order Completed", 0, revenue=500))
    engine.observe_segment(facts, "champions")
    vip = only(engine.plan(facts), "vip")
    assert engine.decide(facts, vip, vip.fire_at).outcome == "fired"
    # A restarted worker loads the stored facts and scans the same segment again.
    restarted = CustomerFacts.from_dict(json.loads(json.dumps(facts.to_dict())))
    assert not engine.observe_segment(restarted, "champions")
    assert engine.plan(restarted) == []
    # The timer it may still hold from before the crash decides nothing twice.
    assert engine.decide(restarted, vip, vip.fire_at).outcome == "cancelled"
