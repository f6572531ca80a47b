"""Live equals backtest: one history run by the worker's flow runner and by the backtest.

Live: the events arrive one by one (in event-time order, a few seconds after
their time, as a storefront's do) at the flow runner the worker uses
(streams/outreach/flows.py) over a real outreach store (SQLite), saved as the
worker saves them, and the timer loop's tick runs every ten simulated minutes
(so deadlines are taken up to ten minutes late in wall time, never in event
time). Backtest: the same events logged to ClickHouse (chdb) and read back by
the backtest's reader. The facts recorded live and the facts the backtest
decides must be the same, fact for fact; each live message is a trigger with
its deliveries, once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from journeys.flows.backtest import run_history
from journeys.flows.definitions import FlowCatalog
from journeys.flows.engine import FlowEngine
from journeys.flows.inputs import to_ms, tracked_input
from projections.event_log import EventLog
from projections.flow_history import FlowHistory
from projections.migrations import migrate
from stack.flows import load_flows
from stack.settings import Settings
from streams.outreach.flows import FlowRunner
from streams.outreach.store import OutreachStore
from tests.conftest import T0
from tests.integration.test_flows_backtest import EVENTS, HOLDOUT, LATER, NEVER, QUICK

pytestmark = pytest.mark.integration
TICK_MS = 10 * 60_000
GRACE_MS = 15 * 60_000


@pytest.fixture
def database(clickhouse: Client) -> Iterator[str]:
    db = f"db_{uuid.uuid4().hex[:12]}"
    migrate(clickhouse, db)
    EventLog(clickhouse, db).append(EVENTS)
    yield db
    clickhouse.command(f"DROP DATABASE {db}")


def _targets(
    rule: str, channels: list[str], message: dict[str, object]
) -> list[tuple[str, str, str]]:
    return (
        [("ep1", "webhook", "pending")]
        if "webhook" in channels
        else [("email", "email", "skipped")]
    )


def test_live_decisions_equal_the_backtest(
    tmp_path: Path, clickhouse: Client, database: str
) -> None:
    flows = load_flows(Settings())
    store = OutreachStore(sqlite_path=tmp_path / "events.sqlite")
    runner = FlowRunner(store, flows, _targets, GRACE_MS)
    arrivals = sorted(EVENTS, key=lambda e: (e.timestamp, e.event_id))
    start = to_ms(arrivals[0].timestamp) - 60_000
    end = to_ms(T0 + timedelta(days=8))
    now, position = start, 0
    for event in arrivals:
        arrives = to_ms(event.timestamp) + 2_000
        while now + TICK_MS < arrives:  # the timer loop's ticks until it arrives
            now += TICK_MS
            store.save_flows(runner.advance_due([0], now))
        now = arrives
        position += 1
        write = runner.observe(0, [(event.customer_key, tracked_input(event))], now)
        store.save_batch([], "events#0", position, write)
    while now < end:
        now += TICK_MS
        store.save_flows(runner.advance_due([0], now))

    engine = FlowEngine(FlowCatalog.of(flows))
    history = FlowHistory(clickhouse, database)
    customers = history.candidates(flows[0], start, end)
    assert customers == sorted([QUICK, LATER, NEVER, HOLDOUT, "imported"])
    for customer, inputs in history.histories(customers, start, end):
        expected, _ = run_history(engine, "abandoned_cart", customer, inputs, end)
        live = store.flow_facts(customer)
        assert sorted(live, key=lambda f: f["fact_id"]) == sorted(
            (fact.to_dict() for fact in expected), key=lambda f: f["fact_id"]
        ), customer
    sent = {f["fact_id"] for c in customers for f in store.flow_facts(c) if f["type"] == "Sent"}
    assert len(sent) == 3  # LATER's reminder; NEVER's reminder and coupon
    triggers = store.recent_triggers(limit=50)
    assert sorted(t["fact_id"] for t in triggers) == sorted(sent)
    assert {t["customer_id"] for t in triggers} == {LATER, NEVER}
    assert sorted(d["channel"] for t in triggers for d in t["deliveries"]) == [
        "email",
        "webhook",
        "webhook",
    ]
    # A crash before the commit replays the batch: the same facts and messages, once.
    replay = runner.observe(0, [(e.customer_key, tracked_input(e)) for e in arrivals], now)
    store.save_batch([], "events#0", position, replay)
    assert len(store.recent_triggers(limit=50)) == 3
    store.close()


def test_runs_inside_finish_on_their_version_after_the_file_moves_on(tmp_path: Path) -> None:
    """The versions are recorded in the store: a new runner (a restart with a new flows
    file) still knows the version a run started on; new runs take the new one; a flow
    removed from the file takes no new runs."""
    v1 = load_flows(Settings())[0]  # the canonical abandoned cart
    table = dict(v1.source)
    nodes = {k: dict(v) for k, v in table["nodes"].items()}
    nodes["wait_for_order"]["timeout"] = "2h"
    from journeys.flows.definitions import parse_flow

    v2 = parse_flow("abandoned_cart", {**table, "version": 2, "nodes": nodes})
    assert v2 is not None
    store = OutreachStore(sqlite_path=tmp_path / "events.sqlite")
    first = FlowRunner(store, [v1], _targets, None)
    add = EVENTS[2]  # QUICK's Product Added at T0
    at = to_ms(add.timestamp)
    store.save_flows(first.observe(0, [(QUICK, tracked_input(add))], at))
    store.save_flows(first.advance_due([0], at + 1000))
    restarted = FlowRunner(store, [v2], _targets, None)  # the file moved on to version 2
    newcomer = tracked_input(EVENTS[4])  # LATER's Product Added
    store.save_flows(restarted.observe(0, [(LATER, newcomer)], at + 60_000))
    store.save_flows(restarted.advance_due([0], at + 3 * 3_600_000))
    quick_sent = [f for f in store.flow_facts(QUICK) if f["type"] == "Sent"]
    later_facts = store.flow_facts(LATER)
    assert [(f["version"], f["at_ms"] - at) for f in quick_sent] == [(1, 3_600_000)]  # v1: 1 h
    entered = [f for f in later_facts if f["type"] == "Entered"]
    assert [f["version"] for f in entered] == [2]
    removed = FlowRunner(store, [], _targets, None)
    assert removed.active  # runs inside still finish ...
    assert removed.engine.catalog.current("abandoned_cart") is None  # ... but none starts
    store.close()
