"""Segment HTTP Tracking API calls and their mapping to :class:`TrackedEvent`.

The models accept what Segment-style SDKs send (camelCase fields, ISO-8601
times) and reject the rest with errors that name the field and the rule.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from events.ecommerce import MAX_ID_LENGTH, NO_CONTROL_PATTERN, check_no_control, check_properties
from events.envelope import TrackedEvent
from events.types import EventType, event_type_for

# Events claiming to come from further ahead than this are clamped to
# receivedAt + MAX_FUTURE_SKEW: a device clock that far off is wrong, and a far
# future timestamp would otherwise sit at the end of every funnel.
MAX_FUTURE_SKEW = timedelta(hours=1)
# Times before this are a broken clock too (and outside the event log's range):
# they are replaced by the arrival time and flagged like a clamped future.
EARLIEST_EVENT_TIME = datetime(1970, 1, 1, tzinfo=UTC)

# Ids and names: bounded, and no control characters (NUL, ESC…): see events.ecommerce.
Identifier = Annotated[
    str,
    Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=None),
    AfterValidator(check_no_control),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_LENGTH,
            "pattern": NO_CONTROL_PATTERN,
        }
    ),
]
EventName = Annotated[
    str,
    Field(min_length=1, max_length=200),
    AfterValidator(check_no_control),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": 200, "pattern": NO_CONTROL_PATTERN}
    ),
]
PageName = Annotated[
    str,
    Field(max_length=200),
    AfterValidator(check_no_control),
    WithJsonSchema({"type": "string", "maxLength": 200, "pattern": NO_CONTROL_PATTERN}),
]


class SegmentCall(BaseModel):
    """Fields common to every Segment call."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    # Each call narrows this to its own literal ("track", "page", …).
    type: str = ""
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
    event: EventName
    properties: dict[str, Any] = Field(default_factory=dict)


class PageCall(SegmentCall):
    """``/v1/page``: the customer viewed a web page (counts as browsing)."""

    type: Literal["page"] = "page"
    name: PageName | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


class ScreenCall(SegmentCall):
    """``/v1/screen``: the customer viewed an app screen (counts as browsing)."""

    type: Literal["screen"] = "screen"
    name: PageName | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


class IdentifyCall(SegmentCall):
    """``/v1/identify``: who the customer is, with traits."""

    type: Literal["identify"] = "identify"
    traits: dict[str, Any] = Field(default_factory=dict)


class GroupCall(SegmentCall):
    """``/v1/group``: the customer belongs to a group (a company, a household)."""

    type: Literal["group"] = "group"
    groupId: Identifier
    traits: dict[str, Any] = Field(default_factory=dict)


class AliasCall(SegmentCall):
    """``/v1/alias``: ``previousId`` (an earlier id) and ``userId`` are the same customer."""

    type: Literal["alias"] = "alias"
    previousId: Identifier


class BatchRequest(BaseModel):
    """``/v1/batch``: calls, each with its ``type``; ``sentAt`` stands in for items lacking one."""

    model_config = ConfigDict(extra="allow")

    batch: list[dict[str, Any]]
    sentAt: datetime | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    writeKey: str | None = None


# Call type → model, for the endpoints and the items of a batch.
CALL_MODELS: dict[str, type[SegmentCall]] = {
    "track": TrackCall,
    "page": PageCall,
    "screen": ScreenCall,
    "identify": IdentifyCall,
    "group": GroupCall,
    "alias": AliasCall,
}


class RejectedCall(ValueError):
    """A call that failed validation; ``problems`` name each field and rule."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['message']}" for p in problems))
        self.problems = problems


def validate_call(model: type[SegmentCall], payload: Any) -> SegmentCall:
    """``payload`` as a call of ``model``, spec properties typed; raises :class:`RejectedCall`.

    Unknown event names and unknown properties are kept; only spec properties of
    the wrong type (``properties.price``) are rejected.
    """
    return _validated(model, payload)[0]


def accept_call(
    model: type[SegmentCall], payload: Any, received_at: datetime, source: str = ""
) -> TrackedEvent:
    """``payload`` validated as :func:`validate_call` does, as its envelope.

    The gateway's hot path: the call's content and canonical type are worked
    out once for both the property check and the envelope.
    """
    call, content = _validated(model, payload)
    return _envelope(call, content, received_at, source)


# A call's event name, properties, where they sit in it, and its canonical type.
_Content = tuple[str, dict[str, Any], str, EventType]


def _validated(model: type[SegmentCall], payload: Any) -> tuple[SegmentCall, _Content]:
    try:
        call = model.model_validate(payload)
    except ValidationError as error:
        raise RejectedCall(describe_errors(error)) from None
    name, properties, field = _content(call)
    event_type = event_type_for(call.type, name)
    problems = check_properties(event_type, name, properties, field)
    if problems:
        raise RejectedCall(problems)
    return call, (name, properties, field, event_type)


def event_time(call: SegmentCall, received_at: datetime) -> datetime:
    """When the event happened, corrected for the device's clock skew.

    Segment's rule: ``timestamp = receivedAt - (sentAt - originalTimestamp)``
    when the SDK sent both; else the explicit ``timestamp``; else arrival.
    Times further ahead than :data:`MAX_FUTURE_SKEW` are clamped.
    """
    return _event_time(call, received_at)[0]


def _event_time(call: SegmentCall, received_at: datetime) -> tuple[datetime, bool]:
    """The event time and whether it had to be clamped."""
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
    latest = received_at + MAX_FUTURE_SKEW
    if happened > latest:
        return latest, True
    if happened < EARLIEST_EVENT_TIME:
        return received_at, True
    return happened, False


def _content(call: SegmentCall) -> tuple[str, dict[str, Any], str]:
    """The event name, the properties and where they sit in the call."""
    if isinstance(call, TrackCall):
        return call.event, call.properties, "properties"
    if isinstance(call, PageCall):
        return call.name or "Page Viewed", call.properties, "properties"
    if isinstance(call, ScreenCall):
        return call.name or "Screen Viewed", call.properties, "properties"
    if isinstance(call, IdentifyCall):
        return "Identify", call.traits, "traits"
    if isinstance(call, GroupCall):
        return "Group", {**call.traits, "group_id": call.groupId}, "traits"
    if isinstance(call, AliasCall):
        return "Alias", {"previous_id": call.previousId}, "previousId"
    raise TypeError(f"unsupported call {type(call).__name__}")


def to_tracked_event(call: SegmentCall, received_at: datetime, source: str = "") -> TrackedEvent:
    """The canonical envelope for a validated call that arrived with write key ``source``."""
    name, properties, field = _content(call)
    content = (name, properties, field, event_type_for(call.type, name))
    return _envelope(call, content, received_at, source)


def _envelope(
    call: SegmentCall, content: _Content, received_at: datetime, source: str
) -> TrackedEvent:
    name, properties, _, event_type = content
    happened, clamped = _event_time(call, received_at)
    return TrackedEvent(
        event_id=call.messageId or str(uuid.uuid4()),
        customer_key=call.customer_key,
        call_type=call.type,
        event_type=event_type,
        event_name=name,
        timestamp=happened,
        received_at=received_at,
        user_id=call.userId,
        anonymous_id=call.anonymousId,
        properties=properties,
        context=call.context,
        source=source,
        original_timestamp=_utc(call.originalTimestamp) if call.originalTimestamp else None,
        sent_at=_utc(call.sentAt) if call.sentAt else None,
        timestamp_clamped=clamped,
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
