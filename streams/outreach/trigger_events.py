"""The parts of a tracked event the trigger rules read, parsed from its JSON.

Every event on the events topic passes the trigger consumer, and
``TrackedEvent.from_json`` builds the whole envelope (fifteen fields of a frozen
dataclass, four timestamps) for rules that read eight of them: that
construction was a third of the fact path's parsing. This accepts and refuses
exactly the payloads ``TrackedEvent.from_json`` does, so the trigger facts see
the events the journey pipeline records (the others it dead-letters).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from events import EventType, TrackedEvent
from events.envelope import HISTORY_SCOPE, scoped_dedup_keys

_FIELDS = frozenset(field.name for field in dataclasses.fields(TrackedEvent))
_REQUIRED = frozenset(
    field.name
    for field in dataclasses.fields(TrackedEvent)
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
)
_OPTIONAL_TIMES = ("original_timestamp", "sent_at")


class TriggerEvent(NamedTuple):
    """A tracked event as the trigger rules see it (journeys/triggers.py ObservedEvent)."""

    event_id: str
    customer_key: str
    event_type: EventType
    event_name: str
    timestamp: datetime
    properties: dict[str, Any]
    context: dict[str, Any]
    source: str

    @property
    def dedup_keys(self) -> tuple[str, ...]:
        """As ``TrackedEvent.dedup_keys``: imported history has one scope, the rest their source."""
        scope = HISTORY_SCOPE if self.context.get("historical") is True else self.source
        return scoped_dedup_keys(scope, self.event_id)

    @classmethod
    def from_json(cls, payload: bytes | str) -> TriggerEvent:
        """Parse what ``TrackedEvent.to_json`` wrote; raises where ``TrackedEvent.from_json``
        raises (ValueError, TypeError or KeyError)."""
        data = orjson.loads(payload)
        if not isinstance(data, dict):
            raise TypeError("a tracked event is a JSON object")
        names = data.keys()
        if not names <= _FIELDS:
            raise TypeError(f"unexpected fields: {sorted(names - _FIELDS)}")
        if not names >= _REQUIRED:
            raise TypeError(f"missing fields: {sorted(_REQUIRED - names)}")
        _time(data["received_at"])  # not read here, but an envelope without it is refused
        for name in _OPTIONAL_TIMES:
            if data.get(name) is not None:
                _time(data[name])
        return cls(
            data["event_id"],
            data["customer_key"],
            EventType(data["event_type"]),
            data["event_name"],
            _time(data["timestamp"]),
            data.get("properties", {}),
            data.get("context", {}),
            data.get("source", ""),
        )


def _time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
