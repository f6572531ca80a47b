"""Unit tests: the profile read model and the timeline, both pure functions of a journey."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from events import TrackedEvent, event_type_for
from journeys.application import timeline_of
from journeys.domainmodel import CustomerJourney
from journeys.stages import StageRules
from projections.profiles import profile_of, rfm

T0 = datetime(2025, 5, 1, tzinfo=UTC)


def event(
    event_id: str, name: str, days: float, context: dict[str, object] | None = None, **props: object
) -> TrackedEvent:
    when = T0 + timedelta(days=days)
    return TrackedEvent(
        event_id=event_id,
        customer_key="p",
        call_type="track",
        event_type=event_type_for("track", name),
        event_name=name,
        timestamp=when,
        received_at=when,
        user_id="p",
        properties=dict(props),
        context=dict(context or {}),
    )


def shopper() -> CustomerJourney:
    journey = CustomerJourney(customer_key="p", started_at=T0)
    for touch in [
        event("e1", "Product Viewed", 0, {"channel": "Email"}, category="shoes"),
        event("e2", "Product Viewed", 0.1, {"app": {}}, category="bags"),
        event("e3", "Product Viewed", 0.2, {"page": {}}, category="shoes"),
        event("e4", "Order Completed", 1, order_id="o1", revenue=100),
        event("e5", "Order Completed", 11, order_id="o2", revenue=50),
        event("e6", "Order Completed", 31, order_id="o3", revenue=30),
        event("e7", "Order Refunded", 32, order_id="o3", revenue=30),
        event("e8", "Feedback Submitted", 33, rating=5),
        event("e9", "Feedback Submitted", 34, rating="2"),
    ]:
        journey.record(touch, StageRules())
    return journey


def test_profile_values() -> None:
    profile = profile_of(shopper())
    assert profile["channels"] == ["app", "email", "unknown", "web"]
    assert profile["orders"] == 3
    assert profile["revenue"] == 150.0  # net of the refund
    assert profile["refunded"] == 30.0
    assert profile["aov"] == 60.0  # gross revenue / orders
    assert profile["purchase_cycle_days"] == 15.0  # median of 10 and 20 days
    # 150 so far + a year of orders every 15 days at 60 each.
    assert profile["ltv_estimate"] == round(150 + 60 * 365 / 15, 2)
    assert profile["interest_tags"] == ["shoes", "bags"]
    assert profile["average_rating"] == 3.5
    assert profile["last_order_at"] == T0 + timedelta(days=31)
    assert rfm(profile, T0 + timedelta(days=41)) == {
        "recency_days": 10.0,
        "frequency": 3,
        "monetary": 150.0,
    }


def test_without_orders_the_ltv_is_what_was_spent_and_recency_is_unknown() -> None:
    journey = CustomerJourney(customer_key="p", started_at=T0)
    journey.record(event("v", "Product Viewed", 0), StageRules())
    profile = profile_of(journey)
    assert (profile["ltv_estimate"], profile["aov"], profile["purchase_cycle_days"]) == (
        0.0,
        0.0,
        None,
    )
    assert rfm(profile, T0)["recency_days"] is None


def test_timeline_is_in_time_order_with_stage_changes() -> None:
    journey = CustomerJourney(customer_key="p", started_at=T0)
    for touch in [
        event("late", "Product Added", 2),
        event("early", "Product Viewed", 1, category="hats"),
        event("order", "Order Completed", 3, order_id="o1", revenue=9),
    ]:
        journey.record(touch, StageRules())
    entries = timeline_of(journey.collect_events())
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)
    assert [(e["type"], e.get("event_id")) for e in entries] == [
        ("JourneyStarted", None),
        ("Browsed", "early"),
        ("CartOpened", "late"),
        ("StageReached", "late"),
        ("StageReached", "late"),
        ("OrderPlaced", "order"),
        ("StageReached", "order"),
    ]
    assert entries[1]["category"] == "hats"
    assert (entries[5]["order_id"], entries[5]["revenue"]) == ("o1", 9.0)
    assert [e["stage"] for e in entries if e["type"] == "StageReached"] == [
        "awareness",
        "consideration",
        "purchase",
    ]
