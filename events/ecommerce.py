"""Typed spec properties of each canonical event type (Segment E-commerce spec v2, support).

Only the property names the spec defines are typed; every other property is
kept as a custom property, never rejected. A spec property of the wrong type
(``"price": "cheap"``) is rejected and named (``properties.price``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from events.types import EventType, normalized_name

# Value bounds. Every typed number is finite and within a range, so no single
# event can overflow a sum, a cents conversion or a score for everyone (one
# revenue of 1e307 once made every RFM answer fail). Money is at most 1e12 in
# the event's currency (a trillion: beyond any real order, far below where
# Float64 cents lose whole units). Prices, shipping, tax and discounts are
# amounts, so never negative; order totals (revenue, total, subtotal, value)
# may be: some shops send refunds and adjustments as negative amounts, and the
# journey counts a negative order amount as 0. Quantities are whole numbers up
# to a million, ratings 1 to 5.
MAX_MONEY = 1e12
MAX_COUNT = 1_000_000
# Strict: "20" is not a price, True is not a quantity. Ints are accepted as numbers.
Money = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=MAX_MONEY)]
SignedMoney = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_MONEY, le=MAX_MONEY)]
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_COUNT)]
Rating = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=1, le=5)]
Text = Annotated[str, Field(strict=True, max_length=1000)]

# C0 and C1 control characters (NUL, ESC, …): never part of an id or a name, and
# a NUL cuts strings short in many of the tools that read them later.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
MAX_ID_LENGTH = 255
# Numeric ids are 64-bit: what every store and client can hold.
_INT64 = 2**63


def check_no_control(value: str) -> str:
    """``value`` unchanged; raises ``control_characters`` when it holds one."""
    found = _CONTROL.search(value)
    if found is not None:
        code = f"U+{ord(found.group()):04X}"
        raise PydanticCustomError(
            "control_characters", f"must not contain control characters (found {code})"
        )
    return value


def _id(value: object) -> str | int:
    # Storefronts use numeric and textual ids alike; both are ids. A plain validator
    # (not a union) so an error names the property itself, not a union member.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be a string or an integer")
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise PydanticCustomError("int64", "a numeric id must fit in 64 bits")
        return value
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        raise ValueError(f"must be 1 to {MAX_ID_LENGTH} characters")
    return check_no_control(value)


_ID_TEXT_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_LENGTH,
    "pattern": NO_CONTROL_PATTERN,
}
_ID_SCHEMA = {
    "anyOf": [
        _ID_TEXT_SCHEMA,
        {"type": "integer", "minimum": -_INT64, "maximum": _INT64 - 1},
    ]
}
Id = Annotated[str | int, PlainValidator(_id), WithJsonSchema(_ID_SCHEMA)]
# A textual id (cart, checkout, list…): 1 to 255 characters, no control characters.
TextId = Annotated[
    str,
    Field(strict=True, min_length=1, max_length=MAX_ID_LENGTH),
    AfterValidator(check_no_control),
    WithJsonSchema(_ID_TEXT_SCHEMA),
]
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
    price: Money | None = None
    quantity: Count | None = None
    coupon: Text | None = None
    position: Count | None = None
    url: Text | None = None
    image_url: Text | None = None


class BrowseProperties(ProductProperties):
    """Browsing: searches, product lists, product views and clicks, promotions."""

    query: Text | None = None
    list_id: TextId | None = None
    products: list[ProductProperties] | None = None
    promotion_id: TextId | None = None
    creative: Text | None = None
    wishlist_id: TextId | None = None
    wishlist_name: Text | None = None
    review_id: TextId | None = None
    rating: Rating | None = None


class CartProperties(ProductProperties):
    """Cart events: Product Added / Removed, Cart Viewed."""

    cart_id: TextId | None = None
    currency: Currency | None = None
    products: list[ProductProperties] | None = None


class _OrderAmounts(_SpecProperties):
    order_id: Id | None = None
    checkout_id: TextId | None = None
    cart_id: TextId | None = None
    affiliation: Text | None = None
    total: SignedMoney | None = None
    subtotal: SignedMoney | None = None
    revenue: SignedMoney | None = None
    value: SignedMoney | None = None
    shipping: Money | None = None
    tax: Money | None = None
    discount: Money | None = None
    coupon: Text | None = None
    currency: Currency | None = None
    products: list[ProductProperties] | None = None


class CheckoutProperties(_OrderAmounts):
    """Checkout: started, steps, payment info, coupons."""

    step: Count | None = None
    shipping_method: Text | None = None
    payment_method: Text | None = None
    coupon_id: TextId | None = None
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
