"""One customer, one partition: whichever client produced the customer's events.

The gateway produces with its sink; the journey worker re-keys identity messages
with its outcome publisher, and Faust (aiokafka) still produces the triggers.
All must hash a key to the same partition, or one customer's events land on two
partitions and two writers race for the same journey.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stack.broker import EmbeddedBroker
from streams.confluent_sink import ConfluentEventSink
from streams.outcomes import OutcomePublisher
from streams.topics import ensure_topics
from tests.conftest import make_event

pytestmark = pytest.mark.integration

KEYS = [f"anon:device-{i}" for i in range(40)]


async def partitions_by_client(
    bootstrap: str, topic: str
) -> tuple[list[int], list[int], list[int]]:
    gateway = ConfluentEventSink(bootstrap, topic, f"{topic}.dlq")
    await gateway.start()
    faust_producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await faust_producer.start()
    try:
        await gateway.publish([make_event(f"e-{key}", key, "Product Viewed") for key in KEYS])
        OutcomePublisher(bootstrap).publish([(topic, key.encode(), b"[]") for key in KEYS])
        sent = [await faust_producer.send_and_wait(topic, b"{}", key=k.encode()) for k in KEYS]
        by_faust = [metadata.partition for metadata in sent]
    finally:
        await faust_producer.stop()
        await gateway.stop()
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        parts = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic) or []]
        reader.assign(parts)
        await reader.seek_to_beginning(*parts)
        placed: dict[str, int] = {}
        while len(placed) < len(KEYS) * 3:
            for records in (await reader.getmany(timeout_ms=2000)).values():
                for record in records:
                    client = {b"[]": "worker", b"{}": "faust"}.get(record.value or b"", "gateway")
                    placed[f"{client}:{(record.key or b'').decode()}"] = record.partition
    finally:
        await reader.stop()
    by_worker = [placed[f"worker:{key}"] for key in KEYS]
    return [placed[f"gateway:{key}"] for key in KEYS], by_worker, by_faust


def test_gateway_and_worker_put_each_customer_on_the_same_partition(
    broker: EmbeddedBroker, unique: str
) -> None:
    topic = f"partitions{unique}"
    ensure_topics(broker.bootstrap_servers, [topic], 8, 1)
    by_gateway, by_worker, by_faust = asyncio.run(
        partitions_by_client(broker.bootstrap_servers, topic)
    )
    assert len(set(by_gateway)) > 1, "keys should spread over partitions"
    assert by_gateway == by_worker == by_faust
