"""A consumer-group member that hands batches of records to a handler, positions from the store.

Faust's stream path costs ~150 µs per message here (a Faust agent that does
nothing reached 0.04 of a plain aiokafka consumer, docs/performance.md), more
than the journey pipeline's own work. A high-volume agent therefore reads with
aiokafka's ``getmany`` directly, inside the worker's Faust app.

Kafka's committed offsets are only a hint here (for lag tools): each handler
saves its consumed position with its effects, in one transaction, so on every
assignment the consumer seeks to the stored positions. Exactly-once does not
depend on when (or whether) Kafka's offsets are committed, and a failed batch
can never be committed past.

Several topics keyed alike (by customer) are co-partitioned: the range
assignor gives partition N of each to the same member, so one member owns all
of a customer's records, as Faust's assignor did.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import ConsumerStoppedError, KafkaError
from mode import Service

from streams.batches import PartitionRecords
from streams.settings import ConsumerSettings

log = logging.getLogger(__name__)

# A batch: each topic's records, per partition, in offset order.
TopicRecords = dict[str, PartitionRecords]
RecordsHandler = Callable[[TopicRecords], Awaitable[None]]
# The stored position of a topic's partition: the offset of the first record not yet applied.
StoredPosition = Callable[[str, int], int]
FailureHandler = Callable[[BaseException], Awaitable[None]]
# Told (topic, partition, position, high-water mark or None) after a seek or a handled batch.
ProgressHandler = Callable[[str, int, int, int | None], None]
# Told (topic, partition, when its first record was produced, seconds since the epoch)
# as a fetched batch is handed over: the oldest record not yet processed.
FetchedHandler = Callable[[str, int, float], None]


class BatchConsumer(Service):
    """Reads ``topics`` in a group and hands each fetched batch, per partition, to ``handle``.

    One batch at a time: a rebalance waits for the batch in hand to finish, and
    a batch fetched before a rebalance is dropped (it is read again from the
    stored positions). When ``handle`` raises, consuming stops for good and
    ``on_failure`` is told (the worker stops: fail fast, as for Faust agents).
    """

    def __init__(
        self,
        *,
        name: str,
        topics: Sequence[str],
        group_id: str,
        bootstrap_servers: str,
        stored_position: StoredPosition,
        handle: RecordsHandler,
        on_failure: FailureHandler,
        max_records: int,
        within_s: float,
        session_timeout_s: float,
        heartbeat_interval_s: float,
        fetch_max_wait_ms: int = 500,
        on_progress: ProgressHandler | None = None,
        on_fetched: FetchedHandler | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.topics = list(topics)
        self._stored_position = stored_position
        self._handle = handle
        self._on_failure = on_failure
        self._on_progress = on_progress
        self._on_fetched = on_fetched
        self.max_records = max_records
        self.within_ms = max(1, int(within_s * 1000))
        self._consumer_options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers.split(","),
            "group_id": group_id,
            "client_id": f"journeys-{name}",
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "partition_assignment_strategy": (RangePartitionAssignor,),
            "session_timeout_ms": int(session_timeout_s * 1000),
            "heartbeat_interval_ms": int(heartbeat_interval_s * 1000),
            "max_poll_records": max_records,
            "fetch_max_wait_ms": fetch_max_wait_ms,
            # A fetch should carry a whole batch: 2000 events of ~700 B.
            "max_partition_fetch_bytes": 4 * 1024 * 1024,
            "fetch_max_bytes": 16 * 1024 * 1024,
        }
        # Made in on_start: aiokafka binds to the running event loop.
        self._consumer: AIOKafkaConsumer | None = None
        # Held while a batch is handled, so a rebalance waits for it.
        self._handling = asyncio.Lock()
        # Bumped on every revocation: a batch fetched before it is dropped.
        self._generation = 0
        self.rebalancing = True
        self.failed: BaseException | None = None

    @property
    def consumer(self) -> AIOKafkaConsumer:
        """The aiokafka consumer (once started)."""
        if self._consumer is None:
            raise RuntimeError(f"{self.name}: the consumer is not started")
        return self._consumer

    def assigned_partitions(self) -> list[int]:
        """The partition numbers this member holds now (the same of every topic)."""
        if self._consumer is None:
            return []
        return sorted({tp.partition for tp in self._consumer.assignment()})

    def highwater(self, topic: str, partition: int) -> int | None:
        """The broker's end of a partition as last fetched (None before a fetch)."""
        if self._consumer is None:
            return None
        return self._consumer.highwater(TopicPartition(topic, partition))

    def caught_up(self, topic: str, position: Callable[[int], int]) -> list[int]:
        """Partitions of ``topic`` held here whose stored ``position`` reached the high-water mark.

        Until then a timer could overtake an accepted event waiting in the backlog
        (a purchase that cancels it, a view that keeps a customer in), so it waits.
        """
        if self.rebalancing:
            return []
        ready = []
        for partition in self.assigned_partitions():
            highwater = self.highwater(topic, partition)
            if highwater is None:
                continue  # not fetched yet: we do not know what is waiting
            if position(partition) >= highwater:
                ready.append(partition)
        return ready

    async def on_start(self) -> None:
        """Start joining the group; the loop starts with the service's task.

        Subscribed after ``start``, so ``start`` does not wait for the assignment
        (a join takes half the session timeout on Tansu): the worker's consumers
        join side by side, and the services after them (the node's API) start at
        once. Until assigned, ``rebalancing`` is true and nothing is consumed.
        """
        self._consumer = AIOKafkaConsumer(**self._consumer_options)
        await self._consumer.start()
        self._consumer.subscribe(self.topics, listener=_SeekToStoredPositions(self))

    async def on_stop(self) -> None:
        """Let the batch in hand finish, then leave the group."""
        async with self._handling:
            if self._consumer is not None:
                await self._consumer.stop()

    @Service.task
    async def _consume(self) -> None:
        while not self.should_stop and self.failed is None:
            generation = self._generation
            try:
                fetched = await self.consumer.getmany(
                    timeout_ms=self.within_ms, max_records=self.max_records
                )
            except ConsumerStoppedError:
                return  # the service is stopping
            if not fetched:
                continue
            async with self._handling:
                if self.should_stop:
                    continue
                if generation != self._generation:
                    # A rebalance came while this fetch was out: what it returned may be
                    # from before the seek to the stored positions, or after it (the
                    # position moved past it). Either way, read again from the store.
                    await self.seek_to_stored(set(fetched) & self.consumer.assignment())
                    continue
                records: TopicRecords = {}
                for tp, batch in fetched.items():
                    if batch:
                        by_partition = records.setdefault(tp.topic, {})
                        by_partition[tp.partition] = [(r.offset, r.value or b"") for r in batch]
                        if self._on_fetched is not None and batch[0].timestamp is not None:
                            self._on_fetched(tp.topic, tp.partition, batch[0].timestamp / 1000)
                try:
                    await self._handle(records)
                except Exception as error:
                    log.critical("%s batch failed; stopping the worker: %r", self.name, error)
                    self.failed = error
                    await self._on_failure(error)
                    return
                self._progressed(fetched)
            await self._commit_hint(fetched)

    async def _commit_hint(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        try:
            await self.consumer.commit({tp: batch[-1].offset + 1 for tp, batch in fetched.items()})
        except KafkaError as error:  # a rebalance in between: the stored positions rule
            log.info("%s: offsets not committed to Kafka (%r)", self.name, error)

    def _progressed(self, handled: dict[TopicPartition, list[Any]]) -> None:
        # The handler committed these positions with its effects (in memory: no store read).
        if self._on_progress is None:
            return
        for tp, batch in handled.items():
            if batch:
                highwater = self.consumer.highwater(tp)
                self._on_progress(tp.topic, tp.partition, batch[-1].offset + 1, highwater)

    async def seek_to_stored(self, assigned: Collection[TopicPartition]) -> None:
        """Start each newly assigned partition at the position its handler stored."""
        for tp in assigned:
            position = await asyncio.to_thread(self._stored_position, tp.topic, tp.partition)
            self.consumer.seek(tp, position)
            if self._on_progress is not None:
                self._on_progress(tp.topic, tp.partition, position, None)
        self.rebalancing = False

    async def wait_for_batch_in_hand(self) -> None:
        """Let the batch being handled finish, and drop any fetched before now."""
        self.rebalancing = True
        async with self._handling:
            self._generation += 1


def worker_consumer(
    settings: ConsumerSettings,
    *,
    name: str,
    group: str,
    topics: Sequence[str],
    stored_position: StoredPosition,
    handle: RecordsHandler,
    on_failure: FailureHandler,
    on_progress: ProgressHandler | None = None,
    on_fetched: FetchedHandler | None = None,
) -> BatchConsumer:
    """A consumer of the worker in group ``<worker_group>.<group>``, with its batch settings."""
    return BatchConsumer(
        name=name,
        topics=topics,
        group_id=f"{settings.worker_group}.{group}",
        bootstrap_servers=settings.kafka_bootstrap_servers,
        stored_position=stored_position,
        handle=handle,
        on_failure=on_failure,
        max_records=settings.batch_max_events,
        within_s=settings.batch_within_s,
        session_timeout_s=settings.kafka_session_timeout_s,
        heartbeat_interval_s=settings.kafka_heartbeat_interval_s,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        on_progress=on_progress,
        on_fetched=on_fetched,
    )


class _SeekToStoredPositions(ConsumerRebalanceListener):
    def __init__(self, consumer: BatchConsumer) -> None:
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self.consumer.wait_for_batch_in_hand()

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        await self.consumer.seek_to_stored(assigned)
