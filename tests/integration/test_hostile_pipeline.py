"""Extreme values through the whole pipeline: gateway, broker, worker, ClickHouse, reports.

Hypothesis draws batches of calls at and around the value bounds (money at
±1e12, the smallest float, quantities of a million, many orders that sum past
any single bound) and unbounded ones the gateway must refuse; a real node takes
them, the worker projects the accepted ones, and then every analytics endpoint
is asked: never a 5xx, and every figure finite.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from stack.processes import wait_until
from stack.settings import Settings
from streams.producer import KafkaEventSink
from streams.topics import ensure_topics
from tests.conftest import make_event
from tests.integration.test_hostile_reads import every_report
from tests.node_process import NodeProcess

pytestmark = pytest.mark.integration

_money = st.sampled_from([1e12, -1e12, 5e-324, 0.0, 999_999_999_999.99, 0.01]) | st.floats(
    min_value=-1e12, max_value=1e12, allow_nan=False
)
_beyond = st.sampled_from([1e307, -1e308, 1e40, 1e12 * 1.0000001])
_call = st.one_of(
    st.fixed_dictionaries(
        {
            "event": st.just("Order Completed"),
            "properties": st.fixed_dictionaries(
                {"revenue": _money, "total": _money, "tax": st.floats(0, 1e12)}
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "event": st.just("Product Added"),
            "properties": st.fixed_dictionaries(
                {"price": st.floats(0, 1e12), "quantity": st.integers(0, 10**6)}
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "event": st.just("Feedback Submitted"),
            "properties": st.fixed_dictionaries({"rating": st.integers(1, 5)}),
        }
    ),
    st.fixed_dictionaries(
        {
            "event": st.just("Order Completed"),
            "properties": st.fixed_dictionaries({"revenue": _beyond}),
            "refused": st.just(True),
        }
    ),
)


def test_extreme_values_through_the_pipeline_never_fail_a_report(settings: Settings) -> None:
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
    node = NodeProcess(settings, settings.data_dir / "node.log")
    node.start()
    read = {"Authorization": f"Bearer {settings.read_key}"}
    examples = iter(range(10**6))
    reported: list[int] = []  # events projected, per example that reached the reports
    try:
        with httpx.Client(base_url=node.base, timeout=60) as client:

            @hypothesis_settings(
                max_examples=8,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(calls=st.lists(_call, min_size=1, max_size=30))
            def never_5xx(calls: list[dict[str, Any]]) -> None:
                number = next(examples)
                customer = f"x{number}"
                batch, expected = [], 0
                for index, call in enumerate(calls):
                    refused = call.pop("refused", False)
                    expected += not refused
                    batch.append(
                        {"type": "track", "userId": customer, "messageId": f"{number}-{index}"}
                        | {"properties": {**call["properties"], "order_id": f"o{number}-{index}"}}
                        | {"event": call["event"]}
                    )
                answer = client.post(
                    "/v1/batch", json={"batch": batch}, auth=(settings.write_key, "")
                )
                assert answer.status_code == (200 if expected == len(calls) else 400), answer.text
                if not expected:
                    return

                def projected() -> bool:
                    found = client.get(f"/v1/customers/{quote(customer)}", headers=read)
                    return found.status_code == 200 and found.json()["event_count"] == expected

                process = node.process
                assert process is not None
                alive = lambda: process.poll() is None  # noqa: E731
                assert wait_until(projected, 60, alive), node.log_tail()
                for asked, response in every_report(client, [customer], read):
                    # 404: a customer without orders has no RFM row.
                    assert response.status_code in (200, 404), (asked, response.text)
                profile = client.get(f"/v1/customers/{customer}", headers=read).json()["profile"]
                for name in ("revenue", "average_order_value", "ltv_estimate", "monetary"):
                    assert math.isfinite(profile[name]), (name, profile)
                for row in client.get("/v1/rfm", headers=read).json()["page"]:
                    assert math.isfinite(row["monetary"]), row
                reported.append(expected)

            never_5xx()
    finally:
        log = node.log_tail(80)
        node.stop()
    assert "Traceback" not in log, log
    assert reported and sum(reported) >= 5, reported


def test_events_an_older_gateway_put_on_the_topic_are_read_without_failure(
    settings: Settings,
) -> None:
    # Events accepted before the bounds may still sit on the topic when the
    # upgraded worker starts: it projects them, and every report stays readable.
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
    old = [
        make_event("o1", "big", "Order Completed", 1, order_id="b1", revenue=1e307),
        make_event("o2", "sum", "Order Completed", 2, order_id="s1", revenue=1e308),
        make_event("o3", "sum", "Order Completed", 3, order_id="s2", revenue=1e308),
        make_event("o4", "neg", "Order Completed", 4, order_id="n1", revenue=-1e308),
        make_event("o5", "neg", "Product Added", 5, price=1e40, quantity=2**62),
        make_event("o6", "fine", "Order Completed", 6, order_id="f1", revenue=20.0),
    ]

    async def publish() -> None:
        sink = KafkaEventSink(
            settings.kafka_bootstrap_servers, settings.events_topic, settings.dead_letter_topic
        )
        await sink.start()
        try:
            await sink.publish(old)
        finally:
            await sink.stop()

    asyncio.run(publish())
    node = NodeProcess(settings, settings.data_dir / "node.log")
    node.start()
    read = {"Authorization": f"Bearer {settings.read_key}"}
    counts = {"big": 1, "sum": 2, "neg": 2, "fine": 1}
    try:
        with httpx.Client(base_url=node.base, timeout=60) as client:
            process = node.process
            assert process is not None

            def projected() -> bool:
                for key, count in counts.items():
                    found = client.get(f"/v1/customers/{key}", headers=read)
                    if found.status_code != 200 or found.json()["event_count"] != count:
                        return False
                return True

            assert wait_until(projected, 90, lambda: process.poll() is None), node.log_tail()
            for asked, response in every_report(client, list(counts), read):
                assert response.status_code == 200, (asked, response.text)
            rfm = {r["customer_key"]: r for r in client.get("/v1/rfm", headers=read).json()["page"]}
            assert rfm["big"]["monetary"] == 1e12 and rfm["big"]["clamped"] is True
            assert rfm["sum"]["monetary"] == 2e12
            assert rfm["fine"]["monetary"] == 20.0 and rfm["fine"]["clamped"] is False
            summed = client.get("/v1/customers/sum", headers=read).json()["profile"]
            # Each order counts at most 1e12 in the journey (journeys/touches.py).
            assert summed["revenue"] == 2e12 and summed["average_order_value"] == 1e12, summed
            assert rfm["sum"]["clamped"] is True
    finally:
        log = node.log_tail(80)
        node.stop()
    assert "Traceback" not in log, log
