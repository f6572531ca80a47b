"""The node kinds of a flow: one registered class per kind (:data:`NODE_KINDS`).

Each node is parsed from its table by its own class and acts through three
methods the engine calls: ``arrive`` (the run reached it at an instant),
``on_input`` (an input while the run waits here) and ``on_deadline`` (the
instant it asked for came). Each answers a :class:`Go` (on to the next node,
``None`` ending the path) or a :class:`Stay` (wait until an instant).

- ``entry``: where runs start (a trigger: event, stage or segment; see conditions.py);
- ``wait``: a duration;
- ``wait_until``: an event (a trigger) with a timeout, optionally correlated by a
  property of the entry event (``correlate = "cart_id"``): ``on_event`` if it
  came first, ``on_timeout`` otherwise. An event stamped at or before the
  timeout is honoured however late it arrives, as long as the timeout has not
  been processed (the engine orders inputs and deadlines by event time);
- ``branch``: the first case whose condition holds, else ``else``;
- ``split``: random by percentages, sticky per customer (a stable hash of flow,
  node and customer); a ``holdout = true`` branch receives nothing (its sends
  are skipped with reason ``holdout``) but is followed, so its conversions count;
- ``send``: a message on a channel from a template (templates.py);
- ``date_entry``: where runs start at an instant computed from the customer's
  facts (a date anchor: the birthday in the customer's zone, the purchase cycle
  coming due, N days after an event or since the last activity; anchors.py);
- ``wait_until_time``: until the next local time of day (``at = "09:00"``) in
  the customer's zone;
- ``wait_paired``: opened/closed pairs correlated by a property (tickets by
  ``ticket_id``): ``on_closed`` once every opened one is closed, ``on_timeout``
  when the oldest still open has been open for ``timeout``. The entry event is
  the first one opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as clock_time
from typing import Any, ClassVar, Protocol
from zoneinfo import ZoneInfo

from journeys.flows.anchors import Anchor, local_time, parse_anchor
from journeys.flows.conditions import (
    CustomerView,
    EventTrigger,
    Predicate,
    Problems,
    Trigger,
    parse_predicate,
    parse_trigger,
)
from journeys.flows.inputs import FlowInput, TrackedInput, from_ms, to_ms
from journeys.flows.templates import MessageTemplate, compile_template
from journeys.outreach_rules import CHANNELS, RuleError, parse_duration


@dataclass(frozen=True, slots=True)
class Go:
    """On to ``next`` (None: the path ends) at ``at_ms``; ``via`` says which way and why."""

    next: str | None
    at_ms: int
    via: str


@dataclass(frozen=True, slots=True)
class Stay:
    """Wait here until ``until_ms`` (or an input this node reacts to)."""

    until_ms: int


Step = Go | Stay


class RunContext(Protocol):
    """What a node may read and do for the run in hand (the engine implements it)."""

    @property
    def since_ms(self) -> int:
        """When the run reached the current node."""
        ...

    @property
    def view(self) -> CustomerView: ...

    def wait(self, node: str, until_ms: int, reason: str) -> Stay:
        """Record that the run waits here until ``until_ms``."""
        ...

    def moved_by(self, item: TrackedInput) -> None:
        """The event that moved the run on (the template's ``event``)."""
        ...

    def join(self, group: str, holdout: bool) -> None:
        """The run belongs to a split's branch; a holdout's sends are skipped."""
        ...

    def bucket(self, node: str, seed: str) -> float:
        """The customer's sticky place in [0, 100) for this split."""
        ...

    def send(self, node: SendNode, at_ms: int, deferred: bool) -> Step:
        """Send (or skip, or defer past quiet hours) this node's message."""
        ...

    def zone(self) -> ZoneInfo:
        """The customer's time zone (UTC when unknown)."""
        ...

    def memory(self, node: str) -> dict[str, Any]:
        """What this node keeps for the run (JSON-friendly; saved with the state)."""
        ...


class Node(Protocol):
    kind: ClassVar[str]
    id: str

    def targets(self) -> dict[str, str | None]:
        """Field → the node it leads to (None: the path ends there)."""
        ...

    def arrive(self, ctx: RunContext, at_ms: int) -> Step: ...

    def on_input(self, ctx: RunContext, item: FlowInput) -> Step | None: ...

    def on_deadline(self, ctx: RunContext, at_ms: int) -> Step: ...


def _next(raw: Mapping[str, Any], name: str, path: str, problems: Problems) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        problems.add(f"{path}.{name}", "must be a node id")
        return None
    return value


def duration_ms(
    raw: Mapping[str, Any], name: str, path: str, problems: Problems, *, required: bool
) -> int | None:
    """A duration field in milliseconds ('1h', '90s', '7d' or seconds)."""
    if name not in raw:
        if required:
            problems.add(f"{path}.{name}", "is required (a duration such as '1h')")
        return None
    try:
        return int(parse_duration(raw[name], f"{path}.{name}").total_seconds() * 1000)
    except RuleError as error:
        problems.add(error.field, error.message)
        return None


class _Passive:
    """Nodes the run never waits at."""

    def on_input(self, ctx: RunContext, item: FlowInput) -> Step | None:
        return None

    def on_deadline(self, ctx: RunContext, at_ms: int) -> Step:
        raise AssertionError("the run never waits at this node")


@dataclass(frozen=True)
class EntryNode(_Passive):
    kind: ClassVar[str] = "entry"
    id: str
    trigger: Trigger
    next: str | None

    @classmethod
    def parse(cls, node_id: str, raw: Mapping[str, Any], path: str, problems: Problems) -> Any:
        trigger = parse_trigger(raw, path, problems, extra={"kind", "next"})
        nxt = _next(raw, "next", path, problems)
        return None if trigger is None else cls(node_id, trigger, nxt)

    def targets(self) -> dict[str, str | None]:
        return {"next": self.next}

    def arrive(self, ctx: RunContext, at_ms: int) -> Step:
        return Go(self.next, at_ms, f"{self.id}: entered")


@dataclass(frozen=True)
class WaitNode:
    kind: ClassVar[str] = "wait"
    id: str
    duration_ms: int
    next: str | None

    @classmethod
    def parse(cls, node_id: str, raw: Mapping[str, Any], path: str, problems: Problems) -> Any:
        problems.unknown(raw, {"kind", "duration", "next"}, path)
        duration = duration_ms(raw, "duration", path, problems, required=True)
        nxt = _next(raw, "next", path, problems)
        return None if duration is None else cls(node_id, duration, nxt)

    def targets(self) -> dict[str, str | None]:
        return {"next": self.next}

    def arrive(self, ctx: RunContext, at_ms: int) -> Step:
        return ctx.wait(self.id, at_ms + self.duration_ms, "duration")

    def on_input(self, ctx: RunContext, item: FlowInput) -> Step | None:
        return None

    def on_deadline(self, ctx: RunContext, at_ms: int) -> Step:
        return Go(self.next, at_ms, f"{self.id}: waited")


@dataclass(frozen=True)
class WaitUntilNode:
    kind: ClassVar[str] = "wait_until"
    id: str
    trigger: Trigger
    timeout_ms: int
    on_event: str | None
    on_timeout: str | None
    correlate: str = ""

    @classmethod
    def parse(cls, node_id: str, raw: Mapping[str, Any], path: str, problems: Problems) -> Any:
        fields = {"kind", "timeout", "on_event", "on_timeout", "correlate"}
        trigger = parse_trigger(raw, path, problems, extra=fields)
        timeout = duration_ms(raw, "timeout", path, problems, required=True)
        if timeout == 0:
            problems.add(f"{path}.timeout", "must be longer than 0")
        correlate = raw.get("correlate", "")
        if not isinstance(correlate, str):
            problems.add(f"{path}.correlate", "must be a property name")
            correlate = ""
        if correlate and trigger is not None and not isinstance(trigger, EventTrigger):
            problems.add(f"{path}.correlate", "only an event (event or type) can be correlated")
        on_event = _next(raw, "on_event", path, problems)
        on_timeout = _next(raw, "on_timeout", path, problems)
        if trigger is None or not timeout:
            return None
        return cls(node_id, trigger, timeout, on_event, on_timeout, correlate)

    def targets(self) -> dict[str, str | None]:
        return {"on_event": self.on_event, "on_timeout": self.on_timeout}

    def arrive(self, ctx: RunContext, at_ms: int) -> Step:
        return ctx.wait(self.id, at_ms + self.timeout_ms, "event")

    def on_input(self, ctx: RunContext, item: FlowInput) -> Step | None:
        # At or before the timeout (inputs and deadlines are taken in event time).
        if item.at_ms < ctx.since_ms or item.at_ms > ctx.since_ms + self.timeout_ms:
            return None
        if not self.trigger.matches(item):
            return None
        if self.correlate and isinstance(item, TrackedInput):
            # Correlated by the entry event's value; an entry without it waits for any.
            wanted = ctx.view.entry_property(self.correlate)
            if wanted is not None and str(item.properties.get(self.correlate)) != str(wanted):
                return None
        if isinstance(item, TrackedInput):
            ctx.moved_by(item)
        return Go(self.on_event, item.at_ms, f"{self.id}: event")

    def on_deadline(self, ctx: RunContext, at_ms: int) -> Step:
        return Go(self.on_timeout, at_ms, f"{self.id}: timeout")


@dataclass(frozen=True)
class BranchNode(_Passive):
    kind: ClassVar[str] = "branch"
    id: str
    cases: tuple[tuple[Predicate, str | None], ...]
    otherwise: str | None

    @classmethod
    def parse(cls, node_id: str, raw: Mapping[str, Any], path: str, problems: Problems) -> Any:
        problems.unknown(raw, {"kind", "cases", "else"}, path)
        items = raw.get("cases")
        if not isinstance(items, list) or not items:
            problems.add(f"{path}.cases", "must be a non-empty list of {when, next}")
            return None
        cases: list[tuple[Predicate, str | None]] = []
        for index, item in enumerate(items):
            here = f"{path}.cases[{index}]"
            if not isinstance(item, Mapping) or "when" not in item:
                problems.add(here, "must be a table with when (a condition) and next")
                continue
            problems.unknown(item, {"when", "next"}, here)
            predicate = parse_predicate(item["when"], f"{here}.when", problems)
            if predicate is not None:
                cases.append((predicate, _next(item, "next", here, problems)))
        otherwise = _next(raw, "else", path, problems)
        return cls(node_id, tuple(cases), otherwise) if len(cases) == len(items) else None

    def targets(self) -> dict[str, str | None]:
        found = {f"cases[{i}].next": nxt for i, (_, nxt) in enumerate(self.cases)}
        return {**found, "else": self.otherwise}

    def arrive(self, ctx: RunContext, at_ms: int) -> Step:
        for index, (predicate, nxt) in enumerate(self.cases):
            if predicate.holds(ctx.view):
                return Go(nxt, at_ms, f"{self.id}: case {index}")
        return Go(self.otherwise, at_ms, f"{self.id}: else")


@dataclass(frozen=True, slots=True)
class SplitBranch:
    name: str
    percent: float
    next: str | None
    holdout: bool = False


@dataclass(frozen=True)
class SplitNode(_Passive):
    kind: ClassVar[str] = "split"
    id: str
    branches: tuple[SplitBranch, ...]
    seed: str = ""

    @classmethod
    def parse(cls, node_id: str, raw: Mapping[str, Any], path: str, problems: Problems) -> Any:
        problems.unknown(raw, {"kind", "branches", "seed"}, path)
        items = raw.get("branches")
        if not isinstance(items, list) or len(items) < 2:
            problems.add(f"{path}.branches", "must be a list of at least 2 {name, percent, next}")
            return None
        branches = []
        for index, item in enumerate(items):
            here = f"{path}.branches[{index}]"
            if not isinstance(item, Mapping):
                problems.add(here, "must be a table {name, percent, next, holdout}")
                continue
            problems.unknown(item, {"name", "percent", "next", "holdout"}, here)
            name, percent, holdout = item.get("name"), item.get("percent"), item.get("holdout")
            if not isinstance(name, str) or not name:
                problems.add(f"{here}.name", "must be a non-empty string")
                continue
            if isinstance(percent, bool) or not isinstance(percent, int | float):
                problems.add(f"{here}.percent", "must be a number from 0 to 100")
                continue
            if not 0 <= percent <= 100:
                problems.add(f"{here}.percent", "must be a number from 0 to 100")
                continue
            if holdout is not None and not isinstance(holdout, bool):
                problems.add(f"{here}.holdout", "must be true or false")
                continue
            nxt = _next(item, "next", here, problems)
            branches.append(SplitBranch(name, float(percent), nxt, holdout is True))
        names = [b.name for b in branches]
        if len(set(names)) != len(names):
            problems.add(f"{path}.branches", "branch names must be unique")
        total = sum(b.percent for b in branches)
        if len(branches) == len(items) and abs(total - 100) > 1e-9:
            problems.add(
                f"{path}.branches", f"percentages must add up to 100 (they add up to {total:g})"
            )
        seed = raw.get("seed", "")
        if not isinstance(seed, str):
            problems.add(f"{path}.seed", "must be a string")
            seed = ""
        return cls(node_id, tuple(branches), seed) if len(branches) == len(items) else None

    def targets(self) -> dict[str, str | None]:
        return {f"branches[{i}].next": b.next for i, b in enumerate(self.branches)}

    def arrive(self, ctx: RunContext, at_ms: int) -> Step:
        place = ctx.bucket(self.id, self.seed)
        edge = 0.0
        chosen = self.branches[-1]
        for branch in self.branches:
            edge += branch.percent
            if place < edge:
                chosen = branch
                break
        ctx.join(chosen.name, chosen.holdout)
        return Go(chosen.next, at_ms, f"{self.id}: {chosen.name}")


@dataclass(frozen=True)
class SendNode:
    kind: ClassVar[str] = "send"
    id: str
    channel: str
    body: MessageTemplate
    next: str | None
    subject: MessageTemplate | None = None

    @classmethod
    def parse(cls, node_id: str, raw: Mapping[str, Any], path: str, problems: Problems) -> Any:
        problems.unknown(raw, {"kind", "channel", "subject", "body", "next"}, path)
        channel = raw.get("channel")
        if channel not in CHANNELS:
            problems.add(f"{path}.channel", f"must be one of {', '.join(CHANNELS)}")
        templates: dict[str, MessageTemplate | None] = {"subject": None, "body": None}
        for name in templates:
            if name not in raw:
                if name == "body" or channel == "email":
                    problems.add(f"{path}.{name}", "is required (a template)")
                continue
            compiled = compile_template(raw[name])
            if isinstance(compiled, str):
                problems.add(f"{path}.{name}", compiled)
            else:
                templates[name] = compiled
        nxt = _next(raw, "next", path, problems)
        body = templates["body"]
        if channel not in CHANNELS or body is None:
            return None
        if channel == "email" and templates["subject"] is None:
            return None
        return cls(node_id, str(channel), body, nxt, templates["subject"])

    def targets(self) -> dict[str, str | None]:
        return {"next": self.next}

    def arrive(self, ctx: RunContext, at_ms: int) -> Step:
        return ctx.send(self, at_ms, deferred=False)

    def on_input(self, ctx: RunContext, item: FlowInput) -> Step | None:
        return None

    def on_deadline(self, ctx: RunContext, at_ms: int) -> Step:
        # Only a send deferred past quiet hours waits here.
        return ctx.send(self, at_ms, deferred=True)


@dataclass(frozen=True)
class DateEntryNode(_Passive):
    """Runs start when the anchor's instant comes (the engine plans it from the facts)."""

    kind: ClassVar[str] = "date_entry"
    id: str
    anchor: Anchor
    next: str | None

    @classmethod
    def parse(cls, node_id: str, raw: Mapping[str, Any], path: str, problems: Problems) -> Any:
        anchor = parse_anchor(raw, path, problems)
        nxt = _next(raw, "next", path, problems)
        return None if anchor is None else cls(node_id, anchor, nxt)

    def targets(self) -> dict[str, str | None]:
        return {"next": self.next}

    def arrive(self, ctx: RunContext, at_ms: int) -> Step:
        return Go(self.next, at_ms, f"{self.id}: {self.anchor.describe()}")


def next_local_time(at_ms: int, moment: clock_time, zone: ZoneInfo) -> int:
    """The first instant at or after ``at_ms`` whose local time in ``zone`` is ``moment``."""
    local = from_ms(at_ms).astimezone(zone)
    candidate = datetime.combine(local.date(), moment, tzinfo=zone)
    if candidate < local:
        candidate = datetime.combine(local.date() + timedelta(days=1), moment, tzinfo=zone)
    return to_ms(candidate)


@dataclass(frozen=True)
class WaitUntilTimeNode:
    kind: ClassVar[str] = "wait_until_time"
    id: str
    at: clock_time
    next: str | None

    @classmethod
    def parse(cls, node_id: str, raw: Mapping[str, Any], path: str, problems: Problems) -> Any:
        problems.unknown(raw, {"kind", "at", "next"}, path)
        if "at" not in raw:
            problems.add(f"{path}.at", "is required: a local time HH:MM")
            return None
        moment = local_time(raw["at"], f"{path}.at", problems)
        nxt = _next(raw, "next", path, problems)
        return None if moment is None else cls(node_id, moment, nxt)

    def targets(self) -> dict[str, str | None]:
        return {"next": self.next}

    def arrive(self, ctx: RunContext, at_ms: int) -> Step:
        until = next_local_time(at_ms, self.at, ctx.zone())
        if until == at_ms:
            return Go(self.next, at_ms, f"{self.id}: it is {self.at:%H:%M} local time")
        return ctx.wait(self.id, until, "local_time")

    def on_input(self, ctx: RunContext, item: FlowInput) -> Step | None:
        return None

    def on_deadline(self, ctx: RunContext, at_ms: int) -> Step:
        return Go(self.next, at_ms, f"{self.id}: {self.at:%H:%M} local time")


@dataclass(frozen=True, slots=True)
class EitherTrigger:
    """Either of two triggers (what a paired wait reacts to)."""

    first: Trigger
    second: Trigger

    def matches(self, item: FlowInput) -> bool:
        return self.first.matches(item) or self.second.matches(item)

    def describe(self) -> str:
        return f"{self.first.describe()} or {self.second.describe()}"


@dataclass(frozen=True)
class WaitPairedNode:
    kind: ClassVar[str] = "wait_paired"
    id: str
    opens: Trigger
    closes: Trigger
    by: str
    timeout_ms: int
    on_closed: str | None
    on_timeout: str | None

    @classmethod
    def parse(cls, node_id: str, raw: Mapping[str, Any], path: str, problems: Problems) -> Any:
        fields = {"kind", "opens", "closes", "by", "timeout", "on_closed", "on_timeout"}
        problems.unknown(raw, fields, path)
        opens = parse_trigger(raw.get("opens"), f"{path}.opens", problems)
        closes = parse_trigger(raw.get("closes"), f"{path}.closes", problems)
        for name, trigger in (("opens", opens), ("closes", closes)):
            if trigger is not None and not isinstance(trigger, EventTrigger):
                problems.add(f"{path}.{name}", "must be an event (event or type)")
        by = raw.get("by")
        if not isinstance(by, str) or not by:
            problems.add(f"{path}.by", "is required: the property pairing them (ticket_id)")
        timeout = duration_ms(raw, "timeout", path, problems, required=True)
        if timeout == 0:
            problems.add(f"{path}.timeout", "must be longer than 0")
        on_closed = _next(raw, "on_closed", path, problems)
        on_timeout = _next(raw, "on_timeout", path, problems)
        if opens is None or closes is None or not isinstance(by, str) or not by or not timeout:
            return None
        return cls(node_id, opens, closes, by, timeout, on_closed, on_timeout)

    @property
    def trigger(self) -> Trigger:
        return EitherTrigger(self.opens, self.closes)

    def targets(self) -> dict[str, str | None]:
        return {"on_closed": self.on_closed, "on_timeout": self.on_timeout}

    def _until(self, ctx: RunContext) -> Stay:
        opened: dict[str, int] = ctx.memory(self.id)
        return ctx.wait(self.id, min(opened.values()) + self.timeout_ms, "event")

    def arrive(self, ctx: RunContext, at_ms: int) -> Step:
        key = ctx.view.entry_property(self.by)
        ctx.memory(self.id)[str(key) if key is not None else "entry"] = at_ms
        return self._until(ctx)

    def on_input(self, ctx: RunContext, item: FlowInput) -> Step | None:
        if item.at_ms < ctx.since_ms or not isinstance(item, TrackedInput):
            return None
        opened: dict[str, int] = ctx.memory(self.id)
        key = item.properties.get(self.by)
        if self.closes.matches(item):
            if key is None:
                opened.clear()  # closed without saying which: all of them (as the rules did)
            elif opened.pop(str(key), None) is None:
                return None
            if not opened:
                ctx.moved_by(item)
                return Go(self.on_closed, item.at_ms, f"{self.id}: all closed")
            return self._until(ctx)
        if self.opens.matches(item):
            earliest = min(opened.values(), default=None)
            opened.setdefault(str(key) if key is not None else item.event_id, item.at_ms)
            if earliest is None or item.at_ms < earliest:
                return self._until(ctx)
        return None

    def on_deadline(self, ctx: RunContext, at_ms: int) -> Step:
        return Go(self.on_timeout, at_ms, f"{self.id}: timeout")


NodeKind = (
    type[EntryNode]
    | type[WaitNode]
    | type[WaitUntilNode]
    | type[BranchNode]
    | type[SplitNode]
    | type[SendNode]
    | type[DateEntryNode]
    | type[WaitUntilTimeNode]
    | type[WaitPairedNode]
)
NODE_KINDS: dict[str, NodeKind] = {
    kind.kind: kind
    for kind in (
        EntryNode,
        WaitNode,
        WaitUntilNode,
        BranchNode,
        SplitNode,
        SendNode,
        DateEntryNode,
        WaitUntilTimeNode,
        WaitPairedNode,
    )
}
# Where runs start: on an input (entry) or at a planned instant (date_entry).
ENTRY_NODES = (EntryNode, DateEntryNode)
