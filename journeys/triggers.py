"""Trigger rules at work: what a customer's facts say is due, cancelled or fired.

Pure: given a customer's facts, the rules and a clock reading, decide. The
worker (streams/outreach/worker.py) persists facts and timers and asks these
functions what to do.

The clock
---------
Two clocks, on purpose:

- **Event time decides.** A rule's clock starts at the *event time* of the
  fact that starts it (the anchor: the last cart activity, the order, the
  ticket…), and its due time is ``anchor + delay``. Facts are ordered by event
  time, whatever order they arrive in: a Product Added stamped before an
  order belongs to that order's cart, and an order stamped before the due
  time empties the cart even when it arrives late.
- **Wall time fires.** A timer fires when the wall clock reaches its fire time
  (the due time, moved past quiet hours). The decision is taken then, on every
  fact known; the worker only asks once it has consumed its partition up to
  the broker's high-water mark, so an event already accepted cannot be
  overtaken by the timer.
- **History never fires.** Events flagged ``context.historical`` (imports,
  backfills) update facts but settle the clocks they would start; and a timer
  whose fire time is more than ``grace`` behind the wall clock (a replay of
  old events, a worker down for long) expires instead of firing.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any, Protocol
from uuid import NAMESPACE_URL, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from events import EventType, normalized_name
from journeys.outreach_rules import QuietHours, TriggerRule

_TRIGGER_NAMESPACE = uuid5(NAMESPACE_URL, "urn:customer-journeys:trigger")
# Bounded memories: enough to recognise re-sent events and recent outcomes.
_RECENT_IDS = 500
_SETTLED_PER_RULE = 20

CART_ADD = {"product added", "wishlist product added to cart"}
CART_REMOVE = {"product removed"}
CART_LINE_EVENTS = CART_ADD | CART_REMOVE
ORDER = "order completed"
ORDER_VOIDED = {"order refunded", "order cancelled"}
TICKET_OPENED = "ticket created"
TICKET_RESOLVED = "ticket resolved"
# The top RFM segment (projections/analytics/reports.py SEGMENTS): high-value welcome.
TOP_SEGMENT = "champions"


class ObservedEvent(Protocol):
    """What the rules read of a tracked event: ``events.TrackedEvent`` has it all, and
    the trigger consumer parses only this much (streams/outreach/trigger_events.py)."""

    @property
    def event_id(self) -> str: ...
    @property
    def event_type(self) -> EventType: ...
    @property
    def event_name(self) -> str: ...
    @property
    def timestamp(self) -> datetime: ...
    @property
    def properties(self) -> dict[str, Any]: ...
    @property
    def context(self) -> dict[str, Any]: ...
    @property
    def dedup_keys(self) -> tuple[str, ...]: ...


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _at(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _number(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


@dataclass
class CustomerFacts:
    """What the trigger rules know of one customer, ordered by event time.

    Plain JSON-friendly state: stored as one JSON document per customer.
    """

    customer_key: str
    # product id → {"quantity", "price", "name", "added_at"}
    cart: dict[str, dict[str, Any]] = field(default_factory=dict)
    cart_id: str | None = None
    cart_activity_at: str | None = None
    currency: str | None = None
    # [{"at", "revenue", "order_id"}], by event time
    orders: list[dict[str, Any]] = field(default_factory=list)
    voided_at: str | None = None
    last_activity_at: str | None = None
    # The latest event was an import: a stage it brought (win-back) starts no live clock.
    last_activity_historical: bool = False
    timezone: str | None = None
    # The address, or its sealed form ({"$enc": ...}) as the gateway stored it.
    email: str | dict[str, str] | None = None
    birthday: str | None = None  # "MM-DD"
    birthday_known_at: str | None = None
    open_tickets: dict[str, str] = field(default_factory=dict)
    last_resolved_at: str | None = None
    last_resolved_ticket: str | None = None
    stage: str | None = None
    stage_at: str | None = None
    # RFM segment as last observed (streams computes it over all buyers), and the
    # event time of the latest order when the customer entered it.
    segment: str | None = None
    segment_since: str | None = None
    # latest event time per event name, for exit conditions
    last_by_name: dict[str, str] = field(default_factory=dict)
    recent_ids: list[str] = field(default_factory=list)
    # rule id → [{"anchor", "due", "outcome"}]: clocks that ended (fired, capped, …)
    settled: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As stored."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CustomerFacts:
        """From what :meth:`to_dict` returned."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    # --- derived ------------------------------------------------------------------

    @property
    def cart_value(self) -> float:
        """Sum of price x quantity of the cart's lines."""
        return round(sum(line["price"] * line["quantity"] for line in self.cart.values()), 2)

    @property
    def zone(self) -> ZoneInfo:
        """The customer's time zone; UTC when unknown or not a real zone."""
        return customer_zone(self.timezone)

    def order_times(self) -> list[datetime]:
        """Completed orders' event times, in order."""
        return sorted(_at(order["at"]) for order in self.orders)

    def last_order_at(self) -> datetime | None:
        """The latest completed order's event time."""
        times = self.order_times()
        return times[-1] if times else None

    def fired_dues(self, rule_id: str) -> list[datetime]:
        """Due times of this rule's triggers that fired."""
        return [
            _at(item["due"]) for item in self.settled.get(rule_id, []) if item["outcome"] == "fired"
        ]

    def is_settled(self, rule_id: str, anchor: datetime) -> bool:
        """True when the clock started at ``anchor`` already ended for this rule."""
        entries = self.settled.get(rule_id)
        if not entries:
            return False
        key = _iso(anchor)
        return any(item["anchor"] == key for item in entries)

    def settle(self, rule_id: str, anchor: datetime, due: datetime, outcome: str) -> None:
        """Remember that the clock started at ``anchor`` ended, and how."""
        entries = self.settled.setdefault(rule_id, [])
        entries.append({"anchor": _iso(anchor), "due": _iso(due), "outcome": outcome})
        del entries[:-_SETTLED_PER_RULE]

    # --- facts from events ---------------------------------------------------------

    def observe(self, touch: ObservedEvent) -> bool:
        """Fold one event in, by its event time; False when it was seen before."""
        keys = touch.dedup_keys  # the messageId within its source
        recent = self.recent_ids
        for key in keys:
            if key in recent:
                return False
        recent.append(keys[0])
        if len(recent) > _RECENT_IDS:
            del recent[:-_RECENT_IDS]
        at = touch.timestamp
        stamp = _iso(at)  # formatted once: most events move two marks below
        historical = is_historical(touch)
        name = normalized_name(touch.event_name)
        props = touch.properties
        if self.last_activity_at is None or _at(self.last_activity_at) < at:
            self.last_activity_at = stamp
            self.last_activity_historical = historical
        previous = self.last_by_name.get(name)
        if previous is None or _at(previous) < at:
            self.last_by_name[name] = stamp
        zone = touch.context.get("timezone") or props.get("timezone")
        if isinstance(zone, str) and zone:
            self.timezone = zone
        if touch.event_type is EventType.IDENTIFY:
            self._identify(props, at)
        if touch.event_type is EventType.CART:
            self._cart_event(name, props, at)
        elif touch.event_type is EventType.PURCHASE and name == ORDER:
            self._order(props, at, historical)
        elif touch.event_type is EventType.PURCHASE and name in ORDER_VOIDED:
            self._later("voided_at", at)
        elif name == TICKET_OPENED:
            opened = str(props.get("ticket_id") or touch.event_id)
            self.open_tickets.setdefault(opened, _iso(at))
        elif name == TICKET_RESOLVED:
            resolved = props.get("ticket_id")
            if resolved is not None:
                self.open_tickets.pop(str(resolved), None)
            else:
                self.open_tickets.clear()
            if self.last_resolved_at is None or _at(self.last_resolved_at) < at:
                self.last_resolved_at = _iso(at)
                self.last_resolved_ticket = str(resolved) if resolved is not None else None
        return True

    def observe_stage(self, stage: str, at: datetime) -> None:
        """A stage change from the journey worker."""
        if self.stage_at is None or _at(self.stage_at) <= at:
            self.stage = stage
            self.stage_at = _iso(at)

    def observe_segment(self, segment: str) -> bool:
        """The customer's RFM segment as observed now; True when it changed.

        Entering a segment is stamped with the event time of the latest order
        known (the purchase that earned the place), not with the time it was
        observed: event time decides, as for every other clock.
        """
        if segment == self.segment:
            return False
        latest = self.latest_order()
        self.segment = segment
        self.segment_since = latest["at"] if latest else None
        return True

    def latest_order(self) -> dict[str, Any] | None:
        """The completed order with the latest event time."""
        return max(self.orders, key=lambda order: _at(order["at"]), default=None)

    def _later(self, attribute: str, at: datetime) -> bool:
        current = getattr(self, attribute)
        if current is None or _at(current) < at:
            setattr(self, attribute, _iso(at))
            return True
        return False

    def _identify(self, traits: Mapping[str, Any], at: datetime) -> None:
        email = traits.get("email")
        if isinstance(email, str) and "@" in email:
            self.email = email
        elif isinstance(email, dict) and "$enc" in email:
            # Sealed at the gateway: kept sealed, opened only at delivery.
            self.email = email
        birthday = traits.get("birthday")
        if isinstance(birthday, str) and len(birthday) >= 5:
            month_day = birthday[-5:]
            try:
                date(2000, int(month_day[:2]), int(month_day[3:]))
            except ValueError:
                return
            self.birthday = month_day
            self.birthday_known_at = _iso(at)

    def _cart_event(self, name: str, props: Mapping[str, Any], at: datetime) -> None:
        last_order = self.last_order_at()
        if last_order is not None and at <= last_order:
            # Stamped before the latest order: that cart was bought; not a new cart.
            return
        if props.get("cart_id"):
            self.cart_id = str(props["cart_id"])
        if props.get("currency"):
            self.currency = str(props["currency"])
        products = props.get("products")
        if isinstance(products, list) and name not in CART_LINE_EVENTS:
            # A full snapshot of the cart (Cart Viewed with products[]): the newer one wins.
            if self.cart_activity_at is None or _at(self.cart_activity_at) <= at:
                self.cart = {}
                for item in products:
                    if isinstance(item, Mapping):
                        self._add_line(item, at)
                self.cart_activity_at = _iso(at)
            return
        if name in CART_ADD:
            self._add_line(props, at)
            self._later("cart_activity_at", at)
        elif name in CART_REMOVE:
            product = _product_id(props)
            line = self.cart.get(product)
            if line is not None:
                quantity = props.get("quantity")
                line["quantity"] -= int(_number(quantity, line["quantity"]))
                if line["quantity"] <= 0:
                    del self.cart[product]
            self._later("cart_activity_at", at)
        if not self.cart:
            self.cart_activity_at = None

    def _add_line(self, props: Mapping[str, Any], at: datetime) -> None:
        product = _product_id(props)
        quantity = max(1, int(_number(props.get("quantity"), 1)))
        line = self.cart.setdefault(
            product, {"quantity": 0, "price": 0.0, "name": None, "added_at": _iso(at)}
        )
        line["quantity"] += quantity
        line["price"] = _number(props.get("price"), line["price"])
        line["name"] = props.get("name") or line["name"]
        line["added_at"] = max(line["added_at"], _iso(at))

    def _order(self, props: Mapping[str, Any], at: datetime, historical: bool) -> None:
        order_id = props.get("order_id")
        revenue = props.get("revenue", props.get("total"))
        if revenue is None:
            revenue = sum(
                _number(p.get("price")) * _number(p.get("quantity"), 1)
                for p in props.get("products", [])
                if isinstance(p, Mapping)
            )
        seen = [o for o in self.orders if order_id is not None and o["order_id"] == order_id]
        if seen:
            # An order id seen again is never a second order (as in the journey), also
            # when its event id is older than the recent ids kept: a journal replay.
            # Its first occurrence by event time is the order: a copy stamped earlier
            # moves it there (what fired on the later copy stays fired).
            if _at(seen[0]["at"]) > at:
                seen[0] |= {"at": _iso(at), "revenue": _number(revenue)}
                self.orders.sort(key=lambda o: _at(o["at"]))
            return
        self.orders.append(
            {
                "at": _iso(at),
                "revenue": _number(revenue),
                "order_id": order_id,
                # An imported order never earns a welcome (see TriggerEngine.observe_segment).
                "historical": historical,
            }
        )
        # The order bought what was in the cart when it was placed; later adds stay.
        self.cart = {pid: line for pid, line in self.cart.items() if _at(line["added_at"]) > at}
        if not self.cart:
            self.cart_activity_at = None


def _product_id(props: Mapping[str, Any]) -> str:
    return str(props.get("product_id") or props.get("sku") or props.get("name") or "unknown")


# --- what is due ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timer:
    """A rule's running clock for one customer."""

    customer_key: str
    rule_id: str
    anchor: datetime
    due_at: datetime
    fire_at: datetime

    @property
    def timer_id(self) -> str:
        """Stable across restarts: the same clock always has the same id."""
        return trigger_id(self.customer_key, self.rule_id, self.anchor)


@dataclass(frozen=True, slots=True)
class TriggerFired:
    """A rule fired for a customer: what the outreach agent delivers."""

    trigger_id: str
    rule_id: str
    trigger: str
    customer_key: str
    anchor: datetime
    due_at: datetime
    fire_at: datetime
    fired_at: datetime
    channels: tuple[str, ...]
    data: dict[str, Any]
    email: str | dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The trigger as published on the triggers topic and POSTed to webhooks."""
        return {
            "trigger_id": self.trigger_id,
            "rule": self.rule_id,
            "trigger": self.trigger,
            "customer_id": self.customer_key,
            "started_at": _iso(self.anchor),
            "due_at": _iso(self.due_at),
            "fire_at": _iso(self.fire_at),
            "fired_at": _iso(self.fired_at),
            "channels": list(self.channels),
            "email": self.email,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a timer whose fire time has come."""

    outcome: str  # fired | cancelled | capped | expired | held
    fired: TriggerFired | None = None
    fire_at: datetime | None = None


def trigger_id(customer_key: str, rule_id: str, anchor: datetime) -> str:
    """One clock, one trigger id, whoever computes it and however often."""
    return str(uuid5(_TRIGGER_NAMESPACE, f"{customer_key}|{rule_id}|{_iso(anchor)}"))


class TriggerEngine:
    """The declared rules applied to customers' facts."""

    def __init__(self, rules: Sequence[TriggerRule], grace: timedelta) -> None:
        self.rules = [rule for rule in rules if rule.enabled]
        self.grace = grace

    # -- clocks -------------------------------------------------------------------

    def anchor(self, rule: TriggerRule, facts: CustomerFacts) -> datetime | None:
        """When this rule's clock started for the customer, or None when it is not running."""
        kind = rule.trigger
        cond = rule.conditions
        if kind == "abandoned_cart":
            if not facts.cart or facts.cart_activity_at is None:
                return None
            if facts.cart_value < _number(cond.get("min_cart_value"), 0):
                return None
            return _at(facts.cart_activity_at)
        if kind == "post_purchase":
            return facts.last_order_at()
        if kind == "ticket_resolved":
            return _at(facts.last_resolved_at) if facts.last_resolved_at else None
        if kind == "ticket_open":
            opened = [_at(at) for at in facts.open_tickets.values()]
            return min(opened) if opened else None
        if kind == "repurchase":
            times = facts.order_times()
            if len(times) < max(2, int(_number(cond.get("min_orders"), 2))):
                return None
            return times[-1]
        if kind == "win_back":
            if facts.stage != cond.get("stage", "loyalty") or facts.last_activity_at is None:
                return None
            return _at(facts.last_activity_at)
        if kind == "birthday":
            return self._next_birthday(rule, facts)
        if kind == "high_value":
            if facts.segment != cond.get("segment", TOP_SEGMENT) or facts.segment_since is None:
                return None
            return _at(facts.segment_since)
        return None

    def delay(self, rule: TriggerRule, facts: CustomerFacts) -> timedelta:
        """The rule's delay; a repurchase reminder waits one purchase cycle (times a factor)."""
        if rule.trigger == "repurchase":
            times = facts.order_times()
            gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
            cycle = sum(gaps, timedelta()) / len(gaps) if gaps else timedelta()
            return cycle * _number(rule.conditions.get("cycle_factor"), 1.0) + rule.delay
        return rule.delay

    def _next_birthday(self, rule: TriggerRule, facts: CustomerFacts) -> datetime | None:
        if facts.birthday is None or facts.birthday_known_at is None:
            return None
        zone = facts.zone
        floor = _at(facts.birthday_known_at)
        # Whatever ended the last birthday clock (fired, capped, imported), the next is a year on.
        ended = [_at(item["due"]) for item in facts.settled.get(rule.id, [])]
        if ended:
            floor = max(floor, max(ended) + timedelta(days=1))
        send_at = clock_time(int(_number(rule.conditions.get("local_hour"), 9)))
        month, day = int(facts.birthday[:2]), int(facts.birthday[3:])
        year = floor.astimezone(zone).year
        for candidate_year in (year, year + 1, year + 2):
            try:
                local_day = date(candidate_year, month, day)
            except ValueError:  # 29 February in a common year: the 28th
                local_day = date(candidate_year, month, day - 1)
            moment = datetime.combine(local_day, send_at, tzinfo=zone).astimezone(UTC)
            if moment >= floor:
                return moment
        return None

    def exited(self, rule: TriggerRule, facts: CustomerFacts, anchor: datetime) -> bool:
        """True when an exit event was stamped after the clock started."""
        names = list(rule.exit_events)
        if rule.trigger == "post_purchase" and facts.voided_at and _at(facts.voided_at) > anchor:
            return True
        return any(
            name in facts.last_by_name and _at(facts.last_by_name[name]) > anchor for name in names
        )

    def fire_time(self, rule: TriggerRule, facts: CustomerFacts, due: datetime) -> datetime:
        """The due time, moved to the end of quiet hours in the customer's time zone."""
        if rule.quiet_hours is None:
            return due  # no need to look the zone up
        return after_quiet_hours(rule.quiet_hours, due, facts.zone)

    def plan(self, facts: CustomerFacts) -> list[Timer]:
        """The clocks that should be running for this customer now."""
        timers = []
        for rule in self.rules:
            anchor = self.anchor(rule, facts)
            if anchor is None or facts.is_settled(rule.id, anchor):
                continue
            if self.exited(rule, facts, anchor):
                continue
            due = anchor + self.delay(rule, facts)
            timers.append(
                Timer(facts.customer_key, rule.id, anchor, due, self.fire_time(rule, facts, due))
            )
        return timers

    def observe(self, facts: CustomerFacts, touch: ObservedEvent) -> bool:
        """Fold an event into the facts; False when it was seen before.

        A historical event (import, backfill) that starts or restarts a clock
        settles that clock at once: history updates facts, never fires.
        """
        historical = is_historical(touch)
        before = {(t.rule_id, t.anchor) for t in self.plan(facts)} if historical else set()
        if not facts.observe(touch):
            return False
        if historical:
            self._settle_started(facts, before)
        return True

    def observe_stage(self, facts: CustomerFacts, stage: str, at: datetime) -> None:
        """Fold a stage change from the journey worker into the facts.

        A stage reached on imported events (the latest event is historical)
        settles the clocks it starts, as the import itself would have.
        """
        if not facts.last_activity_historical:
            facts.observe_stage(stage, at)  # live: nothing to settle, no plan to compare
            return
        before = {(t.rule_id, t.anchor) for t in self.plan(facts)}
        facts.observe_stage(stage, at)
        self._settle_started(facts, before)

    def observe_segment(self, facts: CustomerFacts, segment: str) -> bool:
        """Fold the customer's RFM segment, observed now, into the facts; True when it changed.

        The segment is computed over every buyer, so it is observed at the edge
        and brought in here. An entry earned by an imported order (the latest
        one is historical) settles the clock it starts: history never fires.
        """
        before = {(t.rule_id, t.anchor) for t in self.plan(facts)}
        if not facts.observe_segment(segment):
            return False
        latest = facts.latest_order()
        if latest is not None and latest.get("historical"):
            self._settle_started(facts, before)
        return True

    def _settle_started(self, facts: CustomerFacts, before: set[tuple[str, datetime]]) -> None:
        """Settle, as history, every clock running now that was not running ``before``."""
        for timer in self.plan(facts):
            if (timer.rule_id, timer.anchor) not in before:
                facts.settle(timer.rule_id, timer.anchor, timer.due_at, "historical")

    # -- firing ---------------------------------------------------------------------

    def decide(self, facts: CustomerFacts, timer: Timer, now: datetime) -> Decision:
        """The timer's fire time has come (by the wall clock ``now``): fire it or not.

        Mutates ``facts`` to remember the outcome, so the same clock never fires twice.
        """
        rule = next((r for r in self.rules if r.id == timer.rule_id), None)
        current = next((t for t in self.plan(facts) if t.rule_id == timer.rule_id), None)
        if rule is None or current is None or current.anchor != timer.anchor:
            # Stopped (rule off, purchase, empty cart) or restarted by newer activity.
            return Decision("cancelled")
        if current.fire_at > now:
            return Decision("held", fire_at=current.fire_at)
        if now - current.fire_at > self.grace:
            facts.settle(rule.id, current.anchor, current.due_at, "expired")
            return Decision("expired")
        window = rule.frequency_cap
        if window > timedelta(0) and any(
            abs(current.due_at - due) < window for due in facts.fired_dues(rule.id)
        ):
            facts.settle(rule.id, current.anchor, current.due_at, "capped")
            return Decision("capped")
        facts.settle(rule.id, current.anchor, current.due_at, "fired")
        return Decision(
            "fired",
            fired=TriggerFired(
                trigger_id=current.timer_id,
                rule_id=rule.id,
                trigger=rule.trigger,
                customer_key=facts.customer_key,
                anchor=current.anchor,
                due_at=current.due_at,
                fire_at=current.fire_at,
                fired_at=now,
                channels=rule.channels,
                data=self._data(rule, facts, current),
                email=facts.email,
            ),
        )

    def _data(self, rule: TriggerRule, facts: CustomerFacts, timer: Timer) -> dict[str, Any]:
        if rule.trigger == "abandoned_cart":
            return {
                "cart_id": facts.cart_id,
                "currency": facts.currency,
                "value": facts.cart_value,
                "items": [
                    {
                        "product_id": pid,
                        "name": line["name"],
                        "quantity": line["quantity"],
                        "price": line["price"],
                    }
                    for pid, line in sorted(facts.cart.items())
                ],
            }
        if rule.trigger in ("post_purchase", "repurchase", "high_value"):
            data: dict[str, Any] = {
                "orders": len(facts.orders),
                "lifetime_revenue": round(sum(o["revenue"] for o in facts.orders), 2),
                "last_order_at": facts.orders and max(o["at"] for o in facts.orders),
            }
            if rule.trigger == "high_value":
                data["segment"] = facts.segment
            return data
        if rule.trigger == "ticket_resolved":
            return {"ticket_id": facts.last_resolved_ticket}
        if rule.trigger == "ticket_open":
            return {"open_tickets": sorted(facts.open_tickets)}
        if rule.trigger == "win_back":
            return {"stage": facts.stage, "last_activity_at": facts.last_activity_at}
        return {"birthday": facts.birthday, "timezone": facts.timezone}


def customer_zone(name: str | None) -> ZoneInfo:
    """The customer's time zone by name; UTC when unknown or not a real zone."""
    try:
        return ZoneInfo(name) if name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def after_quiet_hours(quiet: QuietHours | None, due: datetime, zone: ZoneInfo) -> datetime:
    """``due``, or the end of the quiet hours (in ``zone``) it falls in."""
    if quiet is None:
        return due
    local = due.astimezone(zone)
    if not quiet.contains(local.time()):
        return due
    end = datetime.combine(local.date(), quiet.end, tzinfo=zone)
    if end <= local:
        end = datetime.combine(local.date() + timedelta(days=1), quiet.end, tzinfo=zone)
    return end.astimezone(UTC)


def is_historical(touch: ObservedEvent) -> bool:
    """Imports and backfills say so in ``context.historical``."""
    return touch.context.get("historical") is True
