"""The hostile inputs of issue 14, each a regression test through the real gateway.

The gateway runs in process over the real broker (Tansu) and ClickHouse (chdb),
as in test_ingest_gateway: every refusal is a 4xx naming the field and the rule,
its payload is dead-lettered, and nothing reaches the events topic.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import orjson
import pytest

from api.write_keys import DEV_SOURCE
from tests.integration.test_ingest_gateway import Harness, anyio_backend, harness, track

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
__all__ = ["anyio_backend", "harness"]  # fixtures, used by name


def order(**properties: Any) -> dict[str, Any]:
    return {"userId": "p", "event": "Order Completed", "messageId": "p1", "properties": properties}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


async def refused(
    harness: Harness, path: str, body: Any, status: int, field: str, rule: str, **kw: Any
) -> None:
    response = await harness.post(path, body, **kw)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["success"] is False and field in answer["message"], answer
    # The first problem is the one under test (a refused anonymousId also leaves the
    # call without a customer, which is named after it).
    assert (answer["errors"][0]["field"], answer["errors"][0]["rule"]) == (field, rule), answer
    [letter] = await harness.dead_letters()
    assert letter["source"] == DEV_SOURCE and letter["reasons"][0]["rule"] == rule
    assert await harness.events() == []


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        (order(order_id="o", revenue=1e307), "properties.revenue", "less_than_equal"),
        (order(order_id="o", revenue=-1e308), "properties.revenue", "greater_than_equal"),
        (order(order_id="o", total=1e13), "properties.total", "less_than_equal"),
        (order(order_id="o", tax=-1), "properties.tax", "greater_than_equal"),
        (order(products=[{"price": 1e40}]), "properties.products.0.price", "less_than_equal"),
        (track("m", properties={"price": 1e40}), "properties.price", "less_than_equal"),
        (track("m", properties={"quantity": 10**7}), "properties.quantity", "less_than_equal"),
        (track("m", properties={"quantity": 2**64 - 1}), "properties.quantity", "less_than_equal"),
        (
            {"userId": "u", "event": "Product Reviewed", "properties": {"rating": 0}},
            "properties.rating",
            "greater_than_equal",
        ),
        ({"userId": "p\x00", "event": "E"}, "userId", "control_characters"),
        ({"anonymousId": "a\x1b[2J", "event": "E"}, "anonymousId", "control_characters"),
        ({"userId": "p", "event": "Order\x00Completed"}, "event", "control_characters"),
        ({**track("m\x00"), "event": "E"}, "messageId", "control_characters"),
        (order(order_id="o\x00"), "properties.order_id", "control_characters"),
        (order(order_id=2**64 - 1), "properties.order_id", "int64"),
        (track("m", properties={"cart_id": "c\x7f"}), "properties.cart_id", "control_characters"),
    ],
)
async def test_values_out_of_bounds_are_refused_by_name(
    harness: Harness, body: dict[str, Any], field: str, rule: str
) -> None:
    await refused(harness, "/v1/track", body, 400, field, rule)


async def test_group_and_alias_ids_refuse_control_characters(harness: Harness) -> None:
    await refused(
        harness,
        "/v1/group",
        {"userId": "u", "groupId": "g\x00"},
        400,
        "groupId",
        "control_characters",
    )


async def test_a_batch_item_out_of_bounds_is_refused_and_the_rest_accepted(
    harness: Harness,
) -> None:
    body = {
        "batch": [
            {"type": "track", **order(order_id="o", revenue=1e307)},
            {"type": "track", **track("fine", properties={"price": 1e12, "quantity": 10**6})},
        ]
    }
    response = await harness.post("/v1/batch", body)
    assert response.status_code == 400, response.text
    assert [(e["field"], e["rule"]) for e in response.json()["errors"]] == [
        ("batch[0].properties.revenue", "less_than_equal")
    ]
    assert [e.event_id for e in await harness.events()] == ["fine"]


async def test_duplicate_keys_are_refused_naming_the_key(harness: Harness) -> None:
    body = b'{"userId": "a", "userId": "b", "event": "E"}'
    await refused(harness, "/v1/track", body, 400, "userId", "duplicate_key")


async def test_duplicate_keys_deep_in_a_batch_are_refused(harness: Harness) -> None:
    body = (
        b'{"batch": [{"type": "track", "userId": "u", "event": "Order Completed",'
        b' "properties": {"revenue": 1, "revenue": 1e9}}]}'
    )
    await refused(harness, "/v1/batch", body, 400, "revenue", "duplicate_key")


async def test_gzip_with_trailing_bytes_is_refused(harness: Harness) -> None:
    body = gzip.compress(orjson.dumps(track("gz"))) + b"garbage"
    await refused(
        harness, "/v1/track", body, 400, "body", "gzip_trailing_data",
        headers={"content-encoding": "gzip"},
    )  # fmt: skip


async def test_gzip_of_several_members_is_read_whole(harness: Harness) -> None:
    text = orjson.dumps(track("gz-2"))
    body = gzip.compress(text[:10]) + gzip.compress(text[10:])
    response = await harness.post("/v1/track", body, headers={"content-encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert [e.event_id for e in await harness.events()] == ["gz-2"]


@pytest.mark.parametrize("content_type", ["application/xml", "multipart/form-data; boundary=x"])
async def test_a_non_json_content_type_is_refused_with_415(
    harness: Harness, content_type: str
) -> None:
    await refused(
        harness, "/v1/track", track("ct"), 415, "content-type", "content_type",
        headers={"content-type": content_type},
    )  # fmt: skip


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain;charset=UTF-8", "text/plain", None]
)
async def test_json_text_plain_and_no_content_type_stay_accepted(
    harness: Harness, content_type: str | None
) -> None:
    headers = {**harness.auth()}
    if content_type is not None:
        headers["content-type"] = content_type
    response = await harness.client.post(
        "/v1/track", content=orjson.dumps(track("ok")), headers=headers
    )
    assert response.status_code == 200, response.text
    assert [e.event_id for e in await harness.events()] == ["ok"]


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
async def test_over_nested_bodies_are_refused_by_rule(harness: Harness, path: str) -> None:
    # Deeper than orjson writes back out (254), within what it reads (1024).
    deep = nested(300)
    call = track("deep", properties={"x": deep})
    body = call if path == "/v1/track" else {"batch": [{"type": "track", **call}]}
    await refused(harness, path, json.dumps(body).encode(), 400, "body", "max_depth")


async def test_bodies_deeper_than_the_parser_reads_are_refused_by_rule(harness: Harness) -> None:
    body = b'{"a":' * 2000 + b"1" + b"}" * 2000
    await refused(harness, "/v1/track", body, 400, "body", "max_depth")


async def test_an_over_nested_analysis_body_names_the_rule(harness: Harness) -> None:
    read = {"Authorization": f"Bearer {harness.settings.read_key}"}
    body = b'{"steps": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    for path in ("/v1/funnels", "/v1/retention", "/v1/paths", "/v1/funnels/dropped"):
        response = await harness.client.post(
            path, content=body, headers={**read, "content-type": "application/json"}
        )
        assert response.status_code == 400, (path, response.text)
        assert response.json()["errors"] == [
            {"field": "body", "rule": "max_depth", "message": "the JSON is nested too deeply"}
        ]


TIMES = [
    ("/v1/stages", "as_of"),
    ("/v1/customers/p", "as_of"),
    ("/v1/customers/p/journey", "as_of"),
    ("/v1/rfm", "as_of"),
    ("/v1/rfm/p", "as_of"),
    ("/v1/trends", "start"),
    ("/v1/trends", "end"),
    ("/v1/stage-flow", "start"),
    ("/v1/stage-flow", "end"),
    ("/v1/funnels/stages", "start"),
    ("/v1/funnels/stages", "end"),
]


@pytest.mark.parametrize(("path", "name"), TIMES)
@pytest.mark.parametrize(
    "moment", ["0999-12-31T00:00:00Z", "1969-12-31T23:59:59Z", "2200-01-01T00:00:00Z"]
)
async def test_a_time_outside_the_supported_range_is_a_400_naming_it(
    harness: Harness, path: str, name: str, moment: str
) -> None:
    read = {"Authorization": f"Bearer {harness.settings.read_key}"}
    response = await harness.client.get(path, params={name: moment}, headers=read)
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert (error["field"], error["rule"]) == (f"query.{name}", "time_range")


@pytest.mark.parametrize("path", ["/v1/funnels", "/v1/retention", "/v1/paths"])
@pytest.mark.parametrize("name", ["start", "end"])
async def test_a_body_time_outside_the_range_is_a_400_naming_it(
    harness: Harness, path: str, name: str
) -> None:
    read = {"Authorization": f"Bearer {harness.settings.read_key}"}
    bodies: dict[str, dict[str, Any]] = {
        "/v1/funnels": {"steps": [{"event_type": "browse"}, {"event_type": "cart"}]},
        "/v1/retention": {
            "start_event": {"event_type": "cart"},
            "return_event": {"event_type": "purchase"},
        },
        "/v1/paths": {"event_type": "cart"},
    }
    body = {**bodies[path], name: "0999-12-31T00:00:00Z"}
    response = await harness.client.post(path, json=body, headers=read)
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert (error["field"], error["rule"]) == (name, "time_range")


async def test_a_time_in_range_is_answered(harness: Harness) -> None:
    read = {"Authorization": f"Bearer {harness.settings.read_key}"}
    response = await harness.client.get(
        "/v1/stages", params={"as_of": "1970-01-01T00:00:00Z"}, headers=read
    )
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 0
    reversed_span = {"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}
    flow = await harness.client.get("/v1/stage-flow", params=reversed_span, headers=read)
    assert flow.status_code == 400
    [error] = flow.json()["errors"]
    assert (error["field"], error["rule"]) == ("query.end", "time_order")
