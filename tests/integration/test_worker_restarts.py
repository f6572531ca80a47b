"""Accepted events survive a worker that is killed or stopped, and count once.

The real broker (Tansu), the real node process (Faust worker + API), chdb and
SQLite; the worker is killed with SIGKILL while it works, and stopped with
SIGTERM, and restarted each time.
"""

from __future__ import annotations

from collections import Counter

import pytest

from stack.processes import wait_until
from stack.settings import Settings
from streams.topics import ensure_topics
from tests.node_process import NodeProcess, query_chdb_folder, run_cli

pytestmark = pytest.mark.integration

CUSTOMERS = [f"c{i}" for i in range(8)]
JOURNEY = ["Product Viewed", "Product Viewed", "Product Added", "Order Completed"]


def send_wave(node: NodeProcess, wave: int, sent: Counter[str]) -> None:
    """Every customer takes one step of the journey; each event must get a 200."""
    name = JOURNEY[wave]
    for customer in CUSTOMERS:
        status = node.track(customer, name, message_id=f"{customer}-{wave}", sku=f"sku-{wave}")
        assert status == 200, f"track for {customer} answered {status}"
        sent[customer] += 1


def test_accepted_events_survive_kill_and_restart_and_count_once(
    settings: Settings, artifacts_dir: object, tmp_path: object
) -> None:
    ensure_topics(
        settings.kafka_bootstrap_servers,
        settings.all_topics,
        settings.topic_partitions,
        settings.topic_replication_factor,
    )
    node = NodeProcess(settings, settings.data_dir / "node.log")
    sent: Counter[str] = Counter()

    node.start()
    send_wave(node, 0, sent)
    send_wave(node, 1, sent)
    node.kill()  # right after the 200s: the worker is mid-batch or not yet there

    node.start()
    send_wave(node, 2, sent)
    assert node.stop() == 0  # graceful: drains what was accepted

    node.start()
    send_wave(node, 3, sent)
    node.kill()

    node.start()
    try:
        # The restarted worker catches up asynchronously: wait (bounded) for it,
        # then require exact counts: a lost event never arrives, a double overshoots.
        def counts() -> dict[str, int]:
            found = {}
            for customer in CUSTOMERS:
                response = node.read("GET", f"/v1/customers/{customer}")
                found[customer] = response.json()["event_count"] if response.is_success else 0
            return found

        wait_until(lambda: counts() == dict(sent), timeout=60, alive=lambda: True, interval=0.5)
        assert counts() == dict(sent) == {customer: 4 for customer in CUSTOMERS}
        for customer in CUSTOMERS:
            assert node.read("GET", f"/v1/customers/{customer}").json()["stage"] == "purchase"
        funnel = node.read(
            "POST",
            "/v1/funnels",
            json={
                "steps": [
                    {"event_type": "browse"},
                    {"event_type": "cart"},
                    {"event_type": "purchase"},
                ]
            },
        )
        assert funnel.status_code == 200
        assert [s["customers"] for s in funnel.json()["steps"]] == [8, 8, 8]
    finally:
        assert node.stop() == 0

    database = settings.clickhouse_database
    rows = query_chdb_folder(
        settings.chdb_path,
        f"SELECT customer_key, count() FROM {database}.events FINAL GROUP BY customer_key",
    )
    assert {customer: count for customer, count in rows} == dict(sent)
    changes = query_chdb_folder(
        settings.chdb_path, f"SELECT count() FROM {database}.stage_changes FINAL"
    )
    assert changes == [[len(CUSTOMERS) * 3]]  # awareness, consideration, purchase each

    # What the killed and restarted worker left is what a from-scratch replay of the
    # event store gives: `journeys replay` empties the projections and rebuilds them.
    before = projection_tables(settings)
    assert before["customer_stages"] and before["customer_profiles"]
    replayed = run_cli(node.settings, "replay")
    assert replayed.returncode == 0, replayed.stderr
    assert "events/s" in replayed.stdout
    assert projection_tables(settings) == before


def projection_tables(settings: Settings) -> dict[str, list[list[object]]]:
    """Every projection table the replay rebuilds, whole, in a stable order."""
    return {
        table: query_chdb_folder(
            settings.chdb_path,
            f"SELECT * FROM {settings.clickhouse_database}.{table} FINAL ORDER BY tuple(*)",
        )
        for table in ("stage_changes", "customer_stages", "customer_orders", "customer_profiles")
    }
