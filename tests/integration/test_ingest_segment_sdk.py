"""Done-when of the tracking API, through a real node: Segment's own Python SDK, unmodified.

segment-analytics-python sends track, identify, page and alias calls, single
and batched, gzipped; a re-sent messageId doubles nothing, while a second
source (write key) reusing it has events of its own; bad requests get
their 4xx and show up in the dead-letter list (API and CLI). Then the node is
stopped and the ClickHouse event log is counted row by row, without FINAL.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from typing import Any

import httpx
import orjson
import pytest
from segment.analytics import Client

from stack.processes import wait_until
from stack.settings import Settings
from streams.topics import ensure_topics
from tests.node_process import NodeProcess, query_chdb_folder

pytestmark = pytest.mark.integration

CUSTOMERS = ["sdk-1", "sdk-2", "sdk-3"]


def send_with_the_sdk(node: NodeProcess, sent: Counter[str], *, sync_mode: bool) -> list[str]:
    """Every call type the done-when names, from the SDK; returns the messageIds sent."""
    errors: list[Any] = []
    client = Client(
        write_key=node.settings.write_key,
        host=node.base,
        sync_mode=sync_mode,
        gzip=not sync_mode,
        on_error=lambda error, batch: errors.append((error, batch)),
        max_retries=1,
    )
    tag = "s" if sync_mode else "b"
    ids = []
    for customer in CUSTOMERS:
        calls = [
            lambda m, c=customer: client.identify(c, {"email": f"{c}@example.com"}, message_id=m),
            lambda m, c=customer: client.page(c, name="Home", message_id=m),
            lambda m, c=customer: client.track(
                c, "Product Added", {"product_id": "p1", "price": 20.5, "quantity": 1}, message_id=m
            ),
            lambda m, c=customer: client.track(
                c, "Order Completed", {"order_id": f"o-{c}-{tag}", "revenue": 41}, message_id=m
            ),
            lambda m, c=customer: client.alias(f"anon-{c}", c, message_id=m),
        ]
        for number, call in enumerate(calls):
            message_id = f"{tag}-{customer}-{number}"
            call(message_id)
            ids.append(message_id)
            sent[customer] += 1
    client.flush()
    if not sync_mode:
        client.join()
    assert errors == []
    return ids


def test_segment_sdk_events_land_exactly_once_and_rejections_are_listed(
    settings: Settings,
) -> None:
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
    node = NodeProcess(settings, settings.data_dir / "node.log")
    admin = {"Authorization": f"Bearer {settings.admin_key}"}
    sent: Counter[str] = Counter()
    node.start()
    try:
        ids = send_with_the_sdk(node, sent, sync_mode=True)
        ids += send_with_the_sdk(node, sent, sync_mode=False)

        # A client re-sends a batch it believes lost: acknowledged, counted once.
        resent = {
            "batch": [
                {"type": "track", "userId": "sdk-1", "event": "Order Completed",
                 "messageId": "b-sdk-1-3", "properties": {"order_id": "o-sdk-1-b"}},
                {"type": "page", "userId": "sdk-2", "messageId": "s-sdk-2-1"},
            ]
        }  # fmt: skip
        for _ in range(2):
            again = httpx.post(
                f"{node.base}/v1/batch", json=resent, auth=(settings.write_key, ""), timeout=30
            )
            assert again.status_code == 200, again.text

        # A second source (its own write key) reuses messageIds the first one sent:
        # its events are its own and count; its re-sends count once.
        created = httpx.post(
            f"{node.base}/v1/write-keys", json={"name": "app"}, headers=admin, timeout=30
        )
        assert created.status_code == 201, created.text
        app_key, app_source = created.json()["write_key"], created.json()["key_id"]
        app_errors: list[Any] = []
        app = Client(
            write_key=app_key,
            host=node.base,
            sync_mode=True,
            on_error=lambda error, batch: app_errors.append((error, batch)),
            max_retries=1,
        )
        reused = [f"s-{customer}-1" for customer in CUSTOMERS]  # the first source's pages
        for customer, message_id in zip(CUSTOMERS, reused, strict=True):
            for _ in range(2):
                app.page(customer, name="App Home", message_id=message_id)
            sent[customer] += 1
        app.flush()
        assert app_errors == []

        # Bad requests: each its documented 4xx, readable, and dead-lettered.
        oversize = {"userId": "x", "event": "E", "properties": {"p": "x" * 40_000}}
        wrong_type = {"userId": "x", "event": "Product Added", "properties": {"price": "1€"}}
        bad: list[tuple[bytes, int, str]] = [
            (b'{"userId": "x", "event": ', 400, "body"),
            (orjson.dumps(oversize), 413, "body"),
            (orjson.dumps({"event": "Product Added"}), 400, "userId"),
            (orjson.dumps(wrong_type), 400, "properties.price"),
        ]
        for body, status, field in bad:
            response = httpx.post(
                f"{node.base}/v1/track",
                content=body,
                headers={"content-type": "application/json"},
                auth=(settings.write_key, ""),
                timeout=30,
            )
            assert response.status_code == status, response.text
            assert response.json()["errors"][0]["field"] == field
            assert field in response.json()["message"]

        def event_counts() -> dict[str, int]:
            found = {}
            for customer in CUSTOMERS:
                response = node.read("GET", f"/v1/customers/{customer}")
                found[customer] = response.json()["event_count"] if response.is_success else 0
            return found

        def dead_letters() -> list[dict[str, Any]]:
            response = httpx.get(f"{node.base}/v1/dead-letters", headers=admin, timeout=30)
            return list(response.json()["dead_letters"]) if response.is_success else []

        wait_until(lambda: event_counts() == dict(sent), timeout=60, alive=lambda: True)
        assert event_counts() == dict(sent) == {c: 11 for c in CUSTOMERS}
        wait_until(lambda: len(dead_letters()) >= len(bad), timeout=60, alive=lambda: True)
        letters = dead_letters()
        assert len(letters) == len(bad)
        # Newest first, each with its reason.
        assert [d["reasons"][0]["field"] for d in letters] == [f for _, _, f in reversed(bad)]
        assert all(d["source"] == "dev" for d in letters)

        # The CLI lists them too (an HTTP client of the API).
        listed = subprocess.run(
            [sys.executable, "-m", "stack.cli", "dead-letters", "--url", node.base,
             "--admin-key", settings.admin_key, "--json"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert [orjson.loads(line)["id"] for line in listed.stdout.splitlines()] == [
            d["id"] for d in letters
        ]
    finally:
        assert node.stop() == 0, node.log_tail()

    database = settings.clickhouse_database
    rows = query_chdb_folder(
        settings.chdb_path,
        f"SELECT event_id, source, count() FROM {database}.events GROUP BY event_id, source",
    )
    assert {(event_id, source): count for event_id, source, count in rows} == {
        (i, "dev"): 1 for i in ids
    } | {(i, app_source): 1 for i in reused}
    changes = query_chdb_folder(
        settings.chdb_path,
        f"SELECT customer_key, stage, count() FROM {database}.stage_changes "
        "GROUP BY customer_key, stage",
    )
    assert all(count == 1 for _, _, count in changes), changes
    # Each alias(previousId="anon-<c>") links that anonymous id: its journey is
    # marked merged into <c>, so anything it sends later is forwarded there.
    assert {(c, s) for c, s, _ in changes} == {
        (c, s) for c in CUSTOMERS for s in ("awareness", "consideration", "purchase", "loyalty")
    } | {(f"anon:anon-{c}", "merged") for c in CUSTOMERS}
