"""What a flow reads: tracked events, stage changes and segment changes, in event time.

Pure and JSON-friendly: inputs waiting for the flow's clock are kept in the
customer's flow state (see :mod:`journeys.flows.engine`), so each has a
``to_dict``/``from_dict`` pair, dispatched by the table :data:`INPUT_KINDS`.
Times are epoch milliseconds (the event log's precision).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from events import normalized_name
from journeys.segment_state import from_ms, to_ms
from journeys.triggers import ObservedEvent, is_historical


def iso(ms: int) -> str:
    """ISO-8601 text of epoch milliseconds, UTC."""
    return from_ms(ms).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class TrackedInput:
    """A tracked event (an identify's traits are its properties)."""

    kind: ClassVar[str] = "event"
    rank: ClassVar[int] = 0  # at one instant: the event, then the stage and segments it moved

    event_id: str
    at_ms: int
    name: str  # normalized (case and surrounding space do not matter)
    type: str  # the canonical EventType value
    properties: Mapping[str, Any] = field(default_factory=dict)
    historical: bool = False
    timezone: str = ""

    @property
    def key(self) -> str:
        """Recognises a re-sent copy."""
        return f"event:{self.event_id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "event_id": self.event_id,
            "at_ms": self.at_ms,
            "name": self.name,
            "type": self.type,
            "properties": dict(self.properties),
            "historical": self.historical,
            "timezone": self.timezone,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackedInput:
        return cls(
            data["event_id"],
            int(data["at_ms"]),
            data["name"],
            data["type"],
            dict(data.get("properties") or {}),
            bool(data.get("historical")),
            str(data.get("timezone") or ""),
        )


@dataclass(frozen=True, slots=True)
class StageInput:
    """The journey reached ``stage`` (a record of ``journey.stage-changes``)."""

    kind: ClassVar[str] = "stage"
    rank: ClassVar[int] = 1

    event_id: str
    at_ms: int
    stage: str
    historical: bool = False

    @property
    def key(self) -> str:
        return f"stage:{self.stage}:{self.at_ms}:{self.event_id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "event_id": self.event_id,
            "at_ms": self.at_ms,
            "stage": self.stage,
            "historical": self.historical,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageInput:
        return cls(
            data["event_id"], int(data["at_ms"]), data["stage"], bool(data.get("historical"))
        )


@dataclass(frozen=True, slots=True)
class SegmentInput:
    """The customer entered (or left) a segment (a record of ``journey.segments``)."""

    kind: ClassVar[str] = "segment"
    rank: ClassVar[int] = 2

    event_id: str
    at_ms: int
    segment: str
    entered: bool
    historical: bool = False

    @property
    def key(self) -> str:
        return f"segment:{self.segment}:{int(self.entered)}:{self.at_ms}:{self.event_id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "event_id": self.event_id,
            "at_ms": self.at_ms,
            "segment": self.segment,
            "entered": self.entered,
            "historical": self.historical,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentInput:
        return cls(
            data["event_id"],
            int(data["at_ms"]),
            data["segment"],
            bool(data["entered"]),
            bool(data.get("historical")),
        )


@dataclass(frozen=True, slots=True)
class TraitsInput:
    """The customer's computed traits (journeys/segment_definitions.py) as the journey
    worker's segment state gave them after folding the event ``event_id`` at ``at_ms``
    (a ``TraitsChanged`` record of ``journey.segments``): trait id → value."""

    kind: ClassVar[str] = "traits"
    rank: ClassVar[int] = 3  # at one instant: after the event, stage and segments it moved

    event_id: str
    at_ms: int
    values: Mapping[str, Any]
    historical: bool = False

    @property
    def key(self) -> str:
        return f"traits:{self.at_ms}:{self.event_id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "event_id": self.event_id,
            "at_ms": self.at_ms,
            "values": dict(self.values),
            "historical": self.historical,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TraitsInput:
        return cls(
            data["event_id"],
            int(data["at_ms"]),
            dict(data.get("values") or {}),
            bool(data.get("historical")),
        )


FlowInput = TrackedInput | StageInput | SegmentInput | TraitsInput
INPUT_KINDS: dict[
    str, type[TrackedInput] | type[StageInput] | type[SegmentInput] | type[TraitsInput]
] = {kind.kind: kind for kind in (TrackedInput, StageInput, SegmentInput, TraitsInput)}


def input_from_dict(data: Mapping[str, Any]) -> FlowInput:
    """An input as :meth:`to_dict` wrote it."""
    return INPUT_KINDS[data["kind"]].from_dict(data)


def order_key(item: FlowInput) -> tuple[int, int, str]:
    """Event-time order; ties broken by kind and id, so every arrival order folds the same."""
    return (item.at_ms, item.rank, item.key)


# RFM segments, observed at the edge over all buyers (the worker's segment scan),
# enter flows as segment inputs named ``rfm:<segment>``, apart from journey.segments.
RFM_PREFIX = "rfm:"


def rfm_segment_inputs(
    previous: str | None, current: str, latest_order: Mapping[str, Any] | None
) -> list[SegmentInput]:
    """The RFM segment observed now, as segment inputs: leaving ``previous``, entering
    ``current``. Stamped by the event time of the latest order (the purchase that earned
    the place; event time decides), historical when that order was imported, and keyed
    by it: observing the same place earned by the same order again is the same input.
    A buyer with no order known yields nothing (there is no instant to stamp it with)."""
    if current == previous or latest_order is None:
        return []
    stamp = datetime.fromisoformat(str(latest_order["at"]))
    at_ms = to_ms(stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC))
    source = f"rfm/{latest_order.get('order_id') or at_ms}"
    historical = bool(latest_order.get("historical"))
    found = [SegmentInput(source, at_ms, RFM_PREFIX + current, True, historical)]
    if previous:
        found.insert(0, SegmentInput(source, at_ms, RFM_PREFIX + previous, False, historical))
    return found


def tracked_input(event: ObservedEvent) -> TrackedInput:
    """The flow view of a tracked event (``events.TrackedEvent`` or the trigger consumer's)."""
    zone = event.context.get("timezone") or event.properties.get("timezone")
    return TrackedInput(
        event_id=event.dedup_keys[0],
        at_ms=to_ms(event.timestamp),
        name=normalized_name(event.event_name),
        type=event.event_type.value,
        properties=event.properties,
        historical=is_historical(event),
        timezone=zone if isinstance(zone, str) else "",
    )
