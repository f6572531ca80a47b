"""Error responses: every rejection names the field and the rule; never a traceback."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorItem(BaseModel):
    """One problem: the field (``userId``, ``properties.price``, ``query.as_of``, ``body``),
    the rule it broke (``less_than_equal``, ``time_range``…) and a sentence."""

    model_config = ConfigDict(extra="allow")  # a batch's items also carry their ``index``

    field: str
    rule: str
    message: str


class ErrorBody(BaseModel):
    """Every 4xx and 5xx: ``success`` false, a message, and the problems by field."""

    model_config = ConfigDict(extra="allow")  # a batch's 400 also counts accepted/rejected

    success: Literal[False] = False
    message: str
    errors: list[ErrorItem] | None = None


_MEANING = {
    400: "Invalid request: each problem names the field and the rule",
    401: "Missing, unknown or revoked key, or no session",
    403: "The caller's role may not do this (the role needed is named), or no CSRF token",
    404: "Not found",
    409: "Exists already, or conflicts with work in progress (retry once it is done)",
    413: "Body too large (ingest: per call and per batch; a list upload 4 MiB; else 1 MiB)",
    410: "Retired: outreach runs on flows; the answer names the route that replaces it",
    415: "Unsupported Content-Type or Content-Encoding",
    422: "A definition that breaks a rule: each problem names the node and the field",
    429: "Rate limit of the write key exceeded; see Retry-After",
    503: "A component is unavailable; retry later",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, each with the error body."""
    return {status: {"model": ErrorBody, "description": _MEANING[status]} for status in statuses}


def _documented(status: int) -> dict[str, Any]:
    """A response of the error body in the finished document (api/body_limit.py's 413)."""
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {"description": _MEANING[status], "content": {"application/json": {"schema": schema}}}


def problem(
    status: int,
    message: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON error body: ``{"success": false, "message": ..., "errors": [...]}``."""
    body: dict[str, Any] = {"success": False, "message": message}
    if errors:
        body["errors"] = errors
    return JSONResponse(status_code=status, content=body, headers=headers)


class ApiProblem(Exception):
    """Raised by a handler or dependency: answered as :func:`problem` naming one field and rule."""

    def __init__(self, status: int, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status = status
        self.reason = {"field": field, "rule": rule, "message": message}


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's validation errors as field / rule / message, without the 'body' prefix."""
    problems = []
    for item in exc.errors():
        location = [str(part) for part in item.get("loc", ()) if part != "body"]
        problems.append(
            {
                "field": ".".join(location) or "body",
                "rule": item.get("type", "invalid"),
                "message": item.get("msg", "invalid"),
            }
        )
    return problems


# What an HTTP error raised without a named field is about (an unknown route, a
# missing key, a body over the limit): every error body names a field and a rule.
_SUBJECT = {
    401: ("Authorization", "authenticated"),
    404: ("path", "exists"),
    405: ("method", "allowed"),
    413: ("body", "size"),
    415: ("content-type", "content_type"),
    503: ("service", "available"),
}


def _subject(status: int, message: str) -> list[dict[str, Any]] | None:
    """The one error item of an HTTP error raised with only a status and a sentence."""
    found = _SUBJECT.get(status)
    if found is None:
        return None
    field, rule = found
    return [{"field": field, "rule": rule, "message": message}]


def _unreadable_body(exc: StarletteHTTPException) -> dict[str, str] | None:
    """FastAPI's "There was an error parsing the body" with its cause named.

    FastAPI parses JSON bodies with ``json.loads`` and answers any failure but a
    syntax error with that bare sentence; the cause is chained to the exception.
    """
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, RecursionError):
        return {"field": "body", "rule": "max_depth", "message": "the JSON is nested too deeply"}
    return {"field": "body", "rule": "json_invalid", "message": f"unreadable body: {cause}"}


def install_error_handlers(app: FastAPI) -> None:
    """400 for invalid requests, JSON for HTTP errors, 500 without details as a last resort."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        return problem(400, "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)

    @app.exception_handler(ApiProblem)
    async def _problem(_: Request, exc: ApiProblem) -> JSONResponse:
        return problem(exc.status, str(exc), [exc.reason])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        unreadable = _unreadable_body(exc)
        if unreadable is not None:
            return problem(400, f"body: {unreadable['message']}", [unreadable])
        message = str(exc.detail)
        subject = _subject(exc.status_code, message)
        if subject is not None:
            message = f"{subject[0]['field']}: {message}"
        return problem(exc.status_code, message, subject, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(500, "internal error; it has been logged")


def install_openapi(app: FastAPI) -> None:
    """The OpenAPI document without FastAPI's 422: request validation answers 400
    (``install_error_handlers``), documented on each route with :class:`ErrorBody`."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    # FastAPI's own; a route that answers 422 itself documents it (segments).
                    if responses.get("422", {}).get("description") != _MEANING[422]:
                        responses.pop("422", None)
                    if "requestBody" in operation and "413" not in responses:
                        responses["413"] = _documented(413)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]
