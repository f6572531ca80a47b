"""Unit tests: the rules file, lapse, the dedup window, fact events and the profile inputs."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from events import TrackedEvent, event_type_for
from journeys.domainmodel import CustomerJourney
from journeys.stages import Stage, StageRules

T0 = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)
_ids = itertools.count()


def touch(
    name: str, days: float = 0, event_id: str | None = None, **properties: object
) -> TrackedEvent:
    when = T0 + timedelta(days=days)
    return TrackedEvent(
        event_id=event_id or f"r-{next(_ids)}",
        customer_key="c",
        call_type="track",
        event_type=event_type_for("track", name),
        event_name=name,
        timestamp=when,
        received_at=when,
        user_id="c",
        properties=dict(properties),
    )


def journey() -> CustomerJourney:
    return CustomerJourney(customer_key="c", started_at=T0)


def test_the_default_rules_file_states_the_defaults() -> None:
    text = (Path(__file__).resolve().parents[2] / "journeys" / "stage_rules.toml").read_text()
    assert StageRules.from_toml(text) == StageRules()
    assert StageRules() == StageRules(
        consideration_product_views=2,
        loyalty_repeat_window_days=365,
        loyalty_lapse_days=180,
        dedup_window_hours=24,
    )


def test_a_rules_file_overrides_what_it_names() -> None:
    rules = StageRules.from_toml("[loyalty]\nlapse_days = 30\n")
    assert rules == StageRules(loyalty_lapse_days=30)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[loyalty]\nlapse_dayz = 3\n", "loyalty.lapse_dayz: unknown rule"),
        ("[loyalty]\nlapse_days = 0\n", "loyalty_lapse_days: must be a whole number"),
        ("[loyalty]\nlapse_days = 'x'\n", "loyalty_lapse_days: must be a whole number"),
        ("loyalty = 3\n", "loyalty: must be a table"),
    ],
)
def test_a_bad_rules_file_names_the_entry_and_the_rule(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StageRules.from_toml(text)


def test_loyalty_lapses_when_the_next_event_comes_after_the_lapse_period() -> None:
    rules = StageRules(loyalty_lapse_days=30)
    j = journey()
    j.record(touch("Order Completed", 0), rules)
    j.record(touch("Order Completed", 10), rules)
    assert j.stage is Stage.LOYALTY
    assert j.record(touch("Product Viewed", 40), rules) == []  # exactly 30 days: not yet
    changes = j.record(touch("Product Viewed", 45), rules)
    assert [(c.previous, c.stage, c.at) for c in changes] == [
        (Stage.LOYALTY, Stage.LAPSED, T0 + timedelta(days=40))
    ]
    assert changes[0].reason == "no order for 30 days"
    won = j.record(touch("Order Completed", 50), rules)
    assert [(c.stage, c.reason) for c in won] == [(Stage.LOYALTY, "won back: order after lapse")]


def test_stage_as_of_follows_the_history_and_decides_lapse_at_the_moment() -> None:
    rules = StageRules(loyalty_lapse_days=30)
    j = journey()
    for event in [
        touch("Product Added", 0),
        touch("Order Completed", 1),
        touch("Order Completed", 2),
    ]:
        j.record(event, rules)
    assert j.stage_as_of(T0 - timedelta(seconds=1), rules) is None
    assert j.stage_as_of(T0, rules) is Stage.CONSIDERATION
    assert j.stage_as_of(T0 + timedelta(days=1, hours=1), rules) is Stage.PURCHASE
    assert j.stage_as_of(T0 + timedelta(days=32), rules) is Stage.LOYALTY
    # No event has arrived since, yet "as of" day 33 the customer is lapsed.
    assert j.stage_as_of(T0 + timedelta(days=33), rules) is Stage.LAPSED
    assert j.stage is Stage.LOYALTY


def test_ids_past_the_dedup_window_are_kept_without_their_arrival() -> None:
    rules = StageRules(dedup_window_hours=24)
    j = journey()
    j.record(touch("Product Viewed", 0, event_id="old"), rules)
    j.record(touch("Product Viewed", 0.5, event_id="mid"), rules)
    assert set(j.recorded_ids) == {"old", "mid"}
    j.record(touch("Product Viewed", 1.2, event_id="new"), rules)
    assert set(j.recorded_ids) == {"mid", "new"}
    assert set(j.ids_past_window) == {"old"}
    # Within the window and past it, a re-sent event is recognised.
    assert j.record(touch("Product Viewed", 0.5, event_id="mid"), rules) == []
    assert j.record(touch("Product Viewed", 1.3, event_id="old"), rules) == []
    assert j.touchpoints == 3


def test_an_old_event_sent_again_soon_after_is_recognised_whatever_its_event_time() -> None:
    # A re-imported history: events from months ago, sent twice an hour apart.
    rules = StageRules(dedup_window_hours=24)
    j = journey()
    now = T0 + timedelta(days=400)
    old_order = replace(touch("Order Completed", 0, event_id="o1", order_id="o1"), received_at=now)
    later = replace(touch("Product Viewed", 300, event_id="v1"), received_at=now)
    j.record(old_order, rules)
    j.record(later, rules)
    resent = replace(old_order, received_at=now + timedelta(hours=1))
    assert j.record(resent, rules) == []
    assert j.touchpoints == 2
    # Sent again after the window (by arrival, with a new receive time), it is still
    # the same event: one touch, one row in the event log.
    much_later = replace(old_order, received_at=now + timedelta(hours=30))
    assert j.record(much_later, rules) == []
    assert j.touchpoints == 2
    assert j.orders == 1
    # Even once its id has moved past the window (a later arrival pruned it).
    j.record(replace(later, event_id="v2", received_at=now + timedelta(hours=60)), rules)
    assert "o1" in j.ids_past_window and "o1" not in j.recorded_ids
    assert j.record(replace(old_order, received_at=now + timedelta(days=30)), rules) == []
    assert (j.touchpoints, j.orders) == (3, 1)


def test_a_journey_restored_from_an_older_snapshot_keeps_ids_past_the_window() -> None:
    """A snapshot taken before ``earlier_ids`` existed restores a journey without it."""
    rules = StageRules(dedup_window_hours=1)
    j = journey()
    j.record(touch("Product Viewed", 0, event_id="a"), rules)
    del j.__dict__["earlier_ids"]
    j.record(touch("Product Viewed", 1, event_id="b"), rules)
    assert set(j.ids_past_window) == {"a"}
    assert j.record(touch("Product Viewed", 1.1, event_id="a"), rules) == []
    assert j.touchpoints == 2


def test_replaying_the_stored_events_gives_the_same_pruned_state() -> None:
    rules = StageRules(dedup_window_hours=1)
    j = journey()
    for day in range(5):
        j.record(touch("Product Viewed", day / 10), rules)
    events = j.collect_events()
    replayed = None
    for stored in events:
        replayed = stored.mutate(replayed)  # type: ignore[attr-defined]
    assert isinstance(replayed, CustomerJourney)
    assert replayed.recorded_ids == j.recorded_ids
    assert replayed.summary() == j.summary()


def test_fact_events_say_what_happened() -> None:
    j = journey()
    for event in [
        touch("Product Viewed", 0, category="shoes"),
        touch("Product Added", 0.1, quantity=2),
        touch("Product Added", 0.2),
        touch("Product Removed", 0.3, quantity=3),
        touch("Product Added", 0.4),
        touch("Checkout Started", 0.5),
        touch("Order Completed", 0.6, order_id="o1", revenue=40),
        touch("Order Completed", 0.61, order_id="o1", revenue=40),  # same order, new messageId
        touch("Ticket Created", 1, ticket_id="t1"),
        touch("Ticket Resolved", 2, ticket_id="t1"),
        touch("Feedback Submitted", 2, rating=4),
        touch("Order Refunded", 3, order_id="o1", revenue=10),
    ]:
        j.record(event, StageRules())
    facts = [type(e).__name__ for e in j.collect_events() if type(e).__name__ != "StageReached"]
    assert facts == [
        "JourneyStarted",
        "Browsed",
        "CartOpened",
        "CartChanged",
        "CartEmptied",
        "CartOpened",
        "CheckoutStarted",
        "OrderPlaced",
        "Interacted",
        "TicketOpened",
        "TicketResolved",
        "FeedbackGiven",
        "OrderRefunded",
    ]
    assert j.orders == 1
    assert j.revenue == 40
    assert j.refunded == 10
    assert j.cart_items == 0
    assert j.open_tickets == 0
    assert j.ratings == [4.0]
    assert j.categories == {"shoes": 1}


def test_order_placed_carries_order_id_and_revenue() -> None:
    j = journey()
    j.record(touch("Order Completed", 0, order_id="o9", total="12.5"), StageRules())
    placed = [e for e in j.collect_events() if type(e).__name__ == "OrderPlaced"]
    assert [(e.order_id, e.revenue) for e in placed] == [("o9", 12.5)]  # type: ignore[attr-defined]


def test_purchase_cycle_is_the_median_gap_between_orders() -> None:
    j = journey()
    for day in (0, 10, 30, 31):
        j.record(touch("Order Completed", day), StageRules())
    assert j.purchase_cycle_days() == 10
    assert journey().purchase_cycle_days() is None
