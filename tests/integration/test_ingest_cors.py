"""Browser tracking on the wire, in process on real parts (Tansu, chdb): CORS, short paths,
beacons, the SDKs' settings endpoints, per-key origins; the read and admin APIs stay closed.

What a browser sends is replayed header for header (the real SDKs in Chromium are in
tests/e2e/test_browser_sdks.py); what reached the broker is read back from the topic.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from clickhouse_connect.driver.client import Client

from api.cors import INGEST_HEADERS, CorsPolicy
from api.dependencies import Gateway
from api.write_keys import DEV_SOURCE
from events import TrackedEvent
from projections.migrations import migrate
from stack.bootstrap import event_sink
from stack.settings import Settings
from streams.topics import ensure_topics
from tests.integration.gateways import LAYOUTS, ingest_gateway, served

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SHOP = "http://shop.test:8080"
DASHBOARD = "https://dash.test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Api:
    def __init__(
        self, settings: Settings, client: httpx.AsyncClient, gateway: Gateway, layout: str
    ) -> None:
        self.settings = settings
        self.client = client
        self.gateway = gateway
        self.layout = layout
        self.admin = {"Authorization": f"Bearer {settings.admin_key}"}

    def basic(self, key: str | None = None) -> dict[str, str]:
        token = base64.b64encode(f"{key or self.settings.write_key}:".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def message_ids(self) -> list[str]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, enable_auto_commit=False
        )
        await consumer.start()
        try:
            await consumer.topics()
            topic = self.settings.events_topic
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            found: list[str] = []
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batch = await consumer.getmany(timeout_ms=1000)
                found.extend(
                    TrackedEvent.from_json(r.value or b"").event_id
                    for records in batch.values()
                    for r in records
                )
            return sorted(found)
        finally:
            await consumer.stop()


@pytest.fixture(params=LAYOUTS)
async def api(
    settings: Settings, clickhouse: Client, request: pytest.FixtureRequest
) -> AsyncIterator[Api]:
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
    database = settings.clickhouse_database
    migrate(clickhouse, database)
    sink = event_sink(settings)
    await sink.start()
    gateway = ingest_gateway(
        settings, clickhouse, sink, cors=CorsPolicy(frozenset({"*"}), frozenset({DASHBOARD}))
    )
    transport = httpx.ASGITransport(app=served(gateway, request.param))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test:8000") as client:
        yield Api(settings, client, gateway, request.param)
    await sink.stop()


def preflight(origin: str, headers: str = "authorization,content-type") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": headers,
    }


async def test_preflights_are_answered_and_every_ingest_answer_carries_the_origin(
    api: Api,
) -> None:
    # What analytics.js and RudderStack's SDK ask before they post (issue 14: was a 405).
    rudder = "anonymousid,authorization,content-type,sentat,rsa-retry-attempt"
    for path, asked in (("/v1/track", "authorization,content-type"), ("/v1/batch", rudder)):
        answer = await api.client.options(path, headers=preflight(SHOP, asked))
        assert answer.status_code == 204, answer.text
        assert answer.headers["access-control-allow-origin"] == SHOP
        assert "POST" in answer.headers["access-control-allow-methods"]
        allowed = {
            h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")
        }
        assert set(asked.split(",")) <= allowed
        assert int(answer.headers["access-control-max-age"]) > 0
        assert "Origin" in answer.headers["vary"]

    # A simple text/plain request (no preflight): 200 and 4xx alike carry the origin.
    body = {"writeKey": api.settings.write_key, "userId": "u1", "event": "Product Added",
            "messageId": "cors-1"}  # fmt: skip
    plain = {"Origin": SHOP, "Content-Type": "text/plain"}
    accepted = await api.client.post("/v1/t", content=orjson.dumps(body), headers=plain)
    assert accepted.status_code == 200, accepted.text
    assert accepted.headers["access-control-allow-origin"] == SHOP
    assert "Retry-After" in accepted.headers["access-control-expose-headers"]
    nameless = {k: v for k, v in body.items() if k != "userId"}
    refused = await api.client.post("/v1/track", content=orjson.dumps(nameless), headers=plain)
    assert refused.status_code == 400
    assert refused.headers["access-control-allow-origin"] == SHOP
    unauthenticated = await api.client.post(
        "/v1/track", content=orjson.dumps({**body, "writeKey": "wk_nope"}), headers=plain
    )
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["access-control-allow-origin"] == SHOP
    assert await api.message_ids() == ["cors-1"]


async def test_short_paths_and_beacons_reach_the_same_handlers(api: Api) -> None:
    # analytics.js: the call type's first letter; each takes the Basic key.
    calls: dict[str, dict[str, Any]] = {
        "t": {"userId": "u1", "event": "Product Added", "properties": {"price": 9.5}},
        "p": {"userId": "u1", "name": "Home"},
        "s": {"userId": "u1", "name": "Cart"},
        "i": {"userId": "u1", "traits": {"email": "u1@example.com"}},
        "g": {"userId": "u1", "groupId": "org-1"},
        "a": {"userId": "u1", "previousId": "anon-1"},
    }
    for short, call in calls.items():
        answer = await api.client.post(
            f"/v1/{short}",
            content=orjson.dumps({**call, "messageId": f"short-{short}"}),
            headers={**api.basic(), "Content-Type": "text/plain", "Origin": SHOP},
        )
        assert answer.status_code == 200, (short, answer.text)
    batch = {"batch": [{"type": "track", "userId": "u1", "event": "Order Completed",
                        "messageId": "short-b", "properties": {"order_id": "o1"}}]}  # fmt: skip
    answer = await api.client.post("/v1/b", content=orjson.dumps(batch), headers=api.basic())
    assert answer.status_code == 200, answer.text
    # RudderStack's sendBeacon: text/plain, the key in the query (a beacon has no headers).
    beacon = {"batch": [{"type": "page", "anonymousId": "a1", "messageId": "beacon-1",
                         "name": "Bye"}], "sentAt": "2026-01-01T00:00:00.000Z"}  # fmt: skip
    answer = await api.client.post(
        f"/beacon/v1/batch?writeKey={api.settings.write_key}",
        content=orjson.dumps(beacon),
        headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": SHOP},
    )
    assert answer.status_code == 200, answer.text
    answer = await api.client.post("/beacon/v1/batch?writeKey=wk_nope", content=b"{}")
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["field"] == "writeKey"
    expected = ["beacon-1", "short-b", *(f"short-{s}" for s in calls)]
    assert await api.message_ids() == sorted(expected)


async def test_a_key_with_origins_accepts_only_those(api: Api) -> None:
    created = await api.client.post(
        "/v1/write-keys",
        json={"name": "shop", "allowed_origins": ["https://shop.example"]},
        headers=api.admin,
    )
    assert created.status_code == 201, created.text
    key, key_id = created.json()["write_key"], created.json()["key_id"]
    assert created.json()["allowed_origins"] == ["https://shop.example"]
    bad = await api.client.post(
        "/v1/write-keys",
        json={"name": "x", "allowed_origins": ["shop.example/"]},
        headers=api.admin,
    )
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"].startswith("allowed_origins")

    def call(message_id: str) -> bytes:
        return orjson.dumps(
            {"writeKey": key, "userId": "u2", "event": "Product Viewed", "messageId": message_id}
        )

    own = await api.client.post(
        "/v1/track", content=call("own"), headers={"Origin": "https://shop.example"}
    )
    assert own.status_code == 200, own.text
    other = await api.client.post("/v1/track", content=call("other"), headers={"Origin": SHOP})
    assert other.status_code == 403
    assert other.json()["errors"] == [
        {"field": "Origin", "rule": "allowed_origins",
         "message": f"{SHOP} is not an allowed origin of this write key"}
    ]  # fmt: skip
    # The browser can read the refusal (and drops the event rather than retry it).
    assert other.headers["access-control-allow-origin"] == SHOP
    # Servers send no Origin: origins are a browser matter.
    server = await api.client.post("/v1/track", content=call("server"))
    assert server.status_code == 200

    # With a restrictive default, a preflight is answered for the origins some key lists.
    strict = replace(api.gateway, cors=CorsPolicy(frozenset({"https://only.example"})))
    transport = httpx.ASGITransport(app=served(strict, api.layout))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        listed = await client.options("/v1/track", headers=preflight("https://shop.example"))
        assert listed.status_code == 204
        unknown = await client.options("/v1/track", headers=preflight(SHOP))
        assert unknown.status_code == 403
        assert unknown.json()["errors"][0]["field"] == "Origin"
        assert "access-control-allow-origin" not in unknown.headers
        dev = await client.post(
            "/v1/track",
            content=orjson.dumps({"writeKey": api.settings.write_key, "userId": "u3",
                                  "event": "E", "messageId": "dev-strict"}),
            headers={"Origin": SHOP},
        )  # fmt: skip
        assert dev.status_code == 403  # the dev key lists none: the (strict) default applies

    # Back to the default: the key's own list still decides for it.
    reset = await api.client.put(
        f"/v1/write-keys/{key_id}/origins", json={"allowed_origins": []}, headers=api.admin
    )
    assert reset.status_code == 200 and reset.json()["allowed_origins"] == []
    assert sorted(await api.message_ids()) == ["own", "server"]


async def test_the_read_and_admin_apis_answer_only_dashboard_origins(api: Api) -> None:
    read = {"Authorization": f"Bearer {api.settings.read_key}"}
    foreign = await api.client.get("/v1/stages", headers={**read, "Origin": SHOP})
    assert "access-control-allow-origin" not in foreign.headers
    refused = await api.client.options("/v1/stages", headers=preflight(SHOP))
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    for path in ("/v1/write-keys", "/v1/dead-letters", "/v1/customers/u1"):
        assert (await api.client.options(path, headers=preflight(SHOP))).status_code == 403
    allowed = await api.client.options("/v1/stages", headers=preflight(DASHBOARD))
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == DASHBOARD
    assert "GET" in allowed.headers["access-control-allow-methods"]
    answered = await api.client.get("/v1/stages", headers={**read, "Origin": DASHBOARD})
    assert answered.headers["access-control-allow-origin"] == DASHBOARD
    # Same-origin and non-browser requests are not touched.
    assert (
        "access-control-allow-origin"
        not in (await api.client.get("/v1/stages", headers=read)).headers
    )
    assert len(INGEST_HEADERS) == len({h.lower() for h in INGEST_HEADERS})


async def test_the_sdks_settings_point_them_here(api: Api) -> None:
    key = api.settings.write_key
    segment = await api.client.get(f"/v1/projects/{key}/settings", headers={"Origin": SHOP})
    assert segment.status_code == 200, segment.text
    assert segment.headers["access-control-allow-origin"] == SHOP
    io = segment.json()["integrations"]["Segment.io"]
    assert (io["apiKey"], io["apiHost"], io["protocol"]) == (key, "api.test:8000/v1", "http")
    assert segment.json()["metrics"]["sampleRate"] == 0  # nothing goes to Segment
    unknown = await api.client.get("/v1/projects/wk_nope/settings")
    assert unknown.status_code == 404
    assert unknown.json()["errors"][0]["field"] == "writeKey"

    # RudderStack asks with its Basic header (so a preflight) and ?writeKey=.
    asked = await api.client.options(
        "/sourceConfig/", headers={**preflight(SHOP, "authorization"),
                                   "Access-Control-Request-Method": "GET"}
    )  # fmt: skip
    assert asked.status_code == 204
    rudder = await api.client.get(
        f"/sourceConfig/?p=npm&v=3.34.1&writeKey={key}", headers={**api.basic(), "Origin": SHOP}
    )
    assert rudder.status_code == 200, rudder.text
    source = rudder.json()["source"]
    assert (source["id"], source["enabled"], source["destinations"]) == (DEV_SOURCE, True, [])
    assert source["config"]["statsCollection"]["errors"]["enabled"] is False
    assert (await api.client.get("/sourceConfig?writeKey=wk_nope")).status_code == 401


async def test_the_development_key_is_listed(api: Api) -> None:
    listed = await api.client.get("/v1/write-keys", headers=api.admin)
    assert listed.status_code == 200
    assert [(k["key_id"], k["active"], k["created_at"]) for k in listed.json()] == [
        (DEV_SOURCE, True, None)
    ]
