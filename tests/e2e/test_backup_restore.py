"""A backup taken under load restores into stores equal to the source at the backup's offsets.

`journeys up` as a user runs it; SDK-like senders post /v1/batch requests and
re-send each until it gets a 200; meanwhile `journeys backup` is taken. The
backup is restored into an empty folder, and `journeys up` is started there.

What comes back, and what does not:

- right after the restore, before anything starts, the event store's positions
  are the manifest's offsets and the event log holds exactly the events of the
  source topic below them (for the customers who never merge: a merge in
  flight at that position is completed by the journal, below);
- once the restored stack has started, `journeys verify` is clean and the
  events accepted before the backup but not yet processed at its position come
  back too: the backup carries the
  ingest journal, which the restored node produces into its new broker (the
  source broker's log is memory only and is not in any backup);
- events first sent after the backup had returned are absent: nothing of them
  was on disk when the backup was taken. (A sender still holding them would
  have to send them again.)
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from stack.backup import backups_in
from stack.processes import free_port
from stack.settings import Settings
from tests.e2e.test_no_loss import journal_empty
from tests.node_process import query_chdb_folder, run_cli
from tests.stack_process import RunningStack, Sender, leftovers, wait_for

pytestmark = pytest.mark.e2e

EVENTS = 12_000
CUSTOMERS = 3_000
PER_REQUEST = 50
SENDERS = 4
# Between a sender's requests: about 25 s of load.
PAUSE_S = 0.35
STEPS = ["Product Viewed", "Product Added", "Product Viewed", "Product Added"]


def customer_of(message_id: str) -> int | None:
    """The customer number of one of the senders' events (None for the worker's messages)."""
    found = re.fullmatch(r"m(\d+)", message_id)
    return int(found.group(1)) % CUSTOMERS if found else None


def merging(customer: int) -> bool:
    """Every fifth customer browses anonymously, then signs in (their journeys merge)."""
    return customer % 5 == 0


def requests() -> list[list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []
    for n in range(EVENTS):
        customer, step = n % CUSTOMERS, n // CUSTOMERS
        call: dict[str, Any] = {
            "type": "track",
            "userId": f"u{customer}",
            "event": STEPS[step],
            "messageId": f"m{n}",
            "properties": {"product_id": f"p{n % 97}", "price": 12.5},
        }
        if merging(customer) and step < 2:
            del call["userId"]
            call["anonymousId"] = f"d{customer}"
        elif merging(customer) and step == 2:
            call = {
                "type": "identify",
                "userId": f"u{customer}",
                "anonymousId": f"d{customer}",
                "messageId": f"m{n}",
                "traits": {"plan": "gold"},
            }
        calls.append(call)
    return [calls[i : i + PER_REQUEST] for i in range(0, EVENTS, PER_REQUEST)]


def below_offsets(bootstrap: str, topic: str, positions: dict[str, int]) -> set[str]:
    """The event ids of the topic's records below each partition's offset in the manifest."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=5000
    )
    ids: set[str] = set()
    try:
        for partition, position in positions.items():
            if position == 0:
                continue
            assigned = TopicPartition(topic, int(partition))
            consumer.assign([assigned])
            consumer.seek(assigned, 0)
            for record in consumer:
                if record.offset >= position:
                    break
                ids.add(json.loads(record.value)["event_id"])
            assert consumer.position(assigned) >= position, (partition, position)
    finally:
        consumer.close()
    return ids


def event_ids(settings: Settings) -> dict[str, set[str]]:
    rows = query_chdb_folder(
        settings.chdb_path,
        f"SELECT customer_key, event_id FROM {settings.clickhouse_database}.events FINAL",
    )
    found: dict[str, set[str]] = defaultdict(set)
    for customer, event in rows:
        found[customer].add(event)
    return found


def plain(ids: set[str]) -> set[str]:
    """Those of ``ids`` that are events of customers who never merge."""
    return {m for m in ids if (c := customer_of(m)) is not None and not merging(c)}


def tracked(data_dir: Path) -> dict[str, int]:
    """The journey pipeline's positions per source, from an event store file."""
    with sqlite3.connect(data_dir / "events.sqlite") as store:
        rows = store.execute(
            "SELECT application_name, MAX(notification_id) FROM tracking "
            "WHERE application_name LIKE 'journey.events#%' GROUP BY application_name"
        ).fetchall()
    store.close()
    return {str(name): int(position) for name, position in rows}


def test_a_backup_under_load_restores_to_the_source_at_its_offsets_plus_its_journal(
    tmp_path: Path,
) -> None:
    source_dir, restored_dir = tmp_path / "source", tmp_path / "restored"
    source_dir.mkdir()
    restored_dir.mkdir()
    destination, second = tmp_path / "backups", tmp_path / "offsite"
    source = RunningStack(source_dir, free_port(), ingest_rate_per_s="0", journal_segment_s="2")
    write_key, _ = source.wait_for_banner()
    printed = re.search(r"broker\s+(\S+) \(embedded", source.output())
    assert printed, source.output()
    bootstrap = printed.group(1)
    # Paced, so the load runs on both sides of the backup.
    sender = Sender(source.base, write_key, requests(), pause_s=PAUSE_S)
    threads = [threading.Thread(target=sender.run) for _ in range(SENDERS)]
    cli = Settings(data_dir=source_dir / "data", api_port=int(source.base.rsplit(":", 1)[1]))
    try:
        for thread in threads:
            thread.start()
        assert wait_for(lambda: sender.done() >= EVENTS // 3, timeout=300), source.output()
        asked = time.monotonic()
        taken = run_cli(cli, "backup", str(destination), "--also", str(second))
        answered = time.monotonic()
        assert taken.returncode == 0, taken.stdout + taken.stderr
        [backup] = backups_in(destination)
        manifest = json.loads((backup / "manifest.json").read_text())
        at_offsets = below_offsets(bootstrap, cli.events_topic, manifest["positions"])
        for thread in threads:
            thread.join(timeout=600)
        assert sender.done() == EVENTS
    finally:
        code, children = source.interrupt(signal.SIGTERM)
    assert code == 0, source.output()
    assert leftovers(children) == [], source.output()
    assert backups_in(second)[0].name == backup.name

    accepted_before = {m for m, (_, ack) in sender.times.items() if ack < asked}
    sent_after = {m for m, (first, _) in sender.times.items() if first > answered}
    # The load ran on both sides of the backup, and the worker was not at the end.
    assert accepted_before and sent_after
    assert len(at_offsets) < EVENTS

    restored = Settings(data_dir=restored_dir / "data")
    done = run_cli(restored, "restore", str(second))
    assert done.returncode == 0, done.stdout + done.stderr
    # Before anything starts: the stores as the worker left them at the manifest's offsets.
    epoch = manifest["kafka_epoch"]
    assert tracked(restored.data_dir) == {
        f"journey.events#{p}@{epoch}": n for p, n in manifest["positions"].items() if n
    }
    at_restore = event_ids(restored)
    customers_rows = {m for key, ids in at_restore.items() if key.startswith("u") for m in ids}
    assert plain(customers_rows) == plain(at_offsets)
    # A merge in flight at the backup's position (the anonymous side merged, its
    # history still on its way to the customer's journey) is in the journal: it
    # completes once the restored node runs, so verify comes after that.

    again = RunningStack(restored_dir, free_port(), ingest_rate_per_s="0")
    try:
        again.wait_for_banner()
        assert wait_for(lambda: journal_empty(again.base), timeout=300), again.output()
    finally:
        code, children = again.interrupt(signal.SIGTERM)
    assert code == 0, again.output()
    assert leftovers(children) == [], again.output()

    # The gateways' journals (the events they accepted) came back with the backup.
    logs = [path.read_text(errors="replace") for path in (restored.data_dir / "logs").glob("*.log")]
    assert any("journal: produced" in text for text in logs)
    verified = run_cli(restored, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    after = event_ids(restored)
    present = set().union(*after.values())
    # What the worker had processed, and what was accepted before the backup was asked
    # for (the journal brought back what the worker had not reached), is all there.
    assert at_offsets & set(sender.times) <= present
    assert accepted_before <= present
    assert present - at_offsets, "the journal brought nothing back"
    # Nothing first sent after the backup returned: it was nowhere on disk then.
    assert not present & sent_after
    # Each row under its own customer: merged ones under the user, the rest as sent.
    for key, ids in after.items():
        owner = int(key.removeprefix("anon:d").removeprefix("u"))
        assert {customer_of(m) for m in ids} == {owner}, key
        if key.startswith("anon:"):
            # Not merged: its identify was first sent after the backup.
            identify = f"m{2 * CUSTOMERS + owner}"
            assert identify not in present, key
