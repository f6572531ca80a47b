"""Segments: the definitions in force and their members at any instant (issue 17, first slice).

Read-only: definitions come from the node's definitions file
(JOURNEYS_SEGMENTS_FILE); PUT/DELETE and backfill are not built yet
(docs/architecture.md, "Segments and computed traits").
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.auth import require_read_key
from api.dependencies import Gateway
from api.errors import error_responses, problem
from api.times import ApiTime
from journeys.segment_definitions import SegmentDefinition
from projections.segment_reads import SegmentReads

router = APIRouter(
    prefix="/v1",
    tags=["segments"],
    dependencies=[Depends(require_read_key)],
    responses=error_responses(400, 401, 403, 404, 503),
)

SegmentId = Annotated[str, Path(description="the segment's id in the definitions file")]


class Segment(BaseModel):
    """A segment as defined, with what the platform does and does not do for it yet."""

    id: str
    name: str
    description: str
    definition: dict[str, Any] = Field(description="the segment's table as written in the file")
    backfilled: bool = Field(
        description="false: membership counts the events from the definition's start on"
    )
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


def _reads(request: Request) -> SegmentReads:
    gateway: Gateway = request.app.state.gateway
    if gateway.segments is None:
        raise HTTPException(503, "segments are not configured in this process")
    return gateway.segments


def _shown(reads: SegmentReads, segment: SegmentDefinition) -> Segment:
    return Segment(
        id=segment.id,
        name=segment.name,
        description=segment.description,
        definition=dict(segment.source),
        backfilled=False,
        time_dependent=reads.definitions.time_dependent(),
    )


def _not_found(segment_id: str) -> JSONResponse:
    reason = {"field": "segment_id", "rule": "exists", "message": f"no segment {segment_id!r}"}
    return problem(404, f"segment_id: no segment {segment_id!r}", [reason])


@router.get("/segments", response_model=SegmentList)
async def list_segments(request: Request) -> SegmentList:
    """Every segment of the definitions file."""
    reads = _reads(request)
    return SegmentList(segments=[_shown(reads, s) for s in reads.definitions.segments.values()])


@router.get("/segments/{segment_id}", response_model=Segment)
async def get_segment(request: Request, segment_id: SegmentId) -> Segment | JSONResponse:
    """One segment's definition."""
    reads = _reads(request)
    segment = reads.definitions.segments.get(segment_id)
    return _not_found(segment_id) if segment is None else _shown(reads, segment)


@router.get("/segments/{segment_id}/members", response_model=SegmentMembers)
async def segment_members(
    request: Request,
    segment_id: SegmentId,
    as_of: Annotated[ApiTime | None, Query(description="ISO-8601 time; default now")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> SegmentMembers | JSONResponse:
    """The customers in the segment now or ``as_of`` a moment.

    At or after a customer's latest event, computed from their state at read
    time (rolling windows slide exactly); before it, from the recorded changes.
    """
    reads = _reads(request)
    if segment_id not in reads.definitions.segments:
        return _not_found(segment_id)
    moment = datetime.now(UTC) if as_of is None else as_of
    members = await asyncio.to_thread(reads.members, segment_id, moment)
    return SegmentMembers(
        segment=segment_id,
        as_of=moment,
        count=len(members),
        members=members[:limit],
        backfilled=False,
    )


@router.get("/segments/{segment_id}/sizes", response_model=SegmentSizes)
async def segment_sizes(
    request: Request,
    segment_id: SegmentId,
    end: Annotated[ApiTime | None, Query(description="ISO-8601 time; default now")] = None,
    days: Annotated[int, Query(ge=1, le=90)] = 30,
) -> SegmentSizes | JSONResponse:
    """The segment's size at ``end`` and at the same time on each of the days before it."""
    reads = _reads(request)
    if segment_id not in reads.definitions.segments:
        return _not_found(segment_id)
    last = datetime.now(UTC) if end is None else end
    instants = [last - timedelta(days=back) for back in range(days - 1, -1, -1)]
    if instants[0].year < 1970:
        reason = {"field": "end", "rule": "after_1970", "message": "the sizes start before 1970"}
        return problem(400, "end: the sizes start before 1970", [reason])
    counts = await asyncio.to_thread(reads.sizes, segment_id, instants)
    return SegmentSizes(
        segment=segment_id,
        sizes=[SegmentSize(at=at, size=n) for at, n in zip(instants, counts, strict=True)],
        backfilled=False,
    )
