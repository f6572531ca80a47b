"""Segments: the definitions in force and their members at any instant (issue 17).

Definitions are stored in the event store's database, seeded from the
definitions file (JOURNEYS_SEGMENTS_FILE) the first time; admins change them
with ``PUT`` / ``DELETE /v1/segments/{id}``, and the worker takes a change
within seconds (docs/architecture.md, "Segments and computed traits").
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.routing import BaseRoute

from api.analysis import DroppedRequest, trait_filtered
from api.auth import GatewayDep, require_admin_key, require_read_key
from api.errors import error_responses, problem
from api.times import ApiTime
from events.ecommerce import MAX_ID_LENGTH, check_no_control
from journeys.segment_definitions import (
    DefinitionError,
    Definitions,
    SegmentDefinition,
    TraitDefinition,
    is_definition_id,
)
from projections.analytics import QueryProblem
from projections.analytics.funnels import FunnelQueries
from projections.segment_reads import SegmentReads

router = APIRouter(
    prefix="/v1",
    tags=["segments"],
    dependencies=[Depends(require_read_key)],
    responses=error_responses(400, 401, 403, 404, 503),
)

# Changing definitions is for admins (api/access.py); documented with the admin key.
admin_router = APIRouter(
    prefix="/v1",
    tags=["segments"],
    dependencies=[Depends(require_admin_key)],
    responses=error_responses(400, 401, 403, 404, 409, 422, 503),
)

SegmentId = Annotated[str, Path(description="the segment's id in the definitions file")]


class BackfillProgress(BaseModel):
    """The backfill of the segment's definition in force from the event log."""

    state: str = Field(description="pending (not started yet), running or done")
    progress: float = Field(description="customers done over those the log held at its start")
    customers_done: int
    customers_total: int


class Segment(BaseModel):
    """A segment as defined, and how far its history has been backfilled."""

    id: str
    name: str
    description: str
    definition: dict[str, Any] = Field(description="the segment's table as written in the file")
    backfilled: bool = Field(
        description="true once membership counts every event of the log, not only the "
        "events since the definition took effect"
    )
    backfill: BackfillProgress
    time_dependent: bool = Field(description="true when time passing alone changes membership")


class SegmentList(BaseModel):
    segments: list[Segment]


class SegmentSize(BaseModel):
    at: datetime
    size: int


class SegmentSizes(BaseModel):
    segment: str
    sizes: list[SegmentSize] = Field(description="one a day, oldest first, ending at `end`")
    backfilled: bool


class SegmentMembers(BaseModel):
    segment: str
    as_of: datetime
    count: int
    members: list[str] = Field(description="customer keys, sorted; at most `limit`")
    backfilled: bool


def _reads(gateway: GatewayDep) -> SegmentReads:
    if gateway.segments is None:
        raise HTTPException(503, "segments are not configured in this process")
    return gateway.segments


Reads = Annotated[SegmentReads, Depends(_reads)]


def _shown(reads: SegmentReads, segment: SegmentDefinition) -> Segment:
    found = reads.backfill(segment.id)
    static = reads.definitions.is_static(segment.id)
    if static:  # its members are its list: nothing to backfill
        progress = BackfillProgress(state="done", progress=1, customers_done=0, customers_total=0)
    elif found is None:
        progress = BackfillProgress(
            state="pending", progress=0, customers_done=0, customers_total=0
        )
    else:
        progress = BackfillProgress(
            state="done" if found.finished else "running",
            progress=found.progress,
            customers_done=found.done,
            customers_total=found.total,
        )
    return Segment(
        id=segment.id,
        name=segment.name,
        description=segment.description,
        definition=dict(segment.source),
        backfilled=static or (found is not None and found.finished),
        backfill=progress,
        time_dependent=reads.definitions.time_dependent(),
    )


def _not_found(segment_id: str) -> JSONResponse:
    reason = {"field": "segment_id", "rule": "exists", "message": f"no segment {segment_id!r}"}
    return problem(404, f"segment_id: no segment {segment_id!r}", [reason])


@router.get("/segments", response_model=SegmentList)
async def list_segments(reads: Reads) -> SegmentList:
    """Every segment of the definitions file."""

    def listed() -> SegmentList:
        return SegmentList(segments=[_shown(reads, s) for s in reads.definitions.segments.values()])

    return await asyncio.to_thread(listed)


@router.get("/segments/{segment_id}", response_model=Segment)
async def get_segment(reads: Reads, segment_id: SegmentId) -> Segment | JSONResponse:
    """One segment's definition."""

    def shown() -> Segment | JSONResponse:
        segment = reads.definitions.segments.get(segment_id)
        return _not_found(segment_id) if segment is None else _shown(reads, segment)

    return await asyncio.to_thread(shown)


@router.get("/segments/{segment_id}/members", response_model=SegmentMembers)
async def segment_members(
    reads: Reads,
    segment_id: SegmentId,
    as_of: Annotated[ApiTime | None, Query(description="ISO-8601 time; default now")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> SegmentMembers | JSONResponse:
    """The customers in the segment now or ``as_of`` a moment.

    At or after a customer's latest event, computed from their state at read
    time (rolling windows slide exactly); before it, from the recorded changes.
    """
    if segment_id not in reads.definitions.segments:
        return _not_found(segment_id)
    moment = datetime.now(UTC) if as_of is None else as_of
    members = await asyncio.to_thread(reads.members, segment_id, moment)
    return SegmentMembers(
        segment=segment_id,
        as_of=moment,
        count=len(members),
        members=members[:limit],
        backfilled=await asyncio.to_thread(reads.backfilled, segment_id),
    )


@router.get("/segments/{segment_id}/sizes", response_model=SegmentSizes)
async def segment_sizes(
    reads: Reads,
    segment_id: SegmentId,
    end: Annotated[ApiTime | None, Query(description="ISO-8601 time; default now")] = None,
    days: Annotated[int, Query(ge=1, le=90)] = 30,
) -> SegmentSizes | JSONResponse:
    """The segment's size at ``end`` and at the same time on each of the days before it."""
    if segment_id not in reads.definitions.segments:
        return _not_found(segment_id)
    last = datetime.now(UTC) if end is None else end
    instants = [last - timedelta(days=back) for back in range(days - 1, -1, -1)]
    if instants[0].year < 1970:
        message = "the sizes start before 1970"
        reason = {"field": "query.end", "rule": "after_1970", "message": message}
        return problem(400, f"query.end: {message}", [reason])
    counts = await asyncio.to_thread(reads.sizes, segment_id, instants)
    return SegmentSizes(
        segment=segment_id,
        sizes=[SegmentSize(at=at, size=n) for at, n in zip(instants, counts, strict=True)],
        backfilled=await asyncio.to_thread(reads.backfilled, segment_id),
    )


def _refused(error: DefinitionError, status: int = 422) -> JSONResponse:
    reasons = [
        {"field": path or "body", "rule": "definition", "message": message}
        for path, message in error.errors
    ]
    first = reasons[0]
    return problem(status, f"{first['field']}: {first['message']}", reasons)


def _stored_reads(gateway: GatewayDep) -> SegmentReads:
    if gateway.segments is None or gateway.segments.stored is None:
        raise HTTPException(503, "segment definitions are not stored in this process")
    return gateway.segments


# The reads with their definition store: what an admin change needs.
StoredReads = Annotated[SegmentReads, Depends(_stored_reads)]


async def _change(
    reads: SegmentReads, kind: str, key: str, body: dict[str, Any] | None
) -> tuple[bool, Definitions] | JSONResponse:
    """Put (``body``) or delete (None) one trait or segment; a refusal names node and field.

    (existed, definitions now in force), or the problem: a 422 for a definition
    refused, a 409 for a delete that another definition's reference forbids.
    """
    if body is not None and not is_definition_id(key):
        field_name = "trait_id" if kind == "traits" else "segment_id"
        reason = {
            "field": field_name,
            "rule": "pattern",
            "message": "must be lower-case letters, digits and _, starting with a letter",
        }
        return problem(422, f"{field_name}: {reason['message']}", [reason])
    stored = reads.stored
    assert stored is not None
    try:
        return await asyncio.to_thread(stored.change, kind, key, body)
    except DefinitionError as error:
        return _refused(error, 422 if body is not None else 409)
    except TypeError as error:  # a value the store cannot keep (orjson)
        reason = {"field": "body", "rule": "storable", "message": str(error)}
        return problem(422, f"body: {error}", [reason])


@admin_router.put(
    "/segments/{segment_id}",
    response_model=Segment,
    summary="Define or replace a segment",
    responses={201: {"model": Segment, "description": "Defined (it did not exist)"}},
)
async def put_segment(
    reads: StoredReads, segment_id: SegmentId, body: dict[str, Any]
) -> Segment | JSONResponse:
    """The segment's table as in the definitions file: ``name``, ``description``, ``where``.

    Validated with every other definition (references, cycles): a 422 names the
    node and the field (``segments.x.where.and[1].count: must be an integer >= 0``).
    The worker folds events with it within seconds; its state starts empty.
    """
    changed = await _change(reads, "segments", segment_id, body)
    if isinstance(changed, JSONResponse):
        return changed
    existed, definitions = changed
    if not definitions.is_static(segment_id):
        await asyncio.to_thread(reads.store.forget_list, segment_id)  # no list any more
    shown = await asyncio.to_thread(_shown, reads, definitions.segments[segment_id])
    if existed:
        return shown
    return JSONResponse(status_code=201, content=shown.model_dump(mode="json"))


@admin_router.delete("/segments/{segment_id}", response_model=Segment, summary="Delete a segment")
async def delete_segment(reads: StoredReads, segment_id: SegmentId) -> Segment | JSONResponse:
    """Refused (409) while another segment refers to it; its recorded history stays."""
    segment = reads.definitions.segments.get(segment_id)
    if segment is None:
        return _not_found(segment_id)
    changed = await _change(reads, "segments", segment_id, None)
    if isinstance(changed, JSONResponse):
        return changed
    await asyncio.to_thread(reads.store.forget_list, segment_id)  # a static one's list
    return await asyncio.to_thread(_shown, reads, segment)


# --- computed traits -------------------------------------------------------------------

TraitId = Annotated[str, Path(description="the computed trait's id in the definitions file")]


class Trait(BaseModel):
    """A computed trait as defined, and the segments that compare it."""

    id: str
    definition: dict[str, Any] = Field(description="the trait's table as written in the file")
    used_by: list[str] = Field(description="the segments whose rule compares this trait")
    backfilled: bool = Field(
        description="true once its values count every event of the log (the backfill of "
        "the segments using it, or of the traits no segment uses, is done)"
    )
    time_dependent: bool = Field(description="true when time passing alone changes its value")


class TraitList(BaseModel):
    traits: list[Trait]


def _trait_shown(reads: SegmentReads, trait: TraitDefinition) -> Trait:
    definitions = reads.definitions
    return Trait(
        id=trait.id,
        definition=dict(trait.source),
        used_by=definitions.trait_users(trait.id),
        backfilled=reads.trait_backfilled(trait.id),
        time_dependent=bool(trait.window.within_ms) or trait.op == "days_since_last",
    )


def _trait_not_found(trait_id: str) -> JSONResponse:
    reason = {"field": "trait_id", "rule": "exists", "message": f"no trait {trait_id!r}"}
    return problem(404, f"trait_id: no trait {trait_id!r}", [reason])


@router.get("/traits", response_model=TraitList)
async def list_traits(reads: Reads) -> TraitList:
    """Every computed trait in force."""

    def listed() -> TraitList:
        return TraitList(traits=[_trait_shown(reads, t) for t in reads.definitions.traits.values()])

    return await asyncio.to_thread(listed)


@router.get("/traits/{trait_id}", response_model=Trait)
async def get_trait(reads: Reads, trait_id: TraitId) -> Trait | JSONResponse:
    """One computed trait's definition and the segments using it."""
    trait = reads.definitions.traits.get(trait_id)
    if trait is None:
        return _trait_not_found(trait_id)
    return await asyncio.to_thread(_trait_shown, reads, trait)


@admin_router.put(
    "/traits/{trait_id}",
    response_model=Trait,
    summary="Define or replace a computed trait",
    responses={201: {"model": Trait, "description": "Defined (it did not exist)"}},
)
async def put_trait(
    reads: StoredReads, trait_id: TraitId, body: dict[str, Any]
) -> Trait | JSONResponse:
    """The trait's table as in the definitions file: ``op``, ``property``, ``event`` or
    ``type``, ``properties``, ``within`` or ``since``.

    A 422 names the field (``traits.x.op: must be one of count, sum, ...``). A
    changed trait changes the fingerprint of every segment that compares it, so
    the worker backfills those segments (and the traits no segment uses) from
    the event log.
    """
    changed = await _change(reads, "traits", trait_id, body)
    if isinstance(changed, JSONResponse):
        return changed
    existed, definitions = changed
    shown = await asyncio.to_thread(_trait_shown, reads, definitions.traits[trait_id])
    if existed:
        return shown
    return JSONResponse(status_code=201, content=shown.model_dump(mode="json"))


@admin_router.delete("/traits/{trait_id}", response_model=Trait, summary="Delete a trait")
async def delete_trait(reads: StoredReads, trait_id: TraitId) -> Trait | JSONResponse:
    """Refused (409) while a segment compares it, naming the segment's node."""
    trait = reads.definitions.traits.get(trait_id)
    if trait is None:
        return _trait_not_found(trait_id)
    shown = await asyncio.to_thread(_trait_shown, reads, trait)
    changed = await _change(reads, "traits", trait_id, None)
    if isinstance(changed, JSONResponse):
        return changed
    return shown


# --- static segments: a list of customers ----------------------------------------------

# An upload (or a funnel's drop-outs saved) holds at most this many customers, in a
# body of at most MAX_LIST_BYTES; above either, 413.
MAX_LIST_ROWS = 100_000
MAX_LIST_BYTES = 4 * 1024 * 1024
LIST_HEADER = "customer_id"


class StaticList(BaseModel):
    """A static segment's list after a change."""

    segment: str
    members: int = Field(description="customers on the list now")
    added: int
    removed: int


class DropoffsRequest(DroppedRequest):
    """A funnel, the step whose drop-outs to save, and the static segment to save them as."""

    segment: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class _BadRow(ValueError):
    def __init__(self, row: int, rule: str, message: str) -> None:
        super().__init__(message)
        self.row, self.rule, self.message = row, rule, message


def parse_customer_list(text: str) -> list[str]:
    """The customer ids of a one-column CSV (an optional ``customer_id`` header line).

    Raises _BadRow naming the 1-based row and the rule an id breaks.
    """
    found: list[str] = []
    for number, fields in enumerate(_csv_rows(text), 1):
        if not fields or all(not f.strip() for f in fields):
            continue  # blank lines
        if len(fields) != 1:
            raise _BadRow(number, "one_column", "one customer id a row (no commas)")
        value = fields[0].strip()
        if number == 1 and value.lower() == LIST_HEADER:
            continue
        try:
            check_no_control(value)
        except ValueError as error:
            raise _BadRow(number, "customer_id", f"customer id {error}") from error
        if not 1 <= len(value) <= MAX_ID_LENGTH:
            raise _BadRow(number, "customer_id", f"must be 1 to {MAX_ID_LENGTH} characters")
        found.append(value)
    return found


def _csv_rows(text: str) -> Iterator[list[str]]:
    """The rows of ``text``; one the csv reader refuses (a field over its limit) is a
    _BadRow naming the row."""
    rows = csv.reader(io.StringIO(text))
    while True:
        try:
            fields = next(rows)
        except StopIteration:
            return
        except csv.Error as error:
            raise _BadRow(rows.line_num, "csv", f"not a CSV row: {error}") from error
        yield fields


def _too_many(count: int) -> JSONResponse:
    message = f"at most {MAX_LIST_ROWS} customers a list ({count} given)"
    return problem(413, f"body: {message}", [{"field": "body", "rule": "size", "message": message}])


async def _save_list(
    reads: SegmentReads, segment_id: str, keys: list[str], name: str | None
) -> StaticList | JSONResponse:
    """Define ``segment_id`` as a static segment if it is not, then make ``keys`` its list."""
    segment = reads.definitions.segments.get(segment_id)
    if segment is None:
        changed = await _change(
            reads, "segments", segment_id, {"name": name or segment_id, "static": True}
        )
        if isinstance(changed, JSONResponse):
            return changed
    elif not reads.definitions.is_static(segment_id):
        message = f"segment {segment_id!r} is defined by a rule, not a list (static = true)"
        reason = {"field": "segment_id", "rule": "static", "message": message}
        return problem(409, f"segment_id: {message}", [reason])
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    added, removed = await asyncio.to_thread(reads.store.replace_list, segment_id, keys, now_ms)
    members = len(set(keys))
    return StaticList(segment=segment_id, members=members, added=added, removed=removed)


@admin_router.post(
    "/segments/{segment_id}/members",
    response_model=StaticList,
    summary="Upload a static segment's list (CSV of customer ids)",
    responses=error_responses(413),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
async def upload_members(
    request: Request, reads: StoredReads, segment_id: SegmentId
) -> StaticList | JSONResponse:
    """One customer id (userId, or ``anon:<anonymousId>``) a row, an optional
    ``customer_id`` header; at most 100,000 rows and 4 MiB (413 above).

    The list replaces the segment's (defined as a static segment, ``static = true``,
    if it is not defined yet; 409 for a segment defined by a rule). The worker
    records each customer put on or taken off as SegmentEntered / SegmentExited,
    stamped now, within a tick. A bad row is a 422 naming the row and the rule.
    """
    if not is_definition_id(segment_id):
        reason = {"field": "segment_id", "rule": "pattern", "message": "not a definition id"}
        return problem(422, "segment_id: not a definition id", [reason])
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_LIST_BYTES:
            message = f"at most {MAX_LIST_BYTES} bytes a list"
            reason = {"field": "body", "rule": "size", "message": message}
            return problem(413, f"body: {message}", [reason])
    try:
        # utf-8-sig: a spreadsheet's byte order mark is not part of the first id.
        keys = parse_customer_list(body.decode("utf-8-sig"))
    except UnicodeDecodeError:
        reason = {"field": "body", "rule": "utf8", "message": "must be UTF-8 text"}
        return problem(422, "body: must be UTF-8 text", [reason])
    except _BadRow as bad:
        reason = {"field": f"row {bad.row}", "rule": bad.rule, "message": bad.message}
        return problem(422, f"row {bad.row}: {bad.message}", [reason])
    if len(keys) > MAX_LIST_ROWS:
        return _too_many(len(keys))
    return await _save_list(reads, segment_id, keys, None)


def list_upload_routes() -> list[BaseRoute]:
    """The route reading its body itself, with its own limit (api/body_limit.py)."""
    return [r for r in admin_router.routes if getattr(r, "endpoint", None) is upload_members]


@router.get("/segments/{segment_id}/list", response_model=SegmentMembers)
async def static_list(
    reads: Reads,
    segment_id: SegmentId,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> SegmentMembers | JSONResponse:
    """A static segment's list as uploaded (the members read says who is in it when)."""
    if not reads.definitions.is_static(segment_id):
        return _not_found(segment_id)
    members = await asyncio.to_thread(reads.store.list_members, segment_id)
    return SegmentMembers(
        segment=segment_id,
        as_of=datetime.now(UTC),
        count=len(members),
        members=members[:limit],
        backfilled=True,
    )


@admin_router.post(
    "/funnels/dropoffs",
    response_model=StaticList,
    summary="Save the customers who dropped at a step of a funnel as a static segment",
    responses=error_responses(413),
)
async def save_dropoffs(
    gateway: GatewayDep, reads: StoredReads, query: DropoffsRequest
) -> StaticList | JSONResponse:
    """The customers who reached step ``dropped_at - 1`` and not ``dropped_at`` (as
    ``POST /v1/funnels/dropped`` counts them) become the list of static segment
    ``segment`` (defined if new; 409 for a segment defined by a rule)."""
    definition = query.definition()
    queries = FunnelQueries(gateway.event_log.client, gateway.event_log.database)
    customers = await trait_filtered(gateway, query.trait_filters)
    if isinstance(customers, JSONResponse):
        return customers

    def work() -> tuple[int, list[str]]:
        queries.validate(definition)
        return queries.dropped(definition, query.dropped_at, MAX_LIST_ROWS, 0, customers)

    try:
        total, keys = await asyncio.to_thread(work)
    except QueryProblem as bad:
        reason = {"field": bad.field, "rule": "query", "message": bad.message}
        return problem(400, str(bad), [reason])
    if total > MAX_LIST_ROWS:
        return _too_many(total)
    return await _save_list(reads, query.segment, keys, query.name)
