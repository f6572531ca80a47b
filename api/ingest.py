"""Segment-compatible ingest: validate, then produce; 200 only after the broker acknowledged.

Every rejection is a 4xx whose body names the field and the rule, and (once
the sender is authenticated) the rejected payload goes to the dead-letter
topic with its reasons. Unauthenticated requests are not dead-lettered:
anyone could fill the queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import WriteKey, basic_user
from api.dependencies import Gateway
from api.errors import ApiProblem, error_responses, problem
from events.envelope import TrackedEvent
from events.json_schemas import call_schemas
from events.segment import CALL_MODELS, RejectedCall, SegmentCall, accept_call

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["ingest"])
# RudderStack's browser SDK sends its sendBeacon batches outside /v1.
beacon_router = APIRouter(tags=["ingest"])

# Segment's limits: one call, one batch request, events per batch.
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
# What is read at most, to find a writeKey in an oversize body and still name the
# limit; beyond it the request is cut off unread (413, not dead-lettered).
MAX_READ_BYTES = 4 * MAX_BATCH_BYTES
# Dead letters keep at most this much of a payload (an oversize one is cut).
MAX_DEAD_LETTER_PAYLOAD = 64 * 1024

Problems = list[dict[str, Any]]


def _documented_body(call_type: str) -> dict[str, Any]:
    """OpenAPI text for a call's body: the same JSON Schema as ``/v1/schemas/<call>``.

    The endpoints read the raw body themselves (gzip, limits, dead letters), so
    FastAPI cannot derive it from a parameter.
    """
    schema = {k: v for k, v in call_schemas()[call_type].items() if k not in ("$schema", "$id")}
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


def _ingest_responses() -> dict[int | str, dict[str, Any]]:
    responses = error_responses(400, 401, 413, 415, 429, 503)
    responses[503] = {
        **responses[503],
        "description": (
            "Not stored, retry after Retry-After: the broker did not acknowledge, the journal "
            "is full, or the pipeline is behind its lag limit (rule `backlog`)"
        ),
        "headers": {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
        },
    }
    return responses


# What every ingest route declares: its key scheme and its refusals.
_INGEST_ROUTE: dict[str, Any] = {
    "dependencies": [WriteKey],
    "responses": _ingest_responses(),
}


class _Refused(Exception):
    """A request refused before its events were looked at."""

    def __init__(
        self, status: int, field: str, rule: str, message: str, payload: bytes = b""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = {"field": field, "rule": rule, "message": message}
        # What was read of the body, for the dead letter.
        self.payload = payload


# Bodies are JSON whatever the label, but only under these labels: browsers send
# text/plain to avoid a CORS preflight (navigator.sendBeacon can send nothing
# else), and some clients send none. A form or XML body is a client mistake.
JSON_CONTENT_TYPES = frozenset({"application/json", "text/plain", ""})


def _check_content_type(request: Request) -> None:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media not in JSON_CONTENT_TYPES and not media.endswith("+json"):
        raise _Refused(
            415,
            "content-type",
            "content_type",
            f"unsupported Content-Type {media!r}: send JSON as application/json or text/plain",
        )  # nothing read yet: the dead letter records the refusal itself


async def _read_body(request: Request) -> bytes:
    """The body, gunzipped when ``Content-Encoding: gzip``, at most MAX_READ_BYTES."""
    _check_content_type(request)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise _Refused(
            415, "Content-Encoding", "encoding", f"unsupported Content-Encoding {encoding!r}"
        )  # nothing read yet: the dead letter records the refusal itself
    raw = bytearray()
    async for chunk in request.stream():
        raw.extend(chunk)
        if len(raw) > MAX_READ_BYTES:
            raise _Refused(
                413,
                "body",
                "max_request_size",
                "request body exceeds what is read (2 MB)",
                bytes(raw[:MAX_DEAD_LETTER_PAYLOAD]),
            )
    if encoding != "gzip":
        return bytes(raw)
    return _gunzip(bytes(raw))


def _gunzip(raw: bytes) -> bytes:
    """Every gzip member of ``raw`` inflated (RFC 1952 allows several); anything after
    the last one is refused: bytes we would not read are bytes another reader might."""
    body = b""
    rest = raw
    while True:
        # wbits 16+: gzip framing. max_length bounds the output: no zip bombs.
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            body += inflater.decompress(rest, MAX_READ_BYTES + 1 - len(body))
        except zlib.error as error:
            raise _Refused(400, "body", "gzip", f"body is not valid gzip: {error}", raw) from None
        if len(body) > MAX_READ_BYTES:
            raise _Refused(
                413,
                "body",
                "max_request_size",
                "gunzipped body exceeds 2 MB",
                body[:MAX_READ_BYTES],
            )
        if not inflater.eof:
            raise _Refused(400, "body", "gzip", "gzip body is truncated", raw)
        rest = inflater.unused_data
        if not rest:
            return body
        if not rest.startswith(b"\x1f\x8b"):
            message = f"{len(rest)} bytes follow the gzip data"
            raise _Refused(400, "body", "gzip_trailing_data", message, raw)


async def _refused(request: Request, gateway: Gateway, refused: _Refused) -> Response:
    """Answer a body that could not be read; dead-letter it when the sender is known.

    Only an HTTP Basic key can be checked here (the body was not read); without
    one, the refusal is answered but not kept, like any unauthenticated request.
    """
    source, _ = await _authenticate(request, gateway, None)
    if source is not None:
        await _dead_letter(gateway, refused.payload, [refused.reason], source)
    gateway.metrics.rejected([refused.reason])
    return _rejection(refused.status, [refused.reason])


def _parse(body: bytes) -> tuple[Any, dict[str, str] | None]:
    """The JSON value of ``body``, or None and the problem (field, rule, message).

    orjson parses (and refuses NaN, 1e400, lone surrogates); it keeps the last of
    duplicate keys, where other readers keep the first, so duplicates are refused
    by a second, checking parse (about 6 ms per 460 KB batch against orjson's 2 ms,
    docs/architecture.md). Depth is bounded by what orjson can write back out.
    """
    if not body:
        return None, None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        rule = "max_depth" if "depth limit" in str(error) else "json_object"
        return None, {"field": "body", "rule": rule, "message": f"body is not JSON: {error}"}
    try:
        orjson.dumps(parsed)
    except orjson.JSONEncodeError:
        message = f"body is nested deeper than {MAX_DEPTH} levels"
        return None, {"field": "body", "rule": "max_depth", "message": message}
    try:
        _DUPLICATES.decode(body.decode())
    except _DuplicateKey as duplicate:
        message = f"key {duplicate.key!r} appears twice in one object"
        return None, {"field": duplicate.key, "rule": "duplicate_key", "message": message}
    except (ValueError, RecursionError):
        pass  # orjson read it; only a duplicate key is this check's to refuse
    return parsed, None


# orjson.dumps refuses deeper values: what cannot be written to the topic is refused here.
MAX_DEPTH = 254


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return found


_DUPLICATES = json.JSONDecoder(object_pairs_hook=_unique_pairs)


async def _authenticate(
    request: Request, gateway: Gateway, parsed: Any
) -> tuple[str | None, Response | None]:
    """The sender's source id, or the 401 to answer."""
    key = basic_user(request)
    if not key and isinstance(parsed, dict) and isinstance(parsed.get("writeKey"), str):
        key = parsed["writeKey"]
    if not key:
        # sendBeacon cannot set headers: RudderStack's beacons carry ?writeKey=.
        key = request.query_params.get("writeKey")
    source: str | None
    if gateway.write_keys is not None:
        source = await gateway.write_keys.source_of(key)
    else:
        source = "default" if gateway.keys.can_write(key) else None
    if source is None:
        return None, problem(
            401,
            "a valid write key is required (HTTP Basic user with empty password, or writeKey)",
            [{"field": "writeKey", "rule": "write_key", "message": "missing, unknown or revoked"}],
            headers={"WWW-Authenticate": 'Basic realm="journeys"'},
        )
    return source, None


def _backlogged(gateway: Gateway) -> Response | None:
    """503 while the worker is further behind than the lag limit: nothing of it is kept."""
    if gateway.backlog is None:
        return None
    exceeded = gateway.backlog.exceeded()
    if exceeded is None:
        return None
    return problem(
        503,
        f"the pipeline is behind ({exceeded}); nothing was stored, retry later",
        [{"field": "pipeline", "rule": "backlog", "message": exceeded}],
        headers={"Retry-After": "1"},
    )


def _rate_limited(gateway: Gateway, source: str, events: int) -> Response | None:
    wait = gateway.rate_limit.take(source, events)
    if not wait:
        return None
    limit = f"{gateway.rate_limit.rate:g} events/s, bursts of {gateway.rate_limit.burst:g}"
    return problem(
        429,
        f"rate limit of this write key exceeded ({limit}); retry later",
        [{"field": "writeKey", "rule": "rate_limit", "message": limit}],
        headers={"Retry-After": gateway.rate_limit.retry_after(wait)},
    )


async def _dead_letter(gateway: Gateway, payload: bytes, reasons: Problems, source: str) -> None:
    if len(payload) > MAX_DEAD_LETTER_PAYLOAD:
        payload = payload[:MAX_DEAD_LETTER_PAYLOAD]
        reasons = [
            *reasons,
            {
                "field": "payload",
                "rule": "truncated",
                "message": f"payload cut to its first {MAX_DEAD_LETTER_PAYLOAD // 1024} KB",
            },
        ]
    try:
        await gateway.sink.dead_letter(payload, reasons, source)
    except Exception:
        # The sender still gets its 4xx; the loss of the dead letter itself is logged.
        log.exception("could not write dead letter: %s", reasons)


_NOT_STORED = [{"field": "body", "rule": "not_stored", "message": "retry later"}]


async def publish(gateway: Gateway, events: list[TrackedEvent]) -> Response | None:
    """Produce and wait for every ack; the 503 to answer when the broker did not ack."""
    if not events:
        return None
    try:
        await gateway.sink.publish(events)
    except Exception:
        log.exception("broker did not acknowledge %d events", len(events))
        gateway.metrics.rejected(_NOT_STORED, len(events))
        return problem(
            503, "the events could not be stored; retry later", headers={"Retry-After": "1"}
        )
    gateway.metrics.accepted(len(events))
    return None


def _rejection(status: int, reasons: Problems) -> Response:
    return problem(status, "; ".join(f"{r['field']}: {r['message']}" for r in reasons), reasons)


@dataclass(frozen=True, slots=True)
class _SizeLimit:
    """The size limit of one kind of request, as its 413 names it."""

    max_bytes: int
    rule: str
    what: str


_ONE_EVENT = _SizeLimit(MAX_EVENT_BYTES, "max_event_size", "an event")
_ONE_BATCH = _SizeLimit(MAX_BATCH_BYTES, "max_batch_size", "a batch request")


@dataclass(frozen=True, slots=True)
class _Admitted:
    """A request that passed admission: its sender, its body and the JSON object in it."""

    gateway: Gateway
    source: str
    body: bytes
    call: dict[str, Any]
    # The events the request holds, as far as its body could be read (for the counters).
    events: int = 1

    async def reject(self, status: int, reasons: Problems) -> Response:
        """Dead-letter the whole body with ``reasons`` and answer ``status``."""
        await _dead_letter(self.gateway, self.body, reasons, self.source)
        self.gateway.metrics.rejected(reasons, self.events)
        return _rejection(status, reasons)


async def _origin_refused(request: Request, gateway: Gateway, source: str) -> dict[str, Any] | None:
    """The problem when a browser sends from an origin the key does not accept (api/cors.py)."""
    origin = request.headers.get("origin")
    if origin is None:
        return None  # not a browser: origins do not apply
    listed = await gateway.write_keys.origins_of(source) if gateway.write_keys else ()
    if gateway.cors.ingest_accepts(origin, listed):
        return None
    return {
        "field": "Origin",
        "rule": "allowed_origins",
        "message": f"{origin} is not an allowed origin of this write key",
    }


def _batch_length(parsed: Any) -> int:
    items = parsed.get("batch") if isinstance(parsed, dict) else None
    return len(items) if isinstance(items, list) else 1


# The rules of refusals answered before a request is admitted, for the counters.
_WRITE_KEY = [{"rule": "write_key"}]
_BACKLOG = [{"rule": "backlog"}]
_RATE_LIMIT = [{"rule": "rate_limit"}]


async def _admit(
    request: Request, gateway: Gateway, limit: _SizeLimit, events_in: Callable[[Any], int]
) -> _Admitted | Response:
    """What every ingest request goes through first, or the answer that ends it.

    Read (gunzip), parse, authenticate, lag limit, rate-limit (``events_in`` the parsed
    body's events), size limit, JSON-object check; from authentication on, a
    refusal is dead-lettered.
    """
    try:
        body = await _read_body(request)
    except _Refused as refused:
        return await _refused(request, gateway, refused)
    parsed, parse_error = _parse(body)
    events = events_in(parsed)
    source, denied = await _authenticate(request, gateway, parsed)
    if source is None:
        gateway.metrics.rejected(_WRITE_KEY, events)
        return denied or problem(401, "unauthenticated")
    # Before the rate limit takes tokens: a refused request spends none.
    backlogged = _backlogged(gateway)
    if backlogged is not None:
        gateway.metrics.rejected(_BACKLOG, events)
        return backlogged
    limited = _rate_limited(gateway, source, events)
    if limited is not None:
        gateway.metrics.rejected(_RATE_LIMIT, events)
        return limited
    admitted = _Admitted(gateway, source, body, parsed if isinstance(parsed, dict) else {}, events)
    refused_origin = await _origin_refused(request, gateway, source)
    if refused_origin is not None:
        return await admitted.reject(403, [refused_origin])
    if len(body) > limit.max_bytes:
        message = (
            f"{limit.what} may be at most {limit.max_bytes // 1024} KB "
            f"(this one is {len(body) / 1024:.1f} KB)"
        )
        return await admitted.reject(
            413, [{"field": "body", "rule": limit.rule, "message": message}]
        )
    if parse_error is not None:
        return await admitted.reject(400, [parse_error])
    if not isinstance(parsed, dict):
        message = f"body is not a JSON object: got {type(parsed).__name__}"
        return await admitted.reject(
            400, [{"field": "body", "rule": "json_object", "message": message}]
        )
    return admitted


async def _ingest(request: Request, model: type[SegmentCall]) -> Response:
    """One call through FastAPI's route (the node's app)."""
    return await _single_call(request, request.app.state.gateway, model)


async def _single_call(request: Request, gateway: Gateway, model: type[SegmentCall]) -> Response:
    """One call: admit, validate, produce."""
    admitted = await _admit(request, gateway, _ONE_EVENT, lambda _: 1)
    if isinstance(admitted, Response):
        return admitted
    try:
        event = accept_call(model, admitted.call, datetime.now(UTC), admitted.source)
    except RejectedCall as rejected:
        return await admitted.reject(400, rejected.problems)
    failed = await publish(admitted.gateway, [event])
    return failed or JSONResponse({"success": True})


def _batch_item(
    index: int, item: Any, sent_at: Any, received_at: datetime, source: str
) -> tuple[TrackedEvent | None, Problems]:
    """One item of a batch as an envelope, or its problems (fields prefixed ``batch[i]``)."""
    where = f"batch[{index}]"
    if not isinstance(item, dict):
        message = f"each item must be a JSON object, got {type(item).__name__}"
        return None, [{"field": where, "rule": "json_object", "message": message}]
    size = len(orjson.dumps(item))
    if size > MAX_EVENT_BYTES:
        message = f"an event may be at most {MAX_EVENT_BYTES // 1024} KB (this one is {size} B)"
        return None, [{"field": where, "rule": "max_event_size", "message": message}]
    call_type = item.get("type")
    model = CALL_MODELS.get(call_type) if isinstance(call_type, str) else None
    if model is None:
        message = f"type must be one of {', '.join(CALL_MODELS)}; got {call_type!r}"
        return None, [{"field": f"{where}.type", "rule": "call_type", "message": message}]
    if sent_at is not None and "sentAt" not in item:
        item = {**item, "sentAt": sent_at}  # the batch's sentAt stands for its items'
    try:
        return accept_call(model, item, received_at, source), []
    except RejectedCall as rejected:
        return None, [
            {**p, "field": f"{where}.{p['field']}" if p["field"] != "body" else where}
            for p in rejected.problems
        ]


@router.post(
    "/batch",
    summary="Many calls in one request (Segment batch)",
    openapi_extra=_documented_body("batch"),
    **_INGEST_ROUTE,
)
async def batch(request: Request) -> Response:
    """Segment ``batch``: ``{"batch": [{"type": "track", ...}, ...], "sentAt": ...}``.

    Valid items are accepted (one round of broker acks for all); invalid ones
    are reported by index and dead-lettered. All valid: 200. Any invalid: 400
    with ``accepted``, ``rejected`` and the ``errors`` of each rejected item.
    """
    admitted = await _admit(request, request.app.state.gateway, _ONE_BATCH, _batch_length)
    if isinstance(admitted, Response):
        return admitted
    gateway, source, items = admitted.gateway, admitted.source, admitted.call.get("batch")
    if not isinstance(items, list):
        return await admitted.reject(
            400, [{"field": "batch", "rule": "list_type", "message": "batch must be a list"}]
        )
    if len(items) > MAX_BATCH_EVENTS:
        message = f"a batch may hold at most {MAX_BATCH_EVENTS} events (this one has {len(items)})"
        return await admitted.reject(
            400, [{"field": "batch", "rule": "max_batch_events", "message": message}]
        )

    received_at = datetime.now(UTC)
    sent_at = admitted.call.get("sentAt")
    accepted: list[TrackedEvent] = []
    errors: Problems = []
    letters = []
    for index, item in enumerate(items):
        event, problems = _batch_item(index, item, sent_at, received_at, source)
        if event is not None:
            accepted.append(event)
            continue
        errors.extend({"index": index, **p} for p in problems)
        gateway.metrics.rejected(problems)
        letters.append(_dead_letter(gateway, orjson.dumps(item), problems, source))
    failed = await publish(gateway, accepted)
    await asyncio.gather(*letters)
    if failed is not None:
        return failed
    if not errors:
        return JSONResponse({"success": True})
    rejected = len({e["index"] for e in errors})
    message = f"{rejected} of {len(items)} events rejected, {len(accepted)} accepted: " + "; ".join(
        f"{e['field']}: {e['message']}" for e in errors[:20]
    )
    body_out = {
        "success": False,
        "message": message,
        "accepted": len(accepted),
        "rejected": rejected,
        "errors": errors,
    }
    return JSONResponse(status_code=400, content=body_out)


# Each single call's route: its summary and description in the OpenAPI document.
_CALL_ROUTES: dict[str, tuple[str, str]] = {
    "track": (
        "Record an action the customer performed (Segment track)",
        'Segment ``track`` call: ``{"userId"|"anonymousId", "event", "properties", ...}``.',
    ),
    "page": ("Record a page view (Segment page)", "Segment ``page`` call; counts as browsing."),
    "screen": (
        "Record an app screen view (Segment screen)",
        "Segment ``screen`` call; counts as browsing.",
    ),
    "identify": (
        "Say who the customer is (Segment identify)",
        "Segment ``identify`` call with traits.",
    ),
    "group": (
        "Put the customer in a group (Segment group)",
        "Segment ``group`` call: ``groupId`` and group traits.",
    ),
    "alias": (
        "Link an earlier id to the customer (Segment alias)",
        "Segment ``alias`` call: ``previousId`` and ``userId`` are one customer.",
    ),
}


def _call_route(model: type[SegmentCall]) -> Callable[[Request], Awaitable[Response]]:
    async def ingest_call(request: Request) -> Response:
        return await _ingest(request, model)

    return ingest_call


# analytics.js posts to the call type's first letter (``/v1/t`` for track);
# hidden from the OpenAPI document, which lists each call once.
for _call, (_summary, _description) in _CALL_ROUTES.items():
    _handler = _call_route(CALL_MODELS[_call])
    router.add_api_route(
        f"/{_call}",
        _handler,
        methods=["POST"],
        name=_call,
        summary=_summary,
        description=_description,
        openapi_extra=_documented_body(_call),
        **_INGEST_ROUTE,
    )
    router.add_api_route(f"/{_call[0]}", _handler, methods=["POST"], include_in_schema=False)
router.add_api_route("/b", batch, methods=["POST"], include_in_schema=False)
beacon_router.add_api_route("/beacon/v1/batch", batch, methods=["POST"], include_in_schema=False)

# A single call's paths (analytics.js's short ones too) and the model of each.
SINGLE_CALL_PATHS: dict[str, type[SegmentCall]] = {
    **{f"/v1/{call}": model for call, model in CALL_MODELS.items()},
    **{f"/v1/{call[0]}": model for call, model in CALL_MODELS.items()},
}


class SingleCalls:
    """ASGI app answering a POST of one call itself, every other request through ``app``.

    The same handler as the routes above (:func:`_single_call`: admission, validation,
    journal and produce, the same answers), without FastAPI's routing, dependency
    solving, exception middleware and request wrappers around it: in an ingest
    gateway under single-call load those took about a third of the event loop
    (docs/performance.md). The routes stay in the app, so the OpenAPI document
    (the node's) describes these paths; CORS wraps this app as it wraps the routes.
    """

    def __init__(self, gateway: Gateway, app: ASGIApp) -> None:
        self.gateway = gateway
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        model = (
            SINGLE_CALL_PATHS.get(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if model is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await _single_call(Request(scope, receive), self.gateway, model)
        except Exception:
            # What the app's last-resort handler answers (api/errors.py).
            log.exception("unexpected error on POST %s", scope["path"])
            response = problem(500, "internal error; it has been logged")
        await response(scope, receive, send)


@router.get("/schemas", summary="The JSON Schemas of every call and canonical event type")
async def schemas() -> dict[str, Any]:
    """Every schema document by name (``track``, ``batch``, ``cart.properties``, …)."""
    return {"version": "v1", "schemas": call_schemas()}


@router.get("/schemas/{name}", summary="One JSON Schema document", responses=error_responses(404))
async def schema(name: str) -> dict[str, Any]:
    """One schema document, e.g. ``/v1/schemas/track`` or ``/v1/schemas/cart.properties``."""
    documents = call_schemas()
    if name not in documents:
        known = ", ".join(sorted(documents))
        raise ApiProblem(404, "name", "exists", f"no schema {name!r}; known: {known}")
    return documents[name]
