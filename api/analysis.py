"""Analysis over the ClickHouse event log: funnels. Requires a read key."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, model_validator

from api.auth import require_read_key
from api.dependencies import Gateway
from events import EventType
from journeys.funnels import MAX_STEPS, MIN_STEPS, Funnel, FunnelStep

router = APIRouter(prefix="/v1", tags=["analysis"], dependencies=[Depends(require_read_key)])


class FunnelStepIn(BaseModel):
    """A step: an ``event_type`` (browse, cart, …) or an exact ``event`` name."""

    event_type: EventType | None = None
    event: Annotated[str, Field(min_length=1, max_length=200)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> FunnelStepIn:
        if (self.event_type is None) == (self.event is None):
            raise ValueError("give exactly one of event_type or event")
        return self


class FunnelRequest(BaseModel):
    """Ordered steps and the window in which a customer must complete them."""

    steps: Annotated[list[FunnelStepIn], Field(min_length=MIN_STEPS, max_length=MAX_STEPS)]
    window_seconds: Annotated[int, Field(gt=0, le=366 * 86400)] = 7 * 86400


class FunnelStepOut(BaseModel):
    """Customers who reached a step, and the conversion to it."""

    step: str
    customers: int
    conversion_from_previous: float | None
    conversion_from_first: float | None


class FunnelResult(BaseModel):
    """Per-step counts of a funnel."""

    window_seconds: int
    steps: list[FunnelStepOut]


@router.post("/funnels", response_model=FunnelResult)
async def funnel(query: FunnelRequest, request: Request) -> FunnelResult:
    """Customers reaching each step in order within the window, counted in ClickHouse."""
    gateway: Gateway = request.app.state.gateway
    definition = Funnel(
        steps=tuple(FunnelStep(event_type=s.event_type, event_name=s.event) for s in query.steps),
        window=timedelta(seconds=query.window_seconds),
    )
    counts = await asyncio.to_thread(gateway.event_log.funnel_counts, definition)
    steps = []
    for index, (step, count) in enumerate(zip(definition.steps, counts, strict=True)):
        previous = counts[index - 1] if index else None
        steps.append(
            FunnelStepOut(
                step=step.label,
                customers=count,
                conversion_from_previous=_ratio(count, previous) if index else None,
                conversion_from_first=_ratio(count, counts[0]) if index else None,
            )
        )
    return FunnelResult(window_seconds=query.window_seconds, steps=steps)


def _ratio(part: int, whole: int | None) -> float:
    return round(part / whole, 4) if whole else 0.0
