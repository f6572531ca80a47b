"""Segment-compatible ingest: validate, then produce; 200 only after the broker acknowledged."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from api.auth import basic_user
from api.dependencies import Gateway
from api.errors import problem
from events.segment import (
    IdentifyCall,
    PageCall,
    SegmentCall,
    TrackCall,
    describe_errors,
    to_tracked_event,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["ingest"])

# Segment's limit for a single call.
MAX_EVENT_BYTES = 32 * 1024


async def _ingest(request: Request, model: type[SegmentCall]) -> Response:
    gateway: Gateway = request.app.state.gateway
    body = await request.body()
    parsed: Any = None
    parse_error: str | None = None
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError as error:
        parse_error = str(error)

    key = basic_user(request)
    if key is None and isinstance(parsed, dict):
        key = parsed.get("writeKey") if isinstance(parsed.get("writeKey"), str) else None
    if not gateway.keys.can_write(key):
        # Unauthenticated payloads are not dead-lettered: anyone could fill the queue.
        return problem(
            401,
            "a valid write key is required (HTTP Basic user, or writeKey)",
            headers={"WWW-Authenticate": 'Basic realm="journeys"'},
        )

    reasons: list[dict[str, Any]]
    if len(body) > MAX_EVENT_BYTES:
        reasons = [
            {
                "field": "body",
                "rule": "max_size",
                "message": f"an event may be at most {MAX_EVENT_BYTES // 1024} KB",
            }
        ]
        await _dead_letter(gateway, body, reasons)
        return problem(413, reasons[0]["message"], reasons)
    if parse_error is not None or not isinstance(parsed, dict):
        message = f"body is not a JSON object: {parse_error or 'got ' + type(parsed).__name__}"
        reasons = [{"field": "body", "rule": "json_object", "message": message}]
        await _dead_letter(gateway, body, reasons)
        return problem(400, message, reasons)
    try:
        call = model.model_validate(parsed)
    except ValidationError as error:
        reasons = describe_errors(error)
        await _dead_letter(gateway, body, reasons)
        return problem(400, "; ".join(f"{r['field']}: {r['message']}" for r in reasons), reasons)

    event = to_tracked_event(call, received_at=datetime.now(UTC))
    try:
        await gateway.sink.publish([event])
    except Exception:
        log.exception("broker did not acknowledge event %s", event.event_id)
        return problem(
            503, "the event could not be stored; retry later", headers={"Retry-After": "1"}
        )
    return JSONResponse({"success": True})


async def _dead_letter(gateway: Gateway, body: bytes, reasons: list[dict[str, Any]]) -> None:
    try:
        await gateway.sink.dead_letter(body, reasons)
    except Exception:
        # The sender still gets its 4xx; the loss of the dead letter itself is logged.
        log.exception("could not write dead letter: %s", reasons)


@router.post("/track", summary="Record an action the customer performed (Segment track)")
async def track(request: Request) -> Response:
    """Segment ``track`` call: ``{"userId"|"anonymousId", "event", "properties", ...}``."""
    return await _ingest(request, TrackCall)


@router.post("/page", summary="Record a page view (Segment page)")
async def page(request: Request) -> Response:
    """Segment ``page`` call; counts as browsing."""
    return await _ingest(request, PageCall)


@router.post("/identify", summary="Say who the customer is (Segment identify)")
async def identify(request: Request) -> Response:
    """Segment ``identify`` call with traits."""
    return await _ingest(request, IdentifyCall)
