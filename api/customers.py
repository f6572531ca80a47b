"""Customer read side: a customer's stage and counters. Requires a read key."""

from __future__ import annotations

import asyncio
from datetime import datetime

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel

from api.auth import require_read_key
from api.dependencies import Gateway

router = APIRouter(prefix="/v1", tags=["customers"], dependencies=[Depends(require_read_key)])


class CustomerView(BaseModel):
    """A customer's current stage and counters."""

    customer_id: str
    stage: str
    stage_since: datetime
    event_count: int
    orders: int
    first_seen: datetime
    last_seen: datetime


@router.get("/customers/{customer_id}", response_model=CustomerView)
async def customer(customer_id: str, request: Request) -> CustomerView:
    """The customer's current journey stage and how many events they sent."""
    gateway: Gateway = request.app.state.gateway
    found = await asyncio.to_thread(gateway.stages.get, customer_id)
    if found is None:
        raise HTTPException(404, f"no customer {customer_id!r} has been seen")
    return CustomerView(
        customer_id=found.customer_key,
        stage=found.stage,
        stage_since=found.stage_since,
        event_count=found.event_count,
        orders=found.orders,
        first_seen=found.first_seen,
        last_seen=found.last_seen,
    )
