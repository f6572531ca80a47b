"""Backpressure through a real node: past the lag limit ingest answers 503, then recovers.

Real parts: a Tansu broker, the node process (worker and API), chdb, SQLite.
The worker is held (its commit waits on a SQLite write lock this test takes,
as in test_journal_broker_loss.py) while single calls are sent one at a time:
exactly the limit's worth are accepted, then every ingest route answers 503
with Retry-After and the rule ``backlog``, and /health shows the lag in events
and seconds. Released, the worker catches up and ingest is accepted again; the
customer's count is exactly the 200s (a 503 kept nothing).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack.broker import EmbeddedBroker
from stack.processes import wait_until
from streams.topics import ensure_topics
from tests.node_process import NodeProcess, platform_settings

pytestmark = pytest.mark.integration

LIMIT = 12


def backlog(node: NodeProcess) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{node.base}/health", timeout=30).json()["components"][
        "backlog"
    ]
    return state


def samples(node: NodeProcess, name: str) -> list[tuple[dict[str, str], float]]:
    """/metrics: the samples of ``name``, with their labels."""
    text = httpx.get(f"{node.base}/metrics", timeout=30).text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def refused_as_backlog(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    body = response.json()
    assert body["success"] is False
    assert [(e["field"], e["rule"]) for e in body["errors"]] == [("pipeline", "backlog")]
    assert f"(limit {LIMIT})" in body["message"]


def test_past_the_lag_limit_ingest_answers_503_and_recovers_once_the_worker_catches_up(
    tmp_path: Path, unique: str, broker: EmbeddedBroker
) -> None:
    settings = platform_settings(
        tmp_path / "data", unique, broker.bootstrap_servers, ingest_max_lag_events=LIMIT
    )
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
    node = NodeProcess(settings, tmp_path / "node.log")
    auth = (settings.write_key, "")
    accepted = 0
    try:
        node.start()
        for n in range(3):
            assert node.track("bp", "Product Viewed", f"warm-{n}") == 200
            accepted += 1
        assert wait_until(lambda: backlog(node)["lag_events"] == 0, 30, alive=lambda: True)

        lock = sqlite3.connect(settings.sqlite_path, timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            statuses = []
            for n in range(LIMIT + 5):
                status = node.track("bp", "Product Viewed", f"held-{n}")
                statuses.append(status)
                if status != 200:
                    break
            # Sent one at a time, so the lag is known exactly: the limit, one more, then 503.
            assert statuses == [200] * (LIMIT + 1) + [503], statuses
            accepted += LIMIT + 1
            call = {"userId": "bp", "event": "Product Viewed", "messageId": "refused-0"}
            refused_as_backlog(httpx.post(f"{node.base}/v1/track", json=call, auth=auth))
            refused_as_backlog(httpx.post(f"{node.base}/v1/t", json=call, auth=auth))
            batch = {"batch": [{"type": "track", **call, "messageId": "refused-1"}]}
            refused_as_backlog(httpx.post(f"{node.base}/v1/batch", json=batch, auth=auth))
            beacon = f"{node.base}/beacon/v1/batch?writeKey={settings.write_key}"
            refused_as_backlog(httpx.post(beacon, json=batch))
            # The worker's lag, in events and in seconds, on /health: catching up is healthy.
            health = httpx.get(f"{node.base}/health", timeout=30)
            assert health.status_code == 200
            state = health.json()["components"]["backlog"]
            assert state["accepting"] is False and state["lag_events"] == LIMIT + 1, state
            assert sum(state["partitions"].values()) == LIMIT + 1
            assert state["lag_seconds"] > 0 and state["max_lag_events"] == LIMIT
            stats = node.read("GET", "/v1/stats").json()
            assert stats["backlog_events"] == LIMIT + 1 and stats["backlog_seconds"] > 0
            # Counted: the first refused call, /v1/track, /v1/t and the two batches' items.
            refused = samples(node, "journeys_events_rejected_total")
            assert refused == [({"rule": "backlog"}, 5.0)], refused
            lag = samples(node, "journeys_consumer_lag_events")
            assert sum(v for _, v in lag) == LIMIT + 1, lag
            # The trigger consumer (same SQLite file) is held too, and knows it is behind.
            events_topic = settings.events_topic
            trigger_lag = samples(node, "journeys_trigger_consumer_lag_events")
            assert sum(v for labels, v in trigger_lag if labels["topic"] == events_topic) > 0
        finally:
            lock.execute("ROLLBACK")
            lock.close()

        assert wait_until(lambda: backlog(node)["lag_events"] == 0, 30, alive=lambda: True), (
            node.log_tail()
        )
        assert backlog(node)["accepting"] is True and backlog(node)["lag_seconds"] == 0
        assert node.track("bp", "Product Viewed", "after-0") == 200
        accepted += 1
        # Exactly the 200s are counted: nothing refused with a 503 was kept.
        assert wait_until(
            lambda: node.read("GET", "/v1/customers/bp").json().get("event_count") == accepted,
            30,
            alive=lambda: True,
        ), node.read("GET", "/v1/customers/bp").json()
    finally:
        if node.process is not None:
            assert node.stop() == 0
