"""Issue 13's scenario at a size CI affords: nothing acknowledged is lost, nothing counted twice.

`journeys up` as a user runs it; an SDK-like sender posts 20,000 events of
5,000 customers in /v1/batch requests and re-sends each request until it gets
a 200. During the load the node is SIGKILLed twice and the broker once (the
supervisor restarts them; a new broker is a new epoch, and the node produces
its ingest journal into it). Afterwards every acknowledged event is counted
exactly once in the ClickHouse event log and the customer counters, the event
store agrees (`journeys verify`), and re-sending 1,000 accepted events changes
nothing.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack.processes import free_port
from stack.settings import Settings
from tests.node_process import query_chdb_folder, run_cli
from tests.stack_process import RunningStack, Sender, leftovers, wait_for

pytestmark = pytest.mark.e2e

EVENTS = 20_000
CUSTOMERS = 5_000
PER_REQUEST = 50
SENDERS = 4
STEPS = ["Product Viewed", "Product Added", "Product Viewed", "Order Completed"]
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def calls() -> list[dict[str, Any]]:
    """Every customer's four steps, interleaved across customers, with SDK timestamps."""
    made = []
    for n in range(EVENTS):
        customer, step = n % CUSTOMERS, n // CUSTOMERS
        call: dict[str, Any] = {
            "type": "track",
            "userId": f"u{customer}",
            "event": STEPS[step],
            "messageId": f"m{n}",
            "timestamp": (T0 + timedelta(seconds=n)).isoformat(),
            "properties": {"product_id": f"p{n % 97}", "price": 12.5},
        }
        if STEPS[step] == "Order Completed":
            call["properties"] = {"order_id": f"o{customer}", "revenue": 25.0}
        made.append(call)
    return made


def kill_child(stack: RunningStack, marker: str) -> int:
    # Ingest gateways take the load while the node or broker restarts, so the next
    # share can be reached before the killed child's dependant is back: wait for it.
    child = wait_for(lambda: stack.child(marker), timeout=120)
    assert child is not None, stack.output()
    child.send_signal(signal.SIGKILL)
    return child.pid


def restarted(stack: RunningStack, marker: str, old: int) -> bool:
    child = stack.child(marker)
    return child is not None and child.pid != old


def journal_empty(base: str) -> bool:
    """Every journaled event processed: the journal is trimmed only past processed positions."""
    try:
        body = httpx.get(f"{base}/health", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return False
    components = body.get("components", {})
    journal = components.get("journal", {})
    node_empty = journal.get("segments") == 1 and journal.get("retained_bytes", 0) <= 6
    # The ingest gateways' journals (one each, an active segment of 6 bytes when empty).
    held = components.get("gateway_journals", {}).get("gateways", {})
    gateways_empty = all(
        g["segments"] <= 1 and g["retained_bytes"] <= 6 * g["segments"] for g in held.values()
    )
    return bool(node_empty and held and gateways_empty)


def test_kills_of_node_and_broker_lose_no_acknowledged_event_and_count_none_twice(
    tmp_path: Path,
) -> None:
    port = free_port()
    stack = RunningStack(
        tmp_path,
        port,
        ingest_rate_per_s="0",
        journal_segment_s="2",
        supervisor_max_restarts="10",
    )
    write_key, _ = stack.wait_for_banner()
    made = calls()
    requests = [made[i : i + PER_REQUEST] for i in range(0, EVENTS, PER_REQUEST)]
    sender = Sender(stack.base, write_key, requests)
    threads = [threading.Thread(target=sender.run) for _ in range(SENDERS)]
    try:
        for thread in threads:
            thread.start()
        # Kill the node at a quarter and three quarters, the broker at half.
        for share, marker in ((0.25, "stack.cli node"), (0.5, "tansu"), (0.75, "stack.cli node")):
            assert wait_for(lambda s=share: sender.done() >= s * EVENTS, timeout=300), (
                sender.done(),
                stack.output(),
            )
            old = kill_child(stack, marker)
            assert wait_for(lambda m=marker, o=old: restarted(stack, m, o), 60), stack.output()
        for thread in threads:
            thread.join(timeout=600)
        assert sender.done() == EVENTS
        assert "the broker exited" in stack.output()
        assert stack.output().count("the node exited") >= 2
        assert wait_for(lambda: journal_empty(stack.base), timeout=300), stack.output()

        # A client that never saw its 200 re-sends: 1,000 accepted events again.
        again = Sender(stack.base, write_key, [made[i : i + 50] for i in range(0, 1000, 50)])
        again.run()
        assert again.done() == 1000
        assert wait_for(lambda: journal_empty(stack.base), timeout=120), stack.output()
    finally:
        code, children = stack.interrupt(signal.SIGTERM)
    assert code == 0, stack.output()
    assert leftovers(children) == [], stack.output()

    # The new broker got the journal (what the old one held but the worker had not finished).
    # (The events' journals are the ingest gateways'; the node's holds its identity messages.)
    logs = tmp_path / "data" / "logs"
    gateway_logs = [path.read_text(errors="replace") for path in logs.glob("gateway-*.log")]
    assert any("journal: produced" in text for text in gateway_logs)
    expected = Counter(call["userId"] for call in made)
    settings = Settings(data_dir=tmp_path / "data")
    db = settings.clickhouse_database
    rows = query_chdb_folder(
        settings.chdb_path,
        f"SELECT customer_key, count(), uniqExact(event_id) FROM {db}.events FINAL "
        "GROUP BY customer_key",
    )
    assert {key: n for key, n, _ in rows} == dict(expected)
    assert all(n == unique for _, n, unique in rows)
    counters = query_chdb_folder(
        settings.chdb_path,
        f"SELECT customer_key, event_count FROM {db}.customer_stages FINAL",
    )
    assert {key: n for key, n in counters} == dict(expected)
    verified = run_cli(settings, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{CUSTOMERS} journeys with {EVENTS} events" in verified.stdout
