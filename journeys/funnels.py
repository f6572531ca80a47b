"""Funnel definitions: steps a customer takes within a conversion window.

Pure definitions; the queries live in ``projections/analytics``. What each
order mode means, exactly (the reference implementation and the ClickHouse
query both follow this text):

- ``ordered``: step k is reached when there are times t1 <= t2 <= … <= tk with
  an event matching step i at ti and tk - t1 <= window. Events at the same
  millisecond count as in order, and one event may serve consecutive steps
  (the semantics of ClickHouse's ``windowFunnel``).
- ``strict``: the matching events are consecutive in the customer's timeline
  (ordered by time, then event id): no other event of the customer comes
  between two steps.
- ``any_order``: events matching steps 1..k all fall within one window, in
  any order (one event may match several steps).

An exclusion step cancels a conversion when an event matching it lies
strictly between the first step's time and the reached step's time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from events import EventType

MIN_STEPS, MAX_STEPS = 2, 10
MAX_EXCLUSIONS = 4


class OrderMode(StrEnum):
    """How strictly the steps must follow each other."""

    ORDERED = "ordered"
    STRICT = "strict"
    ANY_ORDER = "any_order"


class FilterOp(StrEnum):
    """Comparison of a property filter."""

    EQ = "eq"
    NEQ = "neq"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    IN = "in"


@dataclass(frozen=True, slots=True)
class PropertyFilter:
    """``property op value``; ``in`` takes a tuple of values.

    A missing property never matches, except for ``neq`` of a string field
    (absent string fields read as the empty string).
    """

    property: str
    op: FilterOp
    value: str | float | tuple[str | float, ...]

    def __post_init__(self) -> None:
        if (self.op is FilterOp.IN) != isinstance(self.value, tuple):
            raise ValueError("'in' takes a list of values, the other operators one value")


@dataclass(frozen=True, slots=True)
class FunnelStep:
    """One step: an event of a canonical type, or an event with an exact name, filtered."""

    event_type: EventType | None = None
    event_name: str | None = None
    filters: tuple[PropertyFilter, ...] = ()

    def __post_init__(self) -> None:
        if (self.event_type is None) == (self.event_name is None):
            raise ValueError("a funnel step names exactly one of event_type or event_name")

    @property
    def label(self) -> str:
        """How the step is shown to a marketer."""
        return self.event_name or str(self.event_type)


@dataclass(frozen=True, slots=True)
class Funnel:
    """Steps, each within ``window`` of the first, counted over ``[start, end)``."""

    steps: tuple[FunnelStep, ...]
    window: timedelta
    mode: OrderMode = OrderMode.ORDERED
    exclusions: tuple[FunnelStep, ...] = ()
    breakdown: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    # Break down by membership of this segment at the time of the customer's first
    # event matching step 1 in the range (as a property breakdown reads that event).
    breakdown_segment: str | None = None

    def __post_init__(self) -> None:
        if self.breakdown is not None and self.breakdown_segment is not None:
            raise ValueError("break down by a property or by a segment, not both")
        if not MIN_STEPS <= len(self.steps) <= MAX_STEPS:
            raise ValueError(f"a funnel has {MIN_STEPS} to {MAX_STEPS} steps")
        if self.window <= timedelta(0):
            raise ValueError("the conversion window must be positive")
        if len(self.exclusions) > MAX_EXCLUSIONS:
            raise ValueError(f"at most {MAX_EXCLUSIONS} exclusion steps")
        if self.exclusions and self.mode is OrderMode.STRICT:
            raise ValueError(
                "exclusions apply to ordered and any_order funnels; a strict funnel "
                "already allows no other event between its steps"
            )
        if self.start and self.end and self.start >= self.end:
            raise ValueError("the date range must end after it starts")

    @property
    def window_ms(self) -> int:
        """The conversion window in milliseconds, the resolution of the event log."""
        return int(self.window / timedelta(milliseconds=1))
