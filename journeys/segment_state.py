"""Incremental evaluation of computed traits and segments, one customer's state at a time.

Pure. A customer's :class:`SegmentState` is folded from their events one at a
time, in any order (late events are folded in where they belong: every
aggregate here is order-independent, with ties broken by event id), and
answers membership and trait values at any instant not before the latest one
it has seen (its ``clock``). :meth:`SegmentEvaluator.next_change` tells when
time passing alone can next change a membership (a rolling window sliding
past an event, a "days since" crossing a day), which is when a timer fires.

State is small, bounded per condition and trait, not per event:

- an all-time (or ``since``) count condition keeps a count capped at ``count + 1``;
- a rolling-window count condition keeps the newest ``count + 1`` matching times
  still inside the window (enough to decide its comparison exactly);
- an all-time trait keeps one aggregate (count, sum, min, max, first, last;
  most_frequent keeps up to :data:`MAX_DISTINCT` values' counts);
- a rolling-window trait keeps the matching events inside the window, at most
  :data:`MAX_WINDOW_ENTRIES` (the newest): beyond that its value is approximate;
- identify traits keep the latest value of the traits some segment compares.

Times are epoch milliseconds (the event log's precision).
"""

from __future__ import annotations

import hashlib
import json
import math
from bisect import bisect_right, insort
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from events import EventType, TrackedEvent, normalized_name
from events.ecommerce import MAX_MONEY
from journeys.segment_definitions import (
    DAY_MS,
    AllOf,
    AnyOf,
    Comparison,
    Condition,
    Definitions,
    EventCondition,
    EventMatch,
    NoneOf,
    RfmCondition,
    SegmentCondition,
    StageCondition,
    StaticMembers,
    TraitCondition,
    TraitDefinition,
)

MAX_DISTINCT = 100
MAX_WINDOW_ENTRIES = 1000


@dataclass(frozen=True, slots=True)
class SegmentEvent:
    """What segments read of an event: name, canonical type, properties (an identify's traits)."""

    event_id: str
    at_ms: int
    name: str
    type: str
    properties: Mapping[str, Any] = field(default_factory=dict)

    @property
    def order(self) -> tuple[int, str]:
        """Event-time order; ties by event id, so every arrival order folds the same."""
        return (self.at_ms, self.event_id)


def segment_event_from(event: TrackedEvent) -> SegmentEvent:
    """The segment view of a tracked event."""
    return SegmentEvent(
        event_id=event.event_id,
        at_ms=to_ms(event.timestamp),
        name=event.event_name,
        type=event.event_type.value,
        properties=event.properties,
    )


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of ``moment`` (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """A customer entered (or left) a segment at ``at_ms``, because of ``event_id``.

    ``event_id`` is empty when time passing caused it (a window slid past an event).
    """

    segment: str
    entered: bool
    at_ms: int
    event_id: str = ""


@dataclass
class SegmentState:
    """One customer's state: JSON-friendly, see :meth:`to_dict`."""

    clock: int | None = None
    stage: str = ""
    # The customer's RFM segment as last scanned ("" for none: never ordered, or not scanned).
    rfm: str = ""
    # The static segments whose list holds the customer.
    listed: set[str] = field(default_factory=set)
    members: set[str] = field(default_factory=set)
    traits: dict[str, dict[str, Any]] = field(default_factory=dict)
    conditions: dict[str, dict[str, Any]] = field(default_factory=dict)
    identify: dict[str, list[Any]] = field(default_factory=dict)
    # An anonymous key merged into this customer: in no segment from then on (the
    # customer's state holds the history now); its recorded changes stay.
    merged_into: str = ""
    # ``members`` as evaluated at ``evaluated_at`` under the definitions whose
    # signature is ``evaluated_by`` ("": unknown, the next evaluation is a full one).
    evaluated_by: str = field(default="", compare=False)
    evaluated_at: int | None = field(default=None, compare=False)
    # The inputs (see :class:`SegmentEvaluator`) changed since ``evaluated_at``; not
    # stored: a state stored with some is stored as not evaluated.
    dirty: set[Any] = field(default_factory=set, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "clock": self.clock,
            "stage": self.stage,
            "rfm": self.rfm,
            "listed": sorted(self.listed),
            "members": sorted(self.members),
            "traits": self.traits,
            "conditions": self.conditions,
            "identify": self.identify,
        }
        if self.merged_into:
            found["merged_into"] = self.merged_into
        if self.evaluated_by and not self.dirty:
            found["evaluated"] = [self.evaluated_by, self.evaluated_at]
        return found

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentState:
        evaluated = data.get("evaluated")
        return cls(
            clock=data.get("clock"),
            stage=str(data.get("stage", "")),
            rfm=str(data.get("rfm", "")),
            listed=set(data.get("listed", [])),
            members=set(data.get("members", [])),
            traits=dict(data.get("traits", {})),
            conditions=dict(data.get("conditions", {})),
            identify=dict(data.get("identify", {})),
            merged_into=str(data.get("merged_into", "")),
            evaluated_by=str(evaluated[0]) if evaluated else "",
            evaluated_at=evaluated[1] if evaluated else None,
        )


# --- matching and comparing ----------------------------------------------------------


def matches(match: EventMatch, event: SegmentEvent) -> bool:
    """True when ``event`` is of the name or type, and passes every property filter."""
    if match.name and normalized_name(event.name) != match.name:
        return False
    if match.type and event.type != match.type:
        return False
    # A missing property matches no filter (compare(None, ...) is False).
    return all(
        compare(event.properties.get(f.name), Comparison(f.op, f.value)) for f in match.filters
    )


def compare(value: Any, comparison: Comparison) -> bool:
    """``value <op> operand``; a missing value (None) matches only ``exists = false``."""
    op, operand = comparison.op, comparison.value
    if op == "exists":
        return (value is not None) is operand
    if value is None:
        return False
    if op in ("gt", "gte", "lt", "lte"):
        if not is_number(value):
            return False
        return _ORDERINGS[op](float(value), float(operand))
    if op == "eq":
        return _same(value, operand)
    if op == "ne":
        return not _same(value, operand)
    if op == "in":
        return any(_same(value, item) for item in operand)
    # contains: a text holding the operand's text
    return isinstance(value, str) and str(operand) in value


_ORDERINGS: dict[str, Callable[[float, float], bool]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


def _same(a: Any, b: Any) -> bool:
    # true is not 1: a boolean equals only a boolean.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if is_number(a) and is_number(b):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def is_number(value: object) -> bool:
    # Finite only: events an older gateway accepted may hold NaN or inf, which no
    # comparison or sum should take in (and which JSON state cannot keep).
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_scalar(value: object) -> bool:
    return isinstance(value, str | bool) or is_number(value)


def compare_count(count: int, op: str, n: int) -> bool:
    """``count <op> n`` for an event condition."""
    if op == "eq":
        return count == n
    if op == "ne":
        return count != n
    return _ORDERINGS[op](count, n)


# --- traits --------------------------------------------------------------------------


def trait_input(trait: TraitDefinition, event: SegmentEvent) -> tuple[bool, Any]:
    """(counts, value): whether ``event`` feeds ``trait``, and the value it brings."""
    if not matches(trait.match, event):
        return False, None
    if trait.window.since_ms is not None and event.at_ms < trait.window.since_ms:
        return False, None
    if trait.op in ("count", "days_since_last"):
        return True, None
    value: Any = event.properties.get(trait.property_name) if trait.property_name else event.name
    if trait.op in ("sum", "min", "max"):
        if not is_number(value):
            return False, None
        # Clamped to the largest amount an event may carry, so a sum stays finite
        # whatever an older gateway let through (1e307), as RFM clamps revenue.
        return True, max(-MAX_MONEY, min(MAX_MONEY, float(value)))
    return (True, value) if is_scalar(value) else (False, None)


def trait_value(trait: TraitDefinition, entries: Iterable[list[Any]], now_ms: int) -> Any:
    """``trait``'s value over ``entries`` ([at, event id, value] of the events that feed it)."""
    items = list(entries)
    op = trait.op
    if op == "count":
        return len(items)
    if op == "sum":
        return float(sum(v for _, _, v in items))
    if not items:
        return None
    if op == "min":
        return min(v for _, _, v in items)
    if op == "max":
        return max(v for _, _, v in items)
    if op == "first":
        return min(items, key=lambda e: (e[0], e[1]))[2]
    if op == "last":
        return max(items, key=lambda e: (e[0], e[1]))[2]
    if op == "days_since_last":
        return (now_ms - max(e[0] for e in items)) // DAY_MS
    counts: dict[str, int] = {}
    for _, _, v in items:
        key = _value_key(v)
        counts[key] = counts.get(key, 0) + 1
    return _most_frequent(counts)


def _value_key(value: Any) -> str:
    return json.dumps(value)


def _most_frequent(counts: Mapping[str, int]) -> Any:
    if not counts:
        return None
    # Most occurrences; ties: the smallest value (as JSON text), whatever the order seen.
    key = min(counts, key=lambda k: (-counts[k], k))
    return json.loads(key)


class _LifetimeTrait:
    """An all-time (or since-a-date) trait: one aggregate, whatever the number of events."""

    @staticmethod
    def fold(trait: TraitDefinition, agg: dict[str, Any], event: SegmentEvent, value: Any) -> None:
        op = trait.op
        agg["n"] = agg.get("n", 0) + 1
        if op == "sum":
            agg["v"] = agg.get("v", 0.0) + value
        elif op == "min":
            agg["v"] = value if agg.get("v") is None else min(agg["v"], value)
        elif op == "max":
            agg["v"] = value if agg.get("v") is None else max(agg["v"], value)
        elif op in ("first", "last", "days_since_last"):
            entry = [event.at_ms, event.event_id, value]
            held = agg.get("e")
            earlier = held is None or (entry[0], entry[1]) < (held[0], held[1])
            if held is None or earlier == (op == "first"):
                agg["e"] = entry
        elif op == "most_frequent":
            counts: dict[str, int] = agg.setdefault("c", {})
            key = _value_key(value)
            if key in counts or len(counts) < MAX_DISTINCT:
                counts[key] = counts.get(key, 0) + 1

    @staticmethod
    def value(trait: TraitDefinition, agg: Mapping[str, Any], now_ms: int) -> Any:
        op = trait.op
        if op == "count":
            return agg.get("n", 0)
        if op == "sum":
            return float(agg.get("v") or 0.0)
        if op in ("min", "max"):
            return agg.get("v")
        if op == "most_frequent":
            return _most_frequent(agg.get("c", {}))
        held = agg.get("e")
        if held is None:
            return None
        if op == "days_since_last":
            return (now_ms - held[0]) // DAY_MS
        return held[2]


# --- the evaluator -------------------------------------------------------------------


class SegmentEvaluator:
    """Folds events into customers' states and answers membership under ``definitions``."""

    def __init__(self, definitions: Definitions) -> None:
        self.definitions = definitions
        self.event_conditions = definitions.event_conditions()
        # Computed once: a fingerprint serialises its definition (most of the fold's time).
        self.key_of = {id(c): c.key for c in self.event_conditions}
        self.fingerprints = {t.id: t.fingerprint for t in definitions.traits.values()}
        self.identify_traits = definitions.identify_traits()
        # Every event property the fold reads: a backfill reads only these from history.
        self.read_properties = frozenset(
            {f.name for c in self.event_conditions for f in c.match.filters}
            | {
                name
                for t in definitions.traits.values()
                for name in (t.property_name, *(f.name for f in t.match.filters))
                if name
            }
            | self.identify_traits
        )
        used = {
            n.trait
            for s in definitions.segments.values()
            for n in _nodes(s.where)
            if isinstance(n, TraitCondition) and not n.identify
        }
        # Traits whose value time alone moves, and that some segment compares.
        self._timed_traits = [
            t
            for t in definitions.traits.values()
            if t.id in used and (t.window.within_ms or t.op == "days_since_last")
        ]
        self._read_traits = used
        self._days_traits = [t for t in self._timed_traits if t.op == "days_since_last"]
        self._windowed_traits = [t for t in definitions.traits.values() if t.window.within_ms]
        self._windowed_conditions = [c for c in self.event_conditions if c.window.within_ms]
        # Which traits and conditions an event can feed, by its name or type: an
        # event is matched against those only.
        self._by_name: dict[str, _Feeders] = {}
        self._by_type: dict[str, _Feeders] = {}
        self._always = _Feeders()
        for trait in definitions.traits.values():
            self._feeders_of(trait.match).traits.append(trait)
        for condition in self.event_conditions:
            self._feeders_of(condition.match).conditions.append(condition)
        # What each segment's membership reads ("inputs": a condition's key, a
        # trait, an identify trait, the stage, the RFM segment) and the segments it
        # refers to: after a change only the segments reading what changed are
        # evaluated again.
        self._inputs: dict[str, frozenset[Any]] = {}
        self._refs: dict[str, frozenset[str]] = {}
        for sid, segment in definitions.segments.items():
            nodes = _nodes(segment.where)
            self._inputs[sid] = frozenset(
                found for node in nodes if (found := self._input_of(node)) is not None
            )
            self._refs[sid] = frozenset(n.segment for n in nodes if isinstance(n, SegmentCondition))
        # Each input's readers, with the segments referring to them (transitively),
        # in the definitions' order (references first).
        order = {sid: i for i, sid in enumerate(definitions.segments)}
        readers: dict[Any, set[str]] = {}
        for sid in definitions.segments:
            for found in self._inputs[sid]:
                readers.setdefault(found, set()).add(sid)
        for users in readers.values():
            for sid in definitions.segments:
                if not users.isdisjoint(self._refs[sid]):
                    users.add(sid)
        self._readers = {
            found: tuple(sorted(users, key=order.__getitem__)) for found, users in readers.items()
        }
        self._order = order
        signature = "|".join(
            f"{sid}={definitions.segment_fingerprint(sid)}" for sid in definitions.segments
        )
        self.signature = hashlib.sha256(signature.encode()).hexdigest()[:12]

    def _feeders_of(self, match: EventMatch) -> _Feeders:
        if match.name:
            return self._by_name.setdefault(match.name, _Feeders())
        if match.type:
            return self._by_type.setdefault(match.type, _Feeders())
        return self._always

    def _candidates(self, event: SegmentEvent) -> tuple[_Feeders, ...]:
        """The traits and conditions ``event`` may feed (each still matched)."""
        found = [self._always]
        by_name = self._by_name.get(normalized_name(event.name))
        if by_name is not None:
            found.append(by_name)
        by_type = self._by_type.get(event.type)
        if by_type is not None:
            found.append(by_type)
        return tuple(found)

    def _input_of(self, node: Condition) -> Any:
        if isinstance(node, EventCondition):
            return (_CONDITION, self.key_of[id(node)])
        if isinstance(node, TraitCondition):
            return (_IDENTIFY if node.identify else _TRAIT, node.trait)
        if isinstance(node, StageCondition):
            return _STAGE
        if isinstance(node, RfmCondition):
            return _RFM
        if isinstance(node, StaticMembers):
            return (_LISTED, node.segment)
        return None

    # folding

    def feeds(self, event: SegmentEvent) -> bool:
        """True when some trait, event condition or compared identify trait reads ``event``.

        One that none reads changes no state but the clock: a late one needs no revision.
        """
        for feeders in self._candidates(event):
            if any(trait_input(trait, event)[0] for trait in feeders.traits):
                return True
            if any(matches(condition.match, event) for condition in feeders.conditions):
                return True
        return event.type == EventType.IDENTIFY.value and bool(self.identify_traits)

    def apply(self, state: SegmentState, event: SegmentEvent) -> None:
        """Fold ``event`` in (any order); moves the clock to it if it is the latest."""
        if state.clock is None or event.at_ms > state.clock:
            state.clock = event.at_ms
        candidates = self._candidates(event)
        for trait in (t for feeders in candidates for t in feeders.traits):
            feeds, value = trait_input(trait, event)
            if not feeds:
                continue
            state.dirty.add((_TRAIT, trait.id))
            agg = self._trait_agg(state, trait)
            if trait.window.within_ms:
                entries: list[list[Any]] = agg.setdefault("e", [])
                insort(entries, [event.at_ms, event.event_id, value], key=lambda e: (e[0], e[1]))
                del entries[:-MAX_WINDOW_ENTRIES]
            else:
                _LifetimeTrait.fold(trait, agg, event, value)
        for condition in (c for feeders in candidates for c in feeders.conditions):
            if not matches(condition.match, event):
                continue
            since = condition.window.since_ms
            if since is not None and event.at_ms < since:
                continue
            key = self.key_of[id(condition)]
            state.dirty.add((_CONDITION, key))
            agg = state.conditions.setdefault(key, {})
            keep = condition.count + 1
            if condition.window.within_ms:
                times: list[int] = agg.setdefault("t", [])
                insort(times, event.at_ms)
                del times[:-keep]
            else:
                agg["n"] = min(keep, agg.get("n", 0) + 1)
        if event.type == EventType.IDENTIFY.value:
            for name in self.identify_traits:
                value = event.properties.get(name)
                held = state.identify.get(name)
                if is_scalar(value) and (held is None or event.order >= (held[0], held[1])):
                    state.identify[name] = [event.at_ms, event.event_id, value]
                    state.dirty.add((_IDENTIFY, name))
        self._prune(state)

    def _trait_agg(self, state: SegmentState, trait: TraitDefinition) -> dict[str, Any]:
        agg = state.traits.get(trait.id)
        if agg is None or agg.get("f") != self.fingerprints[trait.id]:
            # New or changed definition: it counts from here on (until a backfill rebuilds it).
            agg = {"f": self.fingerprints[trait.id]}
            state.traits[trait.id] = agg
        return agg

    def _prune(self, state: SegmentState) -> None:
        """Drop what no window at or after the clock can hold any more."""
        clock = state.clock
        if clock is None:
            return
        # What leaves a window changes its input only if it was inside at the last
        # evaluation (after it, not at or before it minus the window).
        evaluated = state.evaluated_at
        for trait in self._windowed_traits:
            agg = state.traits.get(trait.id)
            entries = agg.get("e") if agg is not None else None
            within = trait.window.within_ms
            assert within is not None
            if entries and entries[0][0] <= clock - within:
                # Sorted by time: the ones at or before the horizon are a prefix.
                cut = bisect_right(entries, clock - within, key=lambda e: e[0])
                if trait.id in self._read_traits and (
                    evaluated is None or entries[cut - 1][0] > evaluated - within
                ):
                    state.dirty.add((_TRAIT, trait.id))
                agg["e"] = entries[cut:]  # type: ignore[index]
        for condition in self._windowed_conditions:
            found = state.conditions.get(self.key_of[id(condition)])
            times = found.get("t") if found is not None else None
            within = condition.window.within_ms
            assert within is not None
            if times and times[0] <= clock - within:
                cut = bisect_right(times, clock - within)
                if evaluated is None or times[cut - 1] > evaluated - within:
                    state.dirty.add((_CONDITION, self.key_of[id(condition)]))
                found["t"] = times[cut:]  # type: ignore[index]

    def forget_stale(self, state: SegmentState) -> None:
        """Drop state of definitions that no longer exist (or changed)."""
        keys = set(self.key_of.values())
        state.conditions = {k: v for k, v in state.conditions.items() if k in keys}
        traits = self.definitions.traits
        state.traits = {
            k: v
            for k, v in state.traits.items()
            if k in traits and v.get("f") == self.fingerprints[k]
        }
        state.identify = {k: v for k, v in state.identify.items() if k in self.identify_traits}
        state.members &= set(self.definitions.segments)
        state.listed = {sid for sid in state.listed if self.definitions.is_static(sid)}

    # answering

    def trait_values(self, state: SegmentState, now_ms: int) -> dict[str, Any]:
        """Every computed trait's value at ``now_ms`` (not before the state's clock)."""
        return {
            tid: self.trait_value(state, t, now_ms) for tid, t in self.definitions.traits.items()
        }

    def trait_value(self, state: SegmentState, trait: TraitDefinition, now_ms: int) -> Any:
        agg = state.traits.get(trait.id)
        if agg is None or agg.get("f") != self.fingerprints[trait.id]:
            agg = {}
        within = trait.window.within_ms
        if within:
            inside = [e for e in agg.get("e", []) if now_ms - within < e[0] <= now_ms]
            return trait_value(trait, inside, now_ms)
        return _LifetimeTrait.value(trait, agg, now_ms)

    def members(self, state: SegmentState, now_ms: int, stage: str | None = None) -> set[str]:
        """The segments the customer is in at ``now_ms`` (not before the state's clock)."""
        if state.merged_into:
            return set()
        found: dict[str, bool] = {}
        traits: dict[str, Any] = {}
        context = _Context(self, state, now_ms, stage if stage is not None else state.stage)
        for sid, segment in self.definitions.segments.items():  # references come first
            found[sid] = context.holds(segment.where, found, traits)
        return {sid for sid, inside in found.items() if inside}

    def next_change(self, state: SegmentState, after_ms: int) -> int | None:
        """The first instant after ``after_ms`` at which time alone may change a membership."""
        if state.merged_into:
            return None
        candidates: list[int] = []
        for condition in self._windowed_conditions:
            within = condition.window.within_ms
            assert within is not None
            times = state.conditions.get(self.key_of[id(condition)], {}).get("t", [])
            # Sorted: the first one still inside after ``after_ms`` leaves first.
            cut = bisect_right(times, after_ms - within)
            if cut < len(times):
                candidates.append(times[cut] + within)
        for trait in self._timed_traits:
            agg = state.traits.get(trait.id)
            if agg is None or agg.get("f") != self.fingerprints[trait.id]:
                continue
            within = trait.window.within_ms
            last: int | None = None
            if within:
                entries = agg.get("e", [])
                cut = bisect_right(entries, after_ms - within, key=lambda e: e[0])
                if cut < len(entries):
                    candidates.append(entries[cut][0] + within)
                last = entries[-1][0] if entries else None
            elif agg.get("e") is not None:
                last = agg["e"][0]
            if trait.op == "days_since_last" and last is not None:
                # "days since" moves up by one at each whole day after the last event.
                candidates.append(last + ((after_ms - last) // DAY_MS + 1) * DAY_MS)
        return min(candidates) if candidates else None

    # folding and reporting changes

    def advance(
        self,
        state: SegmentState,
        events: Iterable[SegmentEvent],
        stage: str | None = None,
        stage_times: Sequence[tuple[int, str]] = (),
    ) -> list[MembershipChange]:
        """Fold ``events`` in (in event-time order) and return the membership changes.

        Before each event newer than the clock, the changes time caused meanwhile
        are stamped at their own instants; an event older than the clock (late) is
        folded in and membership re-evaluated at the clock, the change stamped with
        the late event's time.

        ``stage``: the customer's stage after the events. ``stage_times``: the stage
        changes the events caused, (at_ms, stage): each is taken at its instant, with
        the event stamped then, so a stage condition reads the stage of that moment (a
        shopper whose order of the batch made them loyal was not "loyal, no order in
        60 days" at the page view before it); ``stage`` is then taken after the events
        if it still differs. Without them the events read ``stage`` throughout.
        """
        if not stage_times:
            self._take_stage(state, stage)
        times = sorted(stage_times)
        taken = 0
        changes: list[MembershipChange] = []
        for event in sorted(events, key=lambda e: e.order):
            if state.clock is not None and event.at_ms > state.clock:
                changes.extend(self.tick(state, event.at_ms - 1))
            while taken < len(times) and times[taken][0] <= event.at_ms:
                self._take_stage(state, times[taken][1])
                taken += 1
            self.apply(state, event)
            assert state.clock is not None
            changes.extend(self._diff(state, state.clock, event.at_ms, event.event_id))
        if stage_times and self._take_stage(state, stage) and state.clock is not None:
            changes.extend(self._diff(state, state.clock, state.clock, ""))
        return changes

    @staticmethod
    def _take_stage(state: SegmentState, stage: str | None) -> bool:
        """The customer's stage is now ``stage`` (None: unknown, kept); True if it moved."""
        if stage is None or stage == state.stage:
            return False
        state.stage = stage
        state.dirty.add(_STAGE)
        return True

    def tick(self, state: SegmentState, until_ms: int) -> list[MembershipChange]:
        """Move the clock to ``until_ms``, reporting what windows sliding changed on the way."""
        changes: list[MembershipChange] = []
        if state.clock is None:
            return changes
        while (due := self.next_change(state, state.clock)) is not None and due <= until_ms:
            state.clock = due
            self._prune(state)
            changes.extend(self._diff(state, due, due, ""))
        if until_ms > state.clock:
            state.clock = until_ms
            self._prune(state)
        return changes

    def observe_rfm(self, state: SegmentState, rfm: str, at_ms: int) -> list[MembershipChange]:
        """The customer's RFM segment is now ``rfm`` (a scan at ``at_ms``); the changes.

        Time passing up to the scan is ticked first (changes at their own instants);
        a change the new RFM segment causes is stamped at the scan (event id empty).
        """
        changes = self.tick(state, at_ms)
        if rfm != state.rfm:
            state.rfm = rfm
            state.dirty.add(_RFM)
        if state.clock is None:
            return changes
        return changes + self._diff(state, state.clock, max(at_ms, state.clock), "")

    def observe_listed(
        self, state: SegmentState, segment: str, listed: bool, at_ms: int
    ) -> list[MembershipChange]:
        """The customer was put on (or taken off) static ``segment``'s list at ``at_ms``.

        As :meth:`observe_rfm`: time up to then first, then the change, stamped then.
        A customer never seen before starts their clock there.
        """
        if state.clock is None:
            state.clock = at_ms
        changes = self.tick(state, at_ms)
        if listed != (segment in state.listed):
            state.dirty.add((_LISTED, segment))
        if listed:
            state.listed.add(segment)
        else:
            state.listed.discard(segment)
        return changes + self._diff(state, state.clock, max(at_ms, state.clock), "")

    def merge_into(
        self, state: SegmentState, customer_key: str, at_ms: int, event_id: str
    ) -> list[MembershipChange]:
        """The anonymous state merged into ``customer_key`` at ``at_ms``: it leaves every segment.

        The exits are stamped at the merge; what was recorded before it stays
        (a revision, as the journey's stage ``merged``).
        """
        if state.merged_into:
            return []
        state.merged_into = customer_key
        state.clock = at_ms if state.clock is None else max(state.clock, at_ms)
        return self._diff(state, state.clock, at_ms, event_id)

    def _diff(
        self, state: SegmentState, now_ms: int, stamp_ms: int, event_id: str
    ) -> list[MembershipChange]:
        if state.merged_into or state.evaluated_by != self.signature:
            now = self.members(state, now_ms)
        else:
            now = self._members_since(state, now_ms)
        state.dirty.clear()
        state.evaluated_by, state.evaluated_at = self.signature, now_ms
        changes = [
            MembershipChange(sid, sid in now, stamp_ms, event_id)
            for sid in self.definitions.segments
            if (sid in now) != (sid in state.members)
        ]
        state.members = now
        return changes

    def _members_since(self, state: SegmentState, now_ms: int) -> set[str]:
        """:meth:`members` at ``now_ms`` (the clock), evaluating again only the
        segments whose inputs changed since the state's last evaluation."""
        dirty = state.dirty
        evaluated = state.evaluated_at
        assert evaluated is not None
        for trait in self._days_traits:
            # "days since" moves at day boundaries; a new last event made it dirty already.
            last = self._last_at(state, trait)
            if last is not None and (now_ms - last) // DAY_MS != (evaluated - last) // DAY_MS:
                dirty.add((_TRAIT, trait.id))
        again: set[str] = set()
        for changed in dirty:
            again.update(self._readers.get(changed, ()))
        if not again:
            return set(state.members)
        found = dict.fromkeys(state.members, True)
        traits: dict[str, Any] = {}
        context = _Context(self, state, now_ms, state.stage)
        segments = self.definitions.segments
        for sid in sorted(again, key=self._order.__getitem__):  # references first
            found[sid] = context.holds(segments[sid].where, found, traits)
        return {sid for sid, inside in found.items() if inside}

    def _last_at(self, state: SegmentState, trait: TraitDefinition) -> int | None:
        agg = state.traits.get(trait.id)
        if agg is None or agg.get("f") != self.fingerprints[trait.id]:
            return None
        if trait.window.within_ms:
            entries = agg.get("e", [])
            return int(entries[-1][0]) if entries else None
        held = agg.get("e")
        return None if held is None else int(held[0])


# A segment's inputs: ``(kind, name)`` pairs, or the stage or RFM segment alone.
_CONDITION, _TRAIT, _IDENTIFY, _STAGE, _RFM = "condition", "trait", "identify", "stage", "rfm"
_LISTED = "listed"  # a static segment's list


@dataclass
class _Feeders:
    """The traits and event conditions one event name or type can feed."""

    traits: list[TraitDefinition] = field(default_factory=list)
    conditions: list[EventCondition] = field(default_factory=list)


@dataclass
class _Context:
    evaluator: SegmentEvaluator
    state: SegmentState
    now_ms: int
    stage: str

    def holds(self, node: Condition, segments: Mapping[str, bool], traits: dict[str, Any]) -> bool:
        if isinstance(node, AllOf):
            return all(self.holds(c, segments, traits) for c in node.children)
        if isinstance(node, AnyOf):
            return any(self.holds(c, segments, traits) for c in node.children)
        if isinstance(node, NoneOf):
            return not self.holds(node.child, segments, traits)
        if isinstance(node, EventCondition):
            return compare_count(self.count(node), node.compare, node.count)
        if isinstance(node, TraitCondition):
            if node.identify:
                held = self.state.identify.get(node.trait)
                return compare(held[2] if held else None, node.comparison)
            if node.trait not in traits:
                trait = self.evaluator.definitions.traits[node.trait]
                traits[node.trait] = self.evaluator.trait_value(self.state, trait, self.now_ms)
            return compare(traits[node.trait], node.comparison)
        if isinstance(node, StageCondition):
            return self.stage in node.stages
        if isinstance(node, RfmCondition):
            return self.state.rfm in node.segments
        if isinstance(node, StaticMembers):
            return node.segment in self.state.listed
        assert isinstance(node, SegmentCondition)
        return segments.get(node.segment, False)

    def count(self, node: EventCondition) -> int:
        agg = self.state.conditions.get(self.evaluator.key_of[id(node)], {})
        within = node.window.within_ms
        if within:
            return sum(1 for t in agg.get("t", []) if self.now_ms - within < t <= self.now_ms)
        return int(agg.get("n", 0))


def _nodes(condition: Condition) -> list[Condition]:
    found: list[Condition] = [condition]
    if isinstance(condition, AllOf | AnyOf):
        for child in condition.children:
            found.extend(_nodes(child))
    elif isinstance(condition, NoneOf):
        found.extend(_nodes(condition.child))
    return found
