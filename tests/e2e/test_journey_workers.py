"""Journey workers apart (`JOURNEYS_JOURNEY_WORKERS=2`): a killed worker loses, doubles nothing.

`journeys up` with two journey worker processes (one consumer group over the
event partitions, one SQLite event store) and one ingest gateway. The workers
write ClickHouse over the projection feed and the node applies it. Senders post
/v1/batch requests (each re-sent until 200); a third of the way in one journey
worker is SIGKILLed mid-batch and the supervisor starts it again, the other
taking its partitions meanwhile; at two thirds the broker is SIGKILLed (a new
one is a new epoch: the gateways' journals bring back the events, the workers'
journals the projection records the node had not applied). Through the API
every customer's stage and event count show what was acknowledged; the timeline
reads the shared event
store; after a clean stop every acknowledged event is one row in the event log
and one count in the customer counters, and `journeys verify` agrees. The node's
/metrics shows each worker's batch figures and, for the workers started after the
broker's death, the projection records their journals produced again (so a replay
ran, and the counts above stayed exactly once); the workers' journals are trimmed
once the node applied everything.
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
from tests.node_process import run_cli
from tests.stack_process import (
    RunningStack,
    Sender,
    assert_counted_once,
    counted_events,
    leftovers,
    wait_for,
)

pytestmark = pytest.mark.e2e

JOURNEY_WORKER = "stack.cli journey-worker"
EVENTS = 6_000
CUSTOMERS = 60
PER_REQUEST = 40
SENDERS = 3
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def calls() -> list[dict[str, Any]]:
    made = []
    for n in range(EVENTS):
        name = "Order Completed" if n % 10 == 9 else "Product Viewed"
        call: dict[str, Any] = {
            "type": "track",
            "userId": f"u{n % CUSTOMERS}",
            "event": name,
            "messageId": f"m{n}",
            "timestamp": (T0 + timedelta(seconds=n)).isoformat(),
            "properties": {"product_id": f"p{n % 13}"},
        }
        if name == "Order Completed":
            call["properties"] = {"order_id": f"o{n}", "revenue": 10.0}
        made.append(call)
    return made


def test_a_killed_journey_worker_loses_no_acknowledged_event_and_counts_none_twice(
    tmp_path: Path,
) -> None:
    stack = RunningStack(
        tmp_path,
        free_port(),
        journey_workers="2",
        gateways="1",
        ingest_rate_per_s="0",
        journal_segment_s="2",
        supervisor_max_restarts="10",
    )
    write_key, read_key = stack.wait_for_banner()
    reader = {"Authorization": f"Bearer {read_key}"}
    made = calls()
    requests = [made[i : i + PER_REQUEST] for i in range(0, EVENTS, PER_REQUEST)]
    sender = Sender(stack.base, write_key, requests)
    threads = [threading.Thread(target=sender.run) for _ in range(SENDERS)]
    try:
        workers = wait_for(lambda: len(stack.children_matching(JOURNEY_WORKER)) == 2, 60)
        assert workers, stack.output()
        for thread in threads:
            thread.start()
        assert wait_for(lambda: sender.done() >= EVENTS / 3, timeout=300), stack.output()
        killed = stack.children_matching(JOURNEY_WORKER)[0]
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        assert wait_for(
            lambda: (
                any(p.pid != killed.pid for p in stack.children_matching(JOURNEY_WORKER))
                and len(stack.children_matching(JOURNEY_WORKER)) == 2
            ),
            timeout=120,
        ), stack.output()
        assert wait_for(lambda: sender.done() >= 2 * EVENTS / 3, timeout=300), stack.output()
        broker = stack.child("tansu")
        assert broker is not None, stack.output()
        # Records the node may not have applied yet: a worker's segment without offsets.
        assert wait_for(lambda: unresolved_records_held(tmp_path / "data"), 30), stack.output()
        broker.send_signal(signal.SIGKILL)
        assert wait_for(lambda: restarted(stack, "tansu", broker.pid), 60), stack.output()
        for thread in threads:
            thread.join(timeout=600)
        assert sender.done() == EVENTS
        assert "the broker exited" in stack.output()
        assert "the journey worker 0 exited" in stack.output() or (
            "the journey worker 1 exited" in stack.output()
        )
        # Visible through the API: the counters the node applied from the feed.
        assert wait_for(
            lambda: counted_events(stack.base, read_key, CUSTOMERS) == EVENTS, timeout=300
        ), (counted_events(stack.base, read_key, CUSTOMERS), stack.output())
        customer = httpx.get(f"{stack.base}/v1/customers/u9", headers=reader, timeout=10).json()
        assert customer["stage"] == "loyalty", customer  # ten orders: a repeat buyer
        timeline = httpx.get(f"{stack.base}/v1/customers/u9/journey", headers=reader, timeout=30)
        assert timeline.status_code == 200, timeline.text
        # Each worker's batches in the node's /metrics, labelled by worker.
        metrics = httpx.get(f"{stack.base}/metrics", timeout=30).text
        for index in ("0", "1"):
            count = sample(
                metrics, "journeys_journey_worker_batch_events_count", f'journey_worker="{index}"'
            )
            assert count > 0, metrics
        # The workers started after the broker's death replayed their journals into the
        # new one (counted once all the same, below): the projection records it lacked.
        # Both journals' replays ran (a worker's counters start at 0 with each start).
        replayed = "journeys_journey_worker_journal_replayed_records_total"
        workers_replayed = [
            sample(metrics, replayed, f'journey_worker="{i}"', 'journal="projections"')
            for i in "01"
        ]
        assert sum(workers_replayed) > 0, metrics
        for index in ("0", "1"):
            identity = (f'journey_worker="{index}"', 'journal="identity"')
            assert sample(metrics, replayed, *identity, default=-1) >= 0, metrics
        # Everything applied: each worker's journal trimmed down to its empty active segment.
        assert wait_for(lambda: worker_journals_empty(tmp_path / "data"), 60), stack.output()
    finally:
        code, children = stack.interrupt(signal.SIGTERM)
    assert code == 0, stack.output()
    assert leftovers(children) == [], stack.output()
    assert_counted_once(tmp_path / "data", Counter(call["userId"] for call in made))
    verified = run_cli(Settings(data_dir=tmp_path / "data"), "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{CUSTOMERS} journeys with {EVENTS} events" in verified.stdout


def restarted(stack: RunningStack, marker: str, old: int) -> bool:
    child = stack.child(marker)
    return child is not None and child.pid != old


def sample(metrics: str, name: str, *labels: str, default: float = 0.0) -> float:
    """The value of ``name``'s sample carrying every one of ``labels`` in a /metrics text."""
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(label in line for label in labels):
            return float(line.rsplit(" ", 1)[1])
    return default


def worker_journals_empty(data: Path) -> bool:
    journals = sorted((data / "journey-workers").glob("*/journal"))
    held = [[p.stat().st_size for p in j.glob("*.seg")] for j in journals]
    return len(journals) == 2 and all(sizes == [6] for sizes in held)


def unresolved_records_held(data: Path) -> bool:
    """A worker's projection journal holds records whose offsets it has not saved: the
    active segment (a SIGKILLed worker replays it all at its next start)."""
    for journal in (data / "journey-workers").glob("*/journal"):
        for segment in journal.glob("*.seg"):
            try:
                size = segment.stat().st_size
            except FileNotFoundError:
                continue  # trimmed meanwhile
            if size > 6 and not segment.with_suffix(".offsets").exists():
                return True
    return False
