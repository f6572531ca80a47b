"""What a tracked event means to a journey: a :class:`Touch`, pure data.

A raw :class:`~events.TrackedEvent` carries whatever the storefront sent; a
touch keeps what the journey rules and the profile need (the action, order id
and revenue, category, channel, rating), in plain JSON-friendly values, so the
same touch can be stored in a domain event, forwarded to another journey when
identities merge, and replayed under other rules.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from enum import StrEnum
from operator import attrgetter
from typing import Any

from events import EventType, TrackedEvent, normalized_name
from events.ecommerce import MAX_MONEY
from events.envelope import scoped_dedup_keys


class Action(StrEnum):
    """What the customer did, as far as the journey is concerned."""

    PRODUCT_VIEW = "product_view"
    SEARCH = "search"
    BROWSE = "browse"
    CART_ADD = "cart_add"
    CART_REMOVE = "cart_remove"
    CART_OTHER = "cart_other"
    CHECKOUT_START = "checkout_start"
    CHECKOUT_OTHER = "checkout_other"
    ORDER = "order"
    REFUND = "refund"
    ORDER_OTHER = "order_other"
    TICKET_OPEN = "ticket_open"
    TICKET_RESOLVE = "ticket_resolve"
    SUPPORT_OTHER = "support_other"
    FEEDBACK = "feedback"
    IDENTIFY = "identify"
    OTHER = "other"


_BY_NAME = {
    "product viewed": Action.PRODUCT_VIEW,
    "products searched": Action.SEARCH,
    "product added": Action.CART_ADD,
    "wishlist product added to cart": Action.CART_ADD,
    "product removed": Action.CART_REMOVE,
    "checkout started": Action.CHECKOUT_START,
    "order completed": Action.ORDER,
    "order refunded": Action.REFUND,
    "ticket created": Action.TICKET_OPEN,
    "ticket resolved": Action.TICKET_RESOLVE,
    "feedback submitted": Action.FEEDBACK,
}
# Within a canonical type, what an event of another name is.
_BY_TYPE = {
    EventType.BROWSE: Action.BROWSE,
    EventType.CART: Action.CART_OTHER,
    EventType.CHECKOUT: Action.CHECKOUT_OTHER,
    EventType.PURCHASE: Action.ORDER_OTHER,
    EventType.SUPPORT: Action.SUPPORT_OTHER,
    EventType.IDENTIFY: Action.IDENTIFY,
    EventType.CUSTOM: Action.OTHER,
}


@dataclass(frozen=True, slots=True)
class Touch:
    """One customer event, reduced to what the journey needs."""

    event_id: str
    at: datetime
    action: Action
    event_type: str
    event_name: str
    channel: str = "unknown"
    category: str = ""
    order_id: str = ""
    revenue: float = 0.0
    quantity: int = 1
    rating: float | None = None
    ticket_id: str = ""
    # The anonymous id an identify call links to the user (identify and alias).
    links_anonymous_id: str = ""
    # The anonymous journey this touch came from, when identities were merged.
    merged_from: str = ""
    # When the platform received it: the dedup window counts re-sends in arrival time.
    received_at: datetime | None = None
    # Within what event_id is unique (TrackedEvent.id_scope); '' for touches
    # recorded before ids were kept per source, and for the worker's own messages.
    id_scope: str = ""

    @property
    def dedup_keys(self) -> tuple[str, ...]:
        """The keys a re-send of this touch is recognised by; it is recorded under the first."""
        return scoped_dedup_keys(self.id_scope, self.event_id)

    @property
    def arrived(self) -> datetime:
        """Arrival time (event time for touches recorded before it was kept)."""
        return self.received_at or self.at

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the time as ISO-8601), for domain events and messages."""
        # Not dataclasses.asdict: its deep copies were a fifth of the recording time;
        # one attrgetter for all fields: half the time of a getattr per field.
        data = dict(zip(_FIELDS, _VALUES(self), strict=True))
        data["at"] = self.at.isoformat()
        data["received_at"] = self.received_at.isoformat() if self.received_at else None
        data["action"] = self.action.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Touch:
        """The touch :meth:`to_dict` wrote."""
        values = dict(data)
        values["at"] = datetime.fromisoformat(values["at"])
        received = values.get("received_at")
        values["received_at"] = datetime.fromisoformat(received) if received else None
        values["action"] = Action(values["action"])
        return cls(**values)

    def merged(self, anonymous_key: str) -> Touch:
        """This touch as absorbed from ``anonymous_key``'s journey."""
        return replace(self, merged_from=self.merged_from or anonymous_key)


_FIELDS = tuple(field.name for field in fields(Touch))
_VALUES = attrgetter(*_FIELDS)


def touch_from(event: TrackedEvent) -> Touch:
    """What ``event`` means to the journey (pure mapping; the Segment spec's property names)."""
    name = normalized_name(event.event_name)
    action = _BY_NAME.get(name, _BY_TYPE[event.event_type])
    # A page named "Order Completed" is a page view, not an order: the type must agree.
    if action not in _TYPE_ACTIONS and _TYPE_OF[action] is not event.event_type:
        action = _BY_TYPE[event.event_type]
    props = event.properties
    links = ""
    if event.call_type in ("identify", "alias") and event.user_id:
        # identify: the anonymousId it carries; alias: its previousId, which Segment
        # allows to be an anonymousId (merged) or an earlier userId (refused: two
        # identified customers are never merged; see JourneyApplication).
        links = event.anonymous_id or ""
        if event.call_type == "alias":
            links = _text(props.get("previous_id") or props.get("previousId")) or links
        if links == event.user_id:
            links = ""
    return Touch(
        event_id=event.event_id,
        at=event.timestamp,
        received_at=event.received_at,
        action=action,
        event_type=event.event_type.value,
        event_name=event.event_name,
        channel=_channel(event),
        category=_text(props.get("category")),
        order_id=_text(props.get("order_id") or props.get("orderId")),
        revenue=_revenue(props),
        quantity=max(1, _int(props.get("quantity"), 1)),
        rating=_number(props.get("rating")),
        ticket_id=_text(props.get("ticket_id") or props.get("ticketId")),
        links_anonymous_id=links,
        # Re-keyed after a merge (JourneyApplication): from the anonymous journey,
        # as the touches absorbed with the merge are.
        merged_from=_text(event.context.get("merged_from")),
        id_scope=event.id_scope,
    )


def _type_of(action: Action) -> EventType:
    if action in (Action.PRODUCT_VIEW, Action.SEARCH):
        return EventType.BROWSE
    if action in (Action.CART_ADD, Action.CART_REMOVE):
        return EventType.CART
    if action is Action.CHECKOUT_START:
        return EventType.CHECKOUT
    if action in (Action.ORDER, Action.REFUND):
        return EventType.PURCHASE
    return EventType.SUPPORT


# Tables of the two questions touch_from asks per event (the dict view and the
# function were a tenth of it).
_TYPE_ACTIONS = frozenset(_BY_TYPE.values())
_TYPE_OF = {action: _type_of(action) for action in Action}


def _channel(event: TrackedEvent) -> str:
    """Where the customer was: ``context.channel`` if sent, else guessed from the context."""
    context = event.context
    channel = context.get("channel")
    if isinstance(channel, str) and channel.strip():
        return channel.strip().lower()[:40]
    if "app" in context or "device" in context:
        return "app"
    if event.call_type == "page" or "page" in context or "userAgent" in context:
        return "web"
    return "unknown"


def _revenue(props: dict[str, Any]) -> float:
    # Bounded as ingest bounds it: an event accepted before the bounds (1e308)
    # must not sum the journey's revenue to inf, which its JSON state cannot hold.
    for key in ("revenue", "total", "value"):
        value = _number(props.get(key))
        if value is not None:
            return min(max(0.0, value), MAX_MONEY)
    return 0.0


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _int(value: object, default: int) -> int:
    number = _number(value)
    return int(number) if number is not None else default


def _text(value: object) -> str:
    return str(value)[:200] if isinstance(value, str | int) and not isinstance(value, bool) else ""
