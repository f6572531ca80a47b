"""The gateway's dispatcher: ingest paths served here, every other path forwarded."""

from __future__ import annotations

from typing import Any

from api.app import ingest_routes
from api.forwarding import IngestOrNode


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def test_ingest_paths_are_local_whatever_the_method_and_the_rest_goes_to_the_node() -> None:
    dispatcher = IngestOrNode(_app, ingest_routes(), _app)

    def local(method: str, path: str) -> bool:
        return dispatcher.is_local({"type": "http", "method": method, "path": path})

    for path in ("/v1/track", "/v1/t", "/v1/batch", "/beacon/v1/batch", "/v1/schemas/track"):
        assert local("POST", path), path
        assert local("OPTIONS", path), path  # the preflight is the ingest app's
    assert local("GET", "/v1/projects/wk_1/settings")
    for path in ("/health", "/metrics", "/v1/customers/u1", "/dashboard", "/docs", "/v1/funnels"):
        assert not local("GET", path), path
    # Decided once per path, the same the second time.
    assert local("POST", "/v1/track") and not local("GET", "/v1/customers/u1")
