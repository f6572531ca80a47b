"""Ingest gateways under load: a SIGKILLed gateway loses no acknowledged event, refuses no call.

`journeys up` with two gateways on its one public socket. Senders post single
/v1/track calls (each re-sent until answered 200, as an SDK does). A third of
the way in one gateway is SIGKILLed (the other keeps serving); at two thirds
both are (nothing accepts: calls wait in the supervisor's socket). The
supervisor restarts each, and each replays its own journal. No connection is
refused, and afterwards every acknowledged event is counted exactly once in the
ClickHouse event log and the customer counters, and reads (forwarded to the
node) answer on the same port.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from stack.processes import free_port
from stack.settings import Settings
from tests.stack_process import (
    GATEWAY,
    NODE,
    RunningStack,
    assert_counted_once,
    counted_events,
    leftovers,
    wait_for,
)

pytestmark = pytest.mark.e2e

EVENTS = 3_000
CUSTOMERS = 60
SENDERS = 8


def gateways(stack: RunningStack) -> list[psutil.Process]:
    return stack.children_matching(GATEWAY)


def serving_gateways(stack: RunningStack, logs: Path) -> list[psutil.Process]:
    """The gateways that serve: past their journal's replay, in uvicorn's loop.

    A restarted gateway exists (its command line matches) seconds before it serves
    (imports, replay): a kill in that time proves less, and a restart that never
    serves would go unseen if existing were enough."""
    started = {
        int(pid)
        for path in logs.glob("gateway-*.log")
        for pid in re.findall(r"Started server process \[(\d+)\]", path.read_text())
    }
    return [gateway for gateway in gateways(stack) if gateway.pid in started]


class SingleCalls:
    """Browser-like senders: one event per call, re-sent until a 200."""

    def __init__(self, base: str, write_key: str) -> None:
        self.base, self.write_key = base, write_key
        self.pending = list(reversed(range(EVENTS)))
        self.lock = threading.Lock()
        self.acknowledged: list[int] = []
        self.refused: list[str] = []
        self.retries = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.base, auth=(self.write_key, ""), timeout=60) as client:
            while True:
                with self.lock:
                    if not self.pending:
                        return
                    n = self.pending.pop()
                call = {
                    "userId": f"u{n % CUSTOMERS}",
                    "event": "Product Viewed",
                    "messageId": f"m{n}",
                    "properties": {"product_id": f"p{n % 13}"},
                }
                while not self._sent(client, call):
                    with self.lock:
                        self.retries += 1
                    time.sleep(0.05)
                with self.lock:
                    self.acknowledged.append(n)

    def _sent(self, client: httpx.Client, call: dict[str, object]) -> bool:
        try:
            return client.post("/v1/track", json=call).status_code == 200
        except httpx.ConnectError as error:
            with self.lock:
                self.refused.append(str(error))
            return False
        except httpx.HTTPError:
            return False  # the gateway died mid-call: send again (same messageId)

    def done(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def test_killed_gateways_lose_no_acknowledged_event_and_refuse_no_connection(
    tmp_path: Path,
) -> None:
    stack = RunningStack(
        tmp_path,
        free_port(),
        gateways="2",
        ingest_rate_per_s="0",
        journal_segment_s="2",
        supervisor_max_restarts="10",
    )
    write_key, read_key = stack.wait_for_banner()
    logs = tmp_path / "data" / "logs"

    def serving() -> list[psutil.Process]:
        return serving_gateways(stack, logs)

    assert wait_for(lambda: len(serving()) == 2, 120), stack.output()
    assert stack.child(NODE) is not None
    calls = SingleCalls(stack.base, write_key)
    threads = [threading.Thread(target=calls.run) for _ in range(SENDERS)]
    try:
        for thread in threads:
            thread.start()
        assert wait_for(lambda: calls.done() >= EVENTS / 3, timeout=300), stack.output()
        first = serving()[0]
        first.send_signal(signal.SIGKILL)
        assert wait_for(lambda: len(now := serving()) == 2 and first not in now, 120), (
            stack.output()
        )
        assert wait_for(lambda: calls.done() >= 2 * EVENTS / 3, timeout=300), stack.output()
        both = serving()
        assert len(both) == 2, stack.output()
        for gateway in both:
            gateway.send_signal(signal.SIGKILL)
        assert wait_for(lambda: len(now := serving()) == 2 and not set(both) & set(now), 120), (
            stack.output()
        )
        for thread in threads:
            thread.join(timeout=600)
        assert calls.done() == EVENTS
        assert calls.refused == [], calls.refused[:3]
        assert stack.output().count("the gateway ") >= 3, stack.output()
        assert stack.child(NODE) is not None

        # Reads reach the node through the gateways, on the same port.
        assert wait_for(
            lambda: counted_events(stack.base, read_key, CUSTOMERS) == EVENTS, timeout=180
        ), stack.output()
    finally:
        code, children = stack.interrupt(signal.SIGTERM)
    assert code == 0, stack.output()
    assert leftovers(children) == [], stack.output()

    replayed = [
        path.name for path in logs.glob("gateway-*.log") if "journal: produced" in path.read_text()
    ]
    assert replayed, "a restarted gateway produced its journal again"
    assert_counted_once(tmp_path / "data", Counter(f"u{n % CUSTOMERS}" for n in range(EVENTS)))


LIMIT = 12


def test_the_gateways_answer_503_past_the_lag_limit_and_recover(tmp_path: Path) -> None:
    """The lag limit in the gateways: read from the worker's positions and the broker.

    The worker is held (its commit waits on a SQLite write lock this test takes, as
    in tests/integration/test_backpressure.py); calls are sent one at a time, more
    than a poll apart, so each gateway's view is fresh: exactly the limit's worth and
    one more get their 200, then every ingest route answers 503 (rule ``backlog``),
    counted in the node's /metrics from the gateways' counters.
    """
    stack = RunningStack(
        tmp_path,
        free_port(),
        gateways="2",
        ingest_rate_per_s="0",
        ingest_max_lag_events=str(LIMIT),
        gateway_lag_poll_s="0.2",
    )
    write_key, read_key = stack.wait_for_banner()
    auth = (write_key, "")

    def track(message_id: str) -> httpx.Response:
        call = {"userId": "bp", "event": "Product Viewed", "messageId": message_id}
        return httpx.post(f"{stack.base}/v1/track", json=call, auth=auth, timeout=30)

    def refused_as_backlog(response: httpx.Response) -> None:
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        assert [(e["field"], e["rule"]) for e in response.json()["errors"]] == [
            ("pipeline", "backlog")
        ]

    def lag() -> int:
        body = httpx.get(f"{stack.base}/health", timeout=30).json()
        return int(body["components"]["backlog"]["lag_events"])

    def seconds_behind() -> float:
        body = httpx.get(f"{stack.base}/health", timeout=30).json()
        return float(body["components"]["backlog"]["lag_seconds"])

    accepted = 0
    try:
        for n in range(3):
            assert track(f"warm-{n}").status_code == 200
            accepted += 1
        assert wait_for(lambda: lag() == 0, timeout=60)
        time.sleep(0.6)  # both gateways have read the positions since
        settings = Settings(data_dir=tmp_path / "data")
        lock = sqlite3.connect(settings.sqlite_path, timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            statuses = []
            for n in range(LIMIT + 5):
                response = track(f"held-{n}")
                statuses.append(response.status_code)
                if response.status_code != 200:
                    refused_as_backlog(response)
                    break
                time.sleep(0.6)
            assert statuses == [200] * (LIMIT + 1) + [503], statuses
            accepted += LIMIT + 1
            call = {"userId": "bp", "event": "Product Viewed", "messageId": "refused-0"}
            refused_as_backlog(httpx.post(f"{stack.base}/v1/t", json=call, auth=auth))
            batch = {"batch": [{"type": "track", **call, "messageId": "refused-1"}]}
            refused_as_backlog(httpx.post(f"{stack.base}/v1/batch", json=batch, auth=auth))
            beacon = f"{stack.base}/beacon/v1/batch?writeKey={write_key}"
            refused_as_backlog(httpx.post(beacon, json=batch))
            metrics = httpx.get(f"{stack.base}/metrics", timeout=30).text
            assert 'journeys_events_rejected_total{rule="backlog"} 4.0' in metrics, metrics
            # The node accepted none of these, yet knows their age: its batch in hand
            # holds the first held call, produced 13 calls 0.6 s apart ago.
            assert seconds_behind() >= 0.6 * LIMIT, seconds_behind()
            in_metrics = re.search(r"^journeys_consumer_lag_seconds (\S+)$", metrics, re.M)
            assert in_metrics is not None and float(in_metrics[1]) >= 0.6 * LIMIT, metrics
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert wait_for(lambda: track("after-0").status_code == 200, timeout=60)
        accepted += 1
        assert wait_for(lambda: seconds_behind() == 0, timeout=60), seconds_behind()
        reader = {"Authorization": f"Bearer {read_key}"}

        def counted() -> int | None:
            response = httpx.get(f"{stack.base}/v1/customers/bp", headers=reader, timeout=10)
            return response.json().get("event_count") if response.status_code == 200 else None

        # Exactly the 200s are counted: nothing refused with a 503 was kept.
        assert wait_for(lambda: counted() == accepted, timeout=60), counted()
    finally:
        code, _ = stack.interrupt(signal.SIGTERM)
    assert code == 0, stack.output()
