"""Sign-in, users and the audit log: ``/v1/session``, ``/v1/users``, ``/v1/audit``."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from api.access import SESSION_COOKIE, AccessControl
from api.auth import CurrentPrincipal, GatewayDep, require_admin_key, require_read_key, source_of
from api.errors import ApiProblem, error_responses
from projections.access import AuditEntry, Role, UnknownUser, UserExists

RoleName = Literal["viewer", "analyst", "marketer", "admin"]

# The one answer to every failed sign-in: it never says which part was wrong.
_REFUSED = "unknown user or wrong password"


def access_of(gateway: GatewayDep) -> AccessControl:
    """The access store; 404 where this API was started without one (keys only)."""
    if gateway.access is None:
        raise ApiProblem(404, "path", "not_configured", "users and sessions are not enabled here")
    return gateway.access


AccessDep = Annotated[AccessControl, Depends(access_of)]


class SignIn(BaseModel):
    """A user name and password."""

    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class SessionOut(BaseModel):
    """Who is signed in, as what, and the token unsafe calls echo in ``X-CSRF-Token``."""

    actor: str
    role: str
    csrf_token: str | None = None


class NewUser(BaseModel):
    """A user to add."""

    name: str = Field(min_length=1, max_length=64)
    role: RoleName
    password: str = Field(min_length=10, max_length=1024)


class UserChange(BaseModel):
    """What to change of a user; unset fields stay."""

    role: RoleName | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=10, max_length=1024)


class UserOut(BaseModel):
    """A user, without the password."""

    name: str
    role: str
    disabled: bool
    created_at: str


session_router = APIRouter(prefix="/v1", tags=["access"])
users_router = APIRouter(
    prefix="/v1",
    tags=["access"],
    dependencies=[Depends(require_admin_key)],
    responses=error_responses(400, 401, 403, 404),
)


@session_router.post(
    "/session", response_model=SessionOut, responses=error_responses(400, 401, 404, 429)
)
async def sign_in(
    body: SignIn, request: Request, response: Response, access: AccessDep
) -> SessionOut:
    """Sign in: sets the session cookie (HttpOnly, SameSite=Strict) and returns the CSRF token."""
    source = source_of(request)
    who = f"{body.name}@{source}"
    wait = access.alerts.sign_in_locked(who)
    if wait:
        raise ApiProblem(
            429, "name", "too_many_failures", f"too many failed sign-ins; retry in {wait:.0f} s"
        )
    user = await asyncio.to_thread(access.store.signed_in, body.name, body.password)
    outcome = "allowed" if user is not None else "denied"
    entry = AuditEntry(
        actor=f"user:{body.name}",
        role=user.role.name if user else "",
        action="sign_in",
        target=body.name,
        source=source,
        outcome=outcome,
    )
    await asyncio.to_thread(access.store.record, entry)
    if user is None:
        failures = access.alerts.sign_in_failed(who)
        if failures is not None:
            await access.raise_alert(
                "sign_in_failures", f"user:{body.name}", source, {"failures": failures}
            )
        raise ApiProblem(401, "name", "sign_in_refused", _REFUSED)
    access.alerts.sign_in_succeeded(who)
    session_id, csrf = await asyncio.to_thread(
        access.store.open_session, user, access.session_hours
    )
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(access.session_hours * 3600),
        httponly=True,
        samesite="strict",
        secure=access.secure_cookies,
        path="/",
    )
    return SessionOut(actor=f"user:{user.name}", role=user.role.name, csrf_token=csrf)


guarded_session_router = APIRouter(
    prefix="/v1",
    tags=["access"],
    dependencies=[Depends(require_read_key)],
    responses=error_responses(400, 401, 403),
)


@guarded_session_router.get("/session", response_model=SessionOut)
async def who_am_i(principal: CurrentPrincipal) -> SessionOut:
    """The caller: a signed-in user (with the CSRF token) or a key."""
    return SessionOut(actor=principal.actor, role=principal.role.name, csrf_token=principal.csrf)


@guarded_session_router.delete("/session", status_code=204)
async def sign_out(principal: CurrentPrincipal, gateway: GatewayDep, response: Response) -> None:
    """Sign out: the session ends here and its cookie is cleared."""
    if principal.session_id is not None and gateway.access is not None:
        await asyncio.to_thread(gateway.access.store.close_session, principal.session_id)
    response.delete_cookie(SESSION_COOKIE, path="/")


@users_router.get("/users", response_model=list[UserOut])
async def list_users(access: AccessDep) -> list[dict[str, Any]]:
    """Every user with their role and state."""
    return [user.summary() for user in await asyncio.to_thread(access.store.users)]


@users_router.post(
    "/users", response_model=UserOut, status_code=201, responses=error_responses(409)
)
async def add_user(body: NewUser, access: AccessDep) -> dict[str, Any]:
    """Add a user who signs in with this password."""
    try:
        user = await asyncio.to_thread(
            access.store.add_user, body.name, Role[body.role], body.password
        )
    except UserExists as error:
        raise ApiProblem(409, "name", "exists", str(error)) from None
    except ValueError as error:
        field = "password" if "password" in str(error) else "name"
        raise ApiProblem(400, field, "invalid", str(error)) from None
    return user.summary()


@users_router.patch("/users/{name}", response_model=UserOut)
async def change_user(name: str, body: UserChange, access: AccessDep) -> dict[str, Any]:
    """Change a user's role, disable or enable them, or set a new password (ends sessions)."""
    try:
        user = await asyncio.to_thread(
            access.store.change_user,
            name,
            Role[body.role] if body.role else None,
            body.disabled,
            body.password,
        )
    except UnknownUser:
        raise ApiProblem(404, "name", "unknown", f"no user named {name!r}") from None
    return user.summary()


class AuditOut(BaseModel):
    """One audited act."""

    seq: int
    at: str
    actor: str
    role: str
    action: str
    target: str
    source: str
    outcome: str
    detail: dict[str, Any]


@users_router.get("/audit", response_model=list[AuditOut])
async def audit_log(
    access: AccessDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=200)] = None,
) -> list[dict[str, Any]]:
    """The audit log, newest first: sign-ins, admin acts, reads of personal data, alerts."""
    entries = await asyncio.to_thread(access.store.audit, limit, actor, action)
    return [entry.summary() for entry in entries]
