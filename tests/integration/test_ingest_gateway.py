"""The ingest gateway in process, on real parts: Tansu (KafkaEventSink), chdb (keys, dead letters).

Every answer is checked, and what reached the broker is read back from the topics.
"""

from __future__ import annotations

import base64
import functools
import gzip
import os
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import orjson
import pytest
import schemathesis
from aiokafka import AIOKafkaConsumer, TopicPartition
from clickhouse_connect.driver.client import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from api.dependencies import Gateway
from api.rate_limit import TokenBuckets
from api.write_keys import DEV_SOURCE
from events import TrackedEvent
from events.segment import CALL_MODELS, to_tracked_event, validate_call
from projections.migrations import migrate
from stack.bootstrap import event_sink
from stack.settings import Settings
from streams.confluent_sink import ConfluentEventSink
from streams.producer import KafkaEventSink
from streams.topics import ensure_topics
from tests.integration.gateways import LAYOUTS, ingest_gateway, served

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    """aiokafka runs on asyncio."""
    return "asyncio"


class Harness:
    """An API over a real sink and real stores, and a way to read the topics back."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient, gateway: Gateway) -> None:
        self.settings = settings
        self.client = client
        self.gateway = gateway

    def auth(self, key: str | None = None) -> dict[str, str]:
        token = base64.b64encode(f"{key or self.settings.write_key}:".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def post(self, path: str, body: Any, key: str | None = None, **kw: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        headers = {"content-type": "application/json", **self.auth(key), **kw.pop("headers", {})}
        return await self.client.post(path, content=content, headers=headers, **kw)

    async def read_topic(self, topic: str) -> list[bytes]:
        """Everything on ``topic`` so far: up to the end offsets as they are now."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in await _partitions(consumer, topic)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            found: list[bytes] = []
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batch = await consumer.getmany(timeout_ms=1000)
                found.extend(r.value or b"" for records in batch.values() for r in records)
            return found
        finally:
            await consumer.stop()

    async def events(self) -> list[TrackedEvent]:
        return [
            TrackedEvent.from_json(v) for v in await self.read_topic(self.settings.events_topic)
        ]

    async def dead_letters(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for v in await self.read_topic(self.settings.dead_letter_topic)]


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer.topics()  # fetches the metadata of every topic
    found = consumer.partitions_for_topic(topic)
    assert found, f"topic {topic} has no partitions"
    return set(found)


@pytest.fixture(params=LAYOUTS)
async def harness(
    settings: Settings, clickhouse: Client, request: pytest.FixtureRequest
) -> AsyncIterator[Harness]:
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
    database = settings.clickhouse_database
    migrate(clickhouse, database)
    sink = event_sink(settings)  # the configured producer (confluent-kafka by default)
    await sink.start()
    gateway = ingest_gateway(settings, clickhouse, sink)
    transport = httpx.ASGITransport(app=served(gateway, request.param))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield Harness(settings, client, gateway)
    await sink.stop()


def track(message_id: str, **extra: Any) -> dict[str, Any]:
    return {"userId": "u1", "event": "Product Added", "messageId": message_id, **extra}


async def test_every_call_type_is_accepted_and_lands_on_the_topic_with_its_source(
    harness: Harness,
) -> None:
    calls = {
        "/v1/track": track("m-track", properties={"price": 20, "quantity": 1, "colour": "red"}),
        "/v1/page": {"userId": "u1", "messageId": "m-page", "name": "Home"},
        "/v1/screen": {"userId": "u1", "messageId": "m-screen", "name": "Cart"},
        "/v1/identify": {"userId": "u1", "messageId": "m-identify", "traits": {"email": "a@b.c"}},
        "/v1/group": {"userId": "u1", "messageId": "m-group", "groupId": "acme"},
        "/v1/alias": {"userId": "u1", "messageId": "m-alias", "previousId": "anon-7"},
    }
    for path, body in calls.items():
        response = await harness.post(path, body)
        assert response.status_code == 200, (path, response.text)
        assert response.json() == {"success": True}
    by_id = {e.event_id: e for e in await harness.events()}
    assert set(by_id) == {b["messageId"] for b in calls.values()}
    assert {e.source for e in by_id.values()} == {DEV_SOURCE}
    assert by_id["m-track"].properties["colour"] == "red"  # unknown properties are kept
    assert by_id["m-screen"].event_type.value == "browse"
    assert by_id["m-alias"].properties == {"previous_id": "anon-7"}
    assert by_id["m-group"].event_type.value == "identify"


async def test_batch_accepts_valid_items_and_reports_invalid_ones_by_index(
    harness: Harness,
) -> None:
    body = {
        "sentAt": "2026-03-01T12:00:10Z",
        "batch": [
            {"type": "track", **track("b-0"), "originalTimestamp": "2026-03-01T12:00:00Z"},
            {"type": "track", **track("b-1", properties={"price": "cheap"})},
            {"type": "page", "userId": "u1", "messageId": "b-2"},
            {"type": "teleport", "userId": "u1", "messageId": "b-3"},
            {"type": "identify", "messageId": "b-4"},
        ],
    }
    response = await harness.post("/v1/batch", body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["accepted"] == 2 and answer["rejected"] == 3
    fields = {(e["index"], e["field"], e["rule"]) for e in answer["errors"]}
    assert fields == {
        (1, "batch[1].properties.price", "float_type"),
        (3, "batch[3].type", "call_type"),
        (4, "batch[4].userId", "value_error"),
    }
    events = {e.event_id: e for e in await harness.events()}
    assert set(events) == {"b-0", "b-2"}
    # The batch's sentAt corrected the device clock: 10 s before arrival.
    b0 = events["b-0"]
    assert (b0.received_at - b0.timestamp).total_seconds() == pytest.approx(10, abs=0.01)
    assert b0.sent_at is not None and b0.original_timestamp is not None
    letters = await harness.dead_letters()
    assert sorted(orjson.loads(d["payload"]).get("messageId") for d in letters) == [
        "b-1",
        "b-3",
        "b-4",
    ]
    assert all(d["source"] == DEV_SOURCE and d["reasons"] for d in letters)


@pytest.mark.parametrize("kind", [KafkaEventSink, ConfluentEventSink])
async def test_both_producers_publish_and_dead_letter_with_acks(
    harness: Harness, kind: type[KafkaEventSink] | type[ConfluentEventSink]
) -> None:
    settings = harness.settings
    sink = kind(settings.kafka_bootstrap_servers, settings.events_topic, settings.dead_letter_topic)
    await sink.start()
    try:
        assert await sink.connected()
        call = validate_call(CALL_MODELS["track"], track("p-1"))
        event = to_tracked_event(call, datetime.now(UTC), source="s1")
        await sink.publish([event])
        await sink.dead_letter(b"{}", [{"field": "f", "rule": "r", "message": "m"}], "s1")
    finally:
        await sink.stop()
    assert await harness.events() == [event]
    [letter] = await harness.dead_letters()
    assert (letter["source"], letter["payload"], letter["reasons"][0]["rule"]) == ("s1", "{}", "r")


async def test_gzip_bodies_are_accepted(harness: Harness) -> None:
    body = gzip.compress(orjson.dumps({"batch": [{"type": "track", **track("gz-1")}]}))
    response = await harness.post("/v1/batch", body, headers={"content-encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert [e.event_id for e in await harness.events()] == ["gz-1"]
    broken = await harness.post(
        "/v1/track", b"\x1f\x8bnot gzip", headers={"content-encoding": "gzip"}
    )
    assert broken.status_code == 400 and broken.json()["errors"][0]["rule"] == "gzip"


@pytest.mark.parametrize(
    ("path", "body", "status", "field", "rule"),
    [
        ("/v1/track", b"{not json", 400, "body", "json_object"),
        ("/v1/track", b"[1, 2]", 400, "body", "json_object"),
        ("/v1/track", {"event": "Product Added"}, 400, "userId", "value_error"),
        (
            "/v1/track",
            track("x", properties={"quantity": 1.5}),
            400,
            "properties.quantity",
            "int_type",
        ),
        (
            "/v1/track",
            {"userId": "u", "event": "Feedback Submitted", "properties": {"rating": 9}},
            400,
            "properties.rating",
            "less_than_equal",
        ),
        (
            "/v1/track",
            track("big", properties={"blob": "x" * 33_000}),
            413,
            "body",
            "max_event_size",
        ),
        (
            "/v1/batch",
            {"batch": [{"type": "track", **track(f"n{i}")} for i in range(2501)]},
            400,
            "batch",
            "max_batch_events",
        ),
        (
            "/v1/batch",
            {"batch": [{"type": "track", **track("x", properties={"b": "y" * 30_000})}] * 18},
            413,
            "body",
            "max_batch_size",
        ),
    ],
)
async def test_rejections_name_field_and_rule_and_are_dead_lettered(
    harness: Harness, path: str, body: Any, status: int, field: str, rule: str
) -> None:
    response = await harness.post(path, body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["success"] is False
    assert {"field": field, "rule": rule} == {k: answer["errors"][0][k] for k in ("field", "rule")}
    assert field in answer["message"]
    letters = await harness.dead_letters()
    assert len(letters) == 1 and letters[0]["reasons"][0]["rule"] == rule
    assert await harness.events() == []


@pytest.mark.parametrize(
    ("encoding", "body", "status", "rule"),
    [
        ("gzip", b"\x1f\x8bnot gzip", 400, "gzip"),
        ("gzip", gzip.compress(b'{"userId": "u", "event": "x"}', mtime=0)[:-9], 400, "gzip"),
        ("br", b"{}", 415, "encoding"),
    ],
)
async def test_unreadable_bodies_are_refused_and_dead_lettered(
    harness: Harness, encoding: str, body: bytes, status: int, rule: str
) -> None:
    response = await harness.post("/v1/track", body, headers={"content-encoding": encoding})
    assert response.status_code == status, response.text
    assert response.json()["errors"][0]["rule"] == rule
    [letter] = await harness.dead_letters()
    assert letter["reasons"][0]["rule"] == rule and letter["source"] == DEV_SOURCE
    assert await harness.events() == []


async def test_no_write_key_no_ingest_and_no_dead_letter(harness: Harness) -> None:
    for key in ("wrong", "wk_0123abcd_notarealsecretatall"):
        response = await harness.post("/v1/track", track("m"), key=key)
        assert response.status_code == 401
        assert response.json()["errors"][0]["field"] == "writeKey"
    unauthenticated = await harness.client.post("/v1/track", json=track("m"))
    assert unauthenticated.status_code == 401
    assert await harness.dead_letters() == []
    assert await harness.events() == []


async def test_write_keys_are_created_used_listed_and_revoked(harness: Harness) -> None:
    admin = {"Authorization": f"Bearer {harness.settings.admin_key}"}
    assert (await harness.client.post("/v1/write-keys", json={"name": "x"})).status_code == 401
    created = await harness.client.post("/v1/write-keys", json={"name": "shop-eu"}, headers=admin)
    assert created.status_code == 201, created.text
    key, key_id = created.json()["write_key"], created.json()["key_id"]
    assert key_id in key
    # writeKey in the body works as well as HTTP Basic.
    in_body = await harness.client.post("/v1/track", json={**track("k-1"), "writeKey": key})
    assert in_body.status_code == 200, in_body.text
    listed = (await harness.client.get("/v1/write-keys", headers=admin)).json()
    assert [(k["key_id"], k["active"]) for k in listed] == [(key_id, True), (DEV_SOURCE, True)]
    assert listed[0]["name"] == "shop-eu" and listed[1]["created_at"] is None
    assert "write_key" not in listed[0]
    revoked = await harness.client.delete(f"/v1/write-keys/{key_id}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    refused = await harness.post("/v1/track", track("k-2"), key=key)
    assert refused.status_code == 401
    assert [(e.event_id, e.source) for e in await harness.events()] == [("k-1", key_id)]


async def test_rate_limit_answers_429_with_retry_after(harness: Harness) -> None:
    object.__setattr__(harness.gateway, "rate_limit", TokenBuckets(rate=1, burst=3))
    body = {"batch": [{"type": "track", **track(f"r{i}")} for i in range(3)]}
    assert (await harness.post("/v1/batch", body)).status_code == 200
    limited = await harness.post("/v1/track", track("r-over"))
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["errors"][0]["rule"] == "rate_limit"
    # /metrics: a request refused whole counts the events it holds.
    over = {"batch": [{"type": "track", **track(f"r-over-{i}")} for i in range(4)]}
    assert (await harness.post("/v1/batch", over)).status_code == 429
    registry = harness.gateway.metrics.registry
    assert registry.get_sample_value("journeys_events_accepted_total") == 3
    rejected = registry.get_sample_value("journeys_events_rejected_total", {"rule": "rate_limit"})
    assert rejected == 1 + 4


async def test_schemas_are_served(harness: Harness) -> None:
    listed = (await harness.client.get("/v1/schemas")).json()["schemas"]
    assert {"track", "batch", "alias", "cart.properties", "support.properties"} <= set(listed)
    price = (await harness.client.get("/v1/schemas/cart.properties")).json()["properties"]["price"]
    assert {"type": "number", "minimum": 0, "maximum": 1e12} in price["anyOf"]
    assert (await harness.client.get("/v1/schemas/nope")).status_code == 404
    openapi = (await harness.client.get("/openapi.json")).json()
    body = openapi["paths"]["/v1/track"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["event"]["maxLength"] == 200
    assert {"/v1/write-keys", "/v1/dead-letters", "/v1/batch"} <= set(openapi["paths"])


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "page", "screen", "identify", "group", "alias", "x"])
        | _json,
        "userId": st.text(max_size=5) | _json,
        "anonymousId": st.text(max_size=5) | _json,
        "messageId": st.text(max_size=5) | _json,
        "event": st.sampled_from(["Order Completed", "Product Added", "Feedback Submitted"])
        | _json,
        "properties": st.dictionaries(
            st.sampled_from(["price", "quantity", "products", "rating", "currency", "x"]), _json
        )
        | _json,
        "timestamp": st.sampled_from(["2026-01-01T00:00:00Z", "0001-01-01", "9999-12-31T00:00Z"])
        | _json,
        "sentAt": st.sampled_from(["2026-01-01T00:00:00Z", "yesterday"]) | _json,
        "originalTimestamp": st.sampled_from(["1900-01-01T00:00:00Z"]) | _json,
        "traits": _json,
        "previousId": _json,
        "groupId": _json,
    },
)
_bodies = (
    _fields.map(orjson.dumps)
    | st.lists(_fields, max_size=3).map(lambda items: orjson.dumps({"batch": items}))
    | st.binary(max_size=40)
)


async def test_no_input_makes_the_gateway_answer_5xx(harness: Harness) -> None:
    # Hypothesis drives a synchronous function; it runs in a worker thread and
    # sends each request through the test's event loop.
    paths = ["/v1/track", "/v1/page", "/v1/screen", "/v1/identify", "/v1/group", "/v1/alias"]

    @hypothesis_settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(path=st.sampled_from([*paths, "/v1/batch"]), body=_bodies)
    def never_5xx(path: str, body: bytes) -> None:
        response = anyio.from_thread.run(harness.post, path, body)
        assert response.status_code < 500, response.text
        if response.status_code != 200:
            answer = response.json()
            assert answer["success"] is False and answer["message"] and answer["errors"]

    await anyio.to_thread.run_sync(never_5xx)


async def test_schemathesis_over_the_openapi_document_finds_no_5xx(harness: Harness) -> None:
    # Cases come from the ingest endpoints' OpenAPI document: bodies that fit
    # their JSON Schemas and bodies that break them; every answer stays below 500.
    document = (await harness.client.get("/openapi.json")).json()
    ingest = schemathesis.openapi.from_dict(document).include(tag="ingest")
    cases = ingest.as_strategy(GenerationMode.POSITIVE) | ingest.as_strategy(
        GenerationMode.NEGATIVE
    )
    statuses: Counter[int] = Counter()

    @hypothesis_settings(
        # SCHEMATHESIS_INGEST_EXAMPLES: the longer run recorded in docs/architecture.md.
        max_examples=int(os.environ.get("SCHEMATHESIS_INGEST_EXAMPLES", "200")),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def never_5xx(case: schemathesis.Case) -> None:
        # Serialised by schemathesis (requests' keywords); bodies that are no
        # JSON at all come as bytes.
        sent = case.as_transport_kwargs(base_url="http://gateway", headers=harness.auth())
        response = anyio.from_thread.run(
            functools.partial(
                harness.client.request,
                sent["method"],
                sent["url"],
                params=sent["params"],
                headers=sent["headers"],
                cookies=sent["cookies"],
                content=sent.get("data"),
                json=sent.get("json"),
            )
        )
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        statuses[response.status_code] += 1

    await anyio.to_thread.run_sync(never_5xx)
    # Both kinds reached the endpoints: accepted calls and refused ones.
    assert statuses[200] and statuses[400], statuses
