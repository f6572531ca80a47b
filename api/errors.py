"""Error responses: every rejection names the field and the rule; never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


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
        return problem(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(500, "internal error; it has been logged")
