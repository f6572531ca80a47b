"""The batch consumer on a real broker.

Stored positions rule, a failure stops it, a rebalance loses nothing and
doubles nothing. The "store" here is a dict of positions that the handler
updates together with the records it applied, which is what the journey
pipeline does in one event-store transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer

from stack.broker import EmbeddedBroker
from streams.consumer import BatchConsumer, TopicRecords
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration

PARTITIONS = 4


class PositionStore:
    """Applied records and positions, updated together as a store's transaction would."""

    def __init__(self, positions: dict[int, int] | None = None) -> None:
        self.positions: dict[int, int] = dict(positions or {})
        self.applied: Counter[tuple[int, int]] = Counter()

    def position(self, _topic: str, partition: int) -> int:
        return self.positions.get(partition, 0)

    async def apply(self, records: TopicRecords) -> None:
        [by_partition] = records.values()  # one topic
        for partition, items in by_partition.items():
            fresh = [(o, v) for o, v in items if o >= self.positions.get(partition, 0)]
            self.applied.update((partition, offset) for offset, _ in fresh)
            if fresh:
                self.positions[partition] = fresh[-1][0] + 1


async def produce(bootstrap: str, topic: str, n: int) -> dict[int, int]:
    """``n`` records spread over the partitions; the end offset of each partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    ends: dict[int, int] = {}
    try:
        for i in range(n):
            sent = await producer.send_and_wait(topic, f"{i}".encode(), partition=i % PARTITIONS)
            ends[sent.partition] = sent.offset + 1
    finally:
        await producer.stop()
    return ends


def consumer(
    bootstrap: str, topic: str, group: str, store: PositionStore, **overrides: object
) -> BatchConsumer:
    options: dict[str, object] = {
        "name": "test",
        "topics": [topic],
        "group_id": group,
        "bootstrap_servers": bootstrap,
        "stored_position": store.position,
        "handle": store.apply,
        "on_failure": _unexpected,
        "max_records": 400,
        "within_s": 0.05,
        "session_timeout_s": 6.0,
        "heartbeat_interval_s": 0.5,
    }
    options.update(overrides)
    return BatchConsumer(**options)  # type: ignore[arg-type]


async def _unexpected(error: BaseException) -> None:
    raise AssertionError(f"no batch should fail here: {error!r}")


async def until(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.fixture
def topic(broker: EmbeddedBroker, unique: str) -> str:
    name = f"batches{unique}"
    ensure_topics(broker.bootstrap_servers, [name], PARTITIONS, 1)
    return name


def test_it_starts_each_partition_at_the_stored_position_not_the_committed_offset(
    broker: EmbeddedBroker, topic: str, unique: str
) -> None:
    async def scenario() -> PositionStore:
        ends = await produce(broker.bootstrap_servers, topic, 40)
        store = PositionStore({0: 4, 1: ends[1]})  # partition 1 fully applied already
        member = consumer(broker.bootstrap_servers, topic, f"g{unique}", store)
        await member.start()
        try:
            assert await until(lambda: store.positions == ends)
        finally:
            await member.stop()
        return store

    store = asyncio.run(scenario())
    applied = sorted(store.applied)
    assert [o for p, o in applied if p == 0] == list(range(4, 10))
    assert [o for p, o in applied if p == 1] == []
    assert [o for p, o in applied if p == 2] == list(range(10))
    assert max(store.applied.values()) == 1


def test_each_handed_batch_reports_when_its_first_record_was_produced(
    broker: EmbeddedBroker, topic: str, unique: str
) -> None:
    # The node's lag in seconds behind the gateways rests on the records' Kafka timestamps.
    async def scenario() -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        await producer.start()
        produced: list[tuple[int, float]] = []
        try:
            for partition in range(PARTITIONS):
                # A record produced 30 s ago (as a gateway's would be, behind a backlog).
                stamp_ms = int(time.time() * 1000) - 30_000 + partition
                await producer.send_and_wait(
                    topic, b"old", partition=partition, timestamp_ms=stamp_ms
                )
                produced.append((partition, stamp_ms / 1000))
        finally:
            await producer.stop()
        reported: list[tuple[int, float]] = []
        store = PositionStore()
        member = consumer(
            broker.bootstrap_servers,
            topic,
            f"g{unique}",
            store,
            on_fetched=lambda _topic, partition, at: reported.append((partition, at)),
        )
        await member.start()
        try:
            assert await until(lambda: sum(store.positions.values()) == PARTITIONS)
        finally:
            await member.stop()
        return produced, reported

    produced, reported = asyncio.run(scenario())
    assert sorted(reported) == produced


def test_a_failing_batch_stops_consuming_and_reports_the_failure(
    broker: EmbeddedBroker, topic: str, unique: str
) -> None:
    async def scenario() -> tuple[list[BaseException], int, bool]:
        await produce(broker.bootstrap_servers, topic, 40)
        failures: list[BaseException] = []
        calls = 0

        async def refuse(records: TopicRecords) -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("refused by the test")

        async def report(error: BaseException) -> None:
            failures.append(error)

        member = consumer(
            broker.bootstrap_servers,
            topic,
            f"g{unique}",
            PositionStore(),
            handle=refuse,
            on_failure=report,
        )
        await member.start()
        try:
            assert await until(lambda: bool(failures))
            await asyncio.sleep(1.0)  # room for a second batch, were there one
            healthy = member.failed is None
        finally:
            await member.stop()
        return failures, calls, healthy

    failures, calls, healthy = asyncio.run(scenario())
    assert [str(error) for error in failures] == ["refused by the test"]
    assert calls == 1 and not healthy


def test_two_members_sharing_the_partitions_apply_every_record_once_across_a_rebalance(
    broker: EmbeddedBroker, topic: str, unique: str
) -> None:
    overlaps: list[list[int]] = []

    async def scenario() -> tuple[PositionStore, dict[int, int], list[int], list[int]]:
        store = PositionStore()  # one store for both members, as PostgreSQL in scale-out
        members: list[BatchConsumer] = []  # first, second
        in_hand: Counter[int] = Counter()

        def applying_as(me: int) -> Callable[[TopicRecords], Awaitable[None]]:
            async def apply(records: TopicRecords) -> None:
                [partitions] = [set(by_partition) for by_partition in records.values()]
                in_hand.update(partitions)
                if not store.applied:
                    # The first batch is still in hand when the second member joins,
                    # for longer than the group takes to rebalance (~3 s here).
                    await asyncio.sleep(6.0)
                # Still ours: the other member must not have been given any of these.
                if taken := partitions & set(members[1 - me].assigned_partitions()):
                    overlaps.append(sorted(taken))
                await store.apply(records)
                in_hand.subtract(partitions)

            return apply

        group = f"g{unique}"
        first, second = (
            consumer(broker.bootstrap_servers, topic, group, store, handle=applying_as(me))
            for me in (0, 1)
        )
        members.extend([first, second])
        ends = await produce(broker.bootstrap_servers, topic, 400)
        await first.start()
        assert await until(lambda: any(in_hand.values()))
        await second.start()  # joins while the first has a batch in hand
        try:
            assert await until(lambda: bool(second.assigned_partitions()))
            more = await produce(broker.bootstrap_servers, topic, 400)
            ends = {p: max(ends.get(p, 0), more.get(p, 0)) for p in range(PARTITIONS)}
            assert await until(lambda: store.positions == ends)
            split = first.assigned_partitions(), second.assigned_partitions()
        finally:
            await second.stop()
            await first.stop()
        return store, ends, *split

    store, ends, first, second = asyncio.run(scenario())
    assert sorted(first + second) == list(range(PARTITIONS)) and not set(first) & set(second)
    assert sum(store.applied.values()) == sum(ends.values()) == 800
    assert max(store.applied.values()) == 1
    assert overlaps == [], "two members handled one partition at the same time"


def test_topics_keyed_alike_are_co_partitioned_across_members(
    broker: EmbeddedBroker, topic: str, unique: str
) -> None:
    other = f"{topic}.other"
    ensure_topics(broker.bootstrap_servers, [other], PARTITIONS, 1)

    async def scenario() -> list[dict[str, list[int]]]:
        store = PositionStore()
        members = [
            consumer(broker.bootstrap_servers, topic, f"g{unique}", store, topics=[topic, other])
            for _ in range(3)  # two would be co-partitioned by round robin too
        ]
        for member in members:
            await member.start()
        try:
            assert await until(
                lambda: (
                    all(m.assigned_partitions() for m in members)
                    and not any(m.rebalancing for m in members)
                )
            )
            return [
                {
                    name: sorted(tp.partition for tp in m.consumer.assignment() if tp.topic == name)
                    for name in (topic, other)
                }
                for m in members
            ]
        finally:
            for member in members:
                await member.stop()

    assignments = asyncio.run(scenario())
    assert all(mine[topic] == mine[other] for mine in assignments), assignments
    assert sorted(p for mine in assignments for p in mine[topic]) == list(range(PARTITIONS))
