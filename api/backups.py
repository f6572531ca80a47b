"""Backups of the node's stores, taken by the node itself (admin key).

chdb opens a data folder in one process only, so `journeys backup` cannot copy
the embedded ClickHouse from outside: it asks the node, which holds the journey
worker between two batches while it copies (stack/backup.py).
"""

from __future__ import annotations

import asyncio
from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, field_validator

from api.auth import GatewayDep, require_admin_key
from api.dependencies import BackupControl, BackupInProgress
from api.errors import ApiProblem, error_responses

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin_key)],
    responses=error_responses(400, 401, 403, 404, 409),
)


def _backups(gateway: GatewayDep) -> BackupControl:
    if gateway.backups is None:
        raise ApiProblem(
            404,
            "backups",
            "not_available",
            "this process takes no backups: the embedded node (journeys node / up) does",
        )
    return gateway.backups


Backups = Annotated[BackupControl, Depends(_backups)]

Folder = Annotated[str, Field(min_length=1, max_length=4096)]


class BackupIn(BaseModel):
    """Where to put the backup: a folder per destination, each gets the same backup."""

    destinations: Annotated[list[Folder], Field(min_length=1, max_length=8)]
    keep: Annotated[
        int | None,
        Field(ge=1, le=100_000, description="afterwards keep only this many backups in each"),
    ] = None

    @field_validator("destinations")
    @classmethod
    def _absolute(cls, folders: list[str]) -> list[str]:
        for folder in folders:
            if not PurePosixPath(folder).is_absolute():
                raise ValueError(f"{folder!r}: must be an absolute path (on the node's machine)")
            if "\x00" in folder:
                raise ValueError(f"{folder!r}: must not contain NUL")
        return folders


class BackupOut(BaseModel):
    """A backup taken: its copies, the worker's position it corresponds to, its size."""

    name: str
    paths: list[str]
    created_at: str
    positions: dict[str, int] = Field(
        description="tracked offset per partition of the events topic"
    )
    held_s: float = Field(description="how long the journey worker was held")
    files: int
    bytes: int


@router.post("/backups", response_model=BackupOut, status_code=201)
async def take_backup(body: BackupIn, backups: Backups) -> dict[str, Any]:
    """Take a consistent backup of the node's stores into each destination folder."""
    try:
        return await asyncio.to_thread(backups.take, body.destinations, body.keep)
    except BackupInProgress as busy:
        raise ApiProblem(409, "backups", "in_progress", str(busy)) from None
    except ValueError as error:
        raise ApiProblem(400, "destinations", "destination", str(error)) from None
