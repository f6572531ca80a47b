"""Write keys (Segment style: HTTP Basic user, empty password) and read keys."""

from __future__ import annotations

import base64
import binascii

from fastapi import HTTPException, Request

from api.dependencies import Gateway


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


def require_admin_key(request: Request) -> None:
    """FastAPI dependency: 401 unless a valid admin key is presented."""
    gateway: Gateway = request.app.state.gateway
    if not gateway.keys.can_administer(presented_read_key(request)):
        raise HTTPException(
            status_code=401,
            detail="a valid admin key is required (Authorization: Bearer <admin key>)",
            headers={"WWW-Authenticate": 'Bearer realm="journeys"'},
        )


def require_read_key(request: Request) -> None:
    """FastAPI dependency: 401 unless a valid read key is presented."""
    gateway: Gateway = request.app.state.gateway
    if not gateway.keys.can_read(presented_read_key(request)):
        raise HTTPException(
            status_code=401,
            detail="a valid read key is required (Authorization: Bearer <read key>)",
            headers={"WWW-Authenticate": 'Bearer realm="journeys"'},
        )
