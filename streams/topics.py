"""Topic administration and log positions (kafka-python's admin client, aiokafka for offsets)."""

from __future__ import annotations

import asyncio
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
    consumer = log_end_reader(bootstrap_servers)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        offsets = await log_ends(consumer, [TopicPartition(topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in offsets.items()}
    finally:
        await consumer.stop()


def log_end_reader(bootstrap_servers: str) -> AIOKafkaConsumer:
    """A consumer for :func:`log_ends` (no group; a fetch hardly waits for records)."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,  # Tansu answers a fetch with a wait of 0 with nothing
        max_partition_fetch_bytes=1024,
    )


async def log_ends(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], timeout_s: float = 10.0
) -> dict[TopicPartition, int]:
    """Each partition's end: the offset the next record will get.

    Tansu's ListOffsets (latest) answers the last record batch's base offset + 1,
    not the end of the log (batches of 10 then 5 records: 11, not 15), which would
    end a drain or a backlog count one batch early. A fetch's high watermark is the
    true end, so ``consumer`` (assigned ``partitions`` here) fetches the last batch
    from just before the listed offset and takes the high watermark it answers.
    """
    listed = await consumer.end_offsets(partitions)
    consumer.assign(partitions)
    for tp in partitions:
        consumer.seek(tp, max(0, listed[tp] - 1))
    ends: dict[TopicPartition, int] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(ends) < len(partitions):
        await consumer.getmany(*partitions, timeout_ms=50)
        for tp in partitions:
            highwater = consumer.highwater(tp)
            if highwater is not None:
                ends[tp] = max(listed[tp], highwater)
        if loop.time() > deadline:
            missing = sorted(set(partitions) - set(ends))
            raise TimeoutError(f"no fetch answered the end of {missing}")
    return ends
