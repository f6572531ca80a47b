"""Administration: write keys per source and the dead-letter list. Requires the admin key."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field, field_validator

from api.auth import GatewayDep, require_admin_key
from api.cors import origin_problem
from api.dependencies import Gateway
from api.errors import ApiProblem, error_responses
from projections.write_keys import WriteKey

router = APIRouter(
    prefix="/v1",
    tags=["admin"],
    dependencies=[Depends(require_admin_key)],
    responses=error_responses(400, 401, 403, 404),
)


Origins = Annotated[
    list[Annotated[str, Field(max_length=300)]],
    Field(
        max_length=100,
        description="Browser origins (https://shop.example) that may send with the key; "
        "empty: the gateway's default (JOURNEYS_INGEST_ORIGINS)",
    ),
]


def _checked_origins(origins: list[str]) -> list[str]:
    for origin in origins:
        problem = origin_problem(origin)
        if problem:
            raise ValueError(f"{origin!r}: {problem}")
    return origins


class WriteKeyIn(BaseModel):
    """A new write key for a source (a storefront, an app, an import)."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    allowed_origins: Origins = []

    _origins = field_validator("allowed_origins")(_checked_origins)


class OriginsIn(BaseModel):
    """The browser origins a write key accepts from now on."""

    allowed_origins: Origins

    _origins = field_validator("allowed_origins")(_checked_origins)


class WriteKeyOut(BaseModel):
    """A write key without its secret; ``key_id`` is the source id events carry.

    The development key from settings (JOURNEYS_WRITE_KEY) is listed as ``dev``,
    with no creation time: it is not stored, and is changed in the settings.
    """

    key_id: str
    name: str
    created_at: datetime | None
    revoked_at: datetime | None
    active: bool
    allowed_origins: list[str]


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
        "allowed_origins": list(key.allowed_origins),
    }


def _registry(gateway: GatewayDep) -> Any:
    if gateway.write_keys is None or gateway.write_keys.store is None:
        raise HTTPException(404, "this gateway has no write-key store")
    return gateway.write_keys


# The write-key registry with its store (Any: the registry's store is optional in its type).
Registry = Annotated[Any, Depends(_registry)]


@router.post("/write-keys", response_model=CreatedWriteKey, status_code=201)
async def create_write_key(body: WriteKeyIn, registry: Registry) -> CreatedWriteKey:
    """Create a write key for a source; the answer is the only time the key is shown."""
    key, secret = await asyncio.to_thread(
        registry.store.create, body.name, tuple(body.allowed_origins)
    )
    registry.invalidate()
    return CreatedWriteKey(**_out(key), write_key=secret)


@router.get("/write-keys", response_model=list[WriteKeyOut])
async def list_write_keys(registry: Registry) -> list[WriteKeyOut]:
    """Every write key, newest first, revoked ones included; secrets are never shown."""
    keys = await asyncio.to_thread(registry.store.all_keys)
    static = [
        WriteKeyOut(
            key_id=source,
            name="development key (JOURNEYS_WRITE_KEY)",
            created_at=None,
            revoked_at=None,
            active=True,
            allowed_origins=[],
        )
        for source in registry.static_sources()
    ]
    return [*[WriteKeyOut(**_out(key)) for key in keys], *static]


class ActiveWriteKey(BaseModel):
    """What an ingest gateway checks a write key against: never the key itself."""

    digest: str = Field(description="sha256 of the key, hex")
    name: str
    allowed_origins: list[str]


@router.get("/write-keys/active", response_model=dict[str, ActiveWriteKey])
async def active_write_keys(registry: Registry) -> dict[str, ActiveWriteKey]:
    """The active keys by key id, as digests: what each ingest gateway caches
    (``JOURNEYS_WRITE_KEY_CACHE_S``) to check keys without ClickHouse."""
    digests = await asyncio.to_thread(registry.store.active_digests)
    return {
        key_id: ActiveWriteKey(digest=digest, name=name, allowed_origins=list(origins))
        for key_id, (digest, name, origins) in digests.items()
    }


@router.put("/write-keys/{key_id}/origins", response_model=WriteKeyOut)
async def set_write_key_origins(key_id: str, body: OriginsIn, registry: Registry) -> WriteKeyOut:
    """Replace the browser origins a key accepts (empty list: the gateway's default)."""
    key = await asyncio.to_thread(registry.store.set_origins, key_id, tuple(body.allowed_origins))
    if key is None:
        raise ApiProblem(404, "key_id", "exists", f"no write key {key_id!r}")
    registry.invalidate()
    return WriteKeyOut(**_out(key))


@router.delete("/write-keys/{key_id}", response_model=WriteKeyOut)
async def revoke_write_key(key_id: str, registry: Registry) -> WriteKeyOut:
    """Revoke a write key: refused at once here, within the cache time on other replicas."""
    key = await asyncio.to_thread(registry.store.revoke, key_id)
    if key is None:
        raise ApiProblem(404, "key_id", "exists", f"no write key {key_id!r}")
    registry.invalidate()
    return WriteKeyOut(**_out(key))


def _opened(gateway: Gateway, payload: str) -> str:
    """A dead letter's payload with its sealed parts opened, for the admin reading it;
    as stored when nothing opens (an erased customer's, a malformed one)."""
    if gateway.privacy is None or '"$enc"' not in payload:
        return payload
    try:
        opened = gateway.privacy.open_tree(orjson.loads(payload))
    except ValueError:  # not JSON, or a sealed value that does not open
        return payload
    if opened is None:
        return payload
    return opened if isinstance(opened, str) else orjson.dumps(opened).decode()


@router.get("/dead-letters", response_model=DeadLetterPage)
async def dead_letters(
    gateway: GatewayDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(max_length=200)] = None,
    source: Annotated[str | None, Query(max_length=64)] = None,
) -> DeadLetterPage:
    """Rejected events with their reasons, newest first, ``limit`` per page.

    ``before``: the ``next_before`` of the previous page; ``source``: one write key id.
    """
    if gateway.dead_letters is None:
        raise HTTPException(404, "this gateway keeps no dead-letter list")
    try:
        letters = await asyncio.to_thread(gateway.dead_letters.page, limit, before, source)
    except ValueError as error:
        raise ApiProblem(400, "query.before", "cursor", str(error)) from None
    payloads = await asyncio.to_thread(lambda: [_opened(gateway, d.payload) for d in letters])
    return DeadLetterPage(
        dead_letters=[
            DeadLetterOut(
                id=d.id,
                rejected_at=d.rejected_at,
                source=d.source,
                reasons=d.reasons,
                payload=payload,
            )
            for d, payload in zip(letters, payloads, strict=True)
        ],
        next_before=letters[-1].cursor if len(letters) == limit else None,
    )
