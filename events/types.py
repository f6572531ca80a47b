"""Canonical event types and the mapping from Segment's spec names.

Segment's E-commerce spec v2 names the events storefront SDKs already send;
each maps to one canonical type. Unknown names are kept as ``custom``, never
rejected for their name.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    """What kind of touchpoint an event is, independent of its exact name."""

    BROWSE = "browse"
    CART = "cart"
    CHECKOUT = "checkout"
    PURCHASE = "purchase"
    SUPPORT = "support"
    IDENTIFY = "identify"
    CUSTOM = "custom"


# Segment E-commerce spec v2 (and the documented support events) → canonical type.
_SPEC_EVENTS: dict[str, EventType] = {
    "products searched": EventType.BROWSE,
    "product list viewed": EventType.BROWSE,
    "product list filtered": EventType.BROWSE,
    "promotion viewed": EventType.BROWSE,
    "promotion clicked": EventType.BROWSE,
    "product clicked": EventType.BROWSE,
    "product viewed": EventType.BROWSE,
    "product shared": EventType.BROWSE,
    "product reviewed": EventType.BROWSE,
    "product added to wishlist": EventType.BROWSE,
    "product removed from wishlist": EventType.BROWSE,
    "wishlist product added to cart": EventType.CART,
    "product added": EventType.CART,
    "product removed": EventType.CART,
    "cart viewed": EventType.CART,
    "cart shared": EventType.CART,
    "coupon entered": EventType.CHECKOUT,
    "coupon applied": EventType.CHECKOUT,
    "coupon denied": EventType.CHECKOUT,
    "coupon removed": EventType.CHECKOUT,
    "checkout started": EventType.CHECKOUT,
    "checkout step viewed": EventType.CHECKOUT,
    "checkout step completed": EventType.CHECKOUT,
    "payment info entered": EventType.CHECKOUT,
    "order completed": EventType.PURCHASE,
    "order updated": EventType.PURCHASE,
    "order refunded": EventType.PURCHASE,
    "order cancelled": EventType.PURCHASE,
    "ticket created": EventType.SUPPORT,
    "ticket updated": EventType.SUPPORT,
    "ticket resolved": EventType.SUPPORT,
    "feedback submitted": EventType.SUPPORT,
}


def normalized_name(event_name: str) -> str:
    """The form event names are compared in: case and surrounding space do not matter."""
    return event_name.strip().lower()


def event_type_for(call_type: str, event_name: str) -> EventType:
    """Canonical type of a Segment call: page and screen calls are browsing."""
    if call_type in ("page", "screen"):
        return EventType.BROWSE
    if call_type in ("identify", "alias", "group"):
        return EventType.IDENTIFY
    return _SPEC_EVENTS.get(normalized_name(event_name), EventType.CUSTOM)
