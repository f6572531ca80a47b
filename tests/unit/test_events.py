"""Unit tests for the events package: types, the envelope and the Segment mapping."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from events import EventType, TrackedEvent, event_type_for
from events.segment import (
    MAX_FUTURE_SKEW,
    IdentifyCall,
    PageCall,
    TrackCall,
    describe_errors,
    event_time,
    to_tracked_event,
)

RECEIVED = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def make_event(**overrides: Any) -> TrackedEvent:
    """A valid TrackedEvent; keyword arguments replace any field."""
    fields: dict[str, Any] = {
        "event_id": "msg-1",
        "customer_key": "user-1",
        "call_type": "track",
        "event_type": EventType.CART,
        "event_name": "Product Added",
        "timestamp": datetime(2024, 3, 1, 11, 59, 30, 123456, tzinfo=UTC),
        "received_at": RECEIVED,
        "user_id": "user-1",
        "anonymous_id": "anon-1",
        "properties": {"product_id": "p-1", "price": 9.99, "quantity": 2, "tags": ["a", "b"]},
        "context": {"ip": "10.0.0.1", "library": {"name": "analytics.js", "version": "2.0"}},
    }
    fields.update(overrides)
    return TrackedEvent(**fields)


def errors_of(model: type, payload: Any) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(payload)
    return describe_errors(caught.value)


def by_field(problems: list[dict[str, str]], field: str) -> dict[str, str]:
    matches = [p for p in problems if p["field"] == field]
    assert len(matches) == 1, problems
    return matches[0]


# --- event types --------------------------------------------------------------------------

# Segment's E-commerce spec v2 event names, written out independently of the module's table.
SPEC_V2 = {
    "Products Searched": EventType.BROWSE,
    "Product List Viewed": EventType.BROWSE,
    "Product List Filtered": EventType.BROWSE,
    "Promotion Viewed": EventType.BROWSE,
    "Promotion Clicked": EventType.BROWSE,
    "Product Clicked": EventType.BROWSE,
    "Product Viewed": EventType.BROWSE,
    "Product Shared": EventType.BROWSE,
    "Product Reviewed": EventType.BROWSE,
    "Product Added to Wishlist": EventType.BROWSE,
    "Product Removed from Wishlist": EventType.BROWSE,
    "Product Added": EventType.CART,
    "Product Removed": EventType.CART,
    "Cart Viewed": EventType.CART,
    "Cart Shared": EventType.CART,
    "Coupon Entered": EventType.CHECKOUT,
    "Coupon Applied": EventType.CHECKOUT,
    "Coupon Denied": EventType.CHECKOUT,
    "Coupon Removed": EventType.CHECKOUT,
    "Checkout Started": EventType.CHECKOUT,
    "Checkout Step Viewed": EventType.CHECKOUT,
    "Checkout Step Completed": EventType.CHECKOUT,
    "Payment Info Entered": EventType.CHECKOUT,
    "Order Completed": EventType.PURCHASE,
    "Order Updated": EventType.PURCHASE,
    "Order Refunded": EventType.PURCHASE,
    "Order Cancelled": EventType.PURCHASE,
    "Ticket Created": EventType.SUPPORT,
    "Ticket Updated": EventType.SUPPORT,
    "Ticket Resolved": EventType.SUPPORT,
    "Feedback Submitted": EventType.SUPPORT,
}


def test_event_type_values_are_the_canonical_strings() -> None:
    assert [t.value for t in EventType] == [
        "browse",
        "cart",
        "checkout",
        "purchase",
        "support",
        "identify",
        "custom",
    ]
    assert EventType("cart") is EventType.CART
    assert f"{EventType.PURCHASE}" == "purchase"


@pytest.mark.parametrize(("name", "expected"), sorted(SPEC_V2.items()))
def test_spec_event_names_map_to_their_canonical_type(name: str, expected: EventType) -> None:
    assert event_type_for("track", name) is expected


def test_wishlist_product_added_to_cart_is_a_cart_event() -> None:
    # "Wishlist Product Added to Cart" is one of the 28 events of Segment's E-commerce spec v2
    # (Wishlisting section): a product put into the cart, like "Product Added".
    assert event_type_for("track", "Wishlist Product Added to Cart") is EventType.CART


@pytest.mark.parametrize(
    "variant",
    [
        "order completed",
        "ORDER COMPLETED",
        "Order completed",
        "oRdEr CoMpLeTeD",
        "  Order Completed\t",
    ],
)
def test_spec_names_match_case_insensitively_and_ignore_surrounding_space(variant: str) -> None:
    assert event_type_for("track", variant) is EventType.PURCHASE


@pytest.mark.parametrize("name", ["Signed Up", "Order Completed!", "Orders Completed", "", "  "])
def test_unknown_track_names_are_custom(name: str) -> None:
    assert event_type_for("track", name) is EventType.CUSTOM


@pytest.mark.parametrize("call_type", ["page", "screen"])
@pytest.mark.parametrize("name", ["Home", "Order Completed", "Ticket Created", ""])
def test_page_and_screen_calls_are_browsing_whatever_their_name(call_type: str, name: str) -> None:
    assert event_type_for(call_type, name) is EventType.BROWSE


@pytest.mark.parametrize("call_type", ["identify", "alias", "group"])
@pytest.mark.parametrize("name", ["Identify", "Order Completed", ""])
def test_identify_alias_and_group_calls_are_identify(call_type: str, name: str) -> None:
    assert event_type_for(call_type, name) is EventType.IDENTIFY


# --- envelope -----------------------------------------------------------------------------


def test_round_trip_preserves_every_field() -> None:
    event = make_event()
    back = TrackedEvent.from_json(event.to_json())
    assert back == event
    for f in dataclasses.fields(TrackedEvent):
        assert getattr(back, f.name) == getattr(event, f.name), f.name
    assert back.event_type is EventType.CART
    assert back.timestamp.tzinfo is not None
    assert back.timestamp.microsecond == 123456


def test_round_trip_keeps_a_non_utc_offset() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    event = make_event(timestamp=datetime(2024, 3, 1, 17, 0, tzinfo=india))
    back = TrackedEvent.from_json(event.to_json())
    assert back.timestamp == event.timestamp
    assert back.timestamp.utcoffset() == timedelta(hours=5, minutes=30)


def test_round_trip_of_optional_fields_left_out() -> None:
    event = make_event(user_id=None, anonymous_id=None, properties={}, context={})
    assert TrackedEvent.from_json(event.to_json()) == event


def test_to_json_writes_plain_json_with_rfc3339_times() -> None:
    payload = make_event().to_json()
    assert isinstance(payload, bytes)
    data = orjson.loads(payload)
    assert data["event_type"] == "cart"
    assert data["timestamp"] == "2024-03-01T11:59:30.123456+00:00"
    assert data["received_at"] == "2024-03-01T12:00:00+00:00"
    assert data["properties"]["tags"] == ["a", "b"]
    assert set(data) == {f.name for f in dataclasses.fields(TrackedEvent)}


def test_from_json_accepts_text_and_reads_naive_times_as_utc() -> None:
    data = orjson.loads(make_event().to_json())
    data["timestamp"] = "2024-03-01T11:00:00"
    back = TrackedEvent.from_json(orjson.dumps(data).decode())
    assert back.timestamp == datetime(2024, 3, 1, 11, 0, tzinfo=UTC)
    assert back.timestamp.utcoffset() == timedelta(0)


def test_from_json_rejects_an_unknown_event_type() -> None:
    data = orjson.loads(make_event().to_json())
    data["event_type"] = "teleport"
    with pytest.raises(ValueError):
        TrackedEvent.from_json(orjson.dumps(data))


def test_envelope_is_immutable() -> None:
    event = make_event()
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.event_id = "other"  # type: ignore[misc]


_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=15,
)
_json_objects = st.dictionaries(_text, _json_values, max_size=5)
# RFC 3339 offsets are whole minutes; those are all an ISO-8601 parser (pydantic) produces.
_offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
_aware_times = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=_offsets
)


@settings(database=None)
@given(
    event_id=_text,
    customer_key=_text,
    call_type=st.sampled_from(["track", "page", "screen", "identify"]),
    event_type=st.sampled_from(list(EventType)),
    event_name=_text,
    timestamp=_aware_times,
    received_at=_aware_times,
    user_id=st.none() | _text,
    anonymous_id=st.none() | _text,
    properties=_json_objects,
    context=_json_objects,
)
def test_json_round_trip_property(**fields: Any) -> None:
    event = TrackedEvent(**fields)
    back = TrackedEvent.from_json(event.to_json())
    assert back == event
    assert back.event_type is event.event_type
    assert back.timestamp.utcoffset() == event.timestamp.utcoffset()
    assert back.received_at.utcoffset() == event.received_at.utcoffset()
    # A second trip is byte-identical: nothing drifts through Kafka hops.
    assert back.to_json() == event.to_json()


# --- Segment calls: validation ------------------------------------------------------------


def test_track_call_accepts_what_segment_sdks_send() -> None:
    call = TrackCall.model_validate(
        {
            "type": "track",
            "userId": "u-1",
            "anonymousId": "a-1",
            "messageId": "m-1",
            "event": "Product Added",
            "properties": {"sku": "X"},
            "timestamp": "2024-03-01T11:00:00Z",
            "context": {"ip": "1.2.3.4"},
            "writeKey": "wk",
            "somethingNew": 1,
        }
    )
    assert call.event == "Product Added"
    assert call.timestamp == datetime(2024, 3, 1, 11, tzinfo=UTC)
    assert call.properties == {"sku": "X"}
    assert call.customer_key == "u-1"


def test_customer_key_is_user_id_when_present() -> None:
    call = TrackCall(userId="u-1", anonymousId="a-1", event="x")
    assert call.customer_key == "u-1"


def test_customer_key_falls_back_to_prefixed_anonymous_id() -> None:
    call = TrackCall(anonymousId="a-1", event="x")
    assert call.customer_key == "anon:a-1"


@pytest.mark.parametrize("model", [TrackCall, PageCall, IdentifyCall])
def test_missing_user_and_anonymous_id_is_reported_on_user_id(model: type) -> None:
    payload: dict[str, Any] = {"event": "Product Added"} if model is TrackCall else {}
    problem = by_field(errors_of(model, payload), "userId")
    assert problem["rule"] == "value_error"
    assert problem["message"] == "userId or anonymousId is required"


def test_null_ids_count_as_missing() -> None:
    problems = errors_of(TrackCall, {"event": "x", "userId": None, "anonymousId": None})
    assert [p["field"] for p in problems] == ["userId"]


def test_wrong_type_names_the_field_and_rule() -> None:
    problems = errors_of(TrackCall, {"event": "x", "userId": 123})
    assert problems == [
        {"field": "userId", "rule": "string_type", "message": "Input should be a valid string"}
    ]


def test_wrong_type_of_anonymous_id_is_named() -> None:
    problems = errors_of(TrackCall, {"event": "x", "userId": "u", "anonymousId": ["a"]})
    assert by_field(problems, "anonymousId")["rule"] == "string_type"


@pytest.mark.parametrize("field", ["userId", "anonymousId", "messageId"])
def test_empty_identifiers_are_rejected(field: str) -> None:
    payload = {"event": "x", "userId": "u", "anonymousId": "a", field: ""}
    assert by_field(errors_of(TrackCall, payload), field)["rule"] == "string_too_short"


def test_overlong_identifier_is_rejected() -> None:
    problems = errors_of(TrackCall, {"event": "x", "userId": "u" * 256})
    assert by_field(problems, "userId")["rule"] == "string_too_long"
    assert TrackCall(event="x", userId="u" * 255).userId == "u" * 255


def test_empty_event_name_is_rejected() -> None:
    problem = by_field(errors_of(TrackCall, {"userId": "u", "event": ""}), "event")
    assert problem["rule"] == "string_too_short"


def test_missing_event_name_is_rejected() -> None:
    problem = by_field(errors_of(TrackCall, {"userId": "u"}), "event")
    assert problem["rule"] == "missing"


def test_overlong_event_name_is_rejected() -> None:
    problem = by_field(errors_of(TrackCall, {"userId": "u", "event": "e" * 201}), "event")
    assert problem["rule"] == "string_too_long"


def test_call_type_must_match_the_endpoint() -> None:
    problem = by_field(errors_of(TrackCall, {"userId": "u", "event": "x", "type": "page"}), "type")
    assert problem["rule"] == "literal_error"


def test_bad_timestamp_is_named() -> None:
    problems = errors_of(TrackCall, {"userId": "u", "event": "x", "timestamp": "yesterday"})
    assert by_field(problems, "timestamp")["rule"].startswith("datetime")


def test_nested_error_locations_are_dotted() -> None:
    problems = errors_of(TrackCall, {"userId": "u", "event": "x", "properties": []})
    assert by_field(problems, "properties")["rule"] == "dict_type"


def test_error_on_the_whole_body_is_reported_as_body() -> None:
    problems = errors_of(TrackCall, "not an object")
    assert problems == [
        {
            "field": "body",
            "rule": "model_type",
            "message": problems[0]["message"],
        }
    ]
    assert problems[0]["message"]


def test_describe_errors_reports_every_problem() -> None:
    problems = errors_of(TrackCall, {"event": "", "messageId": 5})
    fields = {p["field"] for p in problems}
    assert fields == {"event", "messageId", "userId"}
    for problem in problems:
        assert set(problem) == {"field", "rule", "message"}
        assert not problem["message"].startswith("Value error")


# --- Segment calls: event time ------------------------------------------------------------


def test_clock_skew_is_corrected_from_sent_at_and_original_timestamp() -> None:
    # The device clock is 3 hours behind; the event happened 10 s before the batch was sent.
    call = TrackCall(
        userId="u",
        event="x",
        originalTimestamp=datetime(2024, 3, 1, 8, 59, 50, tzinfo=UTC),
        sentAt=datetime(2024, 3, 1, 9, 0, 0, tzinfo=UTC),
        timestamp=datetime(2020, 1, 1, tzinfo=UTC),
    )
    assert event_time(call, RECEIVED) == RECEIVED - timedelta(seconds=10)


def test_clock_skew_correction_treats_naive_times_as_utc() -> None:
    call = TrackCall.model_validate(
        {
            "userId": "u",
            "event": "x",
            "originalTimestamp": "2024-03-01T08:59:00",
            "sentAt": "2024-03-01T10:00:00+01:00",
        }
    )
    assert event_time(call, RECEIVED) == RECEIVED - timedelta(minutes=1)


def test_explicit_timestamp_is_used_without_sent_at() -> None:
    call = TrackCall(
        userId="u",
        event="x",
        timestamp=datetime(2024, 2, 1, tzinfo=UTC),
        originalTimestamp=datetime(2024, 1, 1, tzinfo=UTC),
    )
    assert event_time(call, RECEIVED) == datetime(2024, 2, 1, tzinfo=UTC)


def test_naive_explicit_timestamp_is_read_as_utc() -> None:
    call = TrackCall.model_validate({"userId": "u", "event": "x", "timestamp": "2024-02-01T10:00"})
    happened = event_time(call, RECEIVED)
    assert happened == datetime(2024, 2, 1, 10, tzinfo=UTC)
    assert happened.tzinfo is not None


def test_original_timestamp_alone_is_used() -> None:
    call = TrackCall(userId="u", event="x", originalTimestamp=datetime(2024, 1, 5, tzinfo=UTC))
    assert event_time(call, RECEIVED) == datetime(2024, 1, 5, tzinfo=UTC)


def test_sent_at_alone_is_ignored() -> None:
    call = TrackCall(userId="u", event="x", sentAt=datetime(2024, 1, 5, tzinfo=UTC))
    assert event_time(call, RECEIVED) == RECEIVED


def test_no_times_means_arrival_time() -> None:
    assert event_time(TrackCall(userId="u", event="x"), RECEIVED) == RECEIVED


def test_future_timestamp_is_clamped_to_max_skew() -> None:
    call = TrackCall(userId="u", event="x", timestamp=RECEIVED + timedelta(days=30))
    assert event_time(call, RECEIVED) == RECEIVED + MAX_FUTURE_SKEW


def test_timestamp_just_within_max_skew_is_kept() -> None:
    inside = RECEIVED + MAX_FUTURE_SKEW - timedelta(seconds=1)
    call = TrackCall(userId="u", event="x", timestamp=inside)
    assert event_time(call, RECEIVED) == inside


def test_future_corrected_time_is_clamped_too() -> None:
    # sentAt before originalTimestamp would put the event in the future.
    call = TrackCall(
        userId="u",
        event="x",
        originalTimestamp=datetime(2024, 3, 2, tzinfo=UTC),
        sentAt=datetime(2024, 3, 1, tzinfo=UTC),
    )
    assert event_time(call, RECEIVED) == RECEIVED + MAX_FUTURE_SKEW


_plausible_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2050, 1, 1), timezones=_offsets
)


@settings(database=None)
@given(
    original=st.none() | _plausible_times,
    sent=st.none() | _plausible_times,
    stamp=st.none() | _plausible_times,
)
def test_event_time_is_never_beyond_the_skew_limit(
    original: datetime | None, sent: datetime | None, stamp: datetime | None
) -> None:
    call = TrackCall(
        userId="u", event="x", originalTimestamp=original, sentAt=sent, timestamp=stamp
    )
    happened = event_time(call, RECEIVED)
    assert happened <= RECEIVED + MAX_FUTURE_SKEW
    assert happened.tzinfo is not None
    if original is not None and sent is not None:
        assert happened == min(RECEIVED - (sent - original), RECEIVED + MAX_FUTURE_SKEW)


def test_absurd_sent_at_does_not_crash_event_time() -> None:
    # Both times pass validation; the gateway calls to_tracked_event on them unguarded, so an
    # exception here is a 500 for a client error.
    call = TrackCall.model_validate(
        {
            "userId": "u",
            "event": "x",
            "originalTimestamp": "0001-01-01T00:00:00Z",
            "sentAt": "9999-12-31T00:00:00Z",
        }
    )
    happened = event_time(call, RECEIVED)
    assert happened <= RECEIVED + MAX_FUTURE_SKEW


# --- Segment calls: the envelope ----------------------------------------------------------


def test_track_call_becomes_a_tracked_event() -> None:
    call = TrackCall(
        userId="u-1",
        anonymousId="a-1",
        messageId="m-1",
        event="Checkout Started",
        properties={"value": 30},
        context={"ip": "1.2.3.4"},
        timestamp=datetime(2024, 3, 1, 11, tzinfo=UTC),
    )
    event = to_tracked_event(call, RECEIVED)
    assert event == TrackedEvent(
        event_id="m-1",
        customer_key="u-1",
        call_type="track",
        event_type=EventType.CHECKOUT,
        event_name="Checkout Started",
        timestamp=datetime(2024, 3, 1, 11, tzinfo=UTC),
        received_at=RECEIVED,
        user_id="u-1",
        anonymous_id="a-1",
        properties={"value": 30},
        context={"ip": "1.2.3.4"},
    )


def test_unknown_track_event_is_kept_as_custom() -> None:
    event = to_tracked_event(TrackCall(anonymousId="a", event="Newsletter Signup"), RECEIVED)
    assert event.event_type is EventType.CUSTOM
    assert event.event_name == "Newsletter Signup"
    assert event.customer_key == "anon:a"
    assert event.user_id is None
    assert event.anonymous_id == "a"


def test_page_call_without_name_is_a_page_view() -> None:
    event = to_tracked_event(PageCall(userId="u", properties={"path": "/"}), RECEIVED)
    assert event.call_type == "page"
    assert event.event_name == "Page Viewed"
    assert event.event_type is EventType.BROWSE
    assert event.properties == {"path": "/"}


def test_named_page_call_keeps_its_name_and_is_browsing() -> None:
    event = to_tracked_event(PageCall(userId="u", name="Order Completed"), RECEIVED)
    assert event.event_name == "Order Completed"
    assert event.event_type is EventType.BROWSE


def test_identify_call_carries_traits_as_properties() -> None:
    call = IdentifyCall(userId="u", anonymousId="a", traits={"email": "x@example.com"})
    event = to_tracked_event(call, RECEIVED)
    assert event.call_type == "identify"
    assert event.event_name == "Identify"
    assert event.event_type is EventType.IDENTIFY
    assert event.properties == {"email": "x@example.com"}
    assert event.customer_key == "u"


def test_missing_message_id_gets_a_fresh_uuid() -> None:
    call = TrackCall(userId="u", event="x")
    first = to_tracked_event(call, RECEIVED).event_id
    second = to_tracked_event(call, RECEIVED).event_id
    assert uuid.UUID(first).version == 4
    assert first != second


def test_message_id_is_the_event_id_on_every_delivery() -> None:
    call = TrackCall(userId="u", event="x", messageId="m-7")
    assert to_tracked_event(call, RECEIVED).event_id == "m-7"
    assert to_tracked_event(call, RECEIVED + timedelta(minutes=5)).event_id == "m-7"


def test_envelope_from_a_call_survives_json() -> None:
    call = TrackCall.model_validate(
        {
            "anonymousId": "a",
            "event": "product viewed",
            "timestamp": "2024-03-01T05:00:00.5-05:00",
            "properties": {"nested": {"list": [1, 2.5, None, True]}},
        }
    )
    event = to_tracked_event(call, RECEIVED)
    assert event.event_type is EventType.BROWSE
    assert TrackedEvent.from_json(event.to_json()) == event
