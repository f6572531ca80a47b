"""Personal data at rest, on a real node (Tansu, chdb, SQLite): nothing readable, then erased.

Identify calls with e-mail, phone and name and a few orders go through the
gateway; every file under the data folder and every topic's records are
searched for the plain values (none), ClickHouse is asked too (its parts are
compressed). Then the customer is erased: their values stop opening
everywhere, the API forgets them, their next event is dead-lettered
``suppressed``, the funnel loses exactly them, and a node restarted on stores
restored from before the erasure forgets them again (the ledger is re-applied).
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from projections.privacy.cipher import decode_master_key
from projections.privacy.fields import PersonalFields
from projections.privacy.keystore import KeyStore
from projections.privacy.vault import ENC, Vault
from stack.settings import Settings
from tests.node_process import NodeProcess, query_chdb_folder, run_cli, started_node

pytestmark = pytest.mark.timeout(600)

ALICE = {
    "email": "alice.liddell@wonder.example",
    "phone": "+44-7700-900123",
    "name": "Alice Liddell",
    "birthday": "1990-05-04",
}
BOB = {"email": "bob.builder@wonder.example", "phone": "+44-7700-900456", "name": "Bob Builder"}
# What must never be found in plain text (case-insensitive).
PLAIN = [b"alice.liddell", b"7700-900123", b"liddell", b"bob.builder", b"7700-900456"]
FUNNEL = {
    "steps": [{"event": "Product Viewed"}, {"event": "Order Completed"}],
    "window_seconds": 86400,
}


def _post(node: NodeProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{node.base}{path}", json=body, auth=(node.settings.write_key, ""), timeout=30
    )


def _admin(node: NodeProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {node.settings.admin_key}"}
    return httpx.request(method, f"{node.base}{path}", headers=headers, timeout=120, **kwargs)


def _send_customer(node: NodeProcess, user: str, traits: dict[str, Any], orders: int) -> None:
    assert _post(node, "/v1/identify", {"userId": user, "traits": traits}).status_code == 200
    context = {"traits": {"email": traits["email"]}}
    body = {"userId": user, "event": "Product Viewed", "properties": {"product_id": "p1"}}
    assert _post(node, "/v1/track", {**body, "context": context}).status_code == 200
    for n in range(orders):
        order = {"order_id": f"{user}-o{n}", "revenue": 10.0 + n, "currency": "EUR"}
        order_call = {"userId": user, "event": "Order Completed", "properties": order}
        assert _post(node, "/v1/track", order_call).status_code == 200


def _wait_for(check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def _letters(node: NodeProcess) -> list[dict[str, Any]]:
    page = _admin(node, "GET", "/v1/dead-letters", params={"limit": 100})
    assert page.status_code == 200, page.text
    return list(page.json()["dead_letters"])


def _orders(node: NodeProcess, user: str) -> int:
    response = node.read("GET", f"/v1/customers/{user}")
    return int(response.json()["orders"]) if response.status_code == 200 else -1


def _funnel(node: NodeProcess) -> list[int]:
    response = node.read("POST", "/v1/funnels", json=FUNNEL)
    assert response.status_code == 200, response.text
    return [step["customers"] for step in response.json()["steps"]]


def _topic_records(settings: Settings) -> list[bytes]:
    """Every record (key and value) of every platform topic, read from the start."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in settings.all_topics
            for p in consumer.partitions_for_topic(topic) or ()
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[bytes] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend((r.key or b"") + b" " + (r.value or b"") for r in batch)
            assert time.monotonic() < deadline, "could not read the topics to their ends"
        return records
    finally:
        consumer.close()


def _plain_in(blob: bytes) -> list[bytes]:
    lowered = blob.lower()
    return [value for value in PLAIN if value in lowered]


def _files_with_plain(folder: Path) -> dict[str, list[bytes]]:
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            hits = _plain_in(path.read_bytes())
            if hits:
                found[str(path.relative_to(folder))] = hits
    return found


def _clickhouse_hits(settings: Settings) -> int:
    """Rows of any table holding a plain value (the node stopped: chdb is one process's)."""
    db = settings.clickhouse_database
    checks = " + ".join(
        f"(SELECT count() FROM {db}.{table} WHERE positionCaseInsensitive({column}, '{value}') > 0)"
        for table, column in (("events", "toString(properties)"), ("dead_letters", "payload"))
        for value in ("alice.liddell", "liddell", "7700-900123", "bob.builder")
    )
    return int(query_chdb_folder(settings.chdb_path, f"SELECT {checks}")[0][0])


def _vault(settings: Settings) -> Vault:
    master = decode_master_key(settings.master_key_path.read_text())
    return Vault(
        KeyStore(master, sqlite_path=settings.key_store_path), PersonalFields.from_setting("")
    )


def _sealed_values_of(records: list[bytes], user: str) -> list[dict[str, str]]:
    """The sealed personal fields in the events topic's records of ``user``."""
    found = []
    for record in records:
        _, _, value = record.partition(b" ")
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("user_id") == user:
            found.extend(
                v for v in event.get("properties", {}).values() if isinstance(v, dict) and ENC in v
            )
    return found


def test_personal_data_is_only_ciphertext_at_rest_and_an_erased_customer_stays_erased(
    settings: Settings, tmp_path: Path
) -> None:
    node = started_node(settings)
    try:
        buyers = {"name": "Buyers", "where": {"event": "Order Completed"}}
        assert _admin(node, "PUT", "/v1/segments/buyers", json=buyers).status_code == 201
        _send_customer(node, "alice", ALICE, orders=2)
        _send_customer(node, "bob", BOB, orders=1)
        # Refused (a bad timestamp) and dead-lettered, with Alice's address in it.
        refused = {"userId": "alice", "traits": ALICE, "timestamp": "yesterday"}
        assert _post(node, "/v1/identify", refused).status_code == 400
        _wait_for(lambda: _orders(node, "alice") == 2 and _orders(node, "bob") == 1)
        # Alice leaves a cart: she enters the shipped abandoned-cart flow and waits there.
        cart = {"userId": "alice", "event": "Product Added", "properties": {"cart_id": "k1"}}
        assert _post(node, "/v1/track", cart).status_code == 200
        _wait_for(lambda: node.read("GET", "/v1/customers/alice/flows").status_code == 200)

        # Her orders put her in the segment (folded live, or backfilled when they came
        # before the worker took the definition).
        _wait_for(
            lambda: (
                "buyers" in node.read("GET", "/v1/customers/alice").json()["segments"]["segments"]
            )
        )
        # Readers with the read key see the values opened; the export has everything.
        view = node.read("GET", "/v1/customers/alice").json()
        assert view["traits"]["email"] == ALICE["email"]
        exported = _admin(node, "GET", "/v1/customers/alice/export")
        assert exported.status_code == 200, exported.text
        export = exported.json()
        assert export["traits"]["email"] == ALICE["email"]
        assert export["traits"]["phone"] == ALICE["phone"]
        assert len(export["orders"]) == 2 and export["profile"]["orders"] == 2
        assert export["timeline"] and export["events"]
        # Her flow state and every decision recorded, personal values opened.
        flows = export["outreach"]["flows"]
        (state,) = [s for s in flows["states"] if s["flow_id"] == "abandoned_cart"]
        assert state["state"]["run"]["node"] == "wait_for_order"
        assert state["state"]["traits"]["email"][0] == ALICE["email"]  # [value, at_ms]
        facts = [(f["flow_id"], f["type"], f["node"]) for f in flows["facts"]]
        assert ("abandoned_cart", "Entered", "cart_started") in facts
        # Her segments' state (the computed traits' folds, memberships) and her entries.
        segments = export["segments"]
        (held,) = segments["states"]
        assert held["customer_key"] == "alice"
        assert {"lifetime_revenue", "orders_90d"} <= set(held["state"]["traits"])
        changes = segments["changes"]
        assert ("buyers", 1) in [(c["segment"], c["entered"]) for c in changes]
        assert {c["customer_key"] for c in changes} == {"alice"}
        assert [c["at"] for c in changes] == sorted(c["at"] for c in changes)
        # Every flow she is in (the lifecycle flows run too): the why route's facts, all.
        why = node.read("GET", "/v1/customers/alice/flows").json()["flows"]
        assert len(facts) == sum(len(flow["facts"]) for flow in why)
        assert _funnel(node) == [2, 2]
        # The admin reads the dead letter opened; it is stored sealed (checked below).
        _wait_for(lambda: any(ALICE["email"] in d["payload"] for d in _letters(node)))

        records = _topic_records(settings)
        assert records and not [r for r in records if _plain_in(r)]
        assert _sealed_values_of(records, "alice")
    finally:
        node.stop()
    # Stopped: ClickHouse flushed and the SQLite files checkpointed.
    assert _files_with_plain(settings.data_dir) == {}
    assert _clickhouse_hits(settings) == 0
    # A copy of the stores from before the erasure (a backup); the keys/ folder
    # (master key, erasure ledger) is kept apart.
    backup = tmp_path / "backup"
    # chdb's Atomic databases link their tables into store/: copied as links.
    shutil.copytree(settings.data_dir, backup, symlinks=True, ignore=shutil.ignore_patterns("keys"))

    node = started_node(settings)
    try:
        erased = run_cli(settings, "customers", "erase", "alice", "--url", node.base)
        assert erased.returncode == 0, erased.stderr
        summary = orjson.loads(erased.stdout)
        assert summary["ids"] == ["alice"] and summary["keys_destroyed"] == 1
        assert summary["rows_deleted"]["events"] >= 4
        assert summary["rows_deleted"]["dead_letters"] == 1
        assert summary["rows_deleted"]["customer_orders"] == 2
        assert summary["rows_deleted"]["flow_states"] >= 1  # her flow states and facts too
        assert summary["rows_deleted"]["flow_facts"] == len(facts)
        assert not any("alice" in d["payload"].lower() for d in _letters(node))
        again = _admin(node, "DELETE", "/v1/customers/alice")
        assert again.status_code == 404
        assert _admin(node, "DELETE", "/v1/customers/nobody").status_code == 404

        assert node.read("GET", "/v1/customers/alice").status_code == 404
        assert node.read("GET", "/v1/customers/alice/journey").status_code == 404
        assert _admin(node, "GET", "/v1/customers/alice/export").status_code == 404
        assert _orders(node, "bob") == 1
        assert node.read("GET", "/v1/customers/bob").json()["traits"]["email"] == BOB["email"]
        assert _funnel(node) == [1, 1]

        # Still in the topics, but sealed with a key that no longer exists.
        records = _topic_records(settings)
        assert not [r for r in records if _plain_in(r)]
        vault = _vault(settings)
        try:
            assert {vault.open_value(v) for v in _sealed_values_of(records, "alice")} == {None}
            assert BOB["email"] in {vault.open_value(v) for v in _sealed_values_of(records, "bob")}
        finally:
            vault.keys.close()

        _assert_suppressed(node, f"after-{uuid.uuid4().hex[:6]}")
    finally:
        node.stop()
    ledger = settings.erasure_ledger_path.read_text().splitlines()
    assert len(ledger) == 1 and orjson.loads(ledger[0])["ids"] == ["alice"]
    assert "alice.liddell" not in ledger[0]
    assert _files_with_plain(settings.data_dir) == {}
    assert _clickhouse_hits(settings) == 0

    # Restore the stores from before the erasure: Alice's key and rows are back on disk…
    for name in (
        "keys.sqlite",
        "keys.sqlite-wal",
        "keys.sqlite-shm",
        "clickhouse",
        "events.sqlite",
    ):
        target = settings.data_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        if (backup / name).is_dir():
            shutil.copytree(backup / name, target, symlinks=True)
        elif (backup / name).exists():
            shutil.copy2(backup / name, target)
    restored = _vault(settings)
    try:
        assert restored.keys.data_keys(["alice"], create=False)
    finally:
        restored.keys.close()
    # …and the node start re-applies the ledger: the erasure wins.
    node = started_node(settings)
    try:
        assert node.read("GET", "/v1/customers/alice").status_code == 404
        assert _funnel(node) == [1, 1]
        _assert_suppressed(node, f"restored-{uuid.uuid4().hex[:6]}")
    finally:
        node.stop()
    keys = _vault(settings)
    try:
        assert keys.keys.data_keys(["alice"], create=False) == {}
        assert keys.is_suppressed("alice")
    finally:
        keys.keys.close()
    db = settings.clickhouse_database
    rows = query_chdb_folder(
        settings.chdb_path, f"SELECT count() FROM {db}.events WHERE customer_key = 'alice'"
    )
    assert rows == [[0]]


def _assert_suppressed(node: NodeProcess, message_id: str) -> None:
    """A new event for Alice: 200, then a dead letter ``suppressed`` with no payload."""
    call = {"userId": "alice", "event": "Product Viewed", "messageId": message_id}
    assert _post(node, "/v1/track", call).status_code == 200

    def letter() -> dict[str, Any] | None:
        page = _admin(node, "GET", "/v1/dead-letters", params={"limit": 50}).json()
        return next(
            (
                d
                for d in page["dead_letters"]
                if any(r["rule"] == "suppressed" for r in d["reasons"]) and d["id"] not in _seen
            ),
            None,
        )

    found = _wait_for(letter)
    _seen.add(found["id"])
    assert found["payload"] == ""
    assert node.read("GET", "/v1/customers/alice").status_code == 404


_seen: set[str] = set()
