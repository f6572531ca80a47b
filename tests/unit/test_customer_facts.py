"""A customer's facts (journeys/triggers.py CustomerFacts), pure: the fold of events by
event time that the flows' date anchors and payloads and the worker's RFM scan read; and
the rules file format `journeys flows migrate-rules` reads.

What the removed rule engine's tests decided (fires once, cancelled by a purchase
stamped before the due time, history never sends, caps, quiet hours, each lifecycle
clock) is decided by the flows now: tests/unit/test_rules_as_flows.py replays those
scenarios through the shipped flows with the sends written out.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events import TrackedEvent, event_type_for
from journeys.outreach_rules import RuleError, parse_rule
from journeys.triggers import CustomerFacts

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


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


def feed(facts: CustomerFacts, *touches: TrackedEvent) -> CustomerFacts:
    for item in touches:
        facts.observe(item)
    return facts


def test_the_cart_holds_its_lines_value_and_last_activity() -> None:
    facts = feed(
        CustomerFacts("c1"),
        touch(1, "Product Added", 0, product_id="p1", price=20, quantity=2, name="Mug"),
        touch(2, "Product Added", 5, product_id="p2", price=5.5),
        touch(3, "Product Removed", 6, product_id="p2"),
        touch(4, "Product Added", 7, product_id="p3", price=1, cart_id="k1", currency="EUR"),
    )
    assert facts.cart_value == 41.0 and (facts.cart_id, facts.currency) == ("k1", "EUR")
    assert [(pid, line["quantity"]) for pid, line in sorted(facts.cart.items())] == [
        ("p1", 2),
        ("p3", 1),
    ]
    # The cart anchor's clock starts at the last activity.
    assert facts.cart_activity_at == (T0 + timedelta(minutes=7)).isoformat()


def test_an_order_stamped_before_it_arrived_empties_the_cart() -> None:
    facts = feed(CustomerFacts("c1"), touch(1, "Product Added", 0, product_id="p1", price=9))
    # Stamped 59 minutes in, known later: the cart it bought is empty all the same.
    feed(facts, touch(2, "Order Completed", 59, revenue=9))
    assert facts.cart == {} and facts.cart_activity_at is None


def test_cart_event_stamped_before_an_order_belongs_to_that_order() -> None:
    facts = feed(CustomerFacts("c1"), touch(2, "Order Completed", 10, revenue=9))
    feed(facts, touch(1, "Product Added", 5, product_id="p1", price=9))
    assert facts.cart == {}
    # A later add opens a new cart.
    feed(facts, touch(3, "Product Added", 20, product_id="p2", price=3))
    assert list(facts.cart) == ["p2"]
    assert facts.cart_activity_at == (T0 + timedelta(minutes=20)).isoformat()


def test_empty_cart_and_resent_event_counts_once() -> None:
    add = touch(1, "Product Added", 0, product_id="p1", price=9)
    facts = feed(CustomerFacts("c1"), add, add)
    assert facts.cart["p1"]["quantity"] == 1
    feed(facts, touch(2, "Product Removed", 3, product_id="p1"))
    assert facts.cart == {} and facts.cart_activity_at is None


def test_tickets_birthday_and_zone_are_kept() -> None:
    facts = feed(
        CustomerFacts("c1"),
        touch(1, "Identify", 0, call_type="identify", birthday="1990-03-05", timezone="Asia/Tokyo"),
        touch(2, "Ticket Created", 10, ticket_id="t1"),
        touch(3, "Ticket Created", 20, ticket_id="t2"),
        touch(4, "Ticket Resolved", 30, ticket_id="t1"),
    )
    assert (facts.birthday, facts.zone.key) == ("03-05", "Asia/Tokyo")
    assert list(facts.open_tickets) == ["t2"] and facts.last_resolved_ticket == "t1"


def test_entering_a_segment_is_stamped_by_the_latest_order() -> None:
    facts = feed(CustomerFacts("c1"), touch(1, "Order Completed", 0, revenue=50))
    assert facts.observe_segment("loyal")
    feed(facts, touch(2, "Order Completed", 30, revenue=70))
    assert facts.observe_segment("champions")
    assert not facts.observe_segment("champions")  # still there: nothing new
    assert facts.segment_since == (T0 + timedelta(minutes=30)).isoformat()
    # A restarted worker loads the stored facts and scans the same segment again.
    restarted = CustomerFacts.from_dict(json.loads(json.dumps(facts.to_dict())))
    assert not restarted.observe_segment("champions")


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
    facts = CustomerFacts("c1")
    events = [
        touch(1, "Product Viewed", 0, product_id="p1"),
        touch(2, "Product Added", 1, product_id="p1", price=2),
        touch(3, "Order Completed", 2, order_id="o1", revenue=2),
        touch(4, "Product Added", 3, product_id="p2", price=5),
    ]
    replayed = [TrackedEvent.from_json(event.to_json()) for event in events]
    feed(facts, *events)
    before = facts.to_dict()
    assert [facts.observe(event) for event in replayed] == [False] * 4
    assert facts.to_dict() == before


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


def test_rule_segments_are_the_read_sides_segments() -> None:
    from journeys.outreach_rules import RFM_SEGMENTS
    from projections.analytics.reports import SEGMENTS, segment

    assert {name for name, *_ in SEGMENTS} | {segment(0, 0)} == RFM_SEGMENTS
