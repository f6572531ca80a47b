"""Who calls, and whether they may: keys for machines, sessions for people.

Write keys (Segment style: HTTP Basic user, empty password) are checked by
ingest itself. Every other guarded route runs :func:`authorize`, which finds
the caller (a read or admin key, or a signed-in user's session cookie), looks
the route up in ``api.access.ROUTE_ACCESS``, checks the role and, for a
session, the CSRF token of an unsafe call, and writes audited calls down.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBasic, HTTPBearer
from starlette.requests import HTTPConnection

from api.access import (
    CSRF_HEADER,
    ROUTE_ACCESS,
    SAFE_METHODS,
    SESSION_COOKIE,
    UNLISTED,
    Principal,
)
from api.dependencies import Gateway
from api.errors import ApiProblem
from projections.access import AuditEntry, Role


class _DocumentedBasic(HTTPBasic):
    """The write key's scheme, for the OpenAPI document only: ingest reads the key
    itself (HTTP Basic or ``writeKey`` in the body), so this never refuses."""

    async def __call__(self, request: HTTPConnection) -> None:
        return None


write_key_scheme = _DocumentedBasic(
    scheme_name="writeKey",
    auto_error=False,
    description="The write key as the HTTP Basic user, empty password (Segment's "
    "convention); a `writeKey` field in the body works too.",
)
read_key_scheme = HTTPBearer(
    scheme_name="readKey",
    auto_error=False,
    description="A read key (an analyst) or an admin key: `Authorization: Bearer <key>`.",
)
admin_key_scheme = HTTPBearer(
    scheme_name="adminKey", auto_error=False, description="`Authorization: Bearer <admin key>`."
)
session_scheme = APIKeyCookie(
    name=SESSION_COOKIE,
    scheme_name="session",
    auto_error=False,
    description="A signed-in user's session (`POST /v1/session`); unsafe calls also send "
    f"the session's CSRF token in `{CSRF_HEADER}`.",
)
# The schemes as dependencies: declared on a route, they put its security in the document.
WriteKey = Depends(write_key_scheme)
_ReadKey = Annotated[HTTPAuthorizationCredentials | None, Depends(read_key_scheme)]
_AdminKey = Annotated[HTTPAuthorizationCredentials | None, Depends(admin_key_scheme)]
_Session = Annotated[str | None, Depends(session_scheme)]


def gateway_of(request: HTTPConnection) -> Gateway:
    """The gateway's collaborators, as the app factory put them."""
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(gateway_of)]


def basic_user(request: Request) -> str | None:
    """The user of an HTTP Basic ``Authorization`` header, if there is one."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return None
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0]


def presented_read_key(request: Request) -> str | None:
    """A read or admin key from ``Authorization: Bearer <key>`` or HTTP Basic."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return basic_user(request)


def resolve_principal(request: Request, gateway: Gateway) -> Principal | None:
    """The caller: a presented key wins over a session cookie; None when neither is valid."""
    key = presented_read_key(request)
    if key is not None:
        if gateway.keys.can_administer(key):
            return Principal(actor="key:admin", role=Role.admin)
        if gateway.keys.can_read(key):
            return Principal(actor="key:read", role=Role.analyst)
        return None
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id and gateway.access is not None:
        found = gateway.access.store.session(session_id)
        if found is not None:
            user, csrf = found
            return Principal(
                actor=f"user:{user.name}", role=user.role, session_id=session_id, csrf=csrf
            )
    return None


def source_of(request: HTTPConnection) -> str:
    """The caller's address as the socket saw it (forwarded headers are not trusted).

    A request on the node's private Unix socket (no peer address) came through an
    ingest gateway (api/forwarding.py), which says whom it came from."""
    if request.client:
        return request.client.host
    return request.headers.get("x-journeys-client", "")


def route_template(request: Request) -> str:
    """The matched route's path template (``/v1/customers/{customer_id}``)."""
    route = request.scope.get("route")
    return str(getattr(route, "path", request.url.path))


async def authorize(request: Request, gateway: Gateway) -> Principal:
    """401 without a valid key or session, 403 below the route's role or without CSRF."""
    method = request.method
    template = route_template(request)
    rule = ROUTE_ACCESS.get((method, template), UNLISTED)
    if gateway.access is None:
        principal = resolve_principal(request, gateway)
    else:
        principal = await asyncio.to_thread(resolve_principal, request, gateway)
    if principal is None:
        needed = "an admin key" if rule.role is Role.admin else "a read key"
        raise HTTPException(
            status_code=401,
            detail=f"sign in, or present {needed} (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": 'Bearer realm="journeys"'},
        )
    request.state.principal = principal
    refusal: ApiProblem | None = None
    if principal.role < rule.role:
        refusal = ApiProblem(
            403,
            "role",
            "role_required",
            f"{method} {template} needs the {rule.role.name} role; "
            f"{principal.actor} is {principal.role.name}",
        )
    elif (
        principal.by_session
        and method not in SAFE_METHODS
        and request.headers.get(CSRF_HEADER) != principal.csrf
    ):
        refusal = ApiProblem(
            403,
            CSRF_HEADER,
            "csrf_required",
            f"a signed-in call that changes something sends the session's CSRF token "
            f"in {CSRF_HEADER}",
        )
    if rule.audited and gateway.access is not None:
        await _audit(request, gateway, principal, template, refusal)
    if refusal is not None:
        raise refusal
    return principal


async def _audit(
    request: Request,
    gateway: Gateway,
    principal: Principal,
    template: str,
    refusal: ApiProblem | None,
) -> None:
    access = gateway.access
    assert access is not None
    source = source_of(request)
    entry = AuditEntry(
        actor=principal.actor,
        role=principal.role.name,
        action=f"{request.method} {template}",
        target=request.url.path,
        source=source,
        outcome="denied" if refusal is not None else "allowed",
        detail={"rule": refusal.reason["rule"]} if refusal is not None else {},
    )
    await asyncio.to_thread(access.store.record, entry)
    customer = request.path_params.get("customer_id")
    if refusal is None and customer is not None:
        distinct = access.alerts.customer_read(principal.actor, str(customer))
        if distinct is not None:
            await access.raise_alert(
                "customer_reads",
                principal.actor,
                source,
                {"distinct_customers_per_min": distinct, "limit": access.alerts.customers_per_min},
            )


async def require_read_key(
    request: Request, gateway: GatewayDep, _key: _ReadKey, _session: _Session
) -> Principal:
    """Router guard documented with the read-key scheme: the route table decides."""
    return await authorize(request, gateway)


async def require_admin_key(
    request: Request, gateway: GatewayDep, _key: _AdminKey, _session: _Session
) -> Principal:
    """Router guard documented with the admin-key scheme: the route table decides."""
    return await authorize(request, gateway)


def current_principal(request: Request) -> Principal:
    """The caller the router's guard found (handlers that record who acted)."""
    principal: Principal = request.state.principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
