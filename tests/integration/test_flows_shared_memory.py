"""Flow states stored before the shared memory are carried forward into it.

Before, each flow that keeps the customer's facts kept its own copy (clock, inputs
kept, ids, facts) in its ``flow_states`` row; now the customer's flows share one
memory row (``SHARED_MEMORY``) and their rows refer to it. A store written the old
way (the runner with no flow sharing, its rows without ``planned_version``) is
taken over halfway through a history by today's runner: the facts recorded over
the whole history are the pure engine's, fact for fact, nothing is sent twice, and
the rows end in the new shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from events import TrackedEvent
from journeys.flows.backtest import run_history
from journeys.flows.definitions import FlowCatalog
from journeys.flows.engine import FlowEngine
from journeys.flows.inputs import to_ms, tracked_input
from streams.outreach.flows import FlowRunner
from streams.outreach.store import SHARED_MEMORY, OutreachStore
from tests.conftest import T0
from tests.integration.test_rules_as_flows_live import (
    EVENTS,
    GRACE_MS,
    TICK_MS,
    _switched_on,
)

pytestmark = pytest.mark.integration


def _targets(rule: str, channels: Sequence[str], message: dict[str, Any]) -> list[Any]:
    return [("ep1", "webhook", "pending")] if "webhook" in channels else [("email", "email", "x")]


def _rewrite_as_before(store: OutreachStore) -> int:
    """The rows as the runner wrote them before: no ``planned_version``."""
    rows = store._rows("SELECT customer_key, flow_id, state FROM flow_states")
    with store.transaction():
        for key, flow_id, text in rows:
            state = orjson.loads(text)
            state.pop("planned_version", None)
            store._exec(
                "UPDATE flow_states SET state = ? WHERE customer_key = ? AND flow_id = ?",
                (orjson.dumps(state).decode(), key, flow_id),
            )
    return len(rows)


def test_flow_states_stored_per_flow_are_carried_into_the_shared_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flows = _switched_on()
    store = OutreachStore(sqlite_path=tmp_path / "events.sqlite")
    arrivals = sorted(EVENTS, key=lambda e: (e.timestamp, e.event_id))
    now, position = to_ms(T0) - 60_000, 0
    end = to_ms(T0) + 14 * 86_400_000

    def deliver(runner: FlowRunner, events: list[TrackedEvent]) -> None:
        nonlocal now, position
        for event in events:
            arrives = to_ms(event.timestamp) + 2_000
            while now + TICK_MS < arrives:
                now += TICK_MS
                store.save_flows(runner.advance_due([0], now))
            now = arrives
            position += 1
            write = runner.observe(0, [(event.customer_key, tracked_input(event))], now)
            store.save_batch([], "events#0", position, write)

    # Before: every flow keeps its own copy of what it knows.
    with monkeypatch.context() as before:
        before.setattr(FlowEngine, "shares_memory", lambda self, flow_id: False)
        deliver(FlowRunner(store, flows, _targets, GRACE_MS), arrivals[:4])
    old_rows = store._rows("SELECT flow_id, state FROM flow_states")
    assert all(flow_id != SHARED_MEMORY for flow_id, _ in old_rows)
    assert any(orjson.loads(text)["facts"] for _, text in old_rows)  # own copies
    assert _rewrite_as_before(store) == len(old_rows)
    store.forget_kept_facts()  # as a restart: nothing of it in memory

    runner = FlowRunner(store, flows, _targets, GRACE_MS)
    deliver(runner, arrivals[4:])
    while now < end:
        now += TICK_MS
        store.save_flows(runner.advance_due([0], now))

    engine = FlowEngine(FlowCatalog.of(flows))
    for customer in sorted({e.customer_key for e in EVENTS}):
        inputs = [tracked_input(e) for e in EVENTS if e.customer_key == customer]
        expected = []
        for flow in flows:
            found, _ = run_history(engine, flow.id, customer, inputs, end)
            expected += [fact.to_dict() for fact in found]
        live = store.flow_facts(customer)
        assert sorted(live, key=lambda f: f["fact_id"]) == sorted(
            expected, key=lambda f: f["fact_id"]
        ), customer
    assert len(store.recent_triggers(limit=50)) == 9  # as test_rules_as_flows_live: once each

    # After: one memory per customer holds the facts; the flows' rows refer to it.
    shared = {flow.id for flow in flows if engine.shares_memory(flow.id)}
    rows = store._rows("SELECT customer_key, flow_id, state FROM flow_states")
    memories = {key: orjson.loads(text) for key, flow_id, text in rows if flow_id == SHARED_MEMORY}
    assert set(memories) == {e.customer_key for e in EVENTS}
    assert all(memory["facts"] and memory["clock_ms"] for memory in memories.values())
    for _, flow_id, text in rows:
        if flow_id in shared:
            state = orjson.loads(text)
            assert state["facts"] is None and state["clock_ms"] is None and not state["seen"]
    # The why route lists flows, not the memory.
    assert all(row["flow_id"] != SHARED_MEMORY for row in store.flow_states("reviewer"))
    store.close()
