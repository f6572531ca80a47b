"""The end of a partition as the drain and the gateways' lag limit read it, on Tansu.

Tansu answers ListOffsets (latest) with the last record batch's base offset + 1;
streams/topics.py reads the end from a fetch's high watermark instead.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import TopicPartition
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from stack.broker import EmbeddedBroker
from streams.topics import end_offsets, log_end_reader, log_ends

pytestmark = pytest.mark.integration


def test_the_end_counts_every_record_of_the_last_batch(broker: EmbeddedBroker) -> None:
    kafka_bootstrap = broker.bootstrap_servers
    topic = f"log-ends-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 2, 1)])
    admin.close()
    assert asyncio.run(end_offsets(kafka_bootstrap, topic)) == {0: 0, 1: 0}

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=50)
    ends = []
    for batch in (10, 5):
        for _ in range(batch):
            producer.send(topic, value=b"x", partition=0)
        producer.flush()  # one batch each
        ends.append(asyncio.run(end_offsets(kafka_bootstrap, topic)))
    producer.close()
    assert ends == [{0: 10, 1: 0}, {0: 15, 1: 0}]

    async def read_twice() -> tuple[int, int]:
        # One consumer kept open (as the gateways' poller keeps it): each read is fresh.
        consumer = log_end_reader(kafka_bootstrap)
        await consumer.start()
        try:
            partition = [TopicPartition(topic, 0)]
            first = (await log_ends(consumer, partition))[partition[0]]
            again = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=50)
            for _ in range(3):
                again.send(topic, value=b"y", partition=0)
            again.flush()
            again.close()
            return first, (await log_ends(consumer, partition))[partition[0]]
        finally:
            await consumer.stop()

    assert asyncio.run(read_twice()) == (15, 18)
