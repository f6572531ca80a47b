"""`journeys backup`, `restore` and `verify --backup` against a real node (Tansu, chdb, SQLite).

The node takes the backup (it holds the chdb folder and the worker); the CLI
asks it over HTTP. The backup carries every SQLite file of the data folder and
whatever is in ``data/keys/``, so stores other parts of the platform add (an
access database, a key folder) are planted here the way they would appear.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack.backup import PREFIX, backups_in
from stack.broker import EmbeddedBroker
from stack.processes import wait_until
from stack.settings import Settings
from tests.node_process import NodeProcess, platform_settings, run_cli, started_node

pytestmark = pytest.mark.integration

CUSTOMERS = [f"c{i}" for i in range(30)]
SHOPPERS = [f"s{i}" for i in range(3)]
STEPS = ["Product Viewed", "Product Added"]


def send(node: NodeProcess, step: int) -> None:
    calls = [
        {"type": "track", "userId": c, "event": STEPS[step], "messageId": f"{c}-{step}"}
        for c in CUSTOMERS
    ]
    response = httpx.post(
        f"{node.base}/v1/batch", json={"batch": calls}, auth=(node.settings.write_key, "")
    )
    assert response.status_code == 200, response.text


def browse_then_identify(node: NodeProcess) -> None:
    """Shoppers browse anonymously, then sign in: the worker merges their journeys, and
    the event log deletes the anonymous rows with a patch part (which BACKUP leaves out)."""
    calls: list[dict[str, Any]] = [
        {
            "type": "track",
            "anonymousId": f"dev-{s}",
            "event": "Product Viewed",
            "messageId": f"{s}-0",
        }
        for s in SHOPPERS
    ]
    calls += [
        {"type": "identify", "anonymousId": f"dev-{s}", "userId": s, "messageId": f"{s}-1"}
        for s in SHOPPERS
    ]
    response = httpx.post(
        f"{node.base}/v1/batch", json={"batch": calls}, auth=(node.settings.write_key, "")
    )
    assert response.status_code == 200, response.text


def tracked(data_dir: Path, topic: str) -> dict[str, int]:
    """The journey pipeline's positions per partition source, from an event store file."""
    with sqlite3.connect(data_dir / "events.sqlite") as store:
        rows = store.execute(
            "SELECT application_name, MAX(notification_id) FROM tracking "
            "WHERE application_name LIKE ? GROUP BY application_name",
            (f"{topic}#%",),
        ).fetchall()
    store.close()
    return {str(name): int(position) for name, position in rows}


def processed(node: NodeProcess, customers: list[str] = CUSTOMERS) -> int:
    total = 0
    for customer in customers:
        response = node.read("GET", f"/v1/customers/{customer}")
        total += response.json()["event_count"] if response.is_success else 0
    return total


def plant_other_stores(data_dir: Path) -> None:
    """What the key store and the users/audit store add: found and carried generically."""
    keys = data_dir / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)  # the node's master key lives there already
    (keys / "erasures.log").write_text("erased c-old at 2026-12-01\n")
    with sqlite3.connect(data_dir / "access.sqlite") as access:
        access.execute("CREATE TABLE audit (actor TEXT, action TEXT)")
        access.execute("INSERT INTO audit VALUES ('admin', 'sign-in')")
    access.close()


def manifest_of(backup: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((backup / "manifest.json").read_text())
    return body


@dataclass
class Taken:
    settings: Settings
    node_log: str
    first: Path
    second: Path
    output: str


@pytest.fixture(scope="module")
def taken(tmp_path_factory: pytest.TempPathFactory, broker: EmbeddedBroker) -> Iterator[Taken]:
    """Two waves of events processed, other stores planted, then `journeys backup --also`."""
    root = tmp_path_factory.mktemp("backup")
    settings = platform_settings(root / "data", uuid.uuid4().hex[:10], broker.bootstrap_servers)
    node = started_node(settings)
    try:
        plant_other_stores(settings.data_dir)
        send(node, 0)
        browse_then_identify(node)
        send(node, 1)
        # Each shopper's journey holds the identify and, merged, the anonymous view.
        assert wait_until(
            lambda: processed(node) == 60 and processed(node, SHOPPERS) == 6, 60, lambda: True
        ), node.log_tail()
        done = run_cli(node.settings, "backup", str(root / "one"), "--also", str(root / "two"))
        assert done.returncode == 0, done.stdout + done.stderr + node.log_tail()
    finally:
        assert node.stop() == 0, node.log_tail()
    [first] = backups_in(root / "one")
    [second] = backups_in(root / "two")
    yield Taken(settings, node.log_tail(), first, second, done.stdout)


def test_a_backup_of_a_running_node_records_its_offsets_and_every_store(taken: Taken) -> None:
    manifest = manifest_of(taken.first)
    # Everything was processed before the backup: its offsets are the event store's last.
    topic = taken.settings.events_topic
    last = tracked(taken.settings.data_dir, topic)
    assert manifest["positions"] == {
        str(p): last[f"{topic}#{p}@{taken.settings.kafka_epoch}"] for p in (0, 1)
    }
    # 66 events, and the identity messages (links, merged histories) on the same topic.
    assert sum(manifest["positions"].values()) > 66
    files = set(manifest["files"])
    assert {"data/events.sqlite", "data/access.sqlite", "data/keys/master.key"} <= files
    assert "data/keys/erasures.log" in files
    assert any(name.startswith("clickhouse/") for name in files)
    assert any(name.startswith("journal/") and name.endswith(".seg") for name in files)
    # No SQLite side file: their content is in the copy the backup API made.
    assert not [name for name in files if name.endswith(("-wal", "-shm"))]
    assert manifest["held_s"] >= 0 and manifest["bytes"] == sum(
        f["size"] for f in manifest["files"].values()
    )
    assert taken.first.name.startswith(PREFIX)
    assert f"backup {taken.first.name}" in taken.output
    for path in [taken.first, *taken.first.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_also_writes_a_second_identical_copy(taken: Taken) -> None:
    assert taken.second.name == taken.first.name
    assert manifest_of(taken.second) == manifest_of(taken.first)
    ones = {
        p.relative_to(taken.first): p.read_bytes() for p in taken.first.rglob("*") if p.is_file()
    }
    twos = {
        p.relative_to(taken.second): p.read_bytes() for p in taken.second.rglob("*") if p.is_file()
    }
    assert ones == twos
    for backup in (taken.first, taken.second):
        checked = run_cli(taken.settings, "verify", "--backup", str(backup))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"{len(manifest_of(backup)['files'])} files match the manifest" in checked.stdout


def test_restore_into_an_empty_folder_gives_stores_that_verify_clean(
    taken: Taken, tmp_path: Path
) -> None:
    target = taken.settings.model_copy(update={"data_dir": tmp_path / "restored"})
    # The destination folder, not the backup itself: its newest backup is taken.
    restored = run_cli(target, "restore", str(taken.first.parent))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert f"restored {taken.first.name}" in restored.stdout
    # Clean: the merged anonymous keys' deleted rows stay deleted, the offsets are the
    # manifest's.
    verified = run_cli(target, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "the stores agree" in verified.stdout
    assert "36 journeys with 69 events in the event store, 66 event rows" in verified.stdout
    manifest = manifest_of(taken.first)
    topic = taken.settings.events_topic
    assert tracked(target.data_dir, topic) == {
        f"{topic}#{p}@{taken.settings.kafka_epoch}": n for p, n in manifest["positions"].items()
    }
    data = target.data_dir
    source_key = taken.settings.data_dir / "keys" / "master.key"
    assert (data / "keys" / "master.key").read_bytes() == source_key.read_bytes()
    with sqlite3.connect(data / "access.sqlite") as access:
        assert access.execute("SELECT actor, action FROM audit").fetchall() == [
            ("admin", "sign-in")
        ]
    access.close()
    assert list((data / "journal").glob("*.seg"))
    for path in [data, *data.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_restore_refuses_a_folder_that_is_not_empty(taken: Taken, tmp_path: Path) -> None:
    target = taken.settings.model_copy(update={"data_dir": tmp_path / "busy"})
    target.data_dir.mkdir()
    (target.data_dir / "node.log").write_text("someone's\n")
    refused = run_cli(target, "restore", str(taken.first))
    assert refused.returncode == 1
    assert f"{target.data_dir} is not empty" in refused.stderr
    assert [p.name for p in target.data_dir.iterdir()] == ["node.log"]


def test_a_tampered_backup_is_refused_and_named(taken: Taken, tmp_path: Path) -> None:
    import shutil

    tampered = tmp_path / taken.first.name
    shutil.copytree(taken.first, tampered)
    store = tampered / "data" / "events.sqlite"
    content = bytearray(store.read_bytes())
    content[len(content) // 2] ^= 0xFF
    store.write_bytes(bytes(content))
    (tampered / "clickhouse" / "stray").write_text("not from the node")

    checked = run_cli(taken.settings, "verify", "--backup", str(tampered))
    assert checked.returncode == 1
    assert "data/events.sqlite: sha256 does not match the manifest" in checked.stdout
    assert "clickhouse/stray: not in the manifest" in checked.stdout

    target = taken.settings.model_copy(update={"data_dir": tmp_path / "restored"})
    refused = run_cli(target, "restore", str(tampered))
    assert refused.returncode == 1
    assert "the files do not match the manifest, nothing restored" in refused.stderr
    assert "data/events.sqlite: sha256 does not match" in refused.stderr
    assert not target.data_dir.exists()


def test_bad_destinations_are_a_400_naming_the_field(settings: Settings, tmp_path: Path) -> None:
    node = started_node(settings)
    try:
        admin = {"Authorization": f"Bearer {settings.admin_key}"}
        url = f"{node.base}/v1/admin/backups"
        relative = httpx.post(url, json={"destinations": ["backups"]}, headers=admin)
        assert relative.status_code == 400
        [error] = relative.json()["errors"]
        assert error["field"] == "destinations"
        assert "must be an absolute path" in error["message"]
        blocked = tmp_path / "a-file"
        blocked.write_text("")
        under_file = httpx.post(
            url, json={"destinations": [str(blocked / "sub")]}, headers=admin, timeout=30
        )
        assert under_file.status_code == 400
        assert "cannot create" in under_file.json()["message"]
        anonymous = httpx.post(url, json={"destinations": [str(tmp_path)]})
        assert anonymous.status_code == 401
    finally:
        assert node.stop() == 0, node.log_tail()


def test_scheduled_backups_keep_the_newest_n_in_each_folder(
    tmp_path: Path, unique: str, broker: EmbeddedBroker
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    settings = platform_settings(
        tmp_path / "data",
        unique,
        broker.bootstrap_servers,
        # Every 1.8 s, into both folders, two kept in each.
        backup_every_h=0.0005,
        backup_dirs=f"{one},{two}",
        backup_keep=2,
    )
    node = started_node(settings)
    try:
        send(node, 0)
        log = settings.data_dir / "node.log"
        assert wait_until(
            lambda: log.read_text(errors="replace").count("scheduled backup") >= 4,
            90,
            lambda: True,
        ), node.log_tail()
    finally:
        assert node.stop() == 0, node.log_tail()
    taken = [line for line in log.read_text().splitlines() if "scheduled backup" in line]
    newest = [line.split("scheduled backup ")[1].split()[0] for line in taken][-2:]
    for folder in (one, two):
        kept = backups_in(folder)
        assert [path.name for path in kept] == newest, (folder, taken)
        assert not [p for p in folder.iterdir() if p.name.endswith(".partial")]
