"""What starts, ends, waits for and routes a flow: triggers and branch predicates.

Triggers (entry, exit, goal, ``wait_until``) match one input: an event by name
or canonical type with property filters (``{event = "Product Added",
properties = {price = {gt = 10}}}``), a stage reached (``{stage = "loyalty"}``),
a segment entered or exited (``{segment = "vip", on = "entered"}``, as the
``journey.segments`` facts record it). Predicates (``branch``) read what the
flow knows of the customer: the entry event's properties (``{property =
"value", gt = 50}``), identify traits (``{trait = "plan", eq = "pro"}``),
computed traits (``{computed_trait = "lifetime_revenue", gt = 500}``, as the
journey worker last reported them: :class:`journeys.flows.inputs.TraitsInput`),
the stage, segment membership, and ``and`` / ``or`` / ``not`` of them.

Event matching and comparisons are the segments' (journeys/segment_definitions.py,
journeys/segment_state.py), so a filter means the same in a segment and a flow.
Each kind is one registered class, found by its distinguishing field in a table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from journeys.flows.inputs import FlowInput, SegmentInput, StageInput, TrackedInput
from journeys.segment_definitions import STAGES, Comparison, EventMatch, _Parser
from journeys.segment_state import SegmentEvent, compare, matches


class Problems:
    """Validation errors as (path naming the node and field, message)."""

    def __init__(self) -> None:
        # The segments' parser reads event matches and comparisons; its errors are ours.
        self.shared = _Parser()
        self.errors: list[tuple[str, str]] = self.shared.errors

    def add(self, path: str, message: str) -> None:
        self.errors.append((path, message))

    def unknown(self, raw: Mapping[str, Any], allowed: set[str], path: str) -> None:
        for key in raw:
            if key not in allowed:
                self.add(f"{path}.{key}", f"unknown field (known: {', '.join(sorted(allowed))})")


# --- triggers ------------------------------------------------------------------------


class Trigger(Protocol):
    def matches(self, item: FlowInput) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class EventTrigger:
    """An event of a name or canonical type, passing every property filter."""

    fields: ClassVar[set[str]] = {"event", "type", "properties"}
    match: EventMatch

    @classmethod
    def parse(cls, raw: Mapping[str, Any], path: str, problems: Problems) -> EventTrigger | None:
        before = len(problems.errors)
        match = problems.shared.match(raw, path)
        return None if len(problems.errors) != before else cls(match)

    def matches(self, item: FlowInput) -> bool:
        if not isinstance(item, TrackedInput):
            return False
        event = SegmentEvent(item.event_id, item.at_ms, item.name, item.type, item.properties)
        return matches(self.match, event)

    def describe(self) -> str:
        return self.match.name or f"type {self.match.type}"


@dataclass(frozen=True, slots=True)
class StageTrigger:
    """The journey reached one of ``stages``."""

    fields: ClassVar[set[str]] = {"stage"}
    stages: frozenset[str]

    @classmethod
    def parse(cls, raw: Mapping[str, Any], path: str, problems: Problems) -> StageTrigger | None:
        stages = _stages(raw["stage"], f"{path}.stage", problems)
        return None if stages is None else cls(stages)

    def matches(self, item: FlowInput) -> bool:
        return isinstance(item, StageInput) and item.stage in self.stages

    def describe(self) -> str:
        return "stage " + "|".join(sorted(self.stages))


@dataclass(frozen=True, slots=True)
class SegmentTrigger:
    """The customer entered (``on = "entered"``, the default) or exited a segment."""

    fields: ClassVar[set[str]] = {"segment", "on"}
    segment: str
    entered: bool = True

    @classmethod
    def parse(cls, raw: Mapping[str, Any], path: str, problems: Problems) -> SegmentTrigger | None:
        segment, on = raw["segment"], raw.get("on", "entered")
        if not isinstance(segment, str) or not segment:
            problems.add(f"{path}.segment", "must be a segment id")
            return None
        if on not in ("entered", "exited"):
            problems.add(f"{path}.on", "must be entered or exited")
            return None
        return cls(segment, on == "entered")

    def matches(self, item: FlowInput) -> bool:
        return (
            isinstance(item, SegmentInput)
            and item.segment == self.segment
            and item.entered is self.entered
        )

    def describe(self) -> str:
        return f"segment {self.segment} {'entered' if self.entered else 'exited'}"


_TriggerKind = type[EventTrigger] | type[StageTrigger] | type[SegmentTrigger]
# The field that says which kind a trigger is.
TRIGGER_KINDS: dict[str, _TriggerKind] = {
    "event": EventTrigger,
    "type": EventTrigger,
    "stage": StageTrigger,
    "segment": SegmentTrigger,
}


def parse_trigger(
    raw: object, path: str, problems: Problems, extra: set[str] | None = None
) -> Trigger | None:
    """A trigger table (``extra``: fields the caller reads itself, such as ``within``)."""
    if not isinstance(raw, Mapping):
        problems.add(path, "must be a table")
        return None
    found = [TRIGGER_KINDS[key] for key in TRIGGER_KINDS if key in raw]
    if not found:
        problems.add(path, "needs one of event, type, stage or segment")
        return None
    kind = found[0]
    problems.unknown(raw, kind.fields | (extra or set()), path)
    if any(other is not kind for other in found):
        problems.add(path, "give one of event/type, stage or segment")
        return None
    return kind.parse(raw, path, problems)


# --- predicates (branch) -------------------------------------------------------------


class CustomerView(Protocol):
    """What a branch reads of the customer, as the flow knows it at that instant."""

    def entry_property(self, name: str) -> Any: ...

    def trait(self, name: str) -> Any: ...

    def computed_trait(self, name: str) -> Any: ...

    @property
    def stage(self) -> str | None: ...

    def in_segment(self, segment: str) -> bool: ...


class Predicate(Protocol):
    def holds(self, view: CustomerView) -> bool: ...


@dataclass(frozen=True, slots=True)
class PropertyIs:
    """A property of the event that entered the run."""

    name: str
    comparison: Comparison

    def holds(self, view: CustomerView) -> bool:
        return compare(view.entry_property(self.name), self.comparison)


@dataclass(frozen=True, slots=True)
class TraitIs:
    """An identify trait, as last identified (by event time)."""

    name: str
    comparison: Comparison

    def holds(self, view: CustomerView) -> bool:
        return compare(view.trait(self.name), self.comparison)


@dataclass(frozen=True, slots=True)
class ComputedTraitIs:
    """A computed trait (``lifetime_revenue``, ``orders_90d``…) as the journey worker
    last reported it at or before the decision's instant (a ``TraitsInput``)."""

    name: str
    comparison: Comparison

    def holds(self, view: CustomerView) -> bool:
        return compare(view.computed_trait(self.name), self.comparison)


@dataclass(frozen=True, slots=True)
class StageIs:
    stages: frozenset[str]

    def holds(self, view: CustomerView) -> bool:
        return view.stage in self.stages


@dataclass(frozen=True, slots=True)
class InSegment:
    segment: str
    member: bool = True

    def holds(self, view: CustomerView) -> bool:
        return view.in_segment(self.segment) is self.member


@dataclass(frozen=True, slots=True)
class AllOf:
    children: tuple[Predicate, ...]

    def holds(self, view: CustomerView) -> bool:
        return all(child.holds(view) for child in self.children)


@dataclass(frozen=True, slots=True)
class AnyOf:
    children: tuple[Predicate, ...]

    def holds(self, view: CustomerView) -> bool:
        return any(child.holds(view) for child in self.children)


@dataclass(frozen=True, slots=True)
class NoneOf:
    child: Predicate

    def holds(self, view: CustomerView) -> bool:
        return not self.child.holds(view)


def _compared(
    kind: Callable[[str, Comparison], Predicate], field_name: str
) -> Callable[[Mapping[str, Any], str, Problems], Predicate | None]:
    def parse(raw: Mapping[str, Any], path: str, problems: Problems) -> Predicate | None:
        problems.unknown(raw, {field_name, *_COMPARISON_OPS}, path)
        name = raw[field_name]
        if not isinstance(name, str) or not name:
            problems.add(f"{path}.{field_name}", "must be a name")
            return None
        comparison = problems.shared.comparison(raw, path)
        return None if comparison is None else kind(name, comparison)

    return parse


def _stage_predicate(raw: Mapping[str, Any], path: str, problems: Problems) -> Predicate | None:
    problems.unknown(raw, {"stage"}, path)
    stages = _stages(raw["stage"], f"{path}.stage", problems)
    return None if stages is None else StageIs(stages)


def _segment_predicate(raw: Mapping[str, Any], path: str, problems: Problems) -> Predicate | None:
    problems.unknown(raw, {"segment", "member"}, path)
    segment, member = raw["segment"], raw.get("member", True)
    if not isinstance(segment, str) or not segment:
        problems.add(f"{path}.segment", "must be a segment id")
        return None
    if not isinstance(member, bool):
        problems.add(f"{path}.member", "must be true or false")
        return None
    return InSegment(segment, member)


def _group(kind: Callable[[tuple[Predicate, ...]], Predicate], field_name: str) -> Any:
    def parse(raw: Mapping[str, Any], path: str, problems: Problems) -> Predicate | None:
        problems.unknown(raw, {field_name}, path)
        items = raw[field_name]
        if not isinstance(items, list) or not items:
            problems.add(f"{path}.{field_name}", "must be a non-empty list of conditions")
            return None
        children = [
            parse_predicate(item, f"{path}.{field_name}[{i}]", problems)
            for i, item in enumerate(items)
        ]
        kept = tuple(child for child in children if child is not None)
        return kind(kept) if len(kept) == len(children) else None

    return parse


def _negation(raw: Mapping[str, Any], path: str, problems: Problems) -> Predicate | None:
    problems.unknown(raw, {"not"}, path)
    child = parse_predicate(raw["not"], f"{path}.not", problems)
    return None if child is None else NoneOf(child)


_COMPARISON_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "exists")
# The field that says which kind a predicate is.
PREDICATE_KINDS: dict[str, Callable[[Mapping[str, Any], str, Problems], Predicate | None]] = {
    "and": _group(AllOf, "and"),
    "or": _group(AnyOf, "or"),
    "not": _negation,
    "property": _compared(PropertyIs, "property"),
    "trait": _compared(TraitIs, "trait"),
    "computed_trait": _compared(ComputedTraitIs, "computed_trait"),
    "stage": _stage_predicate,
    "segment": _segment_predicate,
}


def parse_predicate(raw: object, path: str, problems: Problems) -> Predicate | None:
    """A branch condition; errors name its path."""
    if not isinstance(raw, Mapping) or not raw:
        problems.add(path, "must be a non-empty table")
        return None
    kinds = [key for key in PREDICATE_KINDS if key in raw]
    if len(kinds) != 1:
        problems.add(path, f"needs exactly one of {', '.join(PREDICATE_KINDS)}")
        return None
    return PREDICATE_KINDS[kinds[0]](raw, path, problems)


def _stages(value: Any, path: str, problems: Problems) -> frozenset[str] | None:
    stages = [value] if isinstance(value, str) else value
    if not isinstance(stages, list) or not stages or any(s not in STAGES for s in stages):
        problems.add(path, f"must be one of {', '.join(STAGES)}, or a list of them")
        return None
    return frozenset(stages)
