"""The gateway's one public port: ingest served here, every other path forwarded to the node.

An ingest gateway (``journeys gateway``) holds no ClickHouse and no event store,
so reads, analytics, the dashboard, admin and docs are the node's. They reach it
over a private Unix socket (the supervisor's, so a call waits while the node
restarts), streamed both ways: status, headers (every ``Set-Cookie``) and body
pass unchanged, the body never whole in memory.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

# Per connection, not forwarded (RFC 9110 7.6.1); httpx frames the body itself.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Who called, as the gateway's socket saw it: the node's audit log records it
# (api/auth.py: source_of trusts it only from its private socket).
CLIENT_HEADER = b"x-journeys-client"
# Paths remembered by the dispatcher (distinct ones: customer ids, keys in paths).
MAX_DECIDED_PATHS = 4096


class NodeForwarder:
    """ASGI app that forwards each HTTP request to the node on ``socket_path``."""

    def __init__(self, socket_path: str, max_connections: int = 256) -> None:
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            base_url="http://node",
            # No read deadline: an analysis may take long; connecting waits in the
            # supervisor's backlog while the node restarts.
            timeout=httpx.Timeout(None, connect=120.0),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan: nothing to start; websockets: none served
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP_BY_HOP]
        headers = [(k, v) for k, v in headers if k != CLIENT_HEADER]
        client = scope.get("client")
        if client:
            headers.append((CLIENT_HEADER, str(client[0]).encode()))
        query = scope.get("query_string", b"")
        target = scope.get("raw_path") or scope["path"].encode()
        url = target.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
        request = self.client.build_request(
            scope["method"],
            url,
            headers=headers,
            content=_body(receive) if has_body else None,
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as error:
            log.warning("the node did not answer %s %s: %s", scope["method"], scope["path"], error)
            await _answer_unavailable(send)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _answer_unavailable(send: Send) -> None:
    body = (
        b'{"success": false, "message": "the node is not reachable; retry later", '
        b'"errors": [{"field": "node", "rule": "unavailable", "message": "retry later"}]}'
    )
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class IngestOrNode:
    """Serve a request here when one of ``routes`` matches its path, else forward it."""

    def __init__(self, local: ASGIApp, routes: list[BaseRoute], node: ASGIApp) -> None:
        self.local = local
        self.routes = routes
        self.node = node
        # Path -> served here: matching every route's pattern took 3 % of a single
        # call's loop time; a storefront sends a handful of paths.
        self._decided: dict[str, bool] = {}

    def is_local(self, scope: Scope) -> bool:
        path = scope["path"]
        decided = self._decided.get(path)
        if decided is None:
            # Matched by path alone (any method): an OPTIONS preflight or a wrong method
            # on an ingest path is the ingest app's to answer (CORS, 405), as in the node.
            probe = {"type": "http", "path": path, "method": "GET", "root_path": ""}
            decided = any(route.matches(probe)[0] is not Match.NONE for route in self.routes)
            if len(self._decided) < MAX_DECIDED_PATHS:
                self._decided[path] = decided
        return decided

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.is_local(scope):
            await self.node(scope, receive, send)
            return
        await self.local(scope, receive, send)
