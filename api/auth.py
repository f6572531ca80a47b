"""Write keys (Segment style: HTTP Basic user, empty password) and read keys."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBearer
from starlette.requests import HTTPConnection

from api.dependencies import Gateway


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
    description="A read key (an admin key also reads): `Authorization: Bearer <key>`.",
)
admin_key_scheme = HTTPBearer(
    scheme_name="adminKey", auto_error=False, description="`Authorization: Bearer <admin key>`."
)
# The schemes as dependencies: declared on a route, they put its security in the document.
WriteKey = Depends(write_key_scheme)
_ReadKey = Annotated[HTTPAuthorizationCredentials | None, Depends(read_key_scheme)]
_AdminKey = Annotated[HTTPAuthorizationCredentials | None, Depends(admin_key_scheme)]


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


def require_admin_key(request: Request, _: _AdminKey) -> None:
    """FastAPI dependency: 401 unless a valid admin key is presented."""
    gateway: Gateway = request.app.state.gateway
    if not gateway.keys.can_administer(presented_read_key(request)):
        raise HTTPException(
            status_code=401,
            detail="a valid admin key is required (Authorization: Bearer <admin key>)",
            headers={"WWW-Authenticate": 'Bearer realm="journeys"'},
        )


def require_read_key(request: Request, _: _ReadKey) -> None:
    """FastAPI dependency: 401 unless a valid read key is presented."""
    gateway: Gateway = request.app.state.gateway
    if not gateway.keys.can_read(presented_read_key(request)):
        raise HTTPException(
            status_code=401,
            detail="a valid read key is required (Authorization: Bearer <read key>)",
            headers={"WWW-Authenticate": 'Bearer realm="journeys"'},
        )
