"""A bound on the bodies FastAPI reads whole: 413 naming ``body`` and the limit.

FastAPI parses a JSON body whole (``json.loads``) before the route sees it, so
without a bound a client could make the node hold any size (a 10 MB flow
definition, a gigabyte to the unsubscribe link). The ingest routes and the
list upload read their bodies themselves, a chunk at a time, with limits of
their own that they name; they pass untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem

# Far above any definition, backtest draft or admin request; a flows document with
# long e-mail templates is tens of KB.
MAX_BODY_BYTES = 1024 * 1024


def _message(limit: int) -> str:
    return f"a request body may be at most {limit} bytes"


@dataclass
class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is a 413, by its Content-Length
    before anything is read, or as the route reads past the limit."""

    app: ASGIApp
    limit: int = MAX_BODY_BYTES
    # The paths of routes that bound their own bodies (ingest, the list upload).
    own: list[re.Pattern[str]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(p.match(scope["path"]) for p in self.own):
            await self.app(scope, receive, send)
            return
        limit = self.limit
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > limit:
            message = _message(limit)
            reason = {"field": "body", "rule": "size", "message": message}
            await problem(413, f"body: {message}", [reason])(scope, receive, send)
            return
        read = 0

        async def bounded() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > limit:
                    # Raised inside the route's read: FastAPI passes HTTP errors on, and
                    # api/errors.py answers it naming ``body`` and ``size``.
                    raise HTTPException(413, _message(limit))
            return message

        await self.app(scope, bounded, send)
