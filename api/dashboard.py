"""The marketers' dashboard (static page + Chart.js) and the live counters it polls."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from api import outreach
from api.auth import GatewayDep, require_read_key
from api.errors import error_responses

STATIC = Path(__file__).resolve().parent / "static"
RATE_WINDOW_S = 60

stats_router = APIRouter(
    prefix="/v1",
    tags=["operations"],
    dependencies=[Depends(require_read_key)],
    responses=error_responses(400, 401, 403, 503),
)


class LiveStats(BaseModel):
    """Counters for the dashboard's live panel."""

    events_last_minute: int
    events_per_second: float
    worker_lag: int | None
    # The backlog where the API shares the worker's process: events and the oldest one's age.
    backlog_events: int | None = None
    backlog_seconds: float | None = None
    # Rejected events kept in the dead-letter log; None when this process keeps none.
    dead_letters: int | None = None


@stats_router.get("/stats", response_model=LiveStats)
async def stats(gateway: GatewayDep) -> LiveStats:
    """Events received in the last minute, and how far the worker is behind."""
    recent = await asyncio.to_thread(gateway.event_log.received_since, RATE_WINDOW_S)
    worker = gateway.health_checks.get("worker")
    lag = (await worker()).get("lag") if worker else None
    letters = gateway.dead_letters
    dead = await asyncio.to_thread(letters.count) if letters is not None else None
    backlog = gateway.backlog
    return LiveStats(
        events_last_minute=recent,
        events_per_second=round(recent / RATE_WINDOW_S, 2),
        worker_lag=lag,
        dead_letters=dead,
        backlog_events=backlog.gauge.events() if backlog else None,
        backlog_seconds=round(backlog.gauge.seconds(), 3) if backlog else None,
    )


# The trigger log is read-only: read-key holders see it here; re-delivery stays admin-only.
stats_router.add_api_route(
    "/triggers",
    outreach.list_triggers,
    methods=["GET"],
    summary="The trigger log: recent triggers with their delivery state",
)


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at /dashboard. The page holds no data: it asks for the read key."""
    app.include_router(stats_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "dashboard" / "index.html")
