"""CORS: storefronts send events from the browser; the read and admin APIs stay closed.

A browser write key is public (as Segment's is), so the ingest paths answer any
origin by default. A preflight carries no key: it is answered for the default
origins (settings) and for the origins any active write key lists; the request
that follows is then checked against its own key's origins by the ingest
handler (a 403 naming ``Origin``). Every ingest answer, 4xx included, carries
``Access-Control-Allow-Origin``: the SDK can then read the status and drop a
refused event instead of retrying it blindly. Every other path (read, admin,
docs) answers cross-origin browsers only from the configured dashboard origins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem
from api.write_keys import WriteKeyRegistry

# What analytics.js (Authorization, X-Retry-Count) and RudderStack's SDK
# (AnonymousId, SentAt, its Rsa-* retry headers) send with their events.
INGEST_HEADERS: tuple[str, ...] = (
    "Authorization",
    "Content-Type",
    "Content-Encoding",
    "X-Retry-Count",
    "AnonymousId",
    "SentAt",
    "Rsa-Recovered",
    "Rsa-Retry-Attempt",
    "Rsa-Since-Last-Attempt",
    "Rsa-Since-First-Attempt",
    "Rsa-Retry-Reason",
)
DASHBOARD_HEADERS: tuple[str, ...] = ("Authorization", "Content-Type")
# Chromium caps the cache at 2 hours, Firefox at 24.
MAX_AGE_S = 7200


def origin_problem(origin: str) -> str | None:
    """Why ``origin`` is not an origin (``https://shop.example[:port]`` or ``*``), or None."""
    if origin == "*":
        return None
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be * or scheme://host[:port], e.g. https://shop.example"
    if parts.path or parts.query or parts.fragment or parts.username:
        return "an origin has no path, query, fragment or user: scheme://host[:port]"
    if origin != origin.lower():
        return "origins are lower case, as browsers send them"
    return None


@dataclass(frozen=True)
class CorsPolicy:
    """Which browser origins may call which part of the API."""

    # Ingest: origins for keys that list none of their own; "*" is any.
    ingest_origins: frozenset[str] = frozenset({"*"})
    # Read and admin APIs (a dashboard on another origin); empty: none.
    dashboard_origins: frozenset[str] = frozenset()

    def ingest_accepts(self, origin: str, key_origins: Iterable[str] = ()) -> bool:
        """True when a key with ``key_origins`` (empty: the default) may send from ``origin``."""
        allowed = frozenset(key_origins) or self.ingest_origins
        return "*" in allowed or origin in allowed

    def dashboard_accepts(self, origin: str) -> bool:
        """True when the read and admin APIs answer ``origin``."""
        return "*" in self.dashboard_origins or origin in self.dashboard_origins


def public_paths(routes: Iterable[BaseRoute]) -> list[re.Pattern[str]]:
    """The path patterns of ``routes`` (the ingest and browser SDK routers)."""
    return [route.path_regex for route in routes if isinstance(route, Route)]


@dataclass
class CorsMiddleware:
    """ASGI middleware answering preflights and marking answers for allowed origins."""

    app: ASGIApp
    policy: CorsPolicy
    # Write keys list origins of their own; None where keys come from settings only.
    registry: WriteKeyRegistry | None = None
    public: list[re.Pattern[str]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Most ingest calls are servers' (no Origin): one pass over the raw headers
        # (ASGI names are lower case), not a Headers mapping per request.
        raw = next((value for name, value in scope["headers"] if name == b"origin"), None)
        if raw is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = raw.decode("latin-1")
        policy = self.policy
        public = any(pattern.match(scope["path"]) for pattern in self.public)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(scope, receive, send, origin, public)
            return
        # Ingest answers every origin; whether its key accepts it is the handler's call.
        allowed = public or policy.dashboard_accepts(origin)

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer = MutableHeaders(scope=message)
                answer.add_vary_header("Origin")
                if allowed:
                    answer["Access-Control-Allow-Origin"] = origin
                    # analytics.js honours Retry-After on a 429 only when it can read it.
                    answer["Access-Control-Expose-Headers"] = "Retry-After"
            await send(message)

        await self.app(scope, receive, marked)

    async def _preflight(
        self, scope: Scope, receive: Receive, send: Send, origin: str, public: bool
    ) -> None:
        policy, registry = self.policy, self.registry
        if public:
            allowed = policy.ingest_accepts(origin) or (
                registry is not None and await registry.any_key_accepts(origin)
            )
            methods, allow_headers = "GET, POST, OPTIONS", INGEST_HEADERS
        else:
            allowed = policy.dashboard_accepts(origin)
            methods, allow_headers = "GET, POST, PUT, PATCH, DELETE, OPTIONS", DASHBOARD_HEADERS
        if not allowed:
            refused = problem(
                403,
                f"Origin: {origin} may not call {scope['path']} from a browser",
                [
                    {
                        "field": "Origin",
                        "rule": "allowed_origins",
                        "message": f"{origin} is not an allowed origin of this API",
                    }
                ],
                headers={"Vary": "Origin"},
            )
            await refused(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    (name.encode(), value.encode())
                    for name, value in (
                        ("Access-Control-Allow-Origin", origin),
                        ("Access-Control-Allow-Methods", methods),
                        ("Access-Control-Allow-Headers", ", ".join(allow_headers)),
                        ("Access-Control-Max-Age", str(MAX_AGE_S)),
                        ("Vary", "Origin"),
                    )
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
