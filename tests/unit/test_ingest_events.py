"""The tracking API's pure parts: call types, typed spec properties, time flags, rate limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.rate_limit import TokenBuckets
from events import EventType, TrackedEvent
from events.ecommerce import SUPPORT_EVENTS, check_properties
from events.segment import (
    CALL_MODELS,
    MAX_FUTURE_SKEW,
    AliasCall,
    GroupCall,
    RejectedCall,
    ScreenCall,
    TrackCall,
    to_tracked_event,
    validate_call,
)
from events.types import event_type_for

RECEIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def rejected_fields(model: type, payload: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(RejectedCall) as caught:
        validate_call(model, payload)
    return {p["field"]: p["rule"] for p in caught.value.problems}


@pytest.mark.parametrize(
    ("name", "properties", "field", "rule"),
    [
        ("Product Added", {"price": "20"}, "properties.price", "float_type"),
        ("Product Added", {"price": True}, "properties.price", "float_type"),
        ("Product Added", {"quantity": 1.5}, "properties.quantity", "int_type"),
        ("Product Added", {"quantity": -1}, "properties.quantity", "greater_than_equal"),
        ("Product Added", {"cart_id": 7}, "properties.cart_id", "string_type"),
        ("Order Completed", {"revenue": "lots"}, "properties.revenue", "float_type"),
        ("Order Completed", {"currency": "euro"}, "properties.currency", "string_pattern_mismatch"),
        ("Order Completed", {"products": {"a": 1}}, "properties.products", "list_type"),
        (
            "Order Completed",
            {"products": [{"price": 1}, {"price": "x"}]},
            "properties.products.1.price",
            "float_type",
        ),
        (
            "Checkout Started",
            {"total": None, "checkout_id": []},
            "properties.checkout_id",
            "string_type",
        ),
        ("Products Searched", {"query": 5}, "properties.query", "string_type"),
        ("Feedback Submitted", {}, "properties.rating", "missing"),
        ("Feedback Submitted", {"rating": 0}, "properties.rating", "greater_than_equal"),
        ("Feedback Submitted", {"rating": 6}, "properties.rating", "less_than_equal"),
        ("Ticket Created", {"ticket_id": [1]}, "properties.ticket_id", "value_error"),
        ("Product Viewed", {"product_id": ""}, "properties.product_id", "value_error"),
    ],
)
def test_spec_properties_of_the_wrong_type_are_named(
    name: str, properties: dict[str, Any], field: str, rule: str
) -> None:
    fields = rejected_fields(TrackCall, {"userId": "u", "event": name, "properties": properties})
    assert fields == {field: rule}


@pytest.mark.parametrize(
    ("name", "properties"),
    [
        ("Product Added", {"product_id": 123, "price": 20, "quantity": 2, "colour": "red"}),
        ("Order Completed", {"order_id": "o1", "revenue": 41.5, "currency": "EUR", "products": []}),
        ("Feedback Submitted", {"rating": 5, "comment": "quick and kind"}),
        ("Ticket Resolved", {"ticket_id": "t-1", "status": "solved"}),
        ("Newsletter Signup", {"price": "whatever: custom events are untyped"}),
    ],
)
def test_valid_and_custom_properties_pass_and_are_kept(
    name: str, properties: dict[str, Any]
) -> None:
    call = validate_call(TrackCall, {"userId": "u", "event": name, "properties": properties})
    assert to_tracked_event(call, RECEIVED).properties == properties


def test_support_events_are_documented_and_typed_as_support() -> None:
    for name in SUPPORT_EVENTS:
        assert event_type_for("track", name) is EventType.SUPPORT
    assert check_properties(EventType.SUPPORT, "Feedback Submitted", {"rating": 3}) == []


def test_identify_traits_are_typed_under_traits() -> None:
    fields = rejected_fields(CALL_MODELS["identify"], {"userId": "u", "traits": {"email": 5}})
    assert fields == {"traits.email": "string_type"}


@pytest.mark.parametrize(
    ("model", "payload", "name", "event_type", "properties"),
    [
        (ScreenCall, {"userId": "u", "name": "Cart"}, "Cart", EventType.BROWSE, {}),
        (ScreenCall, {"userId": "u"}, "Screen Viewed", EventType.BROWSE, {}),
        (
            GroupCall,
            {"userId": "u", "groupId": "acme", "traits": {"size": 5}},
            "Group",
            EventType.IDENTIFY,
            {"size": 5, "group_id": "acme"},
        ),
        (
            AliasCall,
            {"userId": "u", "previousId": "anon-1"},
            "Alias",
            EventType.IDENTIFY,
            {"previous_id": "anon-1"},
        ),
    ],
)
def test_screen_group_and_alias_calls_become_envelopes(
    model: type,
    payload: dict[str, Any],
    name: str,
    event_type: EventType,
    properties: dict[str, Any],
) -> None:
    event = to_tracked_event(validate_call(model, payload), RECEIVED, source="abcd1234")
    assert (event.call_type, event.event_name, event.event_type) == (
        payload and model.model_fields["type"].default,
        name,
        event_type,
    )
    assert event.properties == properties
    assert event.source == "abcd1234"


@pytest.mark.parametrize(("model", "field"), [(GroupCall, "groupId"), (AliasCall, "previousId")])
def test_group_and_alias_need_their_ids(model: type, field: str) -> None:
    assert rejected_fields(model, {"userId": "u"}) == {field: "missing"}


def test_envelope_keeps_device_times_and_flags_a_clamped_future() -> None:
    call = TrackCall.model_validate(
        {
            "userId": "u",
            "event": "x",
            "originalTimestamp": "2026-03-02T12:00:00Z",
            "sentAt": "2026-03-01T12:00:00Z",
        }
    )
    event = to_tracked_event(call, RECEIVED)
    assert event.timestamp == RECEIVED + MAX_FUTURE_SKEW
    assert event.timestamp_clamped is True
    assert event.original_timestamp == datetime(2026, 3, 2, 12, tzinfo=UTC)
    assert event.sent_at == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert TrackedEvent.from_json(event.to_json()) == event


def test_a_time_before_1970_is_replaced_by_arrival_and_flagged() -> None:
    call = TrackCall.model_validate({"userId": "u", "event": "x", "timestamp": "0001-01-01T00:00Z"})
    event = to_tracked_event(call, RECEIVED)
    assert (event.timestamp, event.timestamp_clamped) == (RECEIVED, True)


def test_a_plausible_time_is_not_flagged() -> None:
    call = TrackCall(userId="u", event="x", timestamp=RECEIVED - timedelta(days=3))
    event = to_tracked_event(call, RECEIVED)
    assert (event.timestamp, event.timestamp_clamped) == (RECEIVED - timedelta(days=3), False)


def test_historical_comes_from_the_context() -> None:
    call = TrackCall(userId="u", event="x", context={"historical": True})
    assert to_tracked_event(call, RECEIVED).historical is True
    assert to_tracked_event(TrackCall(userId="u", event="x"), RECEIVED).historical is False


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=10, burst=20, clock=clock)
    assert buckets.take("a", 20) == 0
    assert buckets.take("a", 5) == pytest.approx(0.5)
    assert buckets.take("b", 1) == 0  # each source has its own bucket
    clock.now = 0.5
    assert buckets.take("a", 5) == 0
    assert TokenBuckets.retry_after(0.2) == "1" and TokenBuckets.retry_after(2.1) == "3"


def test_a_request_larger_than_the_burst_waits_for_a_full_bucket() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=10, burst=20, clock=clock)
    assert buckets.take("a", 1000) == 0
    assert buckets.take("a", 1000) == pytest.approx(2.0)


def test_rate_zero_turns_the_limit_off() -> None:
    buckets = TokenBuckets(rate=0, burst=1)
    assert all(buckets.take("a", 10_000) == 0 for _ in range(5))
