"""/metrics from a real node: the counters move by exactly what was sent and rejected.

Real parts: a Tansu broker, the node process (worker, API, journal), chdb,
SQLite. Traffic of every kind goes in (single calls, a batch with invalid items,
an invalid call, an unknown key, an abandoned cart with a one-second flow);
the scrape after it differs from the one before by exactly that, and the
worker's histograms, the lag per partition and the journal's bytes are there.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack.broker import EmbeddedBroker
from stack.processes import wait_until
from streams.topics import ensure_topics
from tests.node_process import NodeProcess, platform_settings

pytestmark = pytest.mark.integration

FLOWS = """
[flows.abandoned_cart]
name = "Abandoned cart"
version = 1

[flows.abandoned_cart.nodes.due]
kind = "date_entry"
anchor = "cart"
after = "1s"
next = "send"

[flows.abandoned_cart.nodes.send]
kind = "send"
channel = "webhook"
body = "cart"
"""


def scrape(node: NodeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, labels)."""
    response = httpx.get(f"{node.base}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_exactly_what_was_sent_and_show_the_pipeline(
    tmp_path: Path, unique: str, broker: EmbeddedBroker
) -> None:
    flows = tmp_path / "flows.toml"
    flows.write_text(FLOWS)
    rules = tmp_path / "rules.toml"
    rules.write_text("")  # no rules file to migrate: only this flow sends
    settings = platform_settings(
        tmp_path / "data",
        unique,
        broker.bootstrap_servers,
        flows_file=flows,
        trigger_rules_file=str(rules),
    )
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
    node = NodeProcess(settings, tmp_path / "node.log")
    auth = (settings.write_key, "")
    try:
        node.start()
        before = scrape(node)
        rejected: Counter[str] = Counter()

        for n in range(5):
            assert node.track(f"m{n}", "Product Viewed", f"view-{n}") == 200
        cart = {
            "userId": "cart",
            "event": "Product Added",
            "messageId": "cart-1",
            "properties": {"product_id": "p1", "price": 20, "quantity": 1, "name": "Mug"},
        }
        assert httpx.post(f"{node.base}/v1/track", json=cart, auth=auth).status_code == 200
        batch = [
            {"type": "track", "userId": "b1", "event": "Product Viewed", "messageId": "b-0"},
            {"type": "nope", "userId": "b1", "messageId": "b-1"},
            {"type": "page", "userId": "b2", "messageId": "b-2"},
            {"type": "track", "userId": "b2", "messageId": "b-3"},
            {"type": "track", "userId": "b3", "event": "Product Viewed", "messageId": "b-4"},
        ]
        answer = httpx.post(f"{node.base}/v1/batch", json={"batch": batch}, auth=auth)
        assert answer.status_code == 400 and answer.json()["accepted"] == 3, answer.text
        first_rule: dict[int, str] = {}
        for error in answer.json()["errors"]:
            first_rule.setdefault(error["index"], error["rule"])
        assert sorted(first_rule) == [1, 3]
        rejected.update(first_rule.values())
        price = {**cart, "messageId": "cart-2", "properties": {"price": "20"}}
        invalid = httpx.post(f"{node.base}/v1/track", json=price, auth=auth)
        assert invalid.status_code == 400
        rejected[invalid.json()["errors"][0]["rule"]] += 1
        unknown = httpx.post(f"{node.base}/v1/track", json=cart, auth=("wk_unknown", ""))
        assert unknown.status_code == 401
        rejected["write_key"] += 1
        accepted = 5 + 1 + 3

        # The worker catches up and the cart's one-second flow sends.
        def caught_up_and_fired() -> bool:
            now = scrape(node)
            lag = [v for (name, _), v in now.items() if name == "journeys_consumer_lag_events"]
            fired = value(now, "journeys_trigger_lateness_seconds_count")
            triggers = [
                v for (name, _), v in now.items() if name == "journeys_trigger_consumer_lag_events"
            ]
            return len(lag) == 2 and sum(lag) == 0 and fired >= 1 and sum(triggers) == 0

        assert wait_until(caught_up_and_fired, 60, alive=lambda: True), node.log_tail()
        after = scrape(node)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert moved("journeys_events_accepted_total") == accepted
        rules_seen = {
            dict(labels)["rule"]
            for (name, labels) in after
            if name == "journeys_events_rejected_total"
        }
        assert rules_seen == set(rejected), (rules_seen, rejected)
        for rule, count in rejected.items():
            assert moved("journeys_events_rejected_total", rule=rule) == count, rule
        assert moved("journeys_batch_events_sum") >= accepted
        assert moved("journeys_batch_duration_seconds_count") >= 1
        assert moved("journeys_batch_duration_seconds_sum") > 0
        assert moved("journeys_clickhouse_insert_seconds_count") >= 1
        assert value(after, "journeys_consumer_lag_events", partition="0") == 0
        assert value(after, "journeys_consumer_lag_events", partition="1") == 0
        assert value(after, "journeys_consumer_lag_seconds") == 0
        assert value(after, "journeys_journal_retained_bytes") > 0
        # The trigger consumer: the three topics it reads, each partition, caught up.
        trigger_lag = {
            (dict(labels)["topic"], dict(labels)["partition"]): v
            for (name, labels), v in after.items()
            if name == "journeys_trigger_consumer_lag_events"
        }
        topics = (settings.events_topic, settings.stage_changes_topic, settings.segments_topic)
        assert trigger_lag == {(t, p): 0 for t in topics for p in ("0", "1")}
        assert moved("journeys_trigger_lateness_seconds_count") == 1
        assert 0 <= moved("journeys_trigger_lateness_seconds_sum") < 30
    finally:
        if node.process is not None:
            assert node.stop() == 0
