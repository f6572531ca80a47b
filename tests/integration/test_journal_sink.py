"""The journaled sink on a real broker (Tansu), with both gateway producers.

The journal computes a record's partition itself (to skip what an old epoch
processed) and must agree with the producers' partitioner; a replay must put
byte-identical records on the topic, one customer's in the order first accepted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from events import TrackedEvent
from stack.settings import Settings
from streams.confluent_sink import ConfluentEventSink
from streams.journal import Journal, JournaledSink, journal_records, partition_of
from streams.producer import KafkaEventSink
from streams.topics import ensure_topics
from tests.conftest import make_event

pytestmark = pytest.mark.integration


async def read_values(settings: Settings, expected: int) -> dict[int, list[bytes]]:
    """The events topic's values per partition, in offset order, once ``expected`` arrived."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(settings.events_topic, p) for p in range(2)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: dict[int, list[bytes]] = defaultdict(list)
        deadline = time.monotonic() + 30
        while sum(map(len, found.values())) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                found[tp.partition].extend(r.value or b"" for r in records)
        return found
    finally:
        await consumer.stop()


@pytest.mark.parametrize("producer", [ConfluentEventSink, KafkaEventSink])
def test_partitions_agree_and_a_replay_is_byte_identical_in_order(
    settings: Settings, tmp_path: Path, producer: type[ConfluentEventSink | KafkaEventSink]
) -> None:
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)

    def sink(journal: Journal) -> JournaledSink:
        inner = producer(
            settings.kafka_bootstrap_servers, settings.events_topic, settings.dead_letter_topic
        )
        return JournaledSink(inner, journal, 2)

    events = [make_event(f"m{i}", f"cust{i % 9}", "Product Viewed", i) for i in range(40)]

    async def scenario() -> None:
        journal = Journal(tmp_path / "journal", settings.kafka_epoch)
        journal.open()
        gateway = sink(journal)
        await gateway.start()
        try:
            # One record per call: each delivery report names that record's partition.
            for event in events[:9]:
                record = (event.customer_key.encode(), event.to_json())
                (delivery,) = await gateway.producer.produce_events([record])
                assert delivery is not None
                assert delivery[0] == partition_of(record[0], 2), event.customer_key
            await gateway.publish(events[9:20])
            await asyncio.gather(gateway.publish(events[20:30]), gateway.publish(events[30:]))
        finally:
            await gateway.stop()
            journal.close()
        # A new broker epoch: everything journaled is produced again.
        again = Journal(tmp_path / "journal", "another-epoch")
        pending = again.open()
        journal_order = [value for _, value in journal_records(again)]
        replaying = sink(again)
        await replaying.start()
        try:
            report = await replaying.replay(pending)
        finally:
            await replaying.stop()
            again.close()
        assert report.produced == 31  # the 9 produced around the journal are not in it
        found = await read_values(settings, expected=40 + 31)
        values = Counter(v for records in found.values() for v in records)
        journaled = [e.to_json() for e in events[9:]]
        assert values == Counter(journaled * 2 + [e.to_json() for e in events[:9]])
        # Per customer: the replay's order is the journal's (for sequential requests
        # the order first accepted; concurrent ones have none to keep).
        for records in found.values():
            by_customer: dict[str, list[bytes]] = defaultdict(list)
            for value in records:
                if value in journaled:
                    by_customer[TrackedEvent.from_json(value).customer_key].append(value)
            for customer, sequence in by_customer.items():
                half = len(sequence) // 2
                in_journal = [
                    v for v in journal_order if TrackedEvent.from_json(v).customer_key == customer
                ]
                assert sequence[half:] == in_journal
                assert sorted(sequence[:half]) == sorted(in_journal)
                sequential = [v for v in in_journal if journaled.index(v) < 11]
                assert [v for v in sequence[:half] if v in sequential] == sequential

    asyncio.run(scenario())
