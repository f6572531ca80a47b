"""The flow engine: a customer's run of a flow, advanced in event time.

Pure. :class:`FlowEngine` takes one customer's :class:`FlowState` for one flow
plus an input (:meth:`FlowEngine.observe`) or an instant
(:meth:`FlowEngine.advance`) and returns a :class:`FlowStep`: the new state
(updated in place), the next instant it must be advanced to, and the facts
decided (journeys/flows/facts.py). The same engine runs live (the worker) and
in backtest (over the event log), so both decide alike.

The clock (the rules of journeys/triggers.py):

- **Event time decides.** Inputs are taken in event-time order (ties by kind
  and id), interleaved with the run's deadlines: an input stamped at or before
  a deadline is taken first, whenever it arrived, as long as the state has not
  been advanced past it. So an order stamped before a one-hour wait ended is
  honoured as if it had arrived in time.
- **The caller advances.** An input later than the state's clock waits in the
  state (``pending``) until the state is advanced to it; the worker advances
  only once it has consumed its partition to the high-water mark, so an event
  already accepted cannot be overtaken by a deadline. An input stamped at or
  before the clock (it came too late for what was already decided) is taken at
  once, at its own event time, for what it can still change (a goal, an exit).
- **History never sends.** An input flagged ``historical`` (``context.historical``
  imports; a backtest's facts before its window) updates what the flow knows
  (traits, stage, segments, consent) but never starts a run; with a ``grace``,
  a send whose instant is further than that behind the wall clock is skipped
  (``expired``): a replay never sends.

Date anchors (``date_entry`` nodes, journeys/flows/anchors.py): a flow with
one reads the customer's facts (the fold of journeys/triggers.py
``CustomerFacts``: cart lines, orders, tickets, birthday, last activity, stage),
kept once per customer in a :class:`CustomerMemory` shared by every such flow
(``observe_customer`` / ``advance_customer``; a standalone state is its own
memory), and plans each anchor's entry instant after an input that moved what
the anchor reads (``anchors``); the
instant is taken in event time like a deadline, and the run enters there.
Each anchor is entered once (``anchored``); an exit event stamped after the
anchor cancels it (the rules' exit); an anchor started by a historical input
is settled as history, never entered. The same facts are the templates'
``data`` (the rules' payloads).

Consent: a channel is subscribed unless an ``Unsubscribed`` event (property
``channel``, or all channels) or an identify trait (``unsubscribed = true``, or
``subscriptions = {email = false}``) says otherwise, the latest by event time
winning (``Subscribed`` undoes it). A send to an unsubscribed channel is
skipped with reason ``consent``.
"""

from __future__ import annotations

import hashlib
from bisect import insort
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, uuid5
from zoneinfo import ZoneInfo

from events import EventType, normalized_name
from journeys.flows.conditions import EventTrigger
from journeys.flows.definitions import FlowCatalog, FlowDefinition
from journeys.flows.facts import (
    Entered,
    FlowFact,
    GoalReached,
    Left,
    NodeReached,
    Sent,
    Skipped,
    Waiting,
)
from journeys.flows.inputs import (
    RFM_PREFIX,
    FlowInput,
    SegmentInput,
    StageInput,
    TrackedInput,
    TraitsInput,
    from_ms,
    input_from_dict,
    to_ms,
)
from journeys.flows.nodes import DateEntryNode, EntryNode, Go, SendNode, Stay, Step
from journeys.flows.pauses import FlowPause
from journeys.flows.templates import RenderFailed
from journeys.triggers import CustomerFacts, after_quiet_hours, customer_zone

# Per list of flows: the positions of those wanting every input, and by event slot
# ("n:name", "t:type", "*") the positions and triggers of the others (FlowEngine.wanting).
_WantIndex = tuple[tuple[int, ...], dict[str, list[tuple[int, list[EventTrigger]]]]]

_RUN_NAMESPACE = uuid5(NAMESPACE_URL, "urn:customer-journeys:flow-run")
_MESSAGE_NAMESPACE = uuid5(NAMESPACE_URL, "urn:customer-journeys:flow-message")
_NO_PAUSES: Mapping[str, FlowPause] = {}
# Bounded memories.
_SEEN = 500
_TRAITS = 100
_SENDS_PER_CHANNEL = 20
_PROPERTIES = 100
# A path is acyclic (validated), so this bounds nothing real; it guards the loop.
_MAX_HOPS = 1000
_CONSENT_EVENTS = ("unsubscribed", "subscribed")
_ANCHORED_PER_NODE = 20


@dataclass
class Run:
    """A customer inside a flow: on which version, where, since when."""

    run_id: str
    version: int
    entered_ms: int
    node: str | None
    since_ms: int
    deadline_ms: int | None = None
    holdout: bool = False
    group: str = ""
    entry: dict[str, Any] = field(default_factory=dict)
    event: dict[str, Any] = field(default_factory=dict)
    entry_key: str = ""
    memory: dict[str, Any] = field(default_factory=dict)  # node → what it keeps (paired waits)


@dataclass
class FlowState:
    """One customer's state for one flow: JSON-friendly (:meth:`to_dict`)."""

    customer_key: str
    flow_id: str
    clock_ms: int | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    # name → [value, at_ms]: the latest by event time
    traits: dict[str, list[Any]] = field(default_factory=dict)
    timezone: list[Any] = field(default_factory=lambda: ["", 0])
    stage: list[Any] = field(default_factory=lambda: [None, 0])
    segments: dict[str, list[Any]] = field(default_factory=dict)  # segment → [member, at_ms]
    # [trait id → value, at_ms]: the computed traits last reported (TraitsInput), by event time
    computed: list[Any] = field(default_factory=lambda: [{}, 0])
    consent: dict[str, list[Any]] = field(default_factory=dict)  # channel or "*" → [yes, at_ms]
    entries: int = 0
    last_entered_ms: int | None = None
    sends: dict[str, list[int]] = field(default_factory=dict)  # channel → send instants
    run: Run | None = None
    # Standalone (its own memory), a flow with date anchors or templates reading ``data``
    # keeps CustomerFacts here; sharing a CustomerMemory, these four fields stay empty.
    facts: dict[str, Any] | None = None
    anchors: dict[str, list[int]] = field(default_factory=dict)  # node → [anchor, due] planned
    # node → [[anchor, due, outcome]]: anchors entered (or settled) already
    anchored: dict[str, list[list[Any]]] = field(default_factory=dict)
    # The version of the flow in force the anchors were planned under (0: none in force);
    # None: to be planned (a state saved before this was kept, a flow held by a pause).
    planned_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Shallow (the values are JSON data already; a saved row is serialised at once):
        ``dataclasses.asdict``'s deep copy was most of the worker's time with 21 flows
        (bench/flows_live.py worker)."""
        data = {name: getattr(self, name) for name in _STATE_FIELDS}
        run = self.run
        data["run"] = None if run is None else {name: getattr(run, name) for name in _RUN_FIELDS}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        run = known.pop("run", None)
        state = cls(**known)
        state.run = Run(**run) if run else None
        return state

    @property
    def inside(self) -> bool:
        return self.run is not None


_STATE_FIELDS = tuple(FlowState.__dataclass_fields__)
_RUN_FIELDS = tuple(Run.__dataclass_fields__)


@dataclass
class CustomerMemory:
    """What the flows of one customer that keep facts share (``FlowEngine.observe_customer``):
    one clock, the inputs kept for it, the ids taken and one facts fold (CustomerFacts), so
    each event is folded once for all of them instead of once per flow (bench/flow_engine.py).
    A standalone :class:`FlowState` carries the same four fields for itself."""

    customer_key: str
    clock_ms: int | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    facts: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _MEMORY_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CustomerMemory:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


_MEMORY_FIELDS = tuple(CustomerMemory.__dataclass_fields__)


def join_memory(
    memory: CustomerMemory | None, customer_key: str, states: Mapping[str, FlowState]
) -> tuple[CustomerMemory, list[FlowState]]:
    """The customer's shared memory, carrying forward flow states stored before it (each
    flow with its own clock, inputs kept, ids and facts): the most advanced state's clock,
    ids and facts become the memory's; each state keeps, as its own, only the inputs the
    memory does not hold (taken by that flow alone, its facts folded already)."""
    own = [
        s
        for s in states.values()
        if s.clock_ms is not None or s.facts is not None or s.pending or s.seen
    ]
    if memory is None:
        memory = CustomerMemory(customer_key)
        if own:
            ahead = max(own, key=lambda s: -1 if s.clock_ms is None else s.clock_ms)
            memory.clock_ms, memory.facts = ahead.clock_ms, ahead.facts
            memory.seen, memory.pending = list(ahead.seen), list(ahead.pending)
            ahead.pending = []
    kept = {p["_key"] for p in memory.pending}
    for state in own:
        state.pending = [p for p in state.pending if p["_key"] not in kept]
        state.clock_ms, state.facts, state.seen = None, None, []
    return memory, own  # the states changed: to be saved with the memory


@dataclass(frozen=True)
class FlowStep:
    """What one call decided: the state, when to advance it next, the facts."""

    state: FlowState
    wake_ms: int | None
    facts: list[FlowFact]


@dataclass(frozen=True)
class CustomerStep:
    """What one call on a customer's shared flows decided: the flow states it ran (to be
    saved), when to advance the memory next (an input kept), the facts."""

    states: list[FlowState]
    wake_ms: int | None
    facts: list[FlowFact]


class _View:
    """The customer as a branch and a template see them."""

    def __init__(self, state: FlowState) -> None:
        self._state = state

    def entry_property(self, name: str) -> Any:
        return self._state.run.entry.get(name) if self._state.run else None

    def trait(self, name: str) -> Any:
        found = self._state.traits.get(name)
        return found[0] if found else None

    def computed_trait(self, name: str) -> Any:
        return self._state.computed[0].get(name)

    @property
    def stage(self) -> str | None:
        return self._state.stage[0]

    def in_segment(self, segment: str) -> bool:
        found = self._state.segments.get(segment)
        return bool(found and found[0])


class FlowEngine:
    """Flows of a catalog applied to customers' flow states."""

    def __init__(self, catalog: FlowCatalog, grace_ms: int | None = None) -> None:
        self.catalog = catalog
        self.grace_ms = grace_ms
        # Per flow, its event triggers by the name or type they require: ``wants`` looks
        # up the few an event can match instead of trying every trigger of every version
        # (most of the worker's flow time with 21 flows, bench/flows_live.py worker).
        self._indexed: FlowCatalog | None = None
        self._by_event: dict[str, dict[str, list[EventTrigger]]] = {}
        self._kinds: dict[str, frozenset[str]] = {}
        self._exits: dict[tuple[str, int], list[str]] = {}
        # Per list of flows: those keeping facts, and each event slot's (position, flow,
        # triggers), so that ``wanting`` looks an ordinary event up once for all of them.
        self._wanting: dict[tuple[str, ...], _WantIndex] = {}

    def _reads(self, flow_id: str) -> frozenset[str]:
        """Of ``stage`` and ``segment``, the inputs a version of the flow mentions."""
        self._event_triggers(flow_id)
        return self._kinds[flow_id]

    def _event_triggers(self, flow_id: str) -> dict[str, list[EventTrigger]]:
        if self._indexed is not self.catalog:  # built for the catalog in force
            self._by_event = {}
            self._kinds = {}
            self._exits = {}
            self._wanting = {}
            self._indexed = self.catalog
        found = self._by_event.get(flow_id)
        if found is None:
            found = {}
            for flow in self.catalog.versions.get(flow_id, {}).values():
                for trigger in flow.triggers():
                    if isinstance(trigger, EventTrigger):
                        match = trigger.match
                        slot = (
                            f"n:{match.name}"
                            if match.name
                            else f"t:{match.type}"
                            if match.type
                            else "*"
                        )
                        found.setdefault(slot, []).append(trigger)
            self._by_event[flow_id] = found
            versions = self.catalog.versions.get(flow_id, {}).values()
            named = set().union(*(_keys(flow.source) for flow in versions))
            kinds = {
                kind for kind, key in (("stage", "stage"), ("segment", "segment")) if key in named
            }
            if any(flow.uses_computed_traits for flow in versions):
                kinds.add(TraitsInput.kind)
            self._kinds[flow_id] = frozenset(kinds)
        return found

    def observe(
        self,
        state: FlowState,
        item: FlowInput,
        wall_now_ms: int | None = None,
        pause: FlowPause | None = None,
    ) -> FlowStep:
        """Take an input: kept until the clock reaches it, or taken now if it is late.
        ``pause``: the flow's pauses (an entry they cover is refused); a state the
        pause in force holds (:meth:`holds`) is given to :meth:`hold` instead."""
        paused = {state.flow_id: pause} if pause is not None else {}
        step = self.observe_customer(state, {state.flow_id: state}, item, wall_now_ms, paused)
        return FlowStep(state, self.wake(state), step.facts)

    @staticmethod
    def holds(state: FlowState, item: FlowInput, pause: FlowPause | None) -> bool:
        """Whether a flow's own state keeps ``item`` undecided until the resume: its pause
        is in force and the customer is inside, or has inputs held already (kept in
        order), or the input is from before the pause (it enters on resume, as if it
        had come in time). Otherwise a paused flow takes it, refusing the entry."""
        if pause is None or not pause.in_force:
            return False
        return state.inside or bool(state.pending) or pause.holds(item.at_ms)

    def hold(self, state: FlowState, item: FlowInput) -> FlowStep:
        """Keep an input for later whatever its time (a paused flow: nothing is decided
        until it resumes, then in event time as :meth:`advance` takes it)."""
        _keep(state, item)
        return FlowStep(state, self.wake(state), [])

    def advance(
        self,
        state: FlowState,
        until_ms: int,
        wall_now_ms: int | None = None,
        pause: FlowPause | None = None,
    ) -> FlowStep:
        """Take every pending input and deadline up to ``until_ms``, in event time
        (``pause``: the flow's pauses; an entry inside one is refused, and a pause in
        force runs no deadline or anchor)."""
        paused = {state.flow_id: pause} if pause is not None else {}
        step = self.advance_customer(state, {state.flow_id: state}, until_ms, wall_now_ms, paused)
        return FlowStep(state, self.wake(state), step.facts)

    def shares_memory(self, flow_id: str) -> bool:
        """Whether the flow keeps the customer's facts (date anchors, templates reading
        ``data``): such flows share one :class:`CustomerMemory` per customer."""
        versions = self.catalog.versions.get(flow_id, {})
        return any(flow.enabled and flow.keeps_facts for flow in versions.values())

    def observe_customer(
        self,
        memory: CustomerMemory | FlowState,
        states: Mapping[str, FlowState] | Callable[[], Mapping[str, FlowState]],
        item: FlowInput,
        wall_now_ms: int | None = None,
        paused: Mapping[str, FlowPause] = _NO_PAUSES,
    ) -> CustomerStep:
        """An input into the customer's flows that share ``memory`` (or into one flow, its
        state its own memory): kept until the clock reaches it (no flow state is read:
        ``states`` may be a loader), or taken now, at its own time, if it is late.
        ``paused``: the flows' pauses (journeys/flows/pauses.py), judged by event time."""
        key = item.key
        if key in memory.seen or any(p.get("_key") == key for p in memory.pending):
            return CustomerStep([], _memory_wake(memory), [])
        if memory.clock_ms is None or item.at_ms > memory.clock_ms:
            _keep(memory, item)
            return CustomerStep([], _memory_wake(memory), [])
        customer = _Customer(
            self, memory, states() if callable(states) else states, wall_now_ms, paused
        )
        customer.take(item)
        customer.run_until(memory.clock_ms)
        return customer.finish()

    def advance_customer(
        self,
        memory: CustomerMemory | FlowState,
        states: Mapping[str, FlowState],
        until_ms: int,
        wall_now_ms: int | None = None,
        paused: Mapping[str, FlowPause] = _NO_PAUSES,
    ) -> CustomerStep:
        """Take the memory's inputs kept and every flow's own inputs, deadlines and anchors
        up to ``until_ms``, in event time (those of a flow paused now are left where they
        are; entries inside a pause are refused)."""
        customer = _Customer(self, memory, states, wall_now_ms, paused)
        for turn in customer.turns:
            turn.replan_if_moved()
        customer.run_until(until_ms)
        memory.clock_ms = until_ms if memory.clock_ms is None else max(memory.clock_ms, until_ms)
        return customer.finish()

    def wants(self, flow_id: str, item: FlowInput) -> bool:
        """Whether ``item`` can matter to the flow: a trigger of one of its versions, or
        what the flow remembers (identify traits, consent, stage, segments, a time zone).

        The live worker keeps no state for the rest (page views …): they change nothing.
        """
        versions = self.catalog.versions.get(flow_id, {})
        if isinstance(item, TraitsInput):
            # Not activity: only a flow that branches on or renders computed traits keeps them.
            return item.kind in self._reads(flow_id)
        if any(flow.enabled and flow.keeps_facts for flow in versions.values()):
            return True  # every input is activity, and may move the facts anchors read
        if isinstance(item, StageInput | SegmentInput):
            # Only a flow that names stages (or segments) anywhere — a trigger, a branch —
            # keeps them: for the others a stage change is one state write per flow and
            # change that decides nothing (bench/flows_live.py worker).
            return item.kind in self._reads(flow_id)
        if item.timezone or item.type == "identify" or item.name in _CONSENT_EVENTS:
            return True
        by_event = self._event_triggers(flow_id)
        candidates = [
            *by_event.get(f"n:{item.name}", ()),
            *by_event.get(f"t:{item.type}", ()),
            *by_event.get("*", ()),
        ]
        return any(t.matches(item) for t in candidates)

    def wanting(self, flow_ids: Sequence[str], item: FlowInput) -> list[str]:
        """The flows of ``flow_ids`` that ``wants`` the item, in their order. An ordinary
        event (the most of them) is looked up once in an index over all the flows instead
        of ``wants`` per flow and event: 6 µs an input instead of 23 for the 21 flows not
        sharing memory of bench/flows_live.py worker --shipped-on."""
        if not isinstance(item, TrackedInput) or not _plain(item):
            # traits, stage, segment, identify, zone, consent: per flow
            return [flow_id for flow_id in flow_ids if self.wants(flow_id, item)]
        ids = tuple(flow_ids)
        if self._indexed is not self.catalog:
            self._event_triggers(ids[0] if ids else "")  # the indexes, for the catalog in force
        index = self._wanting.get(ids)
        if index is None:
            index = self._wanting[ids] = self._want_index(ids)
        always, slots = index
        chosen = set(always)
        for slot in (f"n:{item.name}", f"t:{item.type}", "*"):
            for position, triggers in slots.get(slot, ()):
                if position not in chosen and any(t.matches(item) for t in triggers):
                    chosen.add(position)
        return [ids[position] for position in sorted(chosen)]

    def _want_index(self, ids: tuple[str, ...]) -> _WantIndex:
        always = []
        slots: dict[str, list[tuple[int, list[EventTrigger]]]] = {}
        for position, flow_id in enumerate(ids):
            versions = self.catalog.versions.get(flow_id, {}).values()
            if any(flow.enabled and flow.keeps_facts for flow in versions):
                always.append(position)  # as ``wants``: every input may move its facts
                continue
            for slot, triggers in self._event_triggers(flow_id).items():
                slots.setdefault(slot, []).append((position, triggers))
        return tuple(always), slots

    def exit_names(self, flow: FlowDefinition) -> list[str]:
        """The event names of the flow's exits (an exit after an anchor cancels it)."""
        if self._indexed is not self.catalog:
            self._event_triggers(flow.id)  # the indexes are rebuilt for the catalog in force
        found = self._exits.get((flow.id, flow.version))
        if found is None:
            found = self._exits[(flow.id, flow.version)] = [
                normalized_name(t.match.name)
                for t in flow.exits
                if isinstance(t, EventTrigger) and t.match.name
            ]
        return found

    @staticmethod
    def wake(state: FlowState) -> int | None:
        """The next instant the state must be advanced to (an input kept, a deadline, an
        anchor; of a flow sharing a memory, its own: the memory's inputs wake the memory)."""
        times = [state.pending[0]["at_ms"]] if state.pending else []
        if state.run is not None and state.run.deadline_ms is not None:
            times.append(state.run.deadline_ms)
        times.extend(due for _, due in state.anchors.values())
        return min(times) if times else None


def _keep(memory: CustomerMemory | FlowState, item: FlowInput) -> None:
    key = item.key
    if key not in memory.seen and not any(p.get("_key") == key for p in memory.pending):
        insort(
            memory.pending, {**item.to_dict(), "_key": key, "_rank": item.rank}, key=_pending_order
        )


def _plain(item: FlowInput) -> bool:
    """An event that changes no flow's own memory (traits, zone, consent, stage, segments)."""
    return (
        isinstance(item, TrackedInput)
        and not item.timezone
        and item.type != "identify"
        and item.name not in _CONSENT_EVENTS
    )


def _memory_wake(memory: CustomerMemory | FlowState) -> int | None:
    return memory.pending[0]["at_ms"] if memory.pending else None


def _taken(data: dict[str, Any]) -> FlowInput:
    data.pop("_key", None)
    data.pop("_rank", None)
    return input_from_dict(data)


def _keys(source: Any) -> set[str]:
    """Every key anywhere in a definition as written (tables in tables, lists of them)."""
    if isinstance(source, Mapping):
        found = set(source)
        for value in source.values():
            found |= _keys(value)
        return found
    if isinstance(source, list | tuple):
        return set().union(*(_keys(value) for value in source)) if source else set()
    return set()


def render_message(node: SendNode, variables: Mapping[str, Any]) -> tuple[str, str]:
    """The send node's subject ("" without one) and body; raises RenderFailed."""
    subject = node.subject.render(variables) if node.subject else ""
    return subject, node.body.render(variables)


def sticky_bucket(flow_id: str, node: str, seed: str, customer_key: str) -> float:
    """The customer's place in [0, 100) for a split: the same across runs, versions, restarts."""
    digest = hashlib.sha256(f"{flow_id}|{node}|{seed}|{customer_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def _pending_order(data: Mapping[str, Any]) -> tuple[int, int, str]:
    # order_key of the input, kept with it (not rebuilt per comparison)
    return (data["at_ms"], data["_rank"], data["_key"])


class _Customer:
    """One call's work on a customer's flows that share a memory, in event time: each
    input kept in the memory is folded into the facts once, then taken by every flow;
    between two inputs each flow runs its own deadlines, anchors and inputs kept for it
    alone. Flows affect each other only through the facts, which only inputs change, so
    the flows' timed steps between two inputs may run flow by flow."""

    def __init__(
        self,
        engine: FlowEngine,
        memory: CustomerMemory | FlowState,
        states: Mapping[str, FlowState],
        wall_now_ms: int | None,
        paused: Mapping[str, FlowPause],
    ) -> None:
        self.memory = memory
        self._facts: CustomerFacts | None = None
        self.pauses = paused
        every = [_Turn(engine, state, wall_now_ms, self) for state in states.values()]
        # A flow paused now keeps the inputs of a customer inside (or with inputs held
        # already), undecided; the others take them, their entries refused.
        held = [t.held_now() for t in every]
        self.held = [t for t, waits in zip(every, held, strict=True) if waits]
        self.turns = [t for t, waits in zip(every, held, strict=True) if not waits]
        self._folds = any(t.keeps_facts() is not None for t in every)

    @property
    def facts(self) -> list[FlowFact]:
        return [fact for turn in self.turns for fact in turn.facts]

    def customer_facts(self) -> CustomerFacts:
        if self._facts is None:
            known = self.memory.facts
            self._facts = (
                CustomerFacts.from_dict(known) if known else CustomerFacts(self.memory.customer_key)
            )
        return self._facts

    def run_until(self, until_ms: int) -> None:
        pending = self.memory.pending
        for _ in range(_MAX_HOPS * 10):
            next_input = pending[0]["at_ms"] if pending else None
            if next_input is not None and next_input > until_ms:
                next_input = None
            # An input is taken before a deadline or anchor at its own instant.
            limit = until_ms if next_input is None else next_input - 1
            for turn in self.turns:
                turn.run_until(limit)
            if next_input is None:
                return
            self.take(_taken(pending.pop(0)))
        raise AssertionError("a customer's flows did not settle")  # an engine bug, not input

    def take(self, item: FlowInput) -> None:
        seen = self.memory.seen
        seen.append(item.key)
        del seen[:-_SEEN]
        historical = item.historical
        if self._folds:
            facts = self.customer_facts()
            for turn in self.turns:
                # What the stored anchors were planned from (every input plans again what
                # it moved): after the fold, a flow whose anchors read nothing that
                # changed is not planned again.
                turn.note_plan_reads()
            if isinstance(item, TrackedInput):
                facts.observe(_Observed(item))
                facts.recent_ids.clear()  # ``seen`` recognises copies
            elif isinstance(item, StageInput):
                # A stage reached on imported events is history, as the import itself.
                historical = historical or facts.last_activity_historical
                facts.observe_stage(item.stage, from_ms(item.at_ms))
            elif isinstance(item, TraitsInput):
                pass  # not activity: the facts do not move
            elif item.segment.startswith(RFM_PREFIX) and item.entered:
                facts.segment = item.segment.removeprefix(RFM_PREFIX)
        for turn in list(self.turns):
            if turn.pause is not None and turn.pause.holds(item.at_ms):
                # From before the pause in force: decided on resume, as if in time.
                self.turns.remove(turn)
                self.held.append(turn)
        for turn in self.held:
            _keep(turn.state, item)
            turn.state.planned_version = None  # its anchors are planned again on resume
            turn.dirty = True
        for turn in self.turns:
            turn.take(item, historical)

    def finish(self) -> CustomerStep:
        """Write the facts back into the memory (when this call read them)."""
        if self._facts is not None:
            self.memory.facts = self._facts.to_dict()
        return CustomerStep(
            [t.state for t in self.turns if t.dirty] + [t.state for t in self.held if t.dirty],
            _memory_wake(self.memory),
            self.facts,
        )


class _Turn:
    """One call's work on one flow's state; implements the nodes' RunContext."""

    def __init__(
        self, engine: FlowEngine, state: FlowState, wall_now_ms: int | None, customer: _Customer
    ) -> None:
        self.engine = engine
        self.state = state
        self.wall_now_ms = wall_now_ms
        self.facts: list[FlowFact] = []
        self._view = _View(state)
        self._customer = customer
        self.pause = customer.pauses.get(state.flow_id)
        self._planned: tuple[Any, ...] | None = None  # what the anchors were planned from
        self.dirty = False  # the state changed in this call (it is saved only then)
        # A state that shares a memory keeps here only inputs of its own (held by a pause,
        # or carried over by join_memory); a standalone state's inputs are its memory's.
        self._own = customer.memory is not state

    # -- the loop ------------------------------------------------------------------------

    def held_now(self) -> bool:
        """Paused now with the customer inside, or with inputs held for the resume."""
        pause = self.pause
        return pause is not None and pause.in_force and (self.state.inside or self._holding())

    def _holding(self) -> bool:
        # A shared state's own inputs are those a pause held (or join_memory carried).
        return self._own and bool(self.state.pending)

    def run_until(self, until_ms: int) -> None:
        """This flow's deadlines, anchors and own inputs up to ``until_ms``, in event time;
        nothing timed while the flow is paused (its anchors come due on resume)."""
        if self.pause is not None and self.pause.in_force:
            return
        state = self.state
        for _ in range(_MAX_HOPS * 10):
            next_input = state.pending[0]["at_ms"] if self._own and state.pending else None
            if next_input is not None and next_input > until_ms:
                next_input = None
            run = state.run
            deadline = run.deadline_ms if run is not None else None
            if deadline is not None and deadline > until_ms:
                deadline = None
            planned = min(
                ((due, node) for node, (_, due) in state.anchors.items() if due <= until_ms),
                default=None,
            )
            timed = [t for t in (deadline, planned[0] if planned else None) if t is not None]
            if next_input is None and not timed:
                return
            self.dirty = True
            if next_input is not None and (not timed or next_input <= min(timed)):
                self.take(_taken(state.pending.pop(0)), None)
            elif deadline is not None and (planned is None or deadline <= planned[0]):
                self._deadline(deadline)
            elif planned is not None:
                self._anchor_due(planned[1])
        raise AssertionError("a flow state did not settle")  # an engine bug, not input

    def take(self, item: FlowInput, historical: bool | None) -> None:
        """``historical``: whether anchors the input planned are history (the facts were
        folded by the customer); None for an input of this flow alone (folded before)."""
        state = self.state
        facts, anchors, inside = len(self.facts), state.anchors, state.run is not None
        self._take(item, historical)
        if not self.dirty and (
            inside
            or state.run is not None
            or len(self.facts) != facts
            or state.anchors != anchors
            or not _plain(item)
        ):
            self.dirty = True

    def _take(self, item: FlowInput, historical: bool | None) -> None:
        state = self.state
        self._fold(item)
        if historical is not None:
            self._replan_after(historical)
        run = state.run
        if run is not None:
            flow = self.engine.catalog.definition(state.flow_id, run.version)
            if flow is None:
                self._leave(run, run.version, item.at_ms, "version_removed", "")
            elif item.at_ms >= run.entered_ms and item.key != run.entry_key:
                self._while_inside(flow, run, item)
                return
            else:
                return
        if not item.historical:
            self._maybe_enter(item)

    def _while_inside(self, flow: FlowDefinition, run: Run, item: FlowInput) -> None:
        for trigger in flow.exits:
            if trigger.matches(item):
                self._leave(run, flow.version, item.at_ms, "exit", trigger.describe())
                return
        goal = flow.goal
        if (
            goal is not None
            and item.at_ms <= run.entered_ms + goal.within_ms
            and goal.trigger.matches(item)
        ):
            self.facts.append(
                GoalReached(*self._who(run, flow.version), item.at_ms, run.node or "", item.key)
            )
            self._leave(run, flow.version, item.at_ms, "converted", goal.trigger.describe())
            return
        if run.node is None:
            return
        step = flow.nodes[run.node].on_input(self, item)
        if step is not None:
            self._follow(flow, run, step)

    def _deadline(self, at_ms: int) -> None:
        run = self.state.run
        assert run is not None
        flow = self.engine.catalog.definition(self.state.flow_id, run.version)
        if flow is None:
            self._leave(run, run.version, at_ms, "version_removed", "")
            return
        run.deadline_ms = None
        if run.node is None:  # the path ended; the goal's window has closed
            self._leave(run, flow.version, at_ms, "completed", "goal window over")
            return
        self._follow(flow, run, flow.nodes[run.node].on_deadline(self, at_ms))

    # -- entering, moving, leaving ---------------------------------------------------------

    def _maybe_enter(self, item: FlowInput) -> None:
        state = self.state
        flow = self.engine.catalog.current(state.flow_id)
        if flow is None or not flow.enabled:
            return
        entry = next((node for node in flow.entries if node.trigger.matches(item)), None)
        if entry is None:
            return
        properties = item.properties if isinstance(item, TrackedInput) else {}
        self._enter(flow, entry, item.at_ms, item.key, properties)

    def _enter(
        self,
        flow: FlowDefinition,
        entry: EntryNode | DateEntryNode,
        at_ms: int,
        key: str,
        properties: Mapping[str, Any],
        refused: str = "",
    ) -> None:
        state = self.state
        run_id = str(uuid5(_RUN_NAMESPACE, f"{flow.id}|{state.customer_key}|{key}"))
        reason, refused = "reentry", refused or self._reentry_refused(flow, at_ms)
        if self.paused_at(at_ms):
            reason, refused = "paused", f"not entered by {key}"
        if refused:
            self.facts.append(
                Skipped(
                    flow.id,
                    flow.version,
                    state.customer_key,
                    run_id,
                    at_ms,
                    entry.id,
                    reason=reason,
                    detail=refused,
                )
            )
            return
        entry_props = dict(list(properties.items())[:_PROPERTIES])
        run = Run(
            run_id=run_id,
            version=flow.version,
            entered_ms=at_ms,
            node=entry.id,
            since_ms=at_ms,
            entry=entry_props,
            event=entry_props,
            entry_key=key,
        )
        state.run = run
        state.entries += 1
        state.last_entered_ms = at_ms
        self.facts.append(Entered(*self._who(run, flow.version), at_ms, entry.id, key))
        self._follow(flow, run, entry.arrive(self, at_ms))

    # -- date anchors ----------------------------------------------------------------------

    def _customer_facts(self) -> CustomerFacts:
        return self._customer.customer_facts()

    def keeps_facts(self) -> FlowDefinition | None:
        flow = self.engine.catalog.current(self.state.flow_id)
        run = self.state.run
        if run is not None and (flow is None or flow.version != run.version):
            inside = self.engine.catalog.definition(self.state.flow_id, run.version)
            if inside is not None and inside.keeps_facts:
                return inside
        return flow if flow is not None and flow.keeps_facts else None

    def _replan_after(self, historical: bool) -> None:
        """The anchors again after an input moved the facts; those it planned are history
        when it was."""
        flow = self.keeps_facts()
        if flow is None:
            return
        current = self.engine.catalog.current(self.state.flow_id)
        if self._planned is not None and self._planned == self._plan_reads(current):
            return  # nothing an anchor (or an exit cancelling one) reads has changed
        before = set(self._planned_keys())
        self.replan()
        if historical:
            for node, (anchor, due) in list(self.state.anchors.items()):
                if (node, anchor) not in before:
                    self._settle(node, anchor, due, "historical")
            self.replan()

    def note_plan_reads(self) -> None:
        if self._planned is None and self.keeps_facts() is not None:
            self._planned = self._plan_reads(self.engine.catalog.current(self.state.flow_id))

    def _plan_reads(self, flow: FlowDefinition | None) -> tuple[Any, ...]:
        """What :meth:`replan` reads: the flow, the facts its anchors and exits read, the
        anchors settled last."""
        if flow is None or not flow.enabled or not flow.date_entries:
            return (flow,)
        facts, anchored = self._customer_facts(), self.state.anchored
        return (
            flow,
            [node.anchor.reads(facts) for node in flow.date_entries],
            [facts.last_by_name.get(name) for name in self.engine.exit_names(flow)],
            [
                anchored[node.id][-1] if anchored.get(node.id) else None
                for node in flow.date_entries
            ],
        )

    def _planned_keys(self) -> list[tuple[str, int]]:
        return [(node, anchor) for node, (anchor, _) in self.state.anchors.items()]

    def _settle(self, node: str, anchor: int, due: int, outcome: str) -> None:
        # Saved even when the plan is as before (settled and planned again: none): a state
        # read back without it would plan the anchor again, as if never settled.
        self.dirty = True
        done = self.state.anchored.setdefault(node, [])
        done.append([anchor, due, outcome])
        del done[:-_ANCHORED_PER_NODE]

    def replan_if_moved(self) -> None:
        """Plan the anchors when the flow in force is not the version they were planned
        under (a flow given date anchors since the state was saved; a state saved before
        the version was kept; a flow held by a pause). Otherwise the plan stands: only an
        input moves the facts, and each input plans again what it moved."""
        flow = self.engine.catalog.current(self.state.flow_id)
        if self.state.planned_version != _plan_version(flow):
            anchors = self.state.anchors
            self.replan()
            self.dirty = self.dirty or self.state.anchors != anchors

    def replan(self) -> None:
        """The entry instants of the current version's date anchors, from the facts."""
        state = self.state
        flow = self.engine.catalog.current(state.flow_id)
        self._planned = self._plan_reads(flow)
        state.planned_version = _plan_version(flow)
        if flow is None or not flow.enabled or not flow.date_entries:
            state.anchors = {}
            return
        facts = self._customer_facts()
        exits = self.engine.exit_names(flow)
        planned: dict[str, list[int]] = {}
        for node in flow.date_entries:
            done = state.anchored.get(node.id, [])
            found = node.anchor.due(facts, [item[1] for item in done])
            if found is None or any(item[0] == found[0] for item in done):
                continue
            anchor, due = found
            if any(_later(facts.last_by_name.get(name), anchor) for name in exits):
                continue  # an exit event after the anchor cancels it
            planned[node.id] = [anchor, due]
        state.anchors = planned

    def paused_at(self, at_ms: int) -> bool:
        """An entry at ``at_ms`` lies inside one of the flow's pauses: refused."""
        return self.pause is not None and self.pause.covers(at_ms)

    def _anchor_due(self, node_id: str) -> None:
        state = self.state
        anchor, due = state.anchors.pop(node_id)
        self._settle(node_id, anchor, due, "paused" if self.paused_at(due) else "entered")
        flow = self.engine.catalog.current(state.flow_id)
        node = flow.nodes.get(node_id) if flow is not None else None
        if flow is not None and isinstance(node, DateEntryNode):
            inside = "inside the flow already" if state.run is not None else ""
            self._enter(flow, node, due, f"anchor:{node_id}:{anchor}", {}, refused=inside)
        self.replan()

    def payload(self) -> dict[str, Any]:
        """The customer's facts as the templates' ``data`` (the rules' payloads)."""
        facts = self._customer_facts()
        return {
            "cart": {
                "cart_id": facts.cart_id,
                "currency": facts.currency,
                "value": facts.cart_value,
                # not "items": in a template data.cart.items is the dict's method
                "lines": [
                    {
                        "product_id": pid,
                        "name": line["name"],
                        "quantity": line["quantity"],
                        "price": line["price"],
                    }
                    for pid, line in sorted(facts.cart.items())
                ],
            },
            "orders": len(facts.orders),
            "lifetime_revenue": round(sum(o["revenue"] for o in facts.orders), 2),
            "last_order_at": max((o["at"] for o in facts.orders), default=None),
            "open_tickets": sorted(facts.open_tickets),
            "ticket_id": facts.last_resolved_ticket,
            "stage": facts.stage,
            "last_activity_at": facts.last_activity_at,
            "segment": facts.segment,
            "birthday": facts.birthday,
            "timezone": facts.timezone,
        }

    def _reentry_refused(self, flow: FlowDefinition, at_ms: int) -> str:
        state = self.state
        if flow.reentry == "always" or state.last_entered_ms is None:
            return ""
        if flow.reentry == "never":
            return "entered before (reentry = never)"
        if at_ms - state.last_entered_ms < flow.cooldown_ms:
            return f"entered {(at_ms - state.last_entered_ms) // 1000} s before (cool-down)"
        return ""

    def _follow(self, flow: FlowDefinition, run: Run, step: Step) -> None:
        for _ in range(_MAX_HOPS):
            if self.state.run is not run:
                return  # left on the way (nothing does yet; kept for safety)
            if isinstance(step, Stay):
                run.deadline_ms = step.until_ms
                return
            if step.next is None:
                self._path_ended(flow, run, step.at_ms)
                return
            run.node, run.since_ms, run.deadline_ms = step.next, step.at_ms, None
            self.facts.append(
                NodeReached(*self._who(run, flow.version), step.at_ms, step.next, step.via)
            )
            step = flow.nodes[step.next].arrive(self, step.at_ms)
        raise AssertionError("a flow path did not end")  # validated acyclic

    def _path_ended(self, flow: FlowDefinition, run: Run, at_ms: int) -> None:
        goal_end = run.entered_ms + flow.goal.within_ms if flow.goal else None
        if goal_end is not None and goal_end > at_ms:
            # Stay until the goal's window closes, so late conversions (and the
            # holdout's, who got nothing) are counted.
            run.node, run.since_ms, run.deadline_ms = None, at_ms, goal_end
            self.facts.append(
                Waiting(*self._who(run, flow.version), at_ms, "", until_ms=goal_end, reason="goal")
            )
            return
        self._leave(run, flow.version, at_ms, "completed", "")

    def _leave(self, run: Run, version: int, at_ms: int, reason: str, detail: str) -> None:
        who = self._who(run, version)
        self.facts.append(Left(*who, at_ms, run.node or "", reason, detail, run.group, run.holdout))
        self.state.run = None

    def _who(self, run: Run, version: int) -> tuple[str, int, str, str]:
        return (self.state.flow_id, version, self.state.customer_key, run.run_id)

    # -- what the flow knows of the customer -----------------------------------------------

    def _fold(self, item: FlowInput) -> None:
        state = self.state
        if isinstance(item, StageInput):
            if item.at_ms >= state.stage[1]:
                state.stage = [item.stage, item.at_ms]
            return
        if isinstance(item, SegmentInput):
            known = state.segments.get(item.segment)
            if known is None or item.at_ms >= known[1]:
                state.segments[item.segment] = [item.entered, item.at_ms]
            return
        if isinstance(item, TraitsInput):
            if item.at_ms >= state.computed[1]:
                state.computed = [dict(item.values), item.at_ms]
            return
        if item.timezone and item.at_ms >= state.timezone[1]:
            state.timezone = [item.timezone, item.at_ms]
        if item.type == "identify":
            self._identify(item)
        elif item.name in _CONSENT_EVENTS:
            channel = item.properties.get("channel")
            self._consent(channel if isinstance(channel, str) else "*", item)

    def _identify(self, item: TrackedInput) -> None:
        traits = self.state.traits
        for name, value in item.properties.items():
            known = traits.get(name)
            if known is None and len(traits) >= _TRAITS:
                continue
            if known is None or item.at_ms >= known[1]:
                traits[name] = [value, item.at_ms]
        if item.properties.get("unsubscribed") is True:
            self._set_consent("*", False, item.at_ms)
        subscriptions = item.properties.get("subscriptions")
        if isinstance(subscriptions, Mapping):
            for channel, yes in subscriptions.items():
                if isinstance(yes, bool):
                    self._set_consent(str(channel), yes, item.at_ms)

    def _consent(self, channel: str, item: TrackedInput) -> None:
        self._set_consent(channel, item.name == "subscribed", item.at_ms)

    def _set_consent(self, channel: str, yes: bool, at_ms: int) -> None:
        known = self.state.consent.get(channel)
        if known is None or at_ms >= known[1]:
            self.state.consent[channel] = [yes, at_ms]

    def _subscribed(self, channel: str) -> bool:
        found = [v for k, v in self.state.consent.items() if k in (channel, "*")]
        return max(found, key=lambda v: v[1])[0] if found else True

    # -- RunContext -------------------------------------------------------------------------

    @property
    def since_ms(self) -> int:
        assert self.state.run is not None
        return self.state.run.since_ms

    @property
    def view(self) -> _View:
        return self._view

    def wait(self, node: str, until_ms: int, reason: str) -> Stay:
        run = self.state.run
        assert run is not None
        self.facts.append(
            Waiting(
                *self._who(run, run.version), run.since_ms, node, until_ms=until_ms, reason=reason
            )
        )
        return Stay(until_ms)

    def moved_by(self, item: TrackedInput) -> None:
        assert self.state.run is not None
        self.state.run.event = dict(list(item.properties.items())[:_PROPERTIES])

    def join(self, group: str, holdout: bool) -> None:
        assert self.state.run is not None
        self.state.run.group = group
        self.state.run.holdout = self.state.run.holdout or holdout

    def zone(self) -> ZoneInfo:
        return customer_zone(self.state.timezone[0])

    def memory(self, node: str) -> dict[str, Any]:
        assert self.state.run is not None
        found: dict[str, Any] = self.state.run.memory.setdefault(node, {})
        return found

    def bucket(self, node: str, seed: str) -> float:
        return sticky_bucket(self.state.flow_id, node, seed, self.state.customer_key)

    def send(self, node: SendNode, at_ms: int, deferred: bool) -> Step:
        state, run = self.state, self.state.run
        assert run is not None
        flow = self.engine.catalog.definition(state.flow_id, run.version)
        assert flow is not None
        who = (*self._who(run, flow.version), at_ms, node.id)
        onward = Go(node.next, at_ms, f"{node.id}: ")

        def skip(reason: str, detail: str = "") -> Step:
            self.facts.append(Skipped(*who, channel=node.channel, reason=reason, detail=detail))
            return Go(onward.next, at_ms, onward.via + f"skipped ({reason})")

        if run.holdout:
            return skip("holdout", run.group)
        if not self._subscribed(node.channel):
            return skip("consent", f"unsubscribed from {node.channel}")
        quiet = flow.quiet_hours
        if quiet is not None and not deferred:
            zone = customer_zone(state.timezone[0])
            end = to_ms(after_quiet_hours(quiet, from_ms(at_ms), zone))
            if end != at_ms:
                if flow.quiet_policy == "skip":
                    return skip("quiet_hours", f"in quiet hours ({zone.key})")
                return self.wait(node.id, end, "quiet_hours")
        grace, wall = self.engine.grace_ms, self.wall_now_ms
        if grace is not None and wall is not None and wall - at_ms > grace:
            return skip("expired", "due too long ago (a replay or a long outage)")
        if flow.frequency_cap_ms:
            recent = [
                t
                for t in state.sends.get(node.channel, [])
                if abs(at_ms - t) < flow.frequency_cap_ms
            ]
            if recent:
                return skip(
                    "cap", f"sent on {node.channel} {abs(at_ms - recent[-1]) // 1000} s before"
                )
        variables = {
            "customer_id": state.customer_key,
            "traits": {name: value[0] for name, value in state.traits.items()},
            "entry": run.entry,
            "event": run.event,
            "flow": {"id": flow.id, "version": flow.version, "name": flow.name},
            "node": node.id,
        }
        if flow.keeps_facts:
            variables["data"] = self.payload()
        if flow.reads_computed_traits:  # only then: the other flows' facts keep their ids
            variables["computed_traits"] = dict(state.computed[0])
        try:
            # A trial: personal values are sealed here ({"$enc": …}) and only opened at
            # delivery, where the message is rendered for real (render_message).
            render_message(node, variables)
        except RenderFailed as error:
            return skip("template", str(error))
        message_id = str(uuid5(_MESSAGE_NAMESPACE, f"{run.run_id}|{node.id}"))
        self.facts.append(
            Sent(*who, channel=node.channel, message_id=message_id, variables=variables)
        )
        sends = state.sends.setdefault(node.channel, [])
        sends.append(at_ms)
        del sends[:-_SENDS_PER_CHANNEL]
        return Go(node.next, at_ms, f"{node.id}: sent")


def _plan_version(flow: FlowDefinition | None) -> int:
    return 0 if flow is None or not flow.enabled else flow.version


def _later(stamp: str | None, anchor_ms: int) -> bool:
    return stamp is not None and to_ms(datetime.fromisoformat(stamp)) > anchor_ms


class _Observed:
    """A tracked input as CustomerFacts reads an event (journeys.triggers.ObservedEvent)."""

    __slots__ = ("_item",)

    def __init__(self, item: TrackedInput) -> None:
        self._item = item

    @property
    def event_id(self) -> str:
        return self._item.event_id

    @property
    def event_type(self) -> EventType:
        return EventType(self._item.type)

    @property
    def event_name(self) -> str:
        return self._item.name

    @property
    def timestamp(self) -> datetime:
        return from_ms(self._item.at_ms)

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self._item.properties)

    @property
    def context(self) -> dict[str, Any]:
        item = self._item
        return {"historical": item.historical, "timezone": item.timezone or None}

    @property
    def dedup_keys(self) -> tuple[str, ...]:
        return (self._item.event_id,)
