"""A failing batch in an outreach agent stops the worker; after a restart nothing was skipped.

The failure is a real one of the database: a SQLite trigger refuses to store
one customer's flow state, so the trigger consumer's batch raises. Were the
consumer restarted in-process, it would go on with later offsets and save
positions past the refused events, and that customer's cart would never be
sent for. Instead the node exits; once the database accepts again, the
restarted node re-reads the batch and sends exactly once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from stack.processes import wait_until
from stack.settings import Settings
from tests.integration.test_outreach_triggers import (
    Receiver,
    add_to_cart,
    admin,
    start_node,
    topic_records,
)

pytestmark = pytest.mark.integration

FLOWS = """
[flows.abandoned_cart]
name = "Abandoned cart"
version = 1
reentry = "always"
frequency_cap = "1d"
exit = [{ event = "Order Completed" }]

[flows.abandoned_cart.nodes.due]
kind = "date_entry"
anchor = "cart"
after = "2s"
next = "send_webhook"

[flows.abandoned_cart.nodes.send_webhook]
kind = "send"
channel = "webhook"
body = "value {{ data.cart.value }}"
"""
POISON = (
    "CREATE TRIGGER refuse_poison BEFORE INSERT ON flow_states "
    "WHEN NEW.customer_key = 'c-poison' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
)


@pytest.fixture
def fail_fast_receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def _execute(settings: Settings, sql: str) -> None:
    with sqlite3.connect(settings.sqlite_path, timeout=30) as connection:
        connection.execute(sql)


def _committed_past(settings: Settings, customer: str) -> list[str]:
    """The group's committed offsets that lie past one of ``customer``'s events."""
    events = [
        record
        for record in topic_records(settings, settings.events_topic)
        if json.loads(record.value).get("customer_key") == customer
    ]
    assert events, f"no event of {customer} on the events topic"
    admin_client = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        group = f"{settings.worker_group}.triggers"  # the trigger consumer's group
        committed = admin_client.list_group_offsets(group)[group]
    finally:
        admin_client.close()
    return [
        f"{record.partition}@{record.offset}: committed {position.offset}"
        for record in events
        for tp, position in committed.items()
        if (tp.topic, tp.partition) == (record.topic, record.partition)
        and position.offset > record.offset
    ]


def test_a_failing_trigger_batch_stops_the_worker_and_is_redone_after_restart(
    settings: Settings, fail_fast_receiver: Receiver, tmp_path: Path
) -> None:
    receiver = fail_fast_receiver
    node = start_node(settings, FLOWS, tmp_path, trigger_grace_s=600.0)
    settings = node.settings
    try:
        hook = {"url": f"{receiver.base}/ok"}
        assert admin(node, "POST", "/v1/outreach/webhooks", json=hook).status_code == 201
        _execute(settings, POISON)
        add_to_cart(node, "c-poison", 1)
        process = node.process
        assert process is not None
        assert wait_until(lambda: process.poll() is not None, 60, alive=lambda: True), (
            f"the worker went on after a failed trigger batch:\n{node.log_tail()}"
        )
        assert "triggers batch failed; stopping the worker" in node.log_path.read_text()
        assert not receiver.seen("/ok", "c-poison")
        # Kafka's committed offset (the lag tools' view) is not past it either.
        assert _committed_past(settings, "c-poison") == []

        # The database accepts again: the restarted worker redoes the batch, fires once.
        _execute(settings, "DROP TRIGGER refuse_poison")
        node.start()
        assert wait_until(
            lambda: bool(receiver.seen("/ok", "c-poison", 200)),
            timeout=60,
            alive=lambda: True,
            interval=0.2,
        ), node.log_tail()
        time.sleep(3)  # room for a double, were there one
        [accepted] = receiver.seen("/ok", "c-poison")
        payload = json.loads(accepted["body"])
        assert payload["rule"] == "flow:abandoned_cart" and payload["body"] == "value 40.0"
    finally:
        node.stop()
