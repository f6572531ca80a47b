"""Date anchors: entries that start at an instant computed from what the customer did.

A ``date_entry`` node (journeys/flows/nodes.py) names one anchor kind; the
anchor reads the customer's facts (the fold of journeys/triggers.py
``CustomerFacts``, kept in the flow state of a flow with date entries) and
answers the anchor (the event time of the fact that starts the clock) and the
instant the run enters. A newer fact moves the anchor (a later order restarts
"7 days after the last order"); an anchor that was entered (or settled as
history) is never entered again. One registered class per kind
(:data:`ANCHOR_KINDS`, found by the node's ``anchor`` field):

- ``last_order``: ``after`` the latest completed order (review request);
- ``event``: ``after`` the latest event of a name (``event = "Ticket Resolved"``);
- ``purchase_cycle``: one mean gap between orders (times ``cycle_factor``) plus
  ``after`` since the latest order, from ``min_orders`` orders on (repurchase);
- ``inactivity``: ``after`` the latest event of any kind, optionally only while
  the journey is at ``stage`` (win-back counts from the last activity);
- ``birthday``: the identify trait ``birthday`` at local time ``at`` in the
  customer's zone, the next one on or after the day it became known (or a day
  after the last one entered);
- ``cart``: ``after`` the latest cart activity while the cart holds lines worth
  at least ``min_value`` (the rules' abandoned cart, for migrated rules files).
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any, ClassVar, Protocol

from journeys.flows.conditions import Problems
from journeys.outreach_rules import RuleError, parse_duration
from journeys.segment_definitions import STAGES
from journeys.segment_state import from_ms, to_ms
from journeys.triggers import CustomerFacts


def _ms(value: str | None) -> int | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return to_ms(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


class Anchor(Protocol):
    """An anchor kind: parsed from the node's table, asked for (anchor, entry instant)."""

    fields: ClassVar[set[str]]

    def due(self, facts: CustomerFacts, entered_ms: list[int]) -> tuple[int, int] | None:
        """(anchor, instant to enter) in epoch ms, or None while no clock runs.

        ``entered_ms``: the entry instants of this node's anchors entered (or settled) before.
        """
        ...

    def reads(self, facts: CustomerFacts) -> Hashable:
        """What of the facts ``due`` reads: the anchor is planned again only when it
        changed (journeys/flows/engine.py)."""
        ...

    def describe(self) -> str: ...


def _after(raw: Mapping[str, Any], path: str, problems: Problems) -> int:
    if "after" not in raw:
        return 0
    try:
        return int(parse_duration(raw["after"], f"{path}.after").total_seconds() * 1000)
    except RuleError as error:
        problems.add(error.field, error.message)
        return 0


def _number(
    raw: Mapping[str, Any], name: str, path: str, problems: Problems, low: float, default: float
) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
        problems.add(f"{path}.{name}", f"must be a number >= {low:g}")
        return default
    return float(value)


@dataclass(frozen=True, slots=True)
class LastOrderAnchor:
    fields: ClassVar[set[str]] = {"after"}
    after_ms: int

    @classmethod
    def parse(cls, raw: Mapping[str, Any], path: str, problems: Problems) -> LastOrderAnchor:
        return cls(_after(raw, path, problems))

    def due(self, facts: CustomerFacts, entered_ms: list[int]) -> tuple[int, int] | None:
        last = facts.last_order_at()
        return None if last is None else (to_ms(last), to_ms(last) + self.after_ms)

    def reads(self, facts: CustomerFacts) -> Hashable:
        return tuple(order["at"] for order in facts.orders)

    def describe(self) -> str:
        return f"{self.after_ms // 1000} s after the last order"


@dataclass(frozen=True, slots=True)
class EventAnchor:
    fields: ClassVar[set[str]] = {"after", "event"}
    event: str  # normalized
    after_ms: int

    @classmethod
    def parse(cls, raw: Mapping[str, Any], path: str, problems: Problems) -> EventAnchor | None:
        event = raw.get("event")
        if not isinstance(event, str) or not event.strip():
            problems.add(f"{path}.event", "is required: an event name")
            return None
        return cls(event.strip().lower(), _after(raw, path, problems))

    def due(self, facts: CustomerFacts, entered_ms: list[int]) -> tuple[int, int] | None:
        last = _ms(facts.last_by_name.get(self.event))
        return None if last is None else (last, last + self.after_ms)

    def reads(self, facts: CustomerFacts) -> Hashable:
        return facts.last_by_name.get(self.event)

    def describe(self) -> str:
        return f"{self.after_ms // 1000} s after the last {self.event!r}"


@dataclass(frozen=True, slots=True)
class PurchaseCycleAnchor:
    fields: ClassVar[set[str]] = {"after", "min_orders", "cycle_factor"}
    after_ms: int
    min_orders: int = 2
    cycle_factor: float = 1.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any], path: str, problems: Problems) -> PurchaseCycleAnchor:
        min_orders = _number(raw, "min_orders", path, problems, 2, 2)
        factor = _number(raw, "cycle_factor", path, problems, 0, 1.0)
        return cls(_after(raw, path, problems), int(min_orders), factor)

    def due(self, facts: CustomerFacts, entered_ms: list[int]) -> tuple[int, int] | None:
        times = facts.order_times()
        if len(times) < self.min_orders:
            return None
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        cycle = sum(gaps, timedelta()) / len(gaps)
        anchor = to_ms(times[-1])
        return anchor, anchor + int(
            cycle.total_seconds() * 1000 * self.cycle_factor
        ) + self.after_ms

    def reads(self, facts: CustomerFacts) -> Hashable:
        return tuple(order["at"] for order in facts.orders)

    def describe(self) -> str:
        return f"one purchase cycle (x{self.cycle_factor:g}) after the last order"


@dataclass(frozen=True, slots=True)
class InactivityAnchor:
    fields: ClassVar[set[str]] = {"after", "stage"}
    after_ms: int
    stage: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any], path: str, problems: Problems) -> InactivityAnchor:
        stage = raw.get("stage")
        if stage is not None and stage not in STAGES:
            problems.add(f"{path}.stage", f"must be one of {', '.join(STAGES)}")
            stage = None
        return cls(_after(raw, path, problems), stage)

    def due(self, facts: CustomerFacts, entered_ms: list[int]) -> tuple[int, int] | None:
        if self.stage is not None and facts.stage != self.stage:
            return None
        last = _ms(facts.last_activity_at)
        return None if last is None else (last, last + self.after_ms)

    def reads(self, facts: CustomerFacts) -> Hashable:
        return (facts.stage, facts.last_activity_at)

    def describe(self) -> str:
        where = f" at stage {self.stage}" if self.stage else ""
        return f"{self.after_ms // 1000} s without activity{where}"


@dataclass(frozen=True, slots=True)
class BirthdayAnchor:
    fields: ClassVar[set[str]] = {"at"}
    at: clock_time

    @classmethod
    def parse(cls, raw: Mapping[str, Any], path: str, problems: Problems) -> BirthdayAnchor | None:
        moment = local_time(raw.get("at", "09:00"), f"{path}.at", problems)
        return None if moment is None else cls(moment)

    def due(self, facts: CustomerFacts, entered_ms: list[int]) -> tuple[int, int] | None:
        if facts.birthday is None or facts.birthday_known_at is None:
            return None
        zone = facts.zone
        floor = _ms(facts.birthday_known_at) or 0
        if entered_ms:  # whatever ended the last one (entered, history), the next is a year on
            floor = max(floor, max(entered_ms) + 86_400_000)
        month, day = int(facts.birthday[:2]), int(facts.birthday[3:])
        year = from_ms(floor).astimezone(zone).year
        for candidate in (year, year + 1, year + 2):
            try:
                local_day = date(candidate, month, day)
            except ValueError:  # 29 February in a common year: the 28th
                local_day = date(candidate, month, day - 1)
            moment = to_ms(datetime.combine(local_day, self.at, tzinfo=zone))
            if moment >= floor:
                return moment, moment
        return None

    def reads(self, facts: CustomerFacts) -> Hashable:
        return (facts.birthday, facts.birthday_known_at, facts.timezone)

    def describe(self) -> str:
        return f"the birthday at {self.at:%H:%M} local time"


@dataclass(frozen=True, slots=True)
class CartAnchor:
    fields: ClassVar[set[str]] = {"after", "min_value"}
    after_ms: int
    min_value: float = 0.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any], path: str, problems: Problems) -> CartAnchor:
        return cls(_after(raw, path, problems), _number(raw, "min_value", path, problems, 0, 0))

    def due(self, facts: CustomerFacts, entered_ms: list[int]) -> tuple[int, int] | None:
        if not facts.cart or facts.cart_activity_at is None or facts.cart_value < self.min_value:
            return None
        last = _ms(facts.cart_activity_at) or 0
        return last, last + self.after_ms

    def reads(self, facts: CustomerFacts) -> Hashable:
        return (bool(facts.cart), facts.cart_activity_at, facts.cart_value)

    def describe(self) -> str:
        return f"{self.after_ms // 1000} s after the last cart activity"


AnchorKind = (
    type[LastOrderAnchor]
    | type[EventAnchor]
    | type[PurchaseCycleAnchor]
    | type[InactivityAnchor]
    | type[BirthdayAnchor]
    | type[CartAnchor]
)
ANCHOR_KINDS: dict[str, AnchorKind] = {
    "last_order": LastOrderAnchor,
    "event": EventAnchor,
    "purchase_cycle": PurchaseCycleAnchor,
    "inactivity": InactivityAnchor,
    "birthday": BirthdayAnchor,
    "cart": CartAnchor,
}


def parse_anchor(raw: Mapping[str, Any], path: str, problems: Problems) -> Anchor | None:
    """The anchor a ``date_entry`` node names (its ``anchor`` field and that kind's fields)."""
    kind = ANCHOR_KINDS.get(raw.get("anchor"))  # type: ignore[arg-type]
    if kind is None:
        problems.add(f"{path}.anchor", f"must be one of {', '.join(ANCHOR_KINDS)}")
        return None
    problems.unknown(raw, kind.fields | {"kind", "anchor", "next"}, path)
    return kind.parse(raw, path, problems)


def local_time(value: Any, path: str, problems: Problems) -> clock_time | None:
    """``"09:00"`` (HH:MM), or an error naming ``path``."""
    try:
        hours, minutes = str(value).split(":")
        return clock_time(int(hours), int(minutes))
    except ValueError:
        problems.add(path, "must be a local time HH:MM")
        return None
