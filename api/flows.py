"""Journey flows (issue 18): the flows in force, validation, and backtests over history.

Marketers' routes (admin key or a marketer's session), as outreach's are; changes
(PUT / DELETE /v1/flows/{id}, pause, resume) are admins', audited, as segments'
are. The flows in force are stored in the event store's database, seeded from
the flows file (JOURNEYS_FLOWS_FILE) the first time; the worker takes a change
within seconds. A backtest runs the stored flow, or a draft given in the body,
over the event log in event time and sends nothing (docs/architecture.md,
"Journey flows").
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.auth import GatewayDep, require_admin_key, require_read_key
from api.dependencies import FlowControl
from api.errors import error_responses, problem
from api.times import ApiTime
from journeys.flows.definitions import FlowError, parse_flows
from projections.flow_definition_store import FlowConflict

MAX_BACKTEST_DAYS = 400


def _flows(gateway: GatewayDep) -> FlowControl:
    if gateway.flows is None:
        raise HTTPException(503, "flows are not configured in this process")
    flows: FlowControl = gateway.flows
    return flows


Flows = Annotated[FlowControl, Depends(_flows)]
FlowId = Annotated[str, Path(description="the flow's id", max_length=64)]
CustomerId = Annotated[str, Path(description="the customer key", max_length=255)]

router = APIRouter(
    prefix="/v1/flows",
    tags=["flows"],
    dependencies=[Depends(require_admin_key)],
    responses=error_responses(400, 401, 403, 404, 503),
)


class BacktestIn(BaseModel):
    """The window of history to run the flow over, and optionally a draft of the flow."""

    start: ApiTime = Field(alias="from", description="inclusive")
    end: ApiTime = Field(alias="to", description="exclusive")
    definition: dict[str, Any] | None = Field(
        default=None, description="a draft: the flow's table as in the flows file"
    )


# The validate route's body: JSON or a flows file's TOML text (the dashboard's editor).
_VALIDATE_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "description": 'a flows document ({"flows": {id: {...}}}), or with flow_id '
                "one flow's table",
            }
        },
        "application/toml": {"schema": {"type": "string", "description": "a flows file"}},
    },
}
TOML_TYPES = frozenset({"application/toml", "text/toml", "text/plain"})


def _invalid(error: FlowError, status: int = 400) -> JSONResponse:
    reasons = [
        {"field": path or "body", "rule": "flow", "message": message}
        for path, message in error.errors
    ]
    first = reasons[0]
    return problem(status, f"{first['field']}: {first['message']}", reasons)


def _not_found(flow_id: str) -> JSONResponse:
    reason = {"field": "flow_id", "rule": "exists", "message": f"no flow {flow_id!r}"}
    return problem(404, f"flow_id: no flow {flow_id!r}", [reason])


@router.get("", summary="List the flows in force")
async def list_flows(
    flows: Flows,
    include_deleted: Annotated[
        bool,
        Query(
            description="also each deleted flow whose runs left facts (their results stay "
            "readable: runs inside finish on their version), with deleted true"
        ),
    ] = False,
) -> dict[str, Any]:
    """Each flow's newest version: id, version, name, re-entry policy, node kinds,
    whether it is paused (since when, and its ended pauses) or deleted."""
    return {"flows": await asyncio.to_thread(flows.flows, include_deleted)}


@router.post(
    "/validate", summary="Validate a flows document", openapi_extra={"requestBody": _VALIDATE_BODY}
)
async def validate_flows(
    request: Request,
    flow_id: Annotated[
        str | None,
        Query(max_length=64, description="the body is this one flow's table, not a document"),
    ] = None,
) -> Any:
    """JSON, or TOML (``Content-Type: application/toml``) as in the flows file: 200 with
    each flow's summary and its definition as JSON (what ``PUT /v1/flows/{id}`` and a
    backtest's ``definition`` take), or 400 with every error naming the node and field."""
    raw = await request.body()
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = raw.decode("utf-8")
        if media in TOML_TYPES:
            document: Any = tomllib.loads(text)
        else:
            document = json.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as error:
        kind = "TOML" if media in TOML_TYPES else "JSON"
        return _invalid(FlowError([("body", f"not valid {kind}: {error}")]))
    if flow_id is not None:
        document = {"flows": {flow_id: document}}
    try:
        parsed = parse_flows(document)
    except FlowError as error:
        return _invalid(error)
    return {
        "valid": True,
        "flows": [{**flow.summary(), "definition": _plain(flow.source)} for flow in parsed],
    }


def _plain(table: Any) -> Any:
    """A definition as JSON data (TOML's dates and times as ISO-8601 text)."""
    return json.loads(
        json.dumps(
            table,
            default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v),
        )
    )


@router.get("/{flow_id}", summary="One flow as defined")
async def get_flow(flow_id: FlowId, flows: Flows) -> Any:
    found = await asyncio.to_thread(flows.flow, flow_id)
    return _not_found(flow_id) if found is None else found


@router.get("/{flow_id}/results", summary="A flow's live results, node by node")
async def flow_results(
    flow_id: FlowId,
    flows: Flows,
    version: Annotated[
        int | None, Query(ge=1, description="only the runs entered on this version")
    ] = None,
    start: Annotated[
        ApiTime | None, Query(alias="from", description="only runs entered from this time on")
    ] = None,
    end: Annotated[
        ApiTime | None, Query(alias="to", description="only runs entered before this time")
    ] = None,
) -> Any:
    """Counted from the decisions the worker recorded (all versions, or the runs entered
    on ``version`` and in ``[from, to)``: a cohort followed to now): customers entered,
    inside now, messages per channel, skipped by reason, left by reason, converted; per
    node reached, waiting now, sent, skipped by reason, deliveries (delivered, failed:
    retried to the end, pending, skipped: no address) and conversions where the run
    stood; and treatment against holdout conversion, the difference and its 95 %
    interval (the backtest's comparison). A deleted flow's runs finish, so its results
    stay (``deleted``: true, counted against its newest recorded version)."""
    if start is not None and end is not None and end <= start:
        reason = {"field": "to", "rule": "after_from", "message": "must be after from"}
        return problem(400, "to: must be after from", [reason])
    try:
        shown = await asyncio.to_thread(flows.results, flow_id, version, start, end)
    except LookupError as error:
        raise HTTPException(503, str(error)) from error
    if shown is None and version is not None:
        message = f"flow {flow_id!r} has no version {version} recorded"
        reason = {"field": "version", "rule": "exists", "message": message}
        return problem(404, f"version: {message}", [reason])
    return _not_found(flow_id) if shown is None else shown


MAX_NODE_PAGE = 500


@router.get("/{flow_id}/nodes/{node_id}/customers", summary="Who is at a node of a flow")
async def node_customers(
    flow_id: FlowId,
    node_id: Annotated[str, Path(description="the node's id", max_length=64)],
    flows: Flows,
    limit: Annotated[int, Query(ge=1, le=MAX_NODE_PAGE, description="customers per page")] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="customers skipped")] = 0,
) -> Any:
    """The customers whose run stands at the node now (``at_node``: ``now``, waiting
    until ``waiting_until``), newest first, then each earlier arrival of a run that went
    on (``passed``), newest first; ``now`` and ``passed`` count them all. Any version's
    node, a deleted flow's too (its runs finish)."""
    try:
        found = await asyncio.to_thread(flows.node_customers, flow_id, node_id, limit, offset)
    except LookupError as error:
        raise HTTPException(503, str(error)) from error
    except ValueError as error:
        reason = {"field": "node_id", "rule": "exists", "message": str(error)}
        return problem(404, f"node_id: {error}", [reason])
    return _not_found(flow_id) if found is None else found


@router.put(
    "/{flow_id}",
    summary="Define or replace a flow",
    responses={201: {"description": "Defined (it did not exist)"}, **error_responses(409, 422)},
)
async def put_flow(flow_id: FlowId, body: dict[str, Any], flows: Flows) -> Any:
    """The flow's table as in the flows file (``version``, ``nodes``, …).

    201 new, 200 replaced. A 422 names the node and the field
    (``flows.x.nodes.reminder.body: unknown variable 'cart'``); a 409 refuses a
    changed flow without a new version (customers inside finish on the version
    they entered, so a version must mean one definition) or a lower version.
    Re-putting the same definition is a 200 that changes nothing. The worker
    takes the change within seconds, with no restart.
    """
    try:
        existed, shown = await asyncio.to_thread(flows.put, flow_id, body)
    except FlowConflict as error:
        return _invalid(error, 409)
    except FlowError as error:
        return _invalid(error, 422)
    except TypeError as error:  # a value the store cannot keep (orjson)
        reason = {"field": "body", "rule": "storable", "message": str(error)}
        return problem(422, f"body: {error}", [reason])
    except LookupError as error:
        raise HTTPException(503, str(error)) from error
    return shown if existed else JSONResponse(status_code=201, content=shown)


@router.delete("/{flow_id}", summary="Take a flow out of force")
async def delete_flow(flow_id: FlowId, flows: Flows) -> Any:
    """No new runs; customers inside finish on the version they entered (their facts,
    results and the why route stay)."""
    return await _answer(flows.delete, flow_id)


@router.post("/{flow_id}/pause", summary="Pause a flow")
async def pause_flow(flow_id: FlowId, flows: Flows) -> Any:
    """No new entries and nothing sent while paused. Customers inside are held where
    they are; what they do meanwhile (a purchase, an unsubscribe) is kept. On resume
    their due steps are taken in event time, as after an outage: one who converted
    during the pause leaves converted, and a send that came due longer than the
    trigger grace (JOURNEYS_TRIGGER_GRACE_S) before the resume is skipped ``expired``
    rather than sent late. Entries are judged by their event time: one stamped during
    the pause is refused (``Skipped`` paused) even when it arrives after the resume,
    and one stamped before it that arrives during it enters on resume. Pausing a
    paused flow changes nothing."""
    return await _answer(flows.pause, flow_id)


@router.post("/{flow_id}/resume", summary="Resume a paused flow")
async def resume_flow(flow_id: FlowId, flows: Flows) -> Any:
    """The flow goes on from now; the pause is kept as an ended one (``pauses``), so
    an entry stamped inside it that arrives later is still refused."""
    return await _answer(flows.resume, flow_id)


async def _answer(change: Any, flow_id: str) -> Any:
    """``change(flow_id)`` off the event loop: 404 for None, 503 for LookupError."""
    try:
        shown = await asyncio.to_thread(change, flow_id)
    except LookupError as error:
        raise HTTPException(503, str(error)) from error
    return _not_found(flow_id) if shown is None else shown


@router.post("/{flow_id}/backtest", summary="Run a flow over recorded history, sending nothing")
async def backtest_flow(flow_id: FlowId, body: BacktestIn, flows: Flows) -> Any:
    """Who would have entered, the paths taken, messages per channel and day, caps and
    quiet hours hit, conversions, and holdout against treatment (in event time)."""
    if body.end <= body.start:
        reason = {"field": "to", "rule": "after_from", "message": "must be after from"}
        return problem(400, "to: must be after from", [reason])
    if body.end - body.start > timedelta(days=MAX_BACKTEST_DAYS):
        message = f"the window must be at most {MAX_BACKTEST_DAYS} days"
        return problem(
            400, f"to: {message}", [{"field": "to", "rule": "window", "message": message}]
        )
    try:
        report = await asyncio.to_thread(
            flows.backtest, flow_id, body.definition, body.start, body.end
        )
    except FlowError as error:
        return _invalid(error)
    return _not_found(flow_id) if report is None else report


customer_router = APIRouter(
    prefix="/v1/customers",
    tags=["flows"],
    dependencies=[Depends(require_read_key)],
    responses=error_responses(400, 401, 403, 404, 503),
)


@customer_router.get(
    "/{customer_id}/flows", summary="Why a customer did or didn't get each flow's messages"
)
async def customer_flows(customer_id: CustomerId, gateway: GatewayDep, flows: Flows) -> Any:
    """Each flow the customer has a state in (where they are, until when they wait) and
    every decision in event time, each with the reason: entered, node reached, waiting,
    sent, skipped (holdout, consent, quiet hours, cap, expired, template, re-entry),
    converted, left."""
    if gateway.privacy is not None and gateway.privacy.is_erased(customer_id):
        return _no_customer(customer_id)
    found = await asyncio.to_thread(flows.customer_flows, customer_id)
    if found is None:
        raise HTTPException(503, "flows do not run in this process")
    if not found["flows"]:
        return _no_customer(customer_id)
    return found


def _no_customer(customer_id: str) -> JSONResponse:
    message = f"no flow has a state for customer {customer_id!r}"
    reason = {"field": "customer_id", "rule": "exists", "message": message}
    return problem(404, f"customer_id: {message}", [reason])
