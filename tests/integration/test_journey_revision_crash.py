"""A revision cut short by SIGKILL leaves every store consistent after the restart.

The real node (Tansu, Faust worker, API), chdb and SQLite. A late event revises
a customer's stage history; the worker is held between writing the revision's
ClickHouse effects and committing it to the event store (its commit waits on a
SQLite write lock this test takes), and is killed there. After a restart the
batch is decided again, the same revision is written once, and the projections
equal a from-scratch replay of the event store; `journeys verify` is clean.

The lock is held for a while before the late event, so every loop of the worker
(the segment timers' definitions reload, every 2 s, among them) has run meanwhile:
none may hold the journey batch behind its own wait on the lock, and the node's API
answers throughout, its reads of the segment states too.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from stack.processes import wait_until
from stack.settings import Settings
from streams.segment_timers import DEFINITIONS_RELOAD_S
from tests.integration.test_worker_restarts import projection_tables
from tests.node_process import NodeProcess, query_chdb_folder, run_cli, started_node

pytestmark = pytest.mark.integration

T0 = (datetime.now(UTC) - timedelta(days=10)).replace(microsecond=0)
HOUR = timedelta(hours=1)


def test_a_revision_killed_before_its_commit_is_decided_again_once(settings: Settings) -> None:
    node = started_node(settings)
    try:
        send(node, "late", "Order Completed", T0 + HOUR, "m1", order_id="o1", revenue=30)
        send(node, "other", "Product Viewed", T0 + 2 * HOUR, "m2")
        # Both processed (committed) before the lock: the batch held below is the late one's.
        assert wait_until(
            lambda: (
                _stage(node, "late") == "purchase"
                and _stage(node, "other") == "awareness"
                and httpx.get(f"{node.base}/health", timeout=30).json()["components"]["worker"][
                    "lag"
                ]
                == 0
            ),
            60,
            alive=lambda: True,
        )
        assert _awareness(node, T0 + HOUR / 2) == 0  # nobody was aware that early yet
        # A backfill's chunk is a write under the batch lock, by design (its states are
        # the journey batches' too): the loops held below are the idle ones, so every
        # backfill finishes before the lock is taken.
        assert wait_until(lambda: _all_backfilled(node), 60, alive=lambda: True), node.log_tail()

        lock = sqlite3.connect(settings.sqlite_path, timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            time.sleep(DEFINITIONS_RELOAD_S + 0.5)
            # Earlier than everything "late" did: its awareness moves back an hour.
            send(node, "late", "Product Viewed", T0, "m3")
            # The revision's rows reach ClickHouse while its commit waits on the lock;
            # well within SQLite's 30 s busy timeout, which a loop waiting first took.
            assert wait_until(
                lambda: _awareness(node, T0 + HOUR / 2) == 1, 15, alive=lambda: True
            ), node.log_tail()
            assert _stage_list(node, "late")[0] == ("awareness", T0 + HOUR)  # not committed
            # The API answers while the commit waits, the segment states' reads too.
            answered = httpx.get(
                f"{node.base}/v1/customers/late",
                headers={"Authorization": f"Bearer {node.settings.read_key}"},
                timeout=5,
            )
            assert answered.json()["segments"] is not None, answered.text
            assert httpx.get(f"{node.base}/health", timeout=10).status_code == 200
            node.kill()
        finally:
            lock.execute("ROLLBACK")
            lock.close()

        node.start()
        assert wait_until(
            lambda: _stage_list(node, "late")[0] == ("awareness", T0), 60, alive=lambda: True
        ), node.log_tail()
        assert _stage_list(node, "late") == [("awareness", T0), ("purchase", T0 + HOUR)]
        view = node.read("GET", "/v1/customers/late").json()
        assert (view["event_count"], view["orders"], view["stage"]) == (2, 1, "purchase")
        assert _awareness(node, T0 + HOUR / 2) == 1
    finally:
        assert node.stop() == 0

    database = settings.clickhouse_database
    # Revision 1 only, not 2: the redone batch decided the same revision again. Its
    # purchase row replaced revision 0's (same sorting key); revision 0's awareness
    # at T0+1h stays, superseded (reads keep each customer's newest revision).
    revisions = query_chdb_folder(
        settings.chdb_path,
        f"SELECT revision, count() FROM {database}.stage_changes FINAL "
        "WHERE customer_key = 'late' GROUP BY revision ORDER BY revision",
    )
    assert revisions == [[0, 1], [1, 2]]
    assert query_chdb_folder(
        settings.chdb_path,
        f"SELECT count() FROM {database}.events FINAL WHERE customer_key = 'late'",
    ) == [[2]]
    checked = run_cli(settings, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    before = projection_tables(settings)
    replayed = run_cli(settings, "replay")
    assert replayed.returncode == 0, replayed.stderr
    assert projection_tables(settings) == before


def send(
    node: NodeProcess, user: str, name: str, when: datetime, message_id: str, **props: Any
) -> None:
    body = {
        "userId": user,
        "event": name,
        "timestamp": when.isoformat(),
        "messageId": message_id,
        "properties": props,
    }
    response = httpx.post(
        f"{node.base}/v1/track", json=body, auth=(node.settings.write_key, ""), timeout=30
    )
    assert response.status_code == 200, response.text


def _stage(node: NodeProcess, key: str) -> str | None:
    response = node.read("GET", f"/v1/customers/{key}")
    return response.json()["stage"] if response.is_success else None


def _stage_list(node: NodeProcess, key: str) -> list[tuple[str, datetime]]:
    steps = node.read("GET", f"/v1/customers/{key}/journey").json()["stages"]
    return [(step["stage"], datetime.fromisoformat(step["at"])) for step in steps]


def _all_backfilled(node: NodeProcess) -> bool:
    segments = node.read("GET", "/v1/segments").json()["segments"]
    traits = node.read("GET", "/v1/traits").json()["traits"]
    return all(found["backfilled"] for found in [*segments, *traits])


def _awareness(node: NodeProcess, moment: datetime) -> int:
    found = node.read("GET", "/v1/stages", params={"as_of": moment.isoformat()}).json()
    return int(found["stages"]["awareness"])
