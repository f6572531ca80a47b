"""Typed spec properties of each canonical event type (Segment E-commerce spec v2, support).

Only the property names the spec defines are typed; every other property is
kept as a custom property, never rejected. A spec property of the wrong type
(``"price": "cheap"``) is rejected and named (``properties.price``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
)

from events.types import EventType, normalized_name

# Strict: "20" is not a price, True is not a quantity. Ints are accepted as numbers.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Count = Annotated[int, Field(strict=True, ge=0)]
Text = Annotated[str, Field(strict=True, max_length=1000)]


def _id(value: object) -> str | int:
    # Storefronts use numeric and textual ids alike; both are ids. A plain validator
    # (not a union) so an error names the property itself, not a union member.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be a string or an integer")
    if isinstance(value, str) and not 1 <= len(value) <= 255:
        raise ValueError("must be 1 to 255 characters")
    return value


_ID_SCHEMA = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 255}, {"type": "integer"}]}
Id = Annotated[str | int, PlainValidator(_id), WithJsonSchema(_ID_SCHEMA)]
Currency = Annotated[str, Field(strict=True, pattern=r"^[A-Za-z]{3}$")]


class _SpecProperties(BaseModel):
    """Spec properties typed; any other property is kept untouched."""

    model_config = ConfigDict(extra="allow")


class ProductProperties(_SpecProperties):
    """A product, on its own (Product Viewed, Product Added, …) or in ``products[]``."""

    product_id: Id | None = None
    sku: Text | None = None
    category: Text | None = None
    name: Text | None = None
    brand: Text | None = None
    variant: Text | None = None
    price: Number | None = None
    quantity: Count | None = None
    coupon: Text | None = None
    position: Count | None = None
    url: Text | None = None
    image_url: Text | None = None


class BrowseProperties(ProductProperties):
    """Browsing: searches, product lists, product views and clicks, promotions."""

    query: Text | None = None
    list_id: Text | None = None
    products: list[ProductProperties] | None = None
    promotion_id: Text | None = None
    creative: Text | None = None
    wishlist_id: Text | None = None
    wishlist_name: Text | None = None
    review_id: Text | None = None
    rating: Number | None = None


class CartProperties(ProductProperties):
    """Cart events: Product Added / Removed, Cart Viewed."""

    cart_id: Text | None = None
    currency: Currency | None = None
    products: list[ProductProperties] | None = None


class _OrderAmounts(_SpecProperties):
    order_id: Id | None = None
    checkout_id: Text | None = None
    cart_id: Text | None = None
    affiliation: Text | None = None
    total: Number | None = None
    subtotal: Number | None = None
    revenue: Number | None = None
    value: Number | None = None
    shipping: Number | None = None
    tax: Number | None = None
    discount: Number | None = None
    coupon: Text | None = None
    currency: Currency | None = None
    products: list[ProductProperties] | None = None


class CheckoutProperties(_OrderAmounts):
    """Checkout: started, steps, payment info, coupons."""

    step: Count | None = None
    shipping_method: Text | None = None
    payment_method: Text | None = None
    coupon_id: Text | None = None
    coupon_name: Text | None = None
    reason: Text | None = None


class PurchaseProperties(_OrderAmounts):
    """Orders: completed, updated, refunded, cancelled."""


class SupportProperties(_SpecProperties):
    """Support: Ticket Created / Updated / Resolved, Feedback Submitted."""

    ticket_id: Id | None = None
    order_id: Id | None = None
    subject: Text | None = None
    status: Text | None = None
    priority: Text | None = None
    channel: Text | None = None
    rating: Annotated[int, Field(strict=True, ge=1, le=5)] | None = None
    comment: Annotated[str, Field(strict=True, max_length=10_000)] | None = None


class FeedbackSubmittedProperties(SupportProperties):
    """``Feedback Submitted``: a rating from 1 (bad) to 5 (excellent) is required."""

    rating: Annotated[int, Field(strict=True, ge=1, le=5)]


class IdentifyTraits(_SpecProperties):
    """Traits of ``identify`` (Segment's reserved traits that we type)."""

    email: Text | None = None
    name: Text | None = None
    first_name: Text | None = None
    last_name: Text | None = None
    phone: Text | None = None
    birthday: Text | None = None
    created_at: Text | None = None


class CustomProperties(_SpecProperties):
    """Custom events: any properties, none typed."""


# One model per canonical type: what schemas/v1/<type>.json describes.
PROPERTIES_BY_TYPE: dict[EventType, type[_SpecProperties]] = {
    EventType.BROWSE: BrowseProperties,
    EventType.CART: CartProperties,
    EventType.CHECKOUT: CheckoutProperties,
    EventType.PURCHASE: PurchaseProperties,
    EventType.SUPPORT: SupportProperties,
    EventType.IDENTIFY: IdentifyTraits,
    EventType.CUSTOM: CustomProperties,
}

# Events whose own rules go beyond their type's.
_PROPERTIES_BY_NAME: dict[str, type[_SpecProperties]] = {
    "feedback submitted": FeedbackSubmittedProperties,
}

# The support events we document, beside Segment's E-commerce spec.
SUPPORT_EVENTS = ("Ticket Created", "Ticket Updated", "Ticket Resolved", "Feedback Submitted")


# Models without a required property, with the names they type: they accept any
# dict none of whose keys they type.
_TYPED_IF_ALL_OPTIONAL = {
    model: frozenset(model.model_fields)
    for model in (*PROPERTIES_BY_TYPE.values(), *_PROPERTIES_BY_NAME.values())
    if not any(info.is_required() for info in model.model_fields.values())
}


def properties_model(event_type: EventType, event_name: str) -> type[_SpecProperties]:
    """The model that types an event's properties."""
    return _PROPERTIES_BY_NAME.get(normalized_name(event_name), PROPERTIES_BY_TYPE[event_type])


def check_properties(
    event_type: EventType, event_name: str, properties: dict[str, Any], field: str = "properties"
) -> list[dict[str, str]]:
    """Problems with the spec properties, as ``{"field", "rule", "message"}``; [] when fine.

    ``field`` prefixes each location, e.g. ``properties.products.0.price``.
    """
    model = properties_model(event_type, event_name)
    typed = _TYPED_IF_ALL_OPTIONAL.get(model)
    if typed is not None and properties.keys().isdisjoint(typed):
        # Only custom properties: nothing is typed, nothing can be wrong, and no
        # model instance is built (a page view's {"path": ...}, for one).
        return []
    try:
        model.model_validate(properties)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False):
            location = ".".join([field, *(str(part) for part in item["loc"])])
            message = item["msg"].removeprefix("Value error, ")
            problems.append({"field": location, "rule": item["type"], "message": message})
        return problems
    return []
