"""Customer read side: stage, profile and journey timeline. Requires a read key.

Stages and profiles now come from the ClickHouse projections (the current stage
from the node's worker while its insert is under way); the timeline from
the event store, the journey's own domain events. An ``as_of`` answer is cut whole
at that moment: the journey's facts up to it, decided in event time (the event
store, when this process has it).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from api.auth import GatewayDep, require_read_key
from api.dependencies import Gateway
from api.errors import ApiProblem, error_responses
from api.times import ApiTime
from journeys.stages import Stage, StageRules
from projections.analytics.reports import Reports
from projections.profiles import profile_of, rfm

router = APIRouter(
    prefix="/v1",
    tags=["customers"],
    dependencies=[Depends(require_read_key)],
    responses=error_responses(400, 401, 403, 404),
)

AsOf = Annotated[ApiTime | None, Query(description="answer as of this moment; default now")]


class RfmScores(BaseModel):
    """Quintile scores (1-5) among all buyers, the named segment and the frequency tier."""

    r: int
    f: int
    m: int
    segment: str
    tier: str


class Profile(BaseModel):
    """What the customer is worth and likes: R/F/M raw values and, for buyers, their scores."""

    first_seen: datetime
    last_seen: datetime
    channels: list[str]
    orders: int
    revenue: float
    refunded: float
    average_order_value: float
    last_order_at: datetime | None
    recency_days: float | None
    frequency: int
    monetary: float
    ltv_estimate: float
    purchase_cycle_days: float | None
    next_purchase_expected_at: datetime | None
    interest_tags: list[str]
    average_rating: float | None
    open_tickets: int
    rfm: RfmScores | None = None
    # A stored figure was not finite or beyond its bound and is shown clamped
    # (a journey built from events accepted before the value bounds).
    clamped: bool = False


class CustomerSegments(BaseModel):
    """The customer's computed traits and segments (definitions file), at the answer's moment."""

    computed_traits: dict[str, Any] | None = Field(
        description="null before the customer's latest event folded into segments"
    )
    segments: list[str]
    backfilled: bool = Field(
        description="true once every segment's history was backfilled from the event log; "
        "false: some count only events since their definition took effect"
    )


class CustomerView(BaseModel):
    """A customer's stage (now, or as of a moment), counters and profile."""

    customer_id: str
    stage: str | None
    as_of: datetime
    # When the current stage was reached; null for an as_of answer (see the journey).
    stage_since: datetime | None
    event_count: int
    orders: int
    # Null for an as_of answer before the customer's first event.
    first_seen: datetime | None
    last_seen: datetime | None
    merged_into: str | None
    profile: Profile | None
    # The latest identify traits, personal fields opened (read and admin keys).
    traits: dict[str, Any] | None = None
    # Null where the process keeps no segments.
    segments: CustomerSegments | None = None


class StageStep(BaseModel):
    """A stage the person reached, and when."""

    stage: str
    at: datetime


class JourneyView(BaseModel):
    """A customer's journey: every domain event and stage change, in time order.

    ``stages`` is the person's stage sequence across merged devices: this
    journey's stage changes and those of the anonymous journeys merged into it,
    keeping each that took the person further.
    """

    customer_id: str
    stage: str | None
    as_of: datetime
    stages: list[StageStep]
    entries: list[dict[str, Any]]


def _moment(as_of: datetime | None) -> datetime:
    return datetime.now(UTC) if as_of is None else as_of  # ApiTime is UTC already


def _rules(gateway: Gateway) -> StageRules:
    return gateway.journeys.rules if gateway.journeys is not None else StageRules()


def _unknown(customer_id: str) -> ApiProblem:
    return ApiProblem(
        404, "customer_id", "exists", f"no events from customer {customer_id!r} were seen"
    )


def _check_not_erased(gateway: Gateway, customer_id: str) -> None:
    if gateway.privacy is not None and gateway.privacy.is_erased(customer_id):
        raise _unknown(customer_id)  # erased: as if never seen


async def _traits(gateway: Gateway, customer_id: str) -> dict[str, Any] | None:
    privacy = gateway.privacy
    if privacy is None:
        return None
    return await asyncio.to_thread(privacy.traits, [customer_id])


async def _segments(
    gateway: Gateway, customer_key: str, moment: datetime, now: bool
) -> CustomerSegments | None:
    if gateway.segments is None:
        return None
    reads = gateway.segments
    # Now: with the states the node's batch in hand has folded (as the stage rows).
    traits, segments = await asyncio.to_thread(reads.customer, customer_key, moment, now)
    backfilled = await asyncio.to_thread(reads.all_backfilled)
    return CustomerSegments(computed_traits=traits, segments=segments, backfilled=backfilled)


@router.get("/customers/{customer_id}", response_model=CustomerView)
async def customer(customer_id: str, gateway: GatewayDep, as_of: AsOf = None) -> CustomerView:
    """The customer's journey stage now (or ``as_of`` a moment), counters and profile."""
    moment = _moment(as_of)
    lapse_days = _rules(gateway).loyalty_lapse_days
    _check_not_erased(gateway, customer_id)
    # Now: the worker's decided row while ClickHouse's insert of it is under way (the
    # node); as of a moment: what ClickHouse holds.
    found = await asyncio.to_thread(gateway.stages.get, customer_id, as_of is None)
    if found is None:
        raise _unknown(customer_id)
    segments = await _segments(gateway, found.customer_key, moment, as_of is None)
    if as_of is not None and gateway.journeys is not None:
        view = await asyncio.to_thread(_customer_as_of, gateway, found.customer_key, moment)
        view.segments = segments
        return view
    if as_of is None:
        stage: str | None = found.stage_at(moment, lapse_days)
    else:
        stage = await asyncio.to_thread(
            gateway.stages.person_stage_as_of, found, moment, lapse_days
        )
    profile = None
    if gateway.profiles is not None:
        row = await asyncio.to_thread(gateway.profiles.get, customer_id)
        if row is not None:
            profile = _profile(row, moment)
            if profile.orders:
                # Quintiles need the whole population: ranked in ClickHouse among all buyers.
                log = gateway.event_log
                reports = Reports(log.client, log.database)
                score = await asyncio.to_thread(reports.customer_rfm, customer_id, moment)
                if score is not None:
                    profile.rfm = RfmScores(
                        r=score.r, f=score.f, m=score.m, segment=score.segment, tier=score.tier
                    )
    return CustomerView(
        customer_id=found.customer_key,
        stage=stage,
        as_of=moment,
        stage_since=found.stage_since if as_of is None else None,
        event_count=found.event_count,
        orders=found.orders,
        first_seen=found.first_seen,
        last_seen=found.last_seen,
        merged_into=found.merged_into or None,
        profile=profile,
        traits=await _traits(gateway, found.customer_key),
        segments=segments,
    )


def _customer_as_of(gateway: Gateway, customer_key: str, moment: datetime) -> CustomerView:
    """The whole view as of ``moment``, from the journey's facts up to it (the event store)."""
    app = gateway.journeys
    assert app is not None
    journey = app.journey(customer_key)
    past = app.journey_as_of(journey, moment) if journey is not None else None
    if past is None:
        return CustomerView(
            customer_id=customer_key,
            stage=None,
            as_of=moment,
            stage_since=None,
            event_count=0,
            orders=0,
            first_seen=None,
            last_seen=None,
            merged_into=None,
            profile=None,
        )
    merged = journey.merged_into if journey is not None else None
    # Merged: its facts are the person's from their own times (see /v1/stages).
    stage = Stage.MERGED if merged else past.stage_as_of(moment, app.rules)
    profile = _profile(profile_of(past), moment)
    if profile.orders:
        log = gateway.event_log
        score = Reports(log.client, log.database).customer_rfm(customer_key, moment)
        if score is not None:
            profile.rfm = RfmScores(
                r=score.r, f=score.f, m=score.m, segment=score.segment, tier=score.tier
            )
    return CustomerView(
        customer_id=customer_key,
        stage=stage.value if stage is not None else None,
        as_of=moment,
        stage_since=None,
        event_count=past.touchpoints,
        orders=past.orders,
        first_seen=past.first_seen,
        last_seen=past.last_seen,
        merged_into=merged or None,
        profile=profile,
    )


def _profile(row: dict[str, Any], moment: datetime) -> Profile:
    raw = rfm(row, moment)
    expected = None
    if row["last_order_at"] is not None and row["purchase_cycle_days"]:
        try:
            expected = row["last_order_at"] + timedelta(days=row["purchase_cycle_days"])
        except OverflowError:  # a cycle beyond year 9999 expects nothing
            expected = None
    return Profile(
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        channels=row["channels"],
        orders=row["orders"],
        revenue=row["revenue"],
        refunded=row["refunded"],
        average_order_value=row["aov"],
        last_order_at=row["last_order_at"],
        recency_days=raw["recency_days"],
        frequency=raw["frequency"],
        monetary=raw["monetary"],
        ltv_estimate=row["ltv_estimate"],
        purchase_cycle_days=row["purchase_cycle_days"],
        next_purchase_expected_at=expected,
        interest_tags=row["interest_tags"],
        average_rating=row["average_rating"],
        open_tickets=row["open_tickets"],
        clamped=row.get("clamped", False),
    )


@router.get(
    "/customers/{customer_id}/journey", response_model=JourneyView, responses=error_responses(503)
)
async def journey(customer_id: str, gateway: GatewayDep, as_of: AsOf = None) -> JourneyView:
    """The customer's timeline of domain events and stage changes (up to ``as_of`` if given)."""
    app = gateway.journeys
    if app is None:
        raise HTTPException(503, "the event store is not available to this API process")
    moment = _moment(as_of)
    _check_not_erased(gateway, customer_id)
    found = await asyncio.to_thread(app.journey, customer_id)
    if found is None:
        raise _unknown(customer_id)
    entries = await asyncio.to_thread(app.timeline, found, moment)
    stage = found.stage_as_of(moment, app.rules)
    steps = [
        StageStep(stage=step.value, at=at)
        for step, at in found.person_stage_history()
        if at <= moment
    ]
    return JourneyView(
        customer_id=customer_id,
        stage=stage.value if stage else None,
        as_of=moment,
        stages=steps,
        entries=entries,
    )
