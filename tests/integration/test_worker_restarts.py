"""Accepted events survive a worker that is killed or stopped, and count once.

The real broker (Tansu), the real node process (Faust worker + API), chdb and
SQLite; the worker is killed with SIGKILL while it works, and stopped with
SIGTERM, and restarted each time.
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from projections.customer_stages import current_stage_changes
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


# Shoppers who start anonymous and identify just before the worker is killed, so
# the identity messages (link, merged history, re-keyed events) cross the crash.
SHOPPERS = [f"s{i}" for i in range(4)]


def send_shoppers(node: NodeProcess, wave: int) -> None:
    """Wave 0: an anonymous view; 1: identify; 2: an anonymous cart add; 3: an order."""
    for shopper in SHOPPERS:
        device = {"anonymousId": f"dev-{shopper}", "messageId": f"{shopper}-{wave}"}
        path, body = {
            0: ("/v1/track", {"event": "Product Viewed"}),
            1: ("/v1/identify", {"userId": shopper}),
            2: ("/v1/track", {"event": "Product Added"}),
            3: ("/v1/track", {"event": "Order Completed", "userId": shopper}),
        }[wave]
        response = httpx.post(
            f"{node.base}{path}", json={**device, **body}, auth=(node.settings.write_key, "")
        )
        assert response.status_code == 200, response.text


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
    for wave in (0, 1):
        send_wave(node, wave, sent)
        send_shoppers(node, wave)
    node.kill()  # right after the 200s: the worker is mid-batch or not yet there

    node.start()
    send_wave(node, 2, sent)
    send_shoppers(node, 2)
    assert node.stop() == 0  # graceful: drains what was accepted

    node.start()
    send_wave(node, 3, sent)
    send_shoppers(node, 3)
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

        def shoppers() -> dict[str, tuple[int, str]]:
            found = {}
            for shopper in SHOPPERS:
                response = node.read("GET", f"/v1/customers/{shopper}")
                body = response.json() if response.is_success else {}
                found[shopper] = (body.get("event_count", 0), body.get("stage", ""))
            return found

        # Each shopper: the anonymous view, identify, the anonymous cart add, the order.
        merged = {shopper: (4, "purchase") for shopper in SHOPPERS}
        wait_until(
            lambda: counts() == dict(sent) and shoppers() == merged,
            timeout=60,
            alive=lambda: True,
            interval=0.5,
        )
        assert counts() == dict(sent) == {customer: 4 for customer in CUSTOMERS}, node.log_tail(80)
        assert shoppers() == merged
        for customer in CUSTOMERS:
            assert node.read("GET", f"/v1/customers/{customer}").json()["stage"] == "purchase"
        for shopper in SHOPPERS:
            device = node.read("GET", f"/v1/customers/anon:dev-{shopper}").json()
            assert (device["stage"], device["merged_into"]) == ("merged", shopper)
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
        # A shopper's anonymous view and cart add join the shopper once identified
        # (moved in the event log, or forwarded after the merge): 8 customers + 4 shoppers,
        # each through every step, across the kills.
        assert [s["customers"] for s in funnel.json()["steps"]] == [12, 12, 12]
        # Health speaks of the journey agent's partitions alone, each once, caught up
        # (the app's consumer also holds stage-change and trigger partitions).
        worker = httpx.get(f"{node.base}/health", timeout=30).json()["components"]["worker"]
        assert worker["assigned_partitions"] == list(range(settings.topic_partitions))
        assert worker["lag"] == 0
    finally:
        assert node.stop() == 0

    database = settings.clickhouse_database
    rows = query_chdb_folder(
        settings.chdb_path,
        f"SELECT customer_key, count() FROM {database}.events FINAL "
        "WHERE customer_key LIKE 'c%' GROUP BY customer_key",
    )
    assert {customer: count for customer, count in rows} == dict(sent)
    changes = query_chdb_folder(
        settings.chdb_path,
        f"SELECT count() FROM {database}.stage_changes FINAL WHERE customer_key LIKE 'c%'",
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

    # Other rules: the counts now against what they would be, into a separate projection.
    rules = settings.data_dir / "strict.toml"
    rules.write_text("[consideration]\nproduct_views = 3\n")
    what_if = run_cli(node.settings, "replay", "--rules", str(rules))
    assert what_if.returncode == 0, what_if.stderr
    assert "with rules" in what_if.stdout and "_whatif" in what_if.stdout
    assert projection_tables(settings) == before
    rules.write_text("[consideration]\nproduct_vews = 3\n")
    refused = run_cli(node.settings, "replay", "--rules", str(rules))
    assert refused.returncode == 2
    assert "consideration.product_vews: unknown rule" in refused.stderr


def projection_tables(settings: Settings) -> dict[str, list[list[object]]]:
    """Every projection table the replay rebuilds, whole, in a stable order."""
    database = settings.clickhouse_database
    # stage_changes as read: each customer's newest revision (superseded rows stay).
    sources = {
        table: f"{database}.{table} FINAL"
        for table in ("customer_stages", "customer_orders", "customer_profiles")
    }
    sources["stage_changes"] = current_stage_changes(database)
    return {
        table: query_chdb_folder(settings.chdb_path, f"SELECT * FROM {source} ORDER BY tuple(*)")
        for table, source in sorted(sources.items())
    }
