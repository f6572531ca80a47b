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
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from events import EventType, TrackedEvent
from events.envelope import event_type_of, id_scope_of, parse_event_time, scoped_dedup_keys

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
        return scoped_dedup_keys(id_scope_of(self.context, self.source), self.event_id)

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
        parse_event_time(data["received_at"])  # not read here, but refused when wrong
        for name in _OPTIONAL_TIMES:
            if data.get(name) is not None:
                parse_event_time(data[name])
        return cls(
            data["event_id"],
            data["customer_key"],
            event_type_of(data["event_type"]),
            data["event_name"],
            parse_event_time(data["timestamp"]),
            data.get("properties", {}),
            data.get("context", {}),
            data.get("source", ""),
        )
