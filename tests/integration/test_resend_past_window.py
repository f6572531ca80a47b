"""A messageId sent again more than a day later is one event: one row in the event log.

Without a client timestamp the receive time is the event time, so a re-send past the
journey's 24 h dedup window used to be recorded again and to get a second row (its
sort key has a new timestamp). Here the first arrival and a later event are put on
the topic as the gateway made them days ago (the envelope it builds, with the receive
times of then); then the real gateway takes the same messageId now, twice. A node
processes everything through the broker: one journey fact and one `events` row for
the id, and `journeys verify` agrees.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from api.write_keys import DEV_SOURCE
from events.segment import TrackCall, to_tracked_event
from stack.processes import wait_until
from stack.settings import Settings
from streams.producer import KafkaEventSink
from streams.topics import ensure_topics
from tests.node_process import NodeProcess, query_chdb_folder, run_cli

pytestmark = pytest.mark.integration

RESENT: dict[str, Any] = {
    "userId": "rae",
    "event": "Product Viewed",
    "messageId": "m-resent",
    "properties": {"product_id": "p1"},
}


def as_received(call: dict[str, Any], received: datetime) -> Any:
    """The envelope the gateway builds for ``call`` received at ``received``."""
    return to_tracked_event(
        TrackCall.model_validate({"type": "track", **call}), received, DEV_SOURCE
    )


def test_a_message_id_resent_days_later_is_one_row(settings: Settings) -> None:
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
    now = datetime.now(UTC)
    first = as_received(RESENT, now - timedelta(days=3))
    # A later arrival of the same customer moves the first id past the window.
    later = as_received({**RESENT, "messageId": "m-later"}, now - timedelta(days=2))
    resent = as_received(RESENT, now - timedelta(days=1))
    assert first.timestamp != resent.timestamp  # no client timestamp: the receive time

    async def publish() -> None:
        sink = KafkaEventSink(
            settings.kafka_bootstrap_servers, settings.events_topic, settings.dead_letter_topic
        )
        await sink.start()
        try:
            await sink.publish([first, later, resent])
        finally:
            await sink.stop()

    asyncio.run(publish())
    node = NodeProcess(settings, settings.data_dir / "node.log")
    node.start()
    read = {"Authorization": f"Bearer {settings.read_key}"}
    try:
        with httpx.Client(base_url=node.base, timeout=60) as client:
            for _ in range(2):  # now, through the gateway: a receive time days after the first
                answer = client.post("/v1/track", auth=(settings.write_key, ""), json=RESENT)
                assert answer.status_code == 200, answer.text
            # A new event after the re-sends: once it is counted, they were processed.
            fresh = client.post(
                "/v1/track",
                auth=(settings.write_key, ""),
                json={**RESENT, "messageId": "m-fresh"},
            )
            assert fresh.status_code == 200, fresh.text
            process = node.process
            assert process is not None

            def facts() -> list[str]:
                found = client.get("/v1/customers/rae/journey", headers=read)
                if found.status_code != 200:
                    return []
                return [e["event_id"] for e in found.json()["entries"] if "event_name" in e]

            # The fresh event came last on the customer's partition: once it is a fact,
            # every re-send before it was processed.
            assert wait_until(lambda: "m-fresh" in facts(), 90, lambda: process.poll() is None), (
                node.log_tail()
            )
            assert facts() == ["m-resent", "m-later", "m-fresh"]
            customer = client.get("/v1/customers/rae", headers=read).json()
            assert customer["event_count"] == 3, customer
    finally:
        log = node.log_tail(80)
        assert node.stop() == 0
    assert "Traceback" not in log, log

    rows = query_chdb_folder(
        settings.chdb_path,
        f"SELECT event_id, count(), min(received_at) FROM {settings.clickhouse_database}.events "
        "FINAL WHERE customer_key = 'rae' GROUP BY event_id ORDER BY event_id",
    )
    assert [(event_id, n) for event_id, n, _ in rows] == [
        ("m-fresh", 1),
        ("m-later", 1),
        ("m-resent", 1),
    ], rows
    # The row kept is the first arrival's.
    assert rows[2][2].startswith(first.received_at.strftime("%Y-%m-%d %H:%M:%S")), rows
    verified = run_cli(settings, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "the stores agree" in verified.stdout
