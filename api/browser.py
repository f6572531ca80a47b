"""What the browser SDKs fetch before they send: their settings, served for a write key.

analytics.js (``@segment/analytics-next``) reads ``<cdn>/v1/projects/<key>/settings``
when loaded by Segment's snippet with ``analytics._cdn`` set to this API;
RudderStack's SDK reads ``<configUrl>/sourceConfig/?writeKey=<key>`` when
loaded with ``configUrl`` set to this API. Both answers point the SDK at this
API and switch off what would call the vendors' own servers (metrics, error
reports, device-mode destinations). See README, "Tracking from the browser".
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from api.auth import GatewayDep, basic_user
from api.dependencies import Gateway
from api.errors import error_responses, problem

router = APIRouter(tags=["ingest"])

_UNKNOWN_KEY = {"field": "writeKey", "rule": "write_key", "message": "missing, unknown or revoked"}


async def _source(gateway: Gateway, key: str | None) -> str | None:
    if gateway.write_keys is not None:
        return await gateway.write_keys.source_of(key)
    return "default" if gateway.keys.can_write(key) else None


@router.get(
    "/v1/projects/{write_key}/settings",
    summary="analytics.js settings for a write key (the shape Segment's CDN serves)",
    # The key is in the path: analytics.js fetches its settings with no credentials.
    responses=error_responses(404),
)
async def segment_settings(write_key: str, request: Request, gateway: GatewayDep) -> JSONResponse:
    """Sends analytics.js's events here (``apiHost``), nothing to Segment: no metrics."""
    if await _source(gateway, write_key) is None:
        return problem(404, "no such write key", [_UNKNOWN_KEY])
    # The host the browser reached this API by is the one to send events to.
    api_host = f"{request.url.netloc}{request.scope.get('root_path', '')}/v1"
    body: dict[str, Any] = {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": request.url.scheme,
                "unbundledIntegrations": [],
            }
        },
        "plan": {"track": {"__default": {"enabled": True, "integrations": {}}}},
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }
    return JSONResponse(body)


@router.get(
    "/sourceConfig",
    summary="RudderStack browser SDK source configuration for a write key",
    # The key is the Basic user or ?writeKey=, as the SDK sends it.
    responses=error_responses(400, 401),
)
@router.get("/sourceConfig/", include_in_schema=False)
async def rudderstack_source_config(
    request: Request,
    gateway: GatewayDep,
    write_key: Annotated[str | None, Query(alias="writeKey", max_length=200)] = None,
) -> JSONResponse:
    """A source with no device-mode destinations; error and metrics reports off."""
    key = basic_user(request) or write_key
    source = await _source(gateway, key)
    if source is None:
        return problem(
            401,
            "a valid write key is required (HTTP Basic user, or ?writeKey=)",
            [_UNKNOWN_KEY],
        )
    body = {
        "isHosted": False,
        "source": {
            "id": source,
            "name": source,
            "writeKey": key,
            "enabled": True,
            "workspaceId": "journeys",
            "config": {
                "statsCollection": {
                    "errors": {"enabled": False},
                    "metrics": {"enabled": False},
                }
            },
            "destinations": [],
        },
    }
    return JSONResponse(body)
