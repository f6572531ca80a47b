"""Analysis over the ClickHouse event log: funnels, retention, paths, stage flow,
trends and RFM. Requires a read key.

Bad questions get a 400 naming the field: request validation (pydantic) covers
shapes and ranges; :class:`QueryProblem` covers what only the data can tell
(an event name the log has never seen, an unknown breakdown property).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator
from pydantic_core import PydanticCustomError

from api.auth import GatewayDep, require_read_key
from api.dependencies import Gateway
from api.errors import ApiProblem, error_responses, problem
from api.times import ApiTime
from events import EventType
from journeys.funnels import (
    MAX_EXCLUSIONS,
    MAX_STEPS,
    MIN_STEPS,
    FilterOp,
    Funnel,
    FunnelStep,
    OrderMode,
    PropertyFilter,
)
from journeys.segment_definitions import Comparison, TraitCondition
from projections.analytics import QueryProblem
from projections.analytics.funnels import FunnelQueries, FunnelReport, StepStats
from projections.analytics.reports import (
    MAX_PATH_STEPS,
    MAX_PERIODS,
    Cohort,
    Period,
    Reports,
    RetentionMode,
    RfmScore,
)
from projections.segment_reads import SegmentReads

router = APIRouter(
    prefix="/v1",
    tags=["analysis"],
    dependencies=[Depends(require_read_key)],
    responses=error_responses(400, 401, 403),
)
T = TypeVar("T")
# A page offset past any log's customers, and within ClickHouse's OFFSET (UInt64): a
# larger one is a 400, not an engine error.
MAX_OFFSET = 10**9

# FastAPI reads bodies with json.loads, which takes NaN, Infinity and 1e999: a
# filter compares with finite numbers only.
Scalar = str | Annotated[float, Field(allow_inf_nan=False)]


class FilterIn(BaseModel):
    """``property op value``: eq, neq, gt, gte, lt, lte, or ``in`` with a list."""

    property: Annotated[str, Field(min_length=1, max_length=100)]
    op: FilterOp = FilterOp.EQ
    value: Scalar | list[Scalar]

    def definition(self) -> PropertyFilter:
        """As the domain's filter."""
        value = tuple(self.value) if isinstance(self.value, list) else self.value
        return PropertyFilter(self.property, self.op, value)

    @model_validator(mode="after")
    def _list_for_in(self) -> FilterIn:
        if (self.op is FilterOp.IN) != isinstance(self.value, list):
            raise ValueError("'in' takes a list of values, the other operators one value")
        return self


class FunnelStepIn(BaseModel):
    """A step: an ``event_type`` (browse, cart, …) or an exact ``event`` name, and filters."""

    event_type: EventType | None = None
    event: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    filters: Annotated[list[FilterIn], Field(max_length=10)] = []

    @model_validator(mode="after")
    def _exactly_one(self) -> FunnelStepIn:
        if (self.event_type is None) == (self.event is None):
            raise ValueError("give exactly one of event_type or event")
        return self

    def definition(self) -> FunnelStep:
        """As the domain's step."""
        return FunnelStep(
            event_type=self.event_type,
            event_name=self.event,
            filters=tuple(f.definition() for f in self.filters),
        )


class DateRange(BaseModel):
    """An optional ``[start, end)`` over event times (UTC when no offset is given)."""

    start: ApiTime | None = None
    end: ApiTime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.start and self.end and self.start >= self.end:
            raise PydanticCustomError("time_order", "end must come after start")
        return self


TraitOp = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "exists"]
MAX_TRAIT_FILTERS = 10


class TraitFilterIn(BaseModel):
    """A computed trait's value **now** (as the worker keeps it, windows slid to the
    request's instant) compared as a segment compares it: ``gt``/``gte``/``lt``/``lte``
    a number, ``eq``/``ne``/``contains`` a value, ``in`` a list, ``exists`` true/false.
    A customer without a value matches only ``exists = false``."""

    trait: Annotated[str, Field(min_length=1, max_length=64)]
    op: TraitOp = "eq"
    value: bool | Scalar | list[bool | Scalar]

    @model_validator(mode="after")
    def _operand(self) -> TraitFilterIn:
        value, op = self.value, self.op
        if op in ("gt", "gte", "lt", "lte") and (isinstance(value, bool | list | str)):
            raise PydanticCustomError("trait_filter", f"{op} compares with a number")
        if op == "in" and (not isinstance(value, list) or not value):
            raise PydanticCustomError("trait_filter", "in takes a non-empty list of values")
        if op == "exists" and not isinstance(value, bool):
            raise PydanticCustomError("trait_filter", "exists takes true or false")
        if op != "in" and isinstance(value, list):
            raise PydanticCustomError("trait_filter", f"{op} takes one value, not a list")
        return self

    def condition(self, index: int) -> TraitCondition:
        """As the segments' trait condition (the same comparison)."""
        comparison = Comparison(self.op, self.value)
        return TraitCondition(f"trait_filters[{index}]", self.trait, comparison)


TraitFilters = Annotated[
    list[TraitFilterIn],
    Field(
        max_length=MAX_TRAIT_FILTERS,
        description="only customers whose computed traits now meet all of these",
    ),
]


def segment_id_field(description: str) -> Any:
    """A segment id in a request (its existence is checked against the definitions)."""
    return Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$", description=description)


class FunnelRequest(DateRange):
    """Steps and the window in which a customer must complete them."""

    steps: Annotated[list[FunnelStepIn], Field(min_length=MIN_STEPS, max_length=MAX_STEPS)]
    window_seconds: Annotated[int, Field(gt=0, le=366 * 86400)] = 7 * 86400
    mode: OrderMode = OrderMode.ORDERED
    exclusions: Annotated[list[FunnelStepIn], Field(max_length=MAX_EXCLUSIONS)] = []
    breakdown: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    breakdown_segment: (
        Annotated[
            str,
            segment_id_field(
                "break down by membership of this segment (`in` / `not in`) at the "
                "time of the customer's first event matching step 1 in the range, as the "
                "segment's recorded changes say"
            ),
        ]
        | None
    ) = None
    trait_filters: TraitFilters = []

    @model_validator(mode="after")
    def _strict_without_exclusions(self) -> FunnelRequest:
        if self.exclusions and self.mode is OrderMode.STRICT:
            raise ValueError("exclusions apply to ordered and any_order funnels")
        if self.breakdown is not None and self.breakdown_segment is not None:
            raise ValueError("break down by a property or by a segment, not both")
        return self

    def definition(self) -> Funnel:
        """As the domain's funnel."""
        return Funnel(
            steps=tuple(s.definition() for s in self.steps),
            window=timedelta(seconds=self.window_seconds),
            mode=self.mode,
            exclusions=tuple(s.definition() for s in self.exclusions),
            breakdown=self.breakdown,
            start=self.start,
            end=self.end,
            breakdown_segment=self.breakdown_segment,
        )


class DroppedRequest(FunnelRequest):
    """A funnel, and the step (1-based, >= 2) whose drop-outs to list, a page at a time."""

    dropped_at: Annotated[int, Field(ge=2, le=MAX_STEPS)]
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET)] = 0


class FunnelStepOut(BaseModel):
    """Customers who reached a step, the conversion to it, and how long it took."""

    step: str
    customers: int
    conversion_from_previous: float | None
    conversion_from_first: float | None
    median_seconds: float | None = None
    p90_seconds: float | None = None


class FunnelResult(BaseModel):
    """Per-step counts of a funnel, overall and per breakdown value."""

    window_seconds: int
    mode: OrderMode = OrderMode.ORDERED
    steps: list[FunnelStepOut]
    breakdown: dict[str, list[FunnelStepOut]] | None = None
    source: str = "events"


class DroppedResult(BaseModel):
    """Customers who reached the step before ``dropped_at`` and not ``dropped_at``."""

    dropped_at: int
    total: int
    limit: int
    offset: int
    customers: list[str]


class RetentionRequest(DateRange):
    """Who comes back: cohorts by first (or every) start event, returns per period."""

    start_event: FunnelStepIn
    return_event: FunnelStepIn
    period: Period = Period.WEEK
    mode: RetentionMode = RetentionMode.FIRST_TIME
    periods: Annotated[int, Field(ge=1, le=MAX_PERIODS)] = 8
    breakdown_segment: (
        Annotated[
            str,
            segment_id_field(
                "break down by membership of this segment (`in` / `not in`) at the time of "
                "the customer's first start event of the cohort's period (in the range), as "
                "the segment's recorded changes say"
            ),
        ]
        | None
    ) = None
    trait_filters: TraitFilters = []


class CohortOut(BaseModel):
    """A cohort's first day, its size, and customers (and share) back per period."""

    cohort: date
    size: int
    retained: list[int]
    rates: list[float]


class RetentionResult(BaseModel):
    """The retention table."""

    period: Period
    mode: RetentionMode
    cohorts: list[CohortOut]
    breakdown: dict[str, list[CohortOut]] | None = Field(
        default=None, description="with breakdown_segment: the cohorts `in` and `not in` it"
    )


class PathsRequest(DateRange):
    """The most common paths after (or before) a customer's first anchor event."""

    event_type: EventType | None = None
    event: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    direction: Literal["next", "previous"] = "next"
    steps: Annotated[int, Field(ge=1, le=MAX_PATH_STEPS)] = 3
    limit: Annotated[int, Field(ge=1, le=100)] = 20

    @model_validator(mode="after")
    def _exactly_one(self) -> PathsRequest:
        if (self.event_type is None) == (self.event is None):
            raise ValueError("give exactly one of event_type or event")
        return self


class PathOut(BaseModel):
    """A path of event names and the customers who took it."""

    path: list[str]
    customers: int


Start = Annotated[ApiTime | None, Query(description="from this time on; default: all")]
End = Annotated[ApiTime | None, Query(description="before this time; default: all")]
AsOf = Annotated[ApiTime | None, Query(description="as of this moment; default now")]


def _span(start: datetime | None, end: datetime | None) -> DateRange:
    """A date range from query parameters; a 400 naming ``query.end`` when it is not after
    ``start`` (both are ApiTime: in range and UTC already)."""
    if start is not None and end is not None and start >= end:
        raise ApiProblem(400, "query.end", "time_order", "end must come after start")
    return DateRange.model_construct(start=start, end=end)


def _funnels(gateway: GatewayDep) -> FunnelQueries:
    log = gateway.event_log
    return FunnelQueries(log.client, log.database)


def _reports(gateway: GatewayDep) -> Reports:
    log = gateway.event_log
    return Reports(log.client, log.database)


Funnels = Annotated[FunnelQueries, Depends(_funnels)]
EventReports = Annotated[Reports, Depends(_reports)]


async def _answer(work: Callable[[], T]) -> T | JSONResponse:
    """Run blocking ClickHouse work off the loop; a :class:`QueryProblem` becomes a 400."""
    try:
        return await asyncio.to_thread(work)
    except QueryProblem as bad:
        error = {"field": bad.field, "rule": "query", "message": bad.message}
        return problem(400, str(bad), [error])


def _step(s: StepStats) -> FunnelStepOut:
    return FunnelStepOut(
        step=s.step,
        customers=s.customers,
        conversion_from_previous=s.conversion_from_previous,
        conversion_from_first=s.conversion_from_first,
        median_seconds=s.median_seconds,
        p90_seconds=s.p90_seconds,
    )


@router.post("/funnels", response_model=FunnelResult)
async def funnel(query: FunnelRequest, queries: Funnels, gateway: GatewayDep) -> Any:
    """Customers reaching each step within the window; conversion and time to convert."""
    definition = query.definition()
    unknown = await _unknown_segment(gateway, query.breakdown_segment)
    if unknown is not None:
        return unknown
    customers = await trait_filtered(gateway, query.trait_filters)
    if isinstance(customers, JSONResponse):
        return customers

    def work() -> FunnelReport:
        queries.validate(definition)
        return queries.run(definition, customers)

    report = await _answer(work)
    if isinstance(report, JSONResponse):
        return report
    return FunnelResult(
        window_seconds=query.window_seconds,
        mode=query.mode,
        steps=[_step(s) for s in report.steps],
        breakdown=(
            {value: [_step(s) for s in stats] for value, stats in report.breakdown.items()}
            if report.breakdown is not None
            else None
        ),
        source=report.source,
    )


def _segment_ids(reads: SegmentReads) -> set[str]:
    return set(reads.definitions.segments)


async def _unknown_segment(gateway: Gateway, segment: str | None) -> JSONResponse | None:
    """The 400 for a ``breakdown_segment`` no definition has (None: fine, or not asked)."""
    if segment is None:
        return None
    reads = gateway.segments
    if reads is not None and segment in (await asyncio.to_thread(_segment_ids, reads)):
        return None
    message = f"no segment {segment!r}"
    reason = {"field": "breakdown_segment", "rule": "exists", "message": message}
    return problem(400, f"breakdown_segment: {message}", [reason])


async def trait_filtered(
    gateway: Gateway, filters: list[TraitFilterIn]
) -> list[str] | JSONResponse | None:
    """The customers meeting every trait filter now (None: no filter), or the 400 naming
    ``trait_filters[i].trait`` for a trait no definition has."""
    if not filters:
        return None
    reads = gateway.segments
    known = set() if reads is None else set(reads.definitions.traits)
    for index, item in enumerate(filters):
        if item.trait not in known:
            field = f"trait_filters[{index}].trait"
            message = f"no computed trait {item.trait!r}"
            reason = {"field": field, "rule": "exists", "message": message}
            return problem(400, f"{field}: {message}", [reason])
    assert reads is not None
    conditions = [item.condition(i) for i, item in enumerate(filters)]
    return await asyncio.to_thread(reads.with_traits, conditions, datetime.now(UTC))


@router.post("/funnels/dropped", response_model=DroppedResult)
async def dropped(query: DroppedRequest, queries: Funnels, gateway: GatewayDep) -> Any:
    """The customers who dropped out at a step, sorted by customer key, a page at a time."""
    definition = query.definition()
    customers = await trait_filtered(gateway, query.trait_filters)
    if isinstance(customers, JSONResponse):
        return customers

    def work() -> tuple[int, list[str]]:
        queries.validate(definition)
        return queries.dropped(definition, query.dropped_at, query.limit, query.offset, customers)

    found = await _answer(work)
    if isinstance(found, JSONResponse):
        return found
    total, page = found
    return DroppedResult(
        dropped_at=query.dropped_at,
        total=total,
        limit=query.limit,
        offset=query.offset,
        customers=page,
    )


@router.get("/funnels/stages")
async def stage_funnel(reports: EventReports, start: Start = None, end: End = None) -> Any:
    """Customers reaching each journey stage, awareness → loyalty, from stage changes."""
    span = _span(start, end)
    counts = await _answer(lambda: reports.stage_funnel(span.start, span.end))
    if isinstance(counts, JSONResponse):
        return counts
    first = counts[0][1]
    stages = []
    for index, (stage, customers) in enumerate(counts):
        previous = counts[index - 1][1] if index else None
        stages.append(
            {
                "stage": stage,
                "customers": customers,
                "conversion_from_previous": _ratio(customers, previous) if index else None,
                "conversion_from_first": _ratio(customers, first) if index else None,
            }
        )
    return {"stages": stages}


@router.post("/retention", response_model=RetentionResult)
async def retention(query: RetentionRequest, reports: EventReports, gateway: GatewayDep) -> Any:
    """Cohorts and how many of each come back in each following period (and by segment)."""
    unknown = await _unknown_segment(gateway, query.breakdown_segment)
    if unknown is not None:
        return unknown
    customers = await trait_filtered(gateway, query.trait_filters)
    if isinstance(customers, JSONResponse):
        return customers
    start, back = query.start_event.definition(), query.return_event.definition()
    segment = query.breakdown_segment

    def work() -> tuple[list[Cohort], dict[str, list[Cohort]] | None]:
        args = (start, back, query.period, query.mode, query.periods)
        if segment is None:
            return reports.retention(*args, query.start, query.end, customers), None
        return reports.retention_by_segment(*args, segment, query.start, query.end, customers)

    answered = await _answer(work)
    if isinstance(answered, JSONResponse):
        return answered
    cohorts, groups = answered
    return RetentionResult(
        period=query.period,
        mode=query.mode,
        cohorts=_cohorts(cohorts),
        breakdown=None if groups is None else {g: _cohorts(c) for g, c in groups.items()},
    )


def _cohorts(cohorts: list[Cohort]) -> list[CohortOut]:
    return [
        CohortOut(
            cohort=c.start,
            size=c.size,
            retained=c.retained,
            rates=[_ratio(k, c.size) for k in c.retained],
        )
        for c in cohorts
    ]


@router.post("/paths", response_model=list[PathOut])
async def paths(query: PathsRequest, reports: EventReports) -> Any:
    """Top paths of the next (or previous) events after a customer's first anchor event."""
    anchor = FunnelStep(event_type=query.event_type, event_name=query.event)
    found = await _answer(
        lambda: reports.paths(
            anchor, query.direction, query.steps, query.limit, query.start, query.end
        )
    )
    if isinstance(found, JSONResponse):
        return found
    return [PathOut(path=p, customers=c) for p, c in found]


@router.get("/stage-flow")
async def stage_flow(reports: EventReports, start: Start = None, end: End = None) -> Any:
    """Transitions between journey stages in ``[start, end)``."""
    span = _span(start, end)
    rows = await _answer(lambda: reports.stage_flow(span.start, span.end))
    if isinstance(rows, JSONResponse):
        return rows
    return {"transitions": [{"from": p or None, "to": s, "customers": n} for p, s, n in rows]}


@router.get("/trends")
async def trends(reports: EventReports, start: Start = None, end: End = None) -> Any:
    """Events per UTC day and canonical type."""
    span = _span(start, end)
    rows = await _answer(lambda: reports.trends(span.start, span.end))
    if isinstance(rows, JSONResponse):
        return rows
    return {"days": [{"day": d.isoformat(), "event_type": k, "events": n} for d, k, n in rows]}


@router.get("/rfm")
async def rfm(
    reports: EventReports,
    as_of: AsOf = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Any:
    """RFM segments and purchase-frequency tiers: counts, and customers a page at a time."""
    moment = as_of or datetime.now(UTC)
    rows = await _answer(lambda: reports.rfm(moment))
    if isinstance(rows, JSONResponse):
        return rows
    segments: dict[str, int] = {}
    tiers: dict[str, int] = {}
    for row in rows:
        segments[row.segment] = segments.get(row.segment, 0) + 1
        tiers[row.tier] = tiers.get(row.tier, 0) + 1
    return {
        "as_of": moment.isoformat(),
        "customers": len(rows),
        "segments": segments,
        "tiers": tiers,
        "page": [_rfm_out(r) for r in rows[offset : offset + limit]],
    }


@router.get("/rfm/{customer_id}", responses=error_responses(404))
async def customer_rfm(customer_id: str, reports: EventReports, as_of: AsOf = None) -> Any:
    """One customer's RFM scores, segment and tier (404 if they never ordered)."""
    moment = as_of or datetime.now(UTC)
    row = await _answer(lambda: reports.customer_rfm(customer_id, moment))
    if isinstance(row, JSONResponse):
        return row
    if row is None:
        message = f"{customer_id!r} has no orders before {moment.isoformat()}"
        reason = {"field": "customer_id", "rule": "has_orders", "message": message}
        return problem(404, f"customer_id: {message}", [reason])
    return _rfm_out(row)


def _rfm_out(row: RfmScore) -> dict[str, Any]:
    return {name: getattr(row, name) for name in RfmScore.__slots__}


def _ratio(part: int, whole: int | None) -> float:
    return round(part / whole, 4) if whole else 0.0
