"""Erasure and export of one customer's data (GDPR): admins only, audited.

``DELETE /v1/customers/{id}`` destroys the customer's data key (every sealed
copy of their personal data, in every store and topic, stops opening), deletes
their rows and timers, and suppresses their ids; ``GET /v1/customers/{id}/export``
answers everything held about them, opened (a subject access request).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path

from api.auth import CurrentPrincipal, GatewayDep, require_admin_key
from api.dependencies import PrivacyControl
from api.errors import ApiProblem, error_responses

router = APIRouter(
    prefix="/v1",
    tags=["privacy"],
    dependencies=[Depends(require_admin_key)],
    responses=error_responses(400, 401, 403, 404, 503),
)

CustomerId = Annotated[str, Path(min_length=1, max_length=512, description="the customer's id")]


def _privacy(gateway: GatewayDep) -> PrivacyControl:
    if gateway.privacy is None:
        raise HTTPException(503, "erasure and export need the node's stores (not available here)")
    return gateway.privacy


Privacy = Annotated[PrivacyControl, Depends(_privacy)]


def _unknown(customer_id: str) -> ApiProblem:
    return ApiProblem(404, "customer_id", "exists", f"{customer_id!r} is unknown or already erased")


@router.delete("/customers/{customer_id}", summary="Erase a customer (GDPR right to erasure)")
async def erase(
    customer_id: CustomerId, privacy: Privacy, principal: CurrentPrincipal
) -> dict[str, Any]:
    """Destroy the customer's data key and those of every identity merged with them,
    delete their rows from ClickHouse and the outreach store (timers cancelled),
    and suppress their ids: later events for them are dead-lettered (rule
    ``suppressed``). The erasure is recorded (who, when, which ids)."""
    summary = await asyncio.to_thread(privacy.erase, customer_id, principal.actor)
    if summary is None:
        raise _unknown(customer_id)
    return summary


@router.get("/customers/{customer_id}/export", summary="Everything held about a customer")
async def export(customer_id: CustomerId, privacy: Privacy) -> dict[str, Any]:
    """Traits (opened), profile, stages, orders, events, timeline and outreach
    triggers and timers of the customer and the identities merged with them."""
    found = await asyncio.to_thread(privacy.export, customer_id)
    if found is None:
        raise _unknown(customer_id)
    return found
