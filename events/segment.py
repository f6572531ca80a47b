"""Segment HTTP Tracking API calls and their mapping to :class:`TrackedEvent`.

The models accept what Segment-style SDKs send (camelCase fields, ISO-8601
times) and reject the rest with errors that name the field and the rule.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from events.envelope import TrackedEvent
from events.types import event_type_for

# Events claiming to come from further ahead than this are clamped to
# receivedAt + MAX_FUTURE_SKEW: a device clock that far off is wrong, and a far
# future timestamp would otherwise sit at the end of every funnel.
MAX_FUTURE_SKEW = timedelta(hours=1)

Identifier = Annotated[str, Field(min_length=1, max_length=255)]


class SegmentCall(BaseModel):
    """Fields common to every Segment call."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    anonymousId: Identifier | None = None
    # Declared after anonymousId so its validator sees it; validated even when absent.
    userId: Identifier | None = Field(default=None, validate_default=True)
    messageId: Identifier | None = None
    timestamp: datetime | None = None
    originalTimestamp: datetime | None = None
    sentAt: datetime | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    integrations: dict[str, Any] = Field(default_factory=dict)
    writeKey: str | None = None

    @field_validator("userId")
    @classmethod
    def _needs_a_customer(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("anonymousId") is None:
            raise ValueError("userId or anonymousId is required")
        return value

    @property
    def customer_key(self) -> str:
        """The key the customer's events are partitioned and journeyed by."""
        return self.userId if self.userId is not None else f"anon:{self.anonymousId}"


class TrackCall(SegmentCall):
    """``/v1/track``: the customer did something."""

    type: Literal["track"] = "track"
    event: Annotated[str, Field(min_length=1, max_length=200)]
    properties: dict[str, Any] = Field(default_factory=dict)


class PageCall(SegmentCall):
    """``/v1/page``: the customer viewed a web page (counts as browsing)."""

    type: Literal["page"] = "page"
    name: Annotated[str, Field(max_length=200)] | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


class IdentifyCall(SegmentCall):
    """``/v1/identify``: who the customer is, with traits."""

    type: Literal["identify"] = "identify"
    traits: dict[str, Any] = Field(default_factory=dict)


def event_time(call: SegmentCall, received_at: datetime) -> datetime:
    """When the event happened, corrected for the device's clock skew.

    Segment's rule: ``timestamp = receivedAt - (sentAt - originalTimestamp)``
    when the SDK sent both; else the explicit ``timestamp``; else arrival.
    """
    original = call.originalTimestamp
    if original is not None and call.sentAt is not None:
        try:
            happened = received_at - (_utc(call.sentAt) - _utc(original))
        except OverflowError:
            # A skew of millennia: the device clock says nothing; arrival is the best guess.
            happened = received_at
    elif call.timestamp is not None:
        happened = _utc(call.timestamp)
    elif original is not None:
        happened = _utc(original)
    else:
        happened = received_at
    return min(happened, received_at + MAX_FUTURE_SKEW)


def to_tracked_event(call: SegmentCall, received_at: datetime) -> TrackedEvent:
    """The canonical envelope for a validated call."""
    call_type: str
    if isinstance(call, TrackCall):
        call_type, name, properties = call.type, call.event, call.properties
    elif isinstance(call, PageCall):
        call_type, name, properties = call.type, call.name or "Page Viewed", call.properties
    elif isinstance(call, IdentifyCall):
        call_type, name, properties = call.type, "Identify", call.traits
    else:  # pragma: no cover - every call model is listed above
        raise TypeError(f"unsupported call {type(call).__name__}")
    return TrackedEvent(
        event_id=call.messageId or str(uuid.uuid4()),
        customer_key=call.customer_key,
        call_type=call_type,
        event_type=event_type_for(call_type, name),
        event_name=name,
        timestamp=event_time(call, received_at),
        received_at=received_at,
        user_id=call.userId,
        anonymous_id=call.anonymousId,
        properties=properties,
        context=call.context,
    )


def describe_errors(error: ValidationError) -> list[dict[str, str]]:
    """Each validation problem as ``{"field", "rule", "message"}`` for a 400 body."""
    problems = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"]) or "body"
        # pydantic prefixes messages of custom validators with "Value error, ".
        message = item["msg"].removeprefix("Value error, ")
        problems.append({"field": location, "rule": item["type"], "message": message})
    return problems


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
