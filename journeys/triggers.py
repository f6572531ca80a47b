"""A customer's facts, folded in by event time: what the flows' date anchors, templates
and the RFM scan read (journeys/flows/anchors.py, engine.py; streams/outreach/worker.py).

Pure. Facts are ordered by event time, whatever order they arrive in: a Product
Added stamped before an order belongs to that order's cart, and an order stamped
before a due time empties the cart even when it arrives late. Events flagged
``context.historical`` (imports, backfills) update facts and say so
(``is_historical``), so the flows take them as history.

The trigger rules that once ran on these facts became the lifecycle flows
(journeys/flows/migration.py); the ``settled`` clocks they left in a store are
what the switch to flows seeds as anchors entered (stack/flows_switch.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from events import EventType, normalized_name
from journeys.outreach_rules import QuietHours

# A bounded memory: enough to recognise re-sent events.
_RECENT_IDS = 500

CART_ADD = {"product added", "wishlist product added to cart"}
CART_REMOVE = {"product removed"}
CART_LINE_EVENTS = CART_ADD | CART_REMOVE
ORDER = "order completed"
ORDER_VOIDED = {"order refunded", "order cancelled"}
TICKET_OPENED = "ticket created"
TICKET_RESOLVED = "ticket resolved"


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
    """What the flows know of one customer from its events, ordered by event time.

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
    # rule id → [{"anchor", "due", "outcome"}]: the rules' clocks that ended (fired,
    # capped, …), as the rules engine left them; read only by the switch to flows.
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
                # An imported order never earns a welcome (flows.inputs.rfm_segment_inputs).
                "historical": historical,
            }
        )
        # The order bought what was in the cart when it was placed; later adds stay.
        self.cart = {pid: line for pid, line in self.cart.items() if _at(line["added_at"]) > at}
        if not self.cart:
            self.cart_activity_at = None


def _product_id(props: Mapping[str, Any]) -> str:
    return str(props.get("product_id") or props.get("sku") or props.get("name") or "unknown")


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
