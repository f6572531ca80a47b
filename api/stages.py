"""Stage distribution: how many customers are in each journey stage, now or as of a moment."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from api.auth import GatewayDep, require_read_key
from api.errors import error_responses
from api.times import ApiTime
from journeys.stages import StageRules

router = APIRouter(
    prefix="/v1",
    tags=["customers"],
    dependencies=[Depends(require_read_key)],
    responses=error_responses(400, 401, 403),
)


class StageDistribution(BaseModel):
    """Customers per stage (merged anonymous journeys are not counted: they are their owner)."""

    as_of: datetime
    total: int
    stages: dict[str, int]


@router.get("/stages", response_model=StageDistribution)
async def stages(
    gateway: GatewayDep,
    as_of: Annotated[ApiTime | None, Query(description="ISO-8601 time; default now")] = None,
) -> StageDistribution:
    """Customers per stage now, or ``as_of`` a past moment, with lapse decided at that moment."""
    moment = datetime.now(UTC) if as_of is None else as_of
    rules = gateway.journeys.rules if gateway.journeys is not None else StageRules()
    counts = await asyncio.to_thread(gateway.stages.distribution, moment, rules.loyalty_lapse_days)
    return StageDistribution(as_of=moment, total=sum(counts.values()), stages=counts)
