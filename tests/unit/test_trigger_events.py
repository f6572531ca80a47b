"""The trigger consumer's slim parse reads what TrackedEvent reads, and refuses what it refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from events import EventType, TrackedEvent
from events.segment import IdentifyCall, PageCall, SegmentCall, TrackCall, to_tracked_event
from journeys.triggers import CustomerFacts, ObservedEvent
from simulation.storefront import Storefront
from streams.outreach.trigger_events import TriggerEvent

MODELS: dict[str, type[SegmentCall]] = {
    "track": TrackCall,
    "page": PageCall,
    "identify": IdentifyCall,
}
OBSERVED = ("event_id", "event_type", "event_name", "timestamp", "properties", "context")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def storefront_payloads(count: int) -> list[bytes]:
    received = datetime.now(UTC)
    calls = list(Storefront(seed=5, shoppers=count // 10).calls())[:count]
    return [
        to_tracked_event(MODELS[c["type"]].model_validate(c), received).to_json() for c in calls
    ]


def envelope(**fields: Any) -> dict[str, Any]:
    event = TrackedEvent(
        event_id="m1",
        customer_key="c1",
        call_type="track",
        event_type=EventType.PURCHASE,
        event_name="Order Completed",
        timestamp=T0,
        received_at=T0 + timedelta(seconds=1),
        source="key_1",
    )
    data: dict[str, Any] = orjson.loads(event.to_json())
    data.update(fields)
    return data


def test_every_field_the_facts_read_is_the_tracked_events() -> None:
    payloads = storefront_payloads(400)
    payloads.append(orjson.dumps(envelope(context={"historical": True})))
    payloads.append(orjson.dumps(envelope(timestamp="2026-03-01T12:00:00")))  # naive: UTC
    for payload in payloads:
        full, slim = TrackedEvent.from_json(payload), TriggerEvent.from_json(payload)
        for name in OBSERVED:
            assert getattr(slim, name) == getattr(full, name), name
        assert slim.dedup_keys == full.dedup_keys
        assert slim.customer_key == full.customer_key


def test_the_facts_are_the_same_as_from_tracked_events() -> None:
    by_parse: dict[str, dict[str, CustomerFacts]] = {"full": {}, "slim": {}}
    for payload in storefront_payloads(600):
        touches: dict[str, ObservedEvent] = {
            "full": TrackedEvent.from_json(payload),
            "slim": TriggerEvent.from_json(payload),
        }
        key = TriggerEvent.from_json(payload).customer_key
        for parse, touch in touches.items():
            facts = by_parse[parse].setdefault(key, CustomerFacts(key))
            facts.observe(touch)
    assert by_parse["full"].keys() == by_parse["slim"].keys()
    # The stream exercises carts and orders, not only page views.
    assert any(f.orders for f in by_parse["slim"].values())
    assert any(f.cart for f in by_parse["slim"].values())
    for key, full in by_parse["full"].items():
        slim = by_parse["slim"][key]
        assert slim.to_dict() == full.to_dict()


@pytest.mark.parametrize(
    "payload",
    [
        orjson.dumps(envelope(unexpected=1)),
        orjson.dumps({k: v for k, v in envelope().items() if k != "received_at"}),
        orjson.dumps({k: v for k, v in envelope().items() if k != "event_name"}),
        orjson.dumps(envelope(timestamp="yesterday")),
        orjson.dumps(envelope(received_at="soon")),
        orjson.dumps(envelope(sent_at="never")),
        orjson.dumps(envelope(event_type="teleport")),
        b"[1, 2]",
        b'"an event"',
        b"{not json",
    ],
)
def test_what_tracked_event_refuses_is_refused(payload: bytes) -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        TrackedEvent.from_json(payload)
    with pytest.raises((ValueError, TypeError, KeyError)):
        TriggerEvent.from_json(payload)
