"""Computed traits and segment definitions, parsed from TOML/JSON-like data.

Pure: parsing takes already-loaded data (the stack reads the file, the API the
body), and nothing here knows about Kafka, SQL or HTTP. Evaluation is in
:mod:`journeys.segment_state`.

A definitions file::

    [traits.lifetime_revenue]
    op = "sum"                      # count, sum, min, max, first, last, most_frequent,
    property = "revenue"            # days_since_last
    event = "Order Completed"       # or type = "purchase"; optional: properties = {...}
    within = "90d"                  # optional rolling window; or since = "2026-01-01"

    [segments.cart_abandoners]
    name = "Cart abandoners"
    where.and = [
      { event = "Product Added", within = "7d" },
      { not = { event = "Order Completed", within = "7d" } },
    ]

Conditions (``where``): ``{and = [...]}``, ``{or = [...]}``, ``{not = {...}}``;
an event condition ``{event | type, properties, within | since, count, compare}``
(``absent = true`` for "none"); ``{trait = "x", <op> = value}`` on a computed
trait; ``{identify = "plan", <op> = value}`` on an identify trait; ``{stage =
"loyalty"}`` (or a list); ``{rfm = "champions"}`` (or a list: the RFM segments
of journeys/rfm.py); ``{segment = "other"}``. Comparisons are eq, ne, gt,
gte, lt, lte, in, contains, and ``exists = true|false``. A static segment has
``static = true`` and no ``where``: its members are a list (an upload, or a
funnel's drop-outs).

Errors name the node path and the field:
``segments.cart_abandoners.where.and[1].count: must be an integer >= 0``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from events import EventType, normalized_name
from journeys.rfm import RFM_SEGMENTS
from journeys.toml_text import load_toml

TRAIT_OPS = ("count", "sum", "min", "max", "first", "last", "most_frequent", "days_since_last")
# Ops whose value is a number read from the property: the property is required.
NUMERIC_OPS = ("sum", "min", "max")
COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "contains")
COUNT_COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte")
STAGES = ("awareness", "consideration", "purchase", "service", "loyalty", "lapsed", "merged")
EVENT_TYPES = tuple(t.value for t in EventType)

DAY_MS = 86_400_000
# The backfill of the computed traits no segment compares (a segment's backfill
# rebuilds the traits it uses): not a valid segment id, so it names no segment.
TRAITS_BACKFILL = "~traits"
MAX_WINDOW_MS = 3650 * DAY_MS
# A rolling-window count condition keeps the newest ``count + 1`` matching times, so
# its comparison is exact; a bound on the count keeps that small.
MAX_COUNT = 10_000
# Conditions nested deeper than this are refused (a hostile body must not exhaust the stack).
MAX_DEPTH = 32
# Compared numbers: finite, and integers within 64 bits (what JSON state keeps exactly).
MAX_INT = 2**63 - 1
_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}


class DefinitionError(ValueError):
    """Invalid definitions; ``errors`` holds (path of the field, message) pairs."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{path}: {message}" for path, message in self.errors))


@dataclass(frozen=True, slots=True)
class PropertyFilter:
    """``properties.<name> <op> <value>`` of an event."""

    name: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class EventMatch:
    """Which events count: by name (compared case-insensitively) or canonical type."""

    name: str = ""  # normalized
    type: str = ""
    filters: tuple[PropertyFilter, ...] = ()


@dataclass(frozen=True, slots=True)
class Window:
    """All time (both unset), a rolling window of ``within_ms``, or events since ``since_ms``."""

    within_ms: int | None = None
    since_ms: int | None = None


@dataclass(frozen=True, slots=True)
class TraitDefinition:
    """A computed trait: ``op`` of ``property`` (or of the event) over matching events."""

    id: str
    op: str
    match: EventMatch
    property_name: str = ""
    window: Window = Window()
    # The raw definition as given, for the API to show back.
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def fingerprint(self) -> str:
        """Changes whenever the definition does: the state of an older one is not reused."""
        return _fingerprint(self)


# --- conditions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventCondition:
    """At least / at most / exactly ``count`` matching events in the window."""

    path: str
    match: EventMatch
    window: Window
    compare: str = "gte"
    count: int = 1

    @property
    def key(self) -> str:
        """Where its state is kept: the node's path and its definition's fingerprint."""
        return f"{self.path}#{_fingerprint(self)}"


@dataclass(frozen=True, slots=True)
class Comparison:
    """``<op> value``, or ``exists`` (True/False)."""

    op: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class TraitCondition:
    """A computed trait (``identify`` False) or an identify trait compared."""

    path: str
    trait: str
    comparison: Comparison
    identify: bool = False


@dataclass(frozen=True, slots=True)
class StageCondition:
    path: str
    stages: frozenset[str]


@dataclass(frozen=True, slots=True)
class RfmCondition:
    """The customer's RFM segment (champions, loyal, ...: journeys/rfm.py) is one of these.

    A customer who never ordered has none, so no RFM condition holds for them.
    """

    path: str
    segments: frozenset[str]


@dataclass(frozen=True, slots=True)
class StaticMembers:
    """A static segment's rule: the customer is on its list (an upload, a funnel's drop-outs)."""

    path: str
    segment: str


@dataclass(frozen=True, slots=True)
class SegmentCondition:
    path: str
    segment: str


@dataclass(frozen=True, slots=True)
class AllOf:
    path: str
    children: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    path: str
    children: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class NoneOf:
    """``not``: true when its one child is false."""

    path: str
    child: Condition


Condition = (
    EventCondition
    | TraitCondition
    | StageCondition
    | RfmCondition
    | StaticMembers
    | SegmentCondition
    | AllOf
    | AnyOf
    | NoneOf
)


@dataclass(frozen=True, slots=True)
class SegmentDefinition:
    id: str
    name: str
    where: Condition
    description: str = ""
    # The raw definition as given, for the API to show back.
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Definitions:
    """Every trait and segment; segments in an order where each one's references come first."""

    traits: Mapping[str, TraitDefinition] = field(default_factory=dict)
    segments: Mapping[str, SegmentDefinition] = field(default_factory=dict)

    def event_conditions(self) -> list[EventCondition]:
        """Every event condition of every segment."""
        return [
            c
            for s in self.segments.values()
            for c in _walk(s.where)
            if isinstance(c, EventCondition)
        ]

    def identify_traits(self) -> set[str]:
        """The identify traits some segment compares."""
        return {
            c.trait
            for s in self.segments.values()
            for c in _walk(s.where)
            if isinstance(c, TraitCondition) and c.identify
        }

    def is_static(self, segment_id: str) -> bool:
        """True for a segment whose members are a list (``static = true``)."""
        found = self.segments.get(segment_id)
        return found is not None and isinstance(found.where, StaticMembers)

    def uses_rfm(self) -> bool:
        """True when some segment compares the customers' RFM segment."""
        return any(
            isinstance(c, RfmCondition) for s in self.segments.values() for c in _walk(s.where)
        )

    def segment_fingerprint(self, segment_id: str) -> str:
        """Changes whenever the segment's membership rule does: its tree, or a trait or
        segment it refers to (a changed one is backfilled again)."""
        segment = self.segments[segment_id]
        parts = [_fingerprint(segment.where)]
        for node in _walk(segment.where):
            if isinstance(node, TraitCondition) and not node.identify:
                parts.append(self.traits[node.trait].fingerprint)
            elif isinstance(node, SegmentCondition):
                parts.append(self.segment_fingerprint(node.segment))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]

    def trait_users(self, trait_id: str) -> list[str]:
        """The segments whose membership rule compares computed trait ``trait_id``."""
        return [sid for sid in self.segments if trait_id in self._traits_of(sid)]

    def backfill_fingerprints(self) -> dict[str, str]:
        """What is backfilled from history when it changes: each segment at its
        fingerprint, and the traits no segment compares together under
        :data:`TRAITS_BACKFILL` (a trait changed alone is backfilled too)."""
        # A static segment's members are its list, not a function of history.
        found = {
            sid: self.segment_fingerprint(sid) for sid in self.segments if not self.is_static(sid)
        }
        used = {tid for sid in self.segments for tid in self._traits_of(sid)}
        unused = sorted(tid for tid in self.traits if tid not in used)
        if unused:
            parts = [f"{tid}={self.traits[tid].fingerprint}" for tid in unused]
            found[TRAITS_BACKFILL] = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
        return found

    def _traits_of(self, segment_id: str) -> set[str]:
        return {
            n.trait
            for n in _walk(self.segments[segment_id].where)
            if isinstance(n, TraitCondition) and not n.identify
        }

    def time_dependent(self) -> bool:
        """True when time passing alone can change some membership (rolling windows)."""
        return any(c.window.within_ms for c in self.event_conditions()) or any(
            t.window.within_ms or t.op == "days_since_last" for t in self.traits.values()
        )


def _walk(condition: Condition) -> list[Condition]:
    found: list[Condition] = [condition]
    if isinstance(condition, AllOf | AnyOf):
        for child in condition.children:
            found.extend(_walk(child))
    elif isinstance(condition, NoneOf):
        found.extend(_walk(condition.child))
    return found


def _fingerprint(definition: object) -> str:
    text = json.dumps(_plain(definition), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain(value: object) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {
            name: _plain(getattr(value, name))
            for name in value.__dataclass_fields__
            if name not in ("path", "id", "source")
        }
    if isinstance(value, tuple | list | frozenset | set):
        items = [_plain(v) for v in value]
        return sorted(items, key=str) if isinstance(value, frozenset | set) else items
    return value


# --- parsing -------------------------------------------------------------------------


def parse_definitions(data: Mapping[str, Any]) -> Definitions:
    """``{"traits": {...}, "segments": {...}}`` as :class:`Definitions`; raises DefinitionError."""
    parser = _Parser()
    if not isinstance(data, Mapping):
        raise DefinitionError([("", "must be a table")])
    for key in data:
        if key not in ("traits", "segments"):
            parser.error(str(key), "unknown section (expected traits, segments)")
    traits = parser.table(data.get("traits", {}), "traits")
    segments = parser.table(data.get("segments", {}), "segments")
    parsed_traits = {
        tid: t
        for tid, raw in traits.items()
        if (t := parser.trait(str(tid), raw, f"traits.{tid}")) is not None
    }
    parsed_segments: dict[str, SegmentDefinition] = {}
    for sid, raw in segments.items():
        found = parser.segment(str(sid), raw, f"segments.{sid}")
        if found is not None:
            parsed_segments[str(sid)] = found
    parser.check_references(parsed_traits, parsed_segments)
    if parser.errors:
        raise DefinitionError(parser.errors)
    order = _dependency_order(parsed_segments)
    return Definitions(traits=parsed_traits, segments={sid: parsed_segments[sid] for sid in order})


def definitions_from_toml(text: str) -> Definitions:
    """A definitions file's text (TOML) as :class:`Definitions`; raises DefinitionError."""
    try:
        data = load_toml(text)
    except tomllib.TOMLDecodeError as error:
        raise DefinitionError([("", f"not valid TOML: {error}")]) from error
    return parse_definitions(data)


def parse_segment(segment_id: str, raw: Mapping[str, Any], known: Definitions) -> Definitions:
    """``known`` with segment ``segment_id`` added or replaced by ``raw`` (validated with it)."""
    return parse_definitions(
        {
            "traits": {tid: _trait_source(t) for tid, t in known.traits.items()},
            "segments": {
                **{sid: dict(s.source) for sid, s in known.segments.items()},
                segment_id: raw,
            },
        }
    )


def _trait_source(trait: TraitDefinition) -> dict[str, Any]:
    raw: dict[str, Any] = {"op": trait.op}
    if trait.property_name:
        raw["property"] = trait.property_name
    raw.update(_match_source(trait.match))
    raw.update(_window_source(trait.window))
    return raw


def _match_source(match: EventMatch) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if match.name:
        raw["event"] = match.name
    if match.type:
        raw["type"] = match.type
    if match.filters:
        raw["properties"] = {f.name: {f.op: f.value} for f in match.filters}
    return raw


def _window_source(window: Window) -> dict[str, Any]:
    if window.within_ms is not None:
        return {"within": f"{window.within_ms}ms"}
    if window.since_ms is not None:
        return {"since": datetime.fromtimestamp(window.since_ms / 1000, UTC).isoformat()}
    return {}


def _dependency_order(segments: Mapping[str, SegmentDefinition]) -> list[str]:
    order: list[str] = []
    seen: set[str] = set()

    def visit(sid: str) -> None:
        if sid in seen:
            return
        seen.add(sid)
        for node in _walk(segments[sid].where):
            if isinstance(node, SegmentCondition):
                visit(node.segment)
        order.append(sid)

    for sid in segments:
        visit(sid)
    return order


class _Parser:
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append((path, message))

    def table(self, raw: object, path: str) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            self.error(path, "must be a table")
            return {}
        for key in raw:
            if not isinstance(key, str) or not _ID.match(key):
                self.error(f"{path}.{key}", "id must be lower-case letters, digits and _")
        return {k: v for k, v in raw.items() if isinstance(k, str) and _ID.match(k)}

    def trait(self, tid: str, raw: object, path: str) -> TraitDefinition | None:
        if not isinstance(raw, Mapping):
            self.error(path, "must be a table")
            return None
        allowed = {"op", "property", "event", "type", "properties", "within", "since"}
        self._unknown(raw, allowed, path)
        before = len(self.errors)
        op = raw.get("op")
        if op not in TRAIT_OPS:
            self.error(f"{path}.op", f"must be one of {', '.join(TRAIT_OPS)}")
        prop = raw.get("property", "")
        if not isinstance(prop, str):
            self.error(f"{path}.property", "must be a string")
            prop = ""
        if op in NUMERIC_OPS and not prop:
            self.error(f"{path}.property", f"is required for op {op}")
        match = self.match(raw, path)
        window = self.window(raw, path)
        if len(self.errors) != before:
            return None
        return TraitDefinition(
            id=tid, op=str(op), match=match, property_name=prop, window=window, source=dict(raw)
        )

    def segment(self, sid: str, raw: object, path: str) -> SegmentDefinition | None:
        if not isinstance(raw, Mapping):
            self.error(path, "must be a table")
            return None
        self._unknown(raw, {"name", "description", "where", "static"}, path)
        before = len(self.errors)
        name = raw.get("name", sid)
        if not isinstance(name, str) or not name.strip():
            self.error(f"{path}.name", "must be a non-empty string")
        description = raw.get("description", "")
        if not isinstance(description, str):
            self.error(f"{path}.description", "must be a string")
        static = raw.get("static", False)
        if not isinstance(static, bool):
            self.error(f"{path}.static", "must be true or false")
            return None
        where: Condition | None
        if static:
            if "where" in raw:
                self.error(f"{path}.where", "a static segment's members are a list: no where")
                return None
            where = StaticMembers(f"{path}.static", sid)
        elif "where" not in raw:
            self.error(f"{path}.where", "is required (or static = true)")
            return None
        else:
            where = self.condition(raw["where"], f"{path}.where", 0)
        if len(self.errors) != before or where is None:
            return None
        return SegmentDefinition(
            id=sid, name=str(name), where=where, description=str(description), source=dict(raw)
        )

    def condition(self, raw: object, path: str, depth: int) -> Condition | None:
        if not isinstance(raw, Mapping) or not raw:
            self.error(path, "must be a non-empty table")
            return None
        if depth > MAX_DEPTH:
            self.error(path, f"conditions may be nested {MAX_DEPTH} deep at most")
            return None
        if "and" in raw or "or" in raw:
            kind = "and" if "and" in raw else "or"
            self._unknown(raw, {kind}, path)
            items = raw[kind]
            if not isinstance(items, list) or not items:
                self.error(f"{path}.{kind}", "must be a non-empty list of conditions")
                return None
            children = [
                self.condition(c, f"{path}.{kind}[{i}]", depth + 1) for i, c in enumerate(items)
            ]
            if any(c is None for c in children):
                return None
            kept = tuple(c for c in children if c is not None)
            return AllOf(path, kept) if kind == "and" else AnyOf(path, kept)
        if "not" in raw:
            self._unknown(raw, {"not"}, path)
            child = self.condition(raw["not"], f"{path}.not", depth + 1)
            return None if child is None else NoneOf(path, child)
        if "event" in raw or "type" in raw:
            return self.event_condition(raw, path)
        if "trait" in raw or "identify" in raw:
            return self.trait_condition(raw, path)
        if "stage" in raw:
            return self.stage_condition(raw, path)
        if "rfm" in raw:
            return self.rfm_condition(raw, path)
        if "segment" in raw:
            self._unknown(raw, {"segment"}, path)
            segment = raw["segment"]
            if not isinstance(segment, str) or not segment:
                self.error(f"{path}.segment", "must be a segment id")
                return None
            return SegmentCondition(path, segment)
        self.error(
            path, "must be and, or, not, event, type, trait, identify, stage, rfm or segment"
        )
        return None

    def event_condition(self, raw: Mapping[str, Any], path: str) -> EventCondition | None:
        allowed = {"event", "type", "properties", "within", "since", "count", "compare", "absent"}
        self._unknown(raw, allowed, path)
        before = len(self.errors)
        match = self.match(raw, path)
        window = self.window(raw, path)
        absent = raw.get("absent", False)
        if not isinstance(absent, bool):
            self.error(f"{path}.absent", "must be true or false")
        count = raw.get("count", 0 if absent is True else 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            self.error(f"{path}.count", "must be an integer >= 0")
        elif count > MAX_COUNT:
            self.error(f"{path}.count", f"must be at most {MAX_COUNT}")
        compare = raw.get("compare", "eq" if absent is True else "gte")
        if compare not in COUNT_COMPARISONS:
            self.error(f"{path}.compare", f"must be one of {', '.join(COUNT_COMPARISONS)}")
        if absent is True and ("count" in raw or "compare" in raw):
            self.error(f"{path}.absent", "cannot be combined with count or compare")
        if len(self.errors) != before:
            return None
        return EventCondition(path, match, window, str(compare), int(count))

    def trait_condition(self, raw: Mapping[str, Any], path: str) -> TraitCondition | None:
        field_name = "trait" if "trait" in raw else "identify"
        self._unknown(raw, {field_name, *COMPARISONS, "exists"}, path)
        trait = raw[field_name]
        if not isinstance(trait, str) or not trait:
            self.error(f"{path}.{field_name}", "must be a trait name")
            return None
        comparison = self.comparison(raw, path)
        if comparison is None:
            return None
        return TraitCondition(path, trait, comparison, identify=field_name == "identify")

    def stage_condition(self, raw: Mapping[str, Any], path: str) -> StageCondition | None:
        self._unknown(raw, {"stage"}, path)
        value = raw["stage"]
        stages = [value] if isinstance(value, str) else value
        if not isinstance(stages, list) or not stages or any(s not in STAGES for s in stages):
            self.error(f"{path}.stage", f"must be one of {', '.join(STAGES)}, or a list of them")
            return None
        return StageCondition(path, frozenset(stages))

    def rfm_condition(self, raw: Mapping[str, Any], path: str) -> RfmCondition | None:
        self._unknown(raw, {"rfm"}, path)
        value = raw["rfm"]
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or any(n not in RFM_SEGMENTS for n in names):
            self.error(
                f"{path}.rfm", f"must be one of {', '.join(RFM_SEGMENTS)}, or a list of them"
            )
            return None
        return RfmCondition(path, frozenset(names))

    def comparison(self, raw: Mapping[str, Any], path: str) -> Comparison | None:
        ops = [op for op in (*COMPARISONS, "exists") if op in raw]
        if len(ops) != 1:
            self.error(path, f"needs exactly one of {', '.join((*COMPARISONS, 'exists'))}")
            return None
        op = ops[0]
        value = raw[op]
        if op == "exists" and not isinstance(value, bool):
            self.error(f"{path}.exists", "must be true or false")
            return None
        return self.operand(op, value, f"{path}.{op}")

    def operand(self, op: str, value: Any, path: str) -> Comparison | None:
        if op in ("gt", "gte", "lt", "lte") and not _is_number(value):
            self.error(path, "must be a number")
            return None
        if op == "in" and (not isinstance(value, list) or not value):
            self.error(path, "must be a non-empty list")
            return None
        if op == "in" and not all(_is_scalar(item) for item in value):
            self.error(path, "must list strings, finite numbers or booleans")
            return None
        if op in ("eq", "ne", "contains") and not _is_scalar(value):
            self.error(path, "must be a string, finite number or boolean")
            return None
        return Comparison(op, value)

    def match(self, raw: Mapping[str, Any], path: str) -> EventMatch:
        name, kind = raw.get("event", ""), raw.get("type", "")
        if "event" in raw and "type" in raw:
            self.error(path, "give event or type, not both")
        if "event" in raw and (not isinstance(name, str) or not name.strip()):
            self.error(f"{path}.event", "must be an event name")
            name = ""
        if "type" in raw and kind not in EVENT_TYPES:
            self.error(f"{path}.type", f"must be one of {', '.join(EVENT_TYPES)}")
            kind = ""
        filters: list[PropertyFilter] = []
        props = raw.get("properties", {})
        if not isinstance(props, Mapping):
            self.error(f"{path}.properties", "must be a table")
            props = {}
        for prop, spec in props.items():
            here = f"{path}.properties.{prop}"
            if isinstance(spec, Mapping):
                if len(spec) != 1 or next(iter(spec)) not in COMPARISONS:
                    self.error(here, f"needs exactly one of {', '.join(COMPARISONS)}")
                    continue
                op, value = next(iter(spec.items()))
            else:
                op, value = "eq", spec
            found = self.operand(op, value, f"{here}.{op}" if isinstance(spec, Mapping) else here)
            if found is not None:
                filters.append(PropertyFilter(str(prop), found.op, found.value))
        return EventMatch(
            name=normalized_name(name) if isinstance(name, str) else "",
            type=str(kind),
            filters=tuple(filters),
        )

    def window(self, raw: Mapping[str, Any], path: str) -> Window:
        if "within" in raw and "since" in raw:
            self.error(path, "give within or since, not both")
            return Window()
        if "within" in raw:
            within = duration_ms(raw["within"])
            if within is None or not 0 < within <= MAX_WINDOW_MS:
                self.error(f"{path}.within", 'must be a duration such as "7d", "12h", "90m"')
                return Window()
            return Window(within_ms=within)
        if "since" in raw:
            since = _instant_ms(raw["since"])
            if since is None:
                self.error(f"{path}.since", "must be an ISO-8601 date or date-time")
                return Window()
            return Window(since_ms=since)
        return Window()

    def _unknown(self, raw: Mapping[str, Any], allowed: set[str], path: str) -> None:
        for key in raw:
            if key not in allowed:
                self.error(f"{path}.{key}", "unknown field")

    def check_references(
        self, traits: Mapping[str, TraitDefinition], segments: Mapping[str, SegmentDefinition]
    ) -> None:
        for segment in segments.values():
            for node in _walk(segment.where):
                if isinstance(node, TraitCondition) and not node.identify:
                    if node.trait not in traits:
                        self.error(f"{node.path}.trait", f"unknown trait {node.trait!r}")
                elif isinstance(node, SegmentCondition) and node.segment not in segments:
                    self.error(f"{node.path}.segment", f"unknown segment {node.segment!r}")
        cycle = _find_cycle(segments)
        if cycle:
            self.error(
                f"segments.{cycle[0]}.where", "segments refer to each other: " + " -> ".join(cycle)
            )


def _find_cycle(segments: Mapping[str, SegmentDefinition]) -> list[str]:
    refs = {
        sid: [
            n.segment
            for n in _walk(s.where)
            if isinstance(n, SegmentCondition) and n.segment in segments
        ]
        for sid, s in segments.items()
    }
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(sid: str) -> list[str]:
        state[sid] = 1
        stack.append(sid)
        for ref in refs[sid]:
            if state.get(ref) == 1:
                return [*stack[stack.index(ref) :], ref]
            if ref not in state and (found := visit(ref)):
                return found
        stack.pop()
        state[sid] = 2
        return []

    for sid in segments:
        if sid not in state and (found := visit(sid)):
            return found
    return []


def is_definition_id(value: str) -> bool:
    """True for a valid trait or segment id (lower-case letters, digits and _)."""
    return bool(_ID.match(value))


def duration_ms(value: object) -> int | None:
    """ "7d", "12h", "90m", "30s", "500ms", "2w", or seconds as a number; None if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds, unit = float(value) if abs(value) < 1e300 else math.inf, "s"
    elif isinstance(value, str):
        found = _DURATION.match(value)
        if not found:
            return None
        seconds, unit = float(found.group(1)), found.group(2) or "s"
    else:
        return None
    # Finite only: a hostile "1e400" or 10**400 is no duration (and no OverflowError).
    return int(seconds * _UNITS_MS[unit]) if math.isfinite(seconds * _UNITS_MS[unit]) else None


def _instant_ms(value: object) -> int | None:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -MAX_INT <= value <= MAX_INT
    return isinstance(value, float) and math.isfinite(value)


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | bool) or _is_number(value)
