"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from api import (
    admin,
    analysis,
    backups,
    browser,
    customers,
    flows,
    ingest,
    metrics,
    outreach,
    privacy,
    segments,
    stages,
    unsubscribe,
    users,
)
from api.auth import GatewayDep
from api.body_limit import BodyLimit
from api.cors import CorsMiddleware, public_paths
from api.dashboard import install_dashboard
from api.dependencies import Gateway
from api.docs import install_docs
from api.errors import install_error_handlers, install_openapi


def create_api(gateway: Gateway) -> FastAPI:
    """The gateway's HTTP application, wired to ``gateway``'s collaborators."""
    app = FastAPI(
        title="Customer Journeys",
        version="0.1.0",
        description="Segment-compatible tracking API and customer-journey analysis.",
        # api/docs.py serves both pages with their assets from the package, not a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gateway
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(ingest.router)
    app.include_router(ingest.beacon_router)
    app.include_router(browser.router)
    app.include_router(customers.router)
    app.include_router(privacy.router)
    app.include_router(stages.router)
    app.include_router(segments.router)
    app.include_router(segments.admin_router)
    app.include_router(analysis.router)
    app.include_router(admin.router)
    app.include_router(backups.router)
    app.include_router(outreach.router)
    app.include_router(flows.router)
    app.include_router(flows.customer_router)
    app.include_router(unsubscribe.router)
    app.include_router(metrics.router)
    app.include_router(users.session_router)
    app.include_router(users.guarded_session_router)
    app.include_router(users.users_router)
    install_dashboard(app)
    install_docs(app)
    public = ingest_routes()
    # Inside CORS: a 413 carries the CORS headers too.
    app.add_middleware(BodyLimit, own=public_paths([*public, *segments.list_upload_routes()]))
    app.add_middleware(
        CorsMiddleware,
        policy=gateway.cors,
        registry=gateway.write_keys,
        public=public_paths(public),
    )

    @app.get("/health", tags=["operations"], responses={503: {"description": "Degraded"}})
    async def health(gateway: GatewayDep) -> JSONResponse:
        """Each component's state; 200 when all are healthy, else 503."""
        checks = gateway.health_checks
        results = await asyncio.gather(*(_checked(check) for check in checks.values()))
        components = dict(zip(checks.keys(), results, strict=True))
        healthy = all(component["ok"] for component in components.values())
        body = {"status": "ok" if healthy else "degraded", "components": components}
        return JSONResponse(status_code=200 if healthy else 503, content=body)

    return app


def create_ingest_api(gateway: Gateway) -> ASGIApp:
    """Only the tracking API and the browser SDKs' routes: an ingest gateway's own app.

    ``journeys gateway`` serves these and forwards every other path to the node
    (api/forwarding.py), whose app is :func:`create_api`. A single call's POST is
    answered by the lean route (``ingest.SingleCalls``), the rest by FastAPI; the
    CORS middleware wraps both.
    """
    app = FastAPI(title="Customer Journeys ingest", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway
    install_error_handlers(app)
    app.include_router(ingest.router)
    app.include_router(ingest.beacon_router)
    app.include_router(browser.router)
    return CorsMiddleware(
        ingest.SingleCalls(gateway, app),
        policy=gateway.cors,
        registry=gateway.write_keys,
        public=public_paths(ingest_routes()),
    )


def ingest_routes() -> list[BaseRoute]:
    """The routes an ingest gateway serves itself (CORS treats them as public)."""
    return [*ingest.router.routes, *ingest.beacon_router.routes, *browser.router.routes]


async def _checked(check: Any) -> dict[str, Any]:
    try:
        return dict(await asyncio.wait_for(check(), timeout=5))
    except Exception as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
