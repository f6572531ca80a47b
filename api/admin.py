"""Administration: write keys per source and the dead-letter list. Requires the admin key."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from api.auth import require_admin_key
from api.dependencies import Gateway
from api.errors import error_responses
from projections.write_keys import WriteKey

router = APIRouter(
    prefix="/v1",
    tags=["admin"],
    dependencies=[Depends(require_admin_key)],
    responses=error_responses(400, 401, 404),
)


class WriteKeyIn(BaseModel):
    """A new write key for a source (a storefront, an app, an import)."""

    name: Annotated[str, Field(min_length=1, max_length=200)]


class WriteKeyOut(BaseModel):
    """A write key without its secret; ``key_id`` is the source id events carry."""

    key_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    active: bool


class CreatedWriteKey(WriteKeyOut):
    """A new write key: ``write_key`` is shown this once and never stored in the clear."""

    write_key: str


class DeadLetterOut(BaseModel):
    """A rejected event and why."""

    id: str
    rejected_at: datetime
    source: str
    reasons: list[dict[str, Any]]
    payload: str


class DeadLetterPage(BaseModel):
    """A page of dead letters, newest first; pass ``next_before`` as ``before`` for more."""

    dead_letters: list[DeadLetterOut]
    next_before: str | None


def _out(key: WriteKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
        "active": key.active,
    }


def _registry(request: Request) -> Any:
    gateway: Gateway = request.app.state.gateway
    if gateway.write_keys is None or gateway.write_keys.store is None:
        raise HTTPException(404, "this gateway has no write-key store")
    return gateway.write_keys


@router.post("/write-keys", response_model=CreatedWriteKey, status_code=201)
async def create_write_key(body: WriteKeyIn, request: Request) -> CreatedWriteKey:
    """Create a write key for a source; the answer is the only time the key is shown."""
    registry = _registry(request)
    key, secret = await asyncio.to_thread(registry.store.create, body.name)
    registry.invalidate()
    return CreatedWriteKey(**_out(key), write_key=secret)


@router.get("/write-keys", response_model=list[WriteKeyOut])
async def list_write_keys(request: Request) -> list[WriteKeyOut]:
    """Every write key, newest first, revoked ones included; secrets are never shown."""
    registry = _registry(request)
    keys = await asyncio.to_thread(registry.store.all_keys)
    return [WriteKeyOut(**_out(key)) for key in keys]


@router.delete("/write-keys/{key_id}", response_model=WriteKeyOut)
async def revoke_write_key(key_id: str, request: Request) -> WriteKeyOut:
    """Revoke a write key: refused at once here, within the cache time on other replicas."""
    registry = _registry(request)
    key = await asyncio.to_thread(registry.store.revoke, key_id)
    if key is None:
        raise HTTPException(404, f"no write key {key_id!r}")
    registry.invalidate()
    return WriteKeyOut(**_out(key))


@router.get("/dead-letters", response_model=DeadLetterPage)
async def dead_letters(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(max_length=200)] = None,
    source: Annotated[str | None, Query(max_length=64)] = None,
) -> DeadLetterPage:
    """Rejected events with their reasons, newest first, ``limit`` per page.

    ``before``: the ``next_before`` of the previous page; ``source``: one write key id.
    """
    gateway: Gateway = request.app.state.gateway
    if gateway.dead_letters is None:
        raise HTTPException(404, "this gateway keeps no dead-letter list")
    try:
        letters = await asyncio.to_thread(gateway.dead_letters.page, limit, before, source)
    except ValueError as error:
        raise HTTPException(400, f"before: {error}") from None
    return DeadLetterPage(
        dead_letters=[
            DeadLetterOut(
                id=d.id,
                rejected_at=d.rejected_at,
                source=d.source,
                reasons=d.reasons,
                payload=d.payload,
            )
            for d in letters
        ],
        next_before=letters[-1].cursor if len(letters) == limit else None,
    )
