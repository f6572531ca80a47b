"""One customer, one partition: whichever client produced the customer's events.

The gateway produces with librdkafka; the worker re-keys identity messages through
Faust (aiokafka). Both must hash a key to the same partition, or one customer's
events land on two partitions and two writers race for the same journey.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stack.broker import EmbeddedBroker
from streams.confluent_sink import ConfluentEventSink
from streams.topics import ensure_topics
from tests.conftest import make_event

pytestmark = pytest.mark.integration

KEYS = [f"anon:device-{i}" for i in range(40)]


async def partitions_by_client(bootstrap: str, topic: str) -> tuple[list[int], list[int]]:
    gateway = ConfluentEventSink(bootstrap, topic, f"{topic}.dlq")
    await gateway.start()
    worker = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await worker.start()
    try:
        await gateway.publish([make_event(f"e-{key}", key, "Product Viewed") for key in KEYS])
        by_worker = [
            (await worker.send_and_wait(topic, b"{}", key=key.encode())).partition for key in KEYS
        ]
    finally:
        await worker.stop()
        await gateway.stop()
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        parts = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic) or []]
        reader.assign(parts)
        await reader.seek_to_beginning(*parts)
        placed: dict[str, int] = {}
        while len(placed) < len(KEYS) * 2:
            for records in (await reader.getmany(timeout_ms=2000)).values():
                for record in records:
                    if record.value != b"{}":  # the gateway's copy
                        placed[(record.key or b"").decode()] = record.partition
                    else:
                        placed[f"worker:{(record.key or b'').decode()}"] = record.partition
    finally:
        await reader.stop()
    return [placed[key] for key in KEYS], by_worker


def test_gateway_and_worker_put_each_customer_on_the_same_partition(
    broker: EmbeddedBroker, unique: str
) -> None:
    topic = f"partitions{unique}"
    ensure_topics(broker.bootstrap_servers, [topic], 8, 1)
    by_gateway, by_worker = asyncio.run(partitions_by_client(broker.bootstrap_servers, topic))
    assert len(set(by_gateway)) > 1, "keys should spread over partitions"
    assert by_gateway == by_worker
