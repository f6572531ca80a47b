"""Acknowledged events survive the death of the memory-only broker: the ingest journal.

Real parts throughout: a Tansu broker (memory storage) on a fixed port, the
node process (worker and API), chdb and SQLite. The worker is held mid-batch
(its commit waits on a SQLite write lock this test takes, so its ClickHouse
effects are written and its commit is not), more events are acknowledged, then
the node and the broker are SIGKILLed: the broker's log is gone. A new broker
on the same port is a new epoch; the restarted node produces the journal into
it before taking traffic, and every acknowledged event counts exactly once in
the event store, the ClickHouse event log and the counters; `journeys verify`
finds no difference.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack.broker import EmbeddedBroker
from stack.processes import free_port, wait_until
from streams.journal import SEGMENT_MAGIC
from streams.topics import ensure_topics
from tests.node_process import NodeProcess, platform_settings, query_chdb_folder, run_cli

pytestmark = pytest.mark.integration

CUSTOMERS = [f"c{i}" for i in range(40)]
SHOPPERS = [f"s{i}" for i in range(3)]
STEPS = ["Product Viewed", "Product Added", "Product Viewed", "Order Completed"]


def post_batch(node: NodeProcess, calls: list[dict[str, Any]]) -> None:
    response = httpx.post(
        f"{node.base}/v1/batch",
        json={"batch": calls},
        auth=(node.settings.write_key, ""),
        timeout=30,
    )
    assert response.status_code == 200, response.text


def wave(node: NodeProcess, step: int, sent: Counter[str]) -> None:
    """Every customer takes a step; 20 calls per /v1/batch request, each a 200."""
    calls = [
        {
            "type": "track",
            "userId": customer,
            "event": STEPS[step],
            "messageId": f"{customer}-{step}",
            "properties": {"order_id": f"o-{customer}"} if "Order" in STEPS[step] else {},
        }
        for customer in CUSTOMERS
    ]
    for start in range(0, len(calls), 20):
        post_batch(node, calls[start : start + 20])
    for customer in CUSTOMERS:
        sent[customer] += 1


def health(node: NodeProcess) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{node.base}/health", timeout=30).json()["components"]
    return body


def counts(node: NodeProcess, customers: list[str]) -> dict[str, int]:
    found = {}
    for customer in customers:
        response = node.read("GET", f"/v1/customers/{customer}")
        found[customer] = response.json()["event_count"] if response.is_success else 0
    return found


def tracked(connection: sqlite3.Connection, topic: str) -> dict[str, int]:
    """The journey pipeline's positions (next offset) per source, from the event store."""
    return {
        str(name): int(position)
        for name, position in connection.execute(
            "SELECT application_name, MAX(notification_id) FROM tracking "
            "WHERE application_name LIKE ? GROUP BY application_name",
            (f"{topic}#%",),
        )
    }


def journal_emptied(node: NodeProcess) -> bool:
    """Every processed segment trimmed: only the (empty) active one is left."""
    journal = health(node)["journal"]
    return bool(journal["segments"] == 1 and journal["retained_bytes"] == len(SEGMENT_MAGIC))


def test_acknowledged_events_survive_a_broker_killed_before_the_worker_processed_them(
    tmp_path: Path, unique: str
) -> None:
    port = free_port()
    first = EmbeddedBroker(tmp_path / "broker-1.log", port=port)
    first.start()
    settings = platform_settings(
        tmp_path / "data",
        unique,
        first.bootstrap_servers,
        kafka_epoch="epoch-1",
        journal_segment_s=1.0,
        journal_trim_s=0.2,
    )
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
    topic = settings.events_topic
    node = NodeProcess(settings, tmp_path / "node-1.log")
    sent: Counter[str] = Counter()
    second: EmbeddedBroker | None = None
    try:
        node.start()
        # Processed before anything dies: shoppers browse anonymously, then identify.
        wave(node, 0, sent)
        post_batch(
            node,
            [
                {
                    "type": "track",
                    "anonymousId": f"dev-{s}",
                    "event": "Product Viewed",
                    "messageId": f"{s}-0",
                }
                for s in SHOPPERS
            ]
            + [
                {"type": "identify", "anonymousId": f"dev-{s}", "userId": s, "messageId": f"{s}-1"}
                for s in SHOPPERS
            ],
        )
        assert wait_until(
            lambda: (
                counts(node, CUSTOMERS) == dict(sent)
                and counts(node, SHOPPERS) == dict.fromkeys(SHOPPERS, 2)
            ),
            timeout=60,
            alive=lambda: True,
            interval=0.3,
        ), node.log_tail()
        # Processed segments are trimmed (never by time: by the tracked positions).
        assert wait_until(lambda: journal_emptied(node), 30, alive=lambda: True), health(node)

        # Hold the worker: its next commit waits on this lock (its effects are written).
        lock = sqlite3.connect(settings.sqlite_path, timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        held = tracked(lock, topic)
        try:
            wave(node, 1, sent)
            wave(node, 2, sent)
            # The shoppers' anonymous cart adds: forwarded to them once processed.
            post_batch(
                node,
                [
                    {
                        "type": "track",
                        "anonymousId": f"dev-{s}",
                        "event": "Product Added",
                        "messageId": f"{s}-2",
                    }
                    for s in SHOPPERS
                ],
            )
            # Held: nothing of this phase is committed (Tansu's end offsets are not
            # exact, so the event store's positions are what is compared).
            time.sleep(1.0)
            assert tracked(lock, topic) == held
            journal = health(node)["journal"]
            assert journal["retained_bytes"] > len(SEGMENT_MAGIC)
            node.kill()
            assert first.process is not None
            first.process.send_signal(signal.SIGKILL)
            first.process.wait()
        finally:
            lock.execute("ROLLBACK")
            lock.close()

        # A new broker on the same port: its log is empty, a new epoch.
        second = EmbeddedBroker(tmp_path / "broker-2.log", port=port)
        second.start()
        ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
        restarted = settings.model_copy(update={"kafka_epoch": "epoch-2"})
        node = NodeProcess(restarted, tmp_path / "node-2.log")
        node.start()
        replay_lines = [line for line in node.log_tail(400).splitlines() if "journal:" in line]
        assert replay_lines, node.log_tail()
        wave(node, 3, sent)
        post_batch(
            node,
            [
                {
                    "type": "track",
                    "userId": s,
                    "event": "Order Completed",
                    "messageId": f"{s}-3",
                    "properties": {"order_id": f"o-{s}"},
                }
                for s in SHOPPERS
            ],
        )
        expected = {customer: 4 for customer in CUSTOMERS}
        shoppers = dict.fromkeys(SHOPPERS, 4)  # view and cart add (anonymous), identify, order
        assert wait_until(
            lambda: counts(node, CUSTOMERS) == expected and counts(node, SHOPPERS) == shoppers,
            timeout=90,
            alive=lambda: True,
            interval=0.5,
        ), (counts(node, CUSTOMERS), counts(node, SHOPPERS), node.log_tail(80))
        assert dict(sent) == expected
        # A client re-sending what was accepted (it never saw the 200) changes nothing.
        wave(node, 1, Counter())
        wave(node, 3, Counter())
        assert wait_until(lambda: health(node)["worker"]["lag"] == 0, 30, alive=lambda: True)
        assert counts(node, CUSTOMERS) == expected
        assert counts(node, SHOPPERS) == shoppers
        for shopper in SHOPPERS:
            body = node.read("GET", f"/v1/customers/{shopper}").json()
            assert body["stage"] == "purchase", body
        assert wait_until(lambda: journal_emptied(node), 30, alive=lambda: True), health(node)
    finally:
        if node.process is not None:
            assert node.stop() == 0
        if second is not None:
            second.stop()
        first.stop()

    database = settings.clickhouse_database
    rows = query_chdb_folder(
        settings.chdb_path,
        f"SELECT customer_key, count() FROM {database}.events FINAL GROUP BY customer_key",
    )
    assert {key: n for key, n in rows if key.startswith("c")} == expected
    assert {key: n for key, n in rows if key.startswith("s")} == shoppers
    verified = run_cli(restarted, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "the stores agree" in verified.stdout
