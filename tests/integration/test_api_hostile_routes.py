"""Hostile requests to the newer routes and extreme values into every report, on one node.

What a fuzzing pass (schemathesis and hand-written cases) found, kept as
regressions: bodies without a bound, an offset past ClickHouse's UInt64, a CSV
field over the csv module's limit, a spreadsheet's byte order mark taken as an
id, a flow template that took the node's memory when validated, 404s and 401s
that named no field. Then extreme values through the real pipeline (gateway,
broker, worker, ClickHouse): what ingest refuses it refuses naming the field;
what it accepts (1e-320, 2**70 in a custom property, times at year 1, 9999 and
before the epoch, 25 KB property values, one messageId a thousand times) every
report answers with sane figures, and another customer's report is unchanged.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from stack.processes import wait_until
from stack.settings import Settings
from tests.integration.test_hostile_reads import SPAN, STEPS, every_report
from tests.node_process import started_node

pytestmark = pytest.mark.integration
LONG = "L" * 25_000


def refused(response: httpx.Response, status: int, field: str, rule: str) -> None:
    """``response`` is the error body with ``status``, naming ``field`` and ``rule``."""
    assert response.status_code == status, response.text[:500]
    answer = response.json()
    assert answer["success"] is False, answer
    assert {"field": field, "rule": rule} in [
        {"field": e["field"], "rule": e["rule"]} for e in answer["errors"]
    ], answer


def hostile_requests(api: httpx.Client, admin: dict[str, str], read: dict[str, str]) -> None:
    json_type = {"content-type": "application/json"}
    two_mb = b'{"version": 1, "description": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    refused(
        api.put("/v1/flows/big", content=two_mb, headers=admin | json_type), 413, "body", "size"
    )

    def chunks() -> Any:  # no Content-Length: counted as it is read
        yield b'{"flows": {"a": "'
        for _ in range(40):
            yield b"y" * 65_536
        yield b'"}}'

    streamed = api.post("/v1/flows/validate", content=chunks(), headers=admin | json_type)
    refused(streamed, 413, "body", "size")
    refused(api.post("/v1/unsubscribe/t", content=two_mb), 413, "body", "size")
    refused(api.get("/v1/flows/a%2Fb", headers=admin), 404, "path", "exists")
    refused(api.get("/v1/flows"), 401, "Authorization", "authenticated")
    refused(api.get("/v1/customers/nobody%00", headers=read), 404, "customer_id", "exists")
    refused(api.get("/v1/rfm/nobody", headers=read), 404, "customer_id", "has_orders")

    flow = api.get("/v1/flows/abandoned_cart", headers=admin).json()["definition"]
    bomb = {**flow, "nodes": {**flow["nodes"]}}
    bomb["nodes"]["reminder"] = {**flow["nodes"]["reminder"], "body": "{{ 'x' * 10**10 }}"}
    refused(
        api.put("/v1/flows/bomb", json=bomb, headers=admin),
        422,
        "flows.bomb.nodes.reminder.body",
        "flow",
    )
    huge = {**flow, "version": 2**63}
    refused(api.put("/v1/flows/huge", json=huge, headers=admin), 422, "flows.huge.version", "flow")

    csv = admin | {"content-type": "text/csv"}
    saved = api.post(
        "/v1/segments/fuzz_list/members",
        content=b'\xef\xbb\xbfcustomer_id\r\n\r\nu1\r\n"u,2"\r\n',
        headers=csv,
    )
    assert saved.status_code == 200, saved.text
    listed = api.get("/v1/segments/fuzz_list/list", headers=read).json()["members"]
    assert listed == ["u,2", "u1"], listed
    wide = b"u1\n" + b"x" * 200_000 + b"\n"
    refused(
        api.post("/v1/segments/fuzz_list/members", content=wide, headers=csv), 422, "row 2", "csv"
    )

    dropped = {"steps": STEPS, "dropped_at": 2, "offset": 2**70}
    refused(
        api.post("/v1/funnels/dropped", json=dropped, headers=read),
        400,
        "offset",
        "less_than_equal",
    )
    sizes = api.get("/v1/segments/big_spenders/sizes?end=1970-01-05T00:00:00Z", headers=read)
    refused(sizes, 400, "query.end", "after_1970")
    far = api.get("/v1/segments/big_spenders/members?as_of=0001-01-01T00:00:00Z", headers=read)
    refused(far, 400, "query.as_of", "time_range")  # fmt: skip


def _track(customer: str, event: str, message_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": customer, "event": event, "messageId": message_id, **fields}


def extreme_calls() -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Calls ingest accepts at the extremes, and the events each customer ends with."""
    odd = {"big": 2**70, "tiny": 1e-320, "plan": LONG}
    order = {**odd, "order_id": "o", "revenue": 1e-320}
    calls = [
        _track("xt", "Product Viewed", "t1", timestamp="0001-01-01T00:00:00Z"),
        _track("xt", "Product Viewed", "t2", timestamp="9999-12-31T23:59:59Z"),
        _track("xt", "Product Viewed", "t3", timestamp=-1),
        _track("xt", "Product Viewed", "t4", originalTimestamp="0001-01-01T00:00:00Z",
               sentAt="9999-12-31T23:59:59Z"),
        _track("xl", "Product Viewed", "l1", properties=odd),
        _track("xl", "Product Added", "l2", properties={**odd, "price": 1e-320, "quantity": 1}),
        _track("xl", "Order Completed", "l3", properties=order),
        _track("U" * 255, "E" * 200, "M" * 255),
        _track("fine", "Order Completed", "f1", properties={"order_id": "of", "revenue": 20.0}),
    ]  # fmt: skip
    calls += [_track("xd", "Product Viewed", "same") for _ in range(1000)]
    return calls, {"xt": 4, "xl": 3, "U" * 255: 1, "fine": 1, "xd": 1}


def test_hostile_requests_and_extreme_values_on_one_node(settings: Settings) -> None:
    node = started_node(settings)
    admin = {"Authorization": f"Bearer {settings.admin_key}"}
    read = {"Authorization": f"Bearer {settings.read_key}"}
    write = (settings.write_key, "")
    try:
        with httpx.Client(base_url=node.base, timeout=60) as api:
            hostile_requests(api, admin, read)
            # What ingest refuses, it refuses naming the field and the rule.
            for properties, field, rule in [
                ({"order_id": "o", "revenue": 1e308}, "properties.revenue", "less_than_equal"),
                ({"order_id": "o", "revenue": -1e308}, "properties.revenue", "greater_than_equal"),
            ]:
                call = _track("xr", "Order Completed", "r", properties=properties)
                refused(api.post("/v1/track", json=call, auth=write), 400, field, rule)
            call = _track("xr", "Product Added", "q", properties={"price": 1, "quantity": 2**70})
            refused(
                api.post("/v1/track", json=call, auth=write), 400, "properties.quantity", "int_type"
            )

            calls, counts = extreme_calls()
            sent = api.post("/v1/batch", json={"batch": calls}, auth=write)
            assert sent.status_code == 200, sent.text
            # The same messageId again, on its own: still one event.
            assert api.post("/v1/track", json=calls[-1], auth=write).status_code == 200

            def projected() -> bool:
                for key, count in counts.items():
                    found = api.get(f"/v1/customers/{key}", headers=read)
                    if found.status_code != 200 or found.json()["event_count"] != count:
                        return False
                return True

            process = node.process
            assert process is not None
            assert wait_until(projected, 90, lambda: process.poll() is None), node.log_tail()
            answers_sanely(api, admin, read, list(counts))
    finally:
        log = node.log_tail(80)
        node.stop()
    assert "Traceback" not in log, log


def answers_sanely(
    api: httpx.Client, admin: dict[str, str], read: dict[str, str], customers: list[str]
) -> None:
    for report, response in every_report(api, customers, read):
        assert response.status_code in (200, 404), (report, response.text[:500])  # 404: no order
    now = datetime.now(UTC)
    times = api.get("/v1/customers/xt", headers=read).json()
    # Year 1 and before the epoch are stamped at arrival, year 9999 at most an hour ahead.
    assert datetime.fromisoformat(times["first_seen"]) >= now - timedelta(minutes=10), times
    assert datetime.fromisoformat(times["last_seen"]) <= now + timedelta(hours=1), times
    funnel = {"steps": STEPS, **SPAN}
    asked: list[tuple[str, str, Any, dict[str, str]]] = [
        ("POST", "/v1/funnels", {**funnel, "breakdown": "plan"}, read),
        ("POST", "/v1/funnels", {**funnel, "breakdown": "big"}, read),
        ("POST", "/v1/funnels", {"steps": [
            {"event_type": "browse", "filters": [{"property": "big", "op": "gt", "value": 1e300}]},
            {"event_type": "cart", "filters": [{"property": "plan", "op": "eq", "value": LONG}]},
        ]}, read),
        ("POST", "/v1/paths", {"event_type": "browse", "steps": 5}, read),
        ("POST", "/v1/paths", {"event": "E" * 200, "direction": "previous"}, read),
        ("POST", "/v1/retention", {"start_event": {"event_type": "browse"},
                                   "return_event": {"event_type": "purchase"},
                                   "breakdown_segment": "big_spenders", "period": "day"}, read),
        ("GET", "/v1/segments/big_spenders/sizes?days=90", None, read),
        ("GET", "/v1/segments/big_spenders/members?as_of=2199-12-31T00:00:00Z", None, read),
        ("GET", "/v1/flows/abandoned_cart/results", None, admin),
        ("POST", "/v1/funnels/dropoffs", {**funnel, "dropped_at": 2, "segment": "x_drops"}, admin),
        ("GET", "/v1/segments/x_drops/sizes?days=2", None, read),
    ]  # fmt: skip
    for method, path, body, key in asked:
        response = api.request(method, path, json=body, headers=key)
        assert response.status_code == 200, (method, path, response.text[:500])
    by_plan = api.post("/v1/funnels", json={**funnel, "breakdown": "plan"}, headers=read).json()
    assert LONG in by_plan["breakdown"], list(by_plan["breakdown"])[:3]
    rfm = {r["customer_key"]: r for r in api.get("/v1/rfm", headers=read).json()["page"]}
    # The other customers' figures are what they are, beside the extreme ones.
    assert rfm["fine"]["monetary"] == 20.0 and rfm["fine"]["clamped"] is False, rfm["fine"]
    assert math.isfinite(rfm["xl"]["monetary"]) and 0 <= rfm["xl"]["monetary"] < 0.01, rfm["xl"]
