"""The canonical envelope every accepted event travels in, on Kafka and beyond."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from events.types import EventType


@dataclass(frozen=True, slots=True)
class TrackedEvent:
    """One accepted tracking event, as the gateway produced it to Kafka.

    ``event_id`` is the sender's messageId: together with the customer key it
    identifies the event everywhere downstream (event store, ClickHouse), which
    is what makes re-deliveries harmless.
    """

    event_id: str
    customer_key: str
    call_type: str
    event_type: EventType
    event_name: str
    timestamp: datetime
    received_at: datetime
    user_id: str | None = None
    anonymous_id: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    # The write key's id the event arrived with: messageIds are unique per source.
    source: str = ""
    # The device's own clock readings, kept as sent (skew correction uses them).
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    # True when the event claimed a time too far ahead and ``timestamp`` was clamped.
    timestamp_clamped: bool = False

    @property
    def historical(self) -> bool:
        """True for imported history (``context.historical``): no outreach fires for it."""
        return self.context.get("historical") is True

    def to_json(self) -> bytes:
        """Serialise for Kafka (orjson writes datetimes as RFC 3339).

        orjson serialises the dataclass itself: the same bytes as via ``asdict``,
        30x faster (measured 494k/s against 16k/s), which was the gateway's
        bottleneck once the producer was fast.
        """
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, payload: bytes | str) -> TrackedEvent:
        """Parse what :meth:`to_json` wrote."""
        data = orjson.loads(payload)
        data["event_type"] = EventType(data["event_type"])
        data["timestamp"] = _parse_time(data["timestamp"])
        data["received_at"] = _parse_time(data["received_at"])
        for name in ("original_timestamp", "sent_at"):
            if data.get(name) is not None:
                data[name] = _parse_time(data[name])
        return cls(**data)


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
