"""The gateway's lean single-call route: which requests it answers, and that it answers them.

What it answers is checked against the real broker and stores in both layouts
(tests/integration/test_ingest_gateway.py, test_ingest_hostile.py,
test_ingest_cors.py: the ``gateway`` parameter); here, with a fake sink, only
that it takes exactly the single calls' POSTs and leaves the rest to the app.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from api.dependencies import AccessKeys, Gateway
from api.ingest import SINGLE_CALL_PATHS, SingleCalls
from api.metrics import IngestMetrics
from events import TrackedEvent

KEY = "wk_unit"


class _Sink:
    def __init__(self) -> None:
        self.published: list[TrackedEvent] = []

    async def publish(self, events: Sequence[TrackedEvent]) -> None:
        self.published.extend(events)

    async def dead_letter(self, payload: bytes, reasons: list[dict[str, Any]], source: str) -> None:
        pass


async def _elsewhere(scope: Any, receive: Any, send: Any) -> None:
    """Stands for the FastAPI app: answers 299 so a test sees who answered."""
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _lean() -> tuple[SingleCalls, _Sink]:
    sink = _Sink()
    gateway = Gateway(
        sink=sink,
        keys=AccessKeys(write_keys=frozenset({KEY}), read_keys=frozenset()),
        event_log=None,  # type: ignore[arg-type]
        stages=None,  # type: ignore[arg-type]
        metrics=IngestMetrics(CollectorRegistry()),
    )
    return SingleCalls(gateway, _elsewhere), sink


def _auth() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}


@pytest.mark.anyio
async def test_the_single_calls_posts_are_answered_here_and_the_rest_by_the_app() -> None:
    lean, sink = _lean()
    assert set(SINGLE_CALL_PATHS) == {
        *(f"/v1/{c}" for c in ("track", "page", "screen", "identify", "group", "alias")),
        *(f"/v1/{c}" for c in "tpsiga"),
    }
    transport = httpx.ASGITransport(app=lean)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        call = orjson.dumps({"userId": "u1", "event": "Product Viewed", "messageId": "m1"})
        answered = await client.post("/v1/t", content=call, headers=_auth())
        assert (answered.status_code, answered.json()) == (200, {"success": True})
        assert [e.event_id for e in sink.published] == ["m1"]
        # Refusals are this route's too, with the same body as the app's.
        unknown = await client.post("/v1/identify", content=b'{"userId": "u1"}')
        assert unknown.status_code == 401
        assert unknown.json()["errors"][0]["rule"] == "write_key"
        invalid = await client.post("/v1/track", content=b'{"userId": "u1"}', headers=_auth())
        assert invalid.status_code == 400
        assert invalid.json()["errors"][0]["field"] == "event"
        for method, path in (
            ("POST", "/v1/batch"),
            ("POST", "/beacon/v1/batch"),
            ("GET", "/v1/track"),
            ("OPTIONS", "/v1/track"),
            ("POST", "/v1/track/"),
            ("GET", "/v1/schemas"),
        ):
            other = await client.request(method, path, content=call, headers=_auth())
            assert other.status_code == 299, (method, path)
    assert len(sink.published) == 1
