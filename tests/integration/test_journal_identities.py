"""A journey worker's identity messages outlive the memory-only broker: its identity journal.

A journey worker (`journeys up` with JOURNEYS_JOURNEY_WORKERS) commits the batch
that sent a merge's messages to journey.events once the broker acknowledged
them; their receiver processes them later. A broker that dies in between takes
them, and the ingest journals cannot bring them back (the event that caused
them is processed in the old epoch, so its replay skips it). Real parts: Tansu
(memory storage) on one port, SIGKILLed and started again (a new epoch), the
worker's publisher and its journal folder, and the worker's start-up replay.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer

from stack.bootstrap import open_journal
from stack.broker import EmbeddedBroker
from stack.node import replay_event_journal
from stack.processes import free_port
from streams.journal import journal_records, partition_of
from streams.outcomes import OutcomePublisher
from streams.topics import ensure_topics
from tests.node_process import platform_settings

pytestmark = pytest.mark.integration


def keyed_records(bootstrap_servers: str, topic: str) -> list[tuple[bytes, bytes]]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
        enable_auto_commit=False,
    )
    try:
        return [(record.key, record.value) for record in consumer]
    finally:
        consumer.close()


def test_identity_messages_of_a_committed_batch_are_produced_again_into_a_new_broker(
    tmp_path: Path, unique: str
) -> None:
    port = free_port()
    first = EmbeddedBroker(tmp_path / "broker-1.log", port=port)
    first.start()
    settings = platform_settings(
        tmp_path / "data", unique, first.bootstrap_servers, kafka_epoch="epoch-1"
    )
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
    folder = settings.journey_worker_identity_journal_path()
    keys = [f"cust{i}".encode() for i in range(6)]
    identity = [
        (settings.events_topic, key, orjson.dumps({"link": key.decode(), "n": n}))
        for n, key in enumerate(keys)
    ]
    stage_change = (settings.stage_changes_topic, keys[0], b'{"stage": "purchase"}')
    second: EmbeddedBroker | None = None
    try:
        journal = open_journal(settings, folder)
        journal.open()
        OutcomePublisher(
            settings.kafka_bootstrap_servers, journal=journal, events_topic=settings.events_topic
        ).publish([*identity, stage_change])
        journal.close()
        # Only journey.events records are journaled (a stage change is not an event).
        held = list(journal_records(journal))
        assert held == [(key, value) for _, key, value in identity]
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()

        second = EmbeddedBroker(tmp_path / "broker-2.log", port=port)
        second.start()
        ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
        restarted = settings.model_copy(update={"kafka_epoch": "epoch-2"})
        again = open_journal(restarted, folder)
        pending = again.open()
        assert len(pending) == 1
        # In epoch-1 the pipeline had processed partition 0 past these records, not 1.
        processed = 0

        def old_position(epoch: str, partition: int) -> int:
            assert epoch == "epoch-1"
            return 1_000 if partition == processed else 0

        report = asyncio.run(replay_event_journal(restarted, again, pending, old_position))
        fresh = [(k, v) for k, v in held if partition_of(k, 2) != processed]
        assert fresh and len(fresh) < len(held)  # both partitions hold some
        assert (report.produced, report.skipped) == (len(fresh), len(held) - len(fresh))
        assert sorted(keyed_records(restarted.kafka_bootstrap_servers, restarted.events_topic)) == (
            sorted(fresh)
        )
        # Trimmed once the pipeline is past them in the new epoch, not before.
        assert again.trim(lambda _epoch, _partition: 0) == []
        assert again.trim(lambda epoch, _p: 1_000 if epoch == "epoch-2" else 0) == [
            pending[0].index
        ]
        again.close()
    finally:
        if second is not None:
            second.stop()
        first.stop()
