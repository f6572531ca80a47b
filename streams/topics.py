"""Topic administration and log positions (kafka-python's admin client, aiokafka for offsets)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError


def ensure_topics(
    bootstrap_servers: str,
    names: list[str],
    partitions: int,
    replication_factor: int,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet, with ``configs[name]``; returns those created.

    An existing topic keeps the configuration it has (change it with Kafka's tools).
    """
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="journeys-admin")
    try:
        existing = set(admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            # Created meanwhile by another process: that is what we wanted.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [
                        NewTopic(
                            name,
                            partitions,
                            replication_factor,
                            topic_configs=dict((configs or {}).get(name, {})),
                        )
                        for name in missing
                    ]
                )
        return missing
    finally:
        admin.close()


async def end_offsets(bootstrap_servers: str, topic: str) -> dict[int, int]:
    """The next offset to be written in each partition of ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in offsets.items()}
    finally:
        await consumer.stop()
