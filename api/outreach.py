"""Outreach administration: webhook endpoints, recent triggers, timers, re-delivery (the
rules' old routes answer 410, naming the flows API).

Admin key only. The delivery itself happens in the worker (streams/outreach/);
this module only reads and changes what the worker acts on.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from api.auth import GatewayDep, require_admin_key
from api.dependencies import OutreachControl
from api.errors import error_responses, problem

router = APIRouter(
    prefix="/v1/outreach",
    tags=["outreach"],
    dependencies=[Depends(require_admin_key)],
    responses=error_responses(400, 401, 403, 404, 503),
)


def _not_found(field: str, value: str, what: str) -> JSONResponse:
    reason = {"field": field, "rule": "exists", "message": f"no {what} {value!r}"}
    return problem(404, f"{field}: no {what} {value!r}", [reason])


def _outreach(gateway: GatewayDep) -> OutreachControl:
    if gateway.outreach is None:
        raise HTTPException(503, "outreach is not configured in this process")
    return gateway.outreach


Outreach = Annotated[OutreachControl, Depends(_outreach)]


class EndpointIn(BaseModel):
    """A webhook endpoint to subscribe."""

    url: Annotated[str, Field(min_length=1, max_length=2000)]
    rules: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list)
    secret: Annotated[str, Field(min_length=16, max_length=200)] | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value


@router.get("/webhooks", summary="List subscribed webhook endpoints")
async def list_webhooks(outreach: Outreach) -> dict[str, Any]:
    """Every endpoint, without its secret."""
    return {"webhooks": await asyncio.to_thread(outreach.endpoints)}


@router.post("/webhooks", status_code=201, summary="Subscribe a webhook endpoint")
async def add_webhook(body: EndpointIn, outreach: Outreach) -> dict[str, Any]:
    """Subscribe ``url`` to ``rules`` (empty: all). The signing secret is shown once."""
    return await asyncio.to_thread(outreach.add_endpoint, body.url, body.rules, body.secret)


@router.delete("/webhooks/{endpoint_id}", summary="Unsubscribe a webhook endpoint")
async def remove_webhook(endpoint_id: str, outreach: Outreach) -> Any:
    """Stop delivering to this endpoint."""
    if not await asyncio.to_thread(outreach.remove_endpoint, endpoint_id):
        return _not_found("endpoint_id", endpoint_id, "webhook endpoint")
    return {"removed": endpoint_id}


def _gone(outreach: OutreachControl, path: str) -> JSONResponse:
    """410 naming the flows API: the rules engine was removed (the rules became flows)."""
    successor = outreach.retired()
    reason = {"field": "path", "rule": "gone", "message": successor}
    return problem(410, f"{path}: {successor}", [reason])


_GONE = error_responses(410)


@router.get("/rules", summary="The rules (gone: they became flows)", responses=_GONE)
async def list_rules(outreach: Outreach) -> JSONResponse:
    """Always 410: the rules became the lifecycle flows (``GET /v1/flows``)."""
    return _gone(outreach, "/v1/outreach/rules")


@router.put("/rules/{rule_id}", summary="A rule (gone: they became flows)", responses=_GONE)
async def put_rule(rule_id: str, outreach: Outreach) -> JSONResponse:
    """Always 410: change a lifecycle flow with ``PUT /v1/flows/{id}``."""
    return _gone(outreach, f"/v1/outreach/rules/{rule_id}")


@router.get("/triggers", summary="Recent triggers with their delivery state")
async def list_triggers(
    outreach: Outreach,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    customer_id: Annotated[str | None, Query(max_length=255)] = None,
) -> dict[str, Any]:
    """Newest first; each with its deliveries (delivered, pending, dead, skipped)."""
    found = await asyncio.to_thread(outreach.triggers, limit, customer_id)
    return {"triggers": found}


@router.get("/timers", summary="Running timers")
async def list_timers(
    outreach: Outreach,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    customer_id: Annotated[str | None, Query(max_length=255)] = None,
) -> dict[str, Any]:
    """Clocks that are running, soonest first: on flows, each flow state waiting to be
    advanced (``rule`` = ``flow:<id>``, ``fire_at`` its wake time)."""
    return {"timers": await asyncio.to_thread(outreach.timers, customer_id, limit)}


@router.post(
    "/triggers/{trigger_id}/redeliver",
    status_code=202,
    summary="Re-deliver a dead-lettered trigger",
)
async def redeliver(trigger_id: str, outreach: Outreach) -> JSONResponse:
    """Dead deliveries of the trigger go back to pending, with a fresh retry horizon."""
    count = await asyncio.to_thread(outreach.redeliver, trigger_id)
    if count is None:
        return _not_found("trigger_id", trigger_id, "fired trigger")
    return JSONResponse(status_code=202, content={"trigger_id": trigger_id, "redelivering": count})
