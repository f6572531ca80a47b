"""The node's customer view serves the worker's decided stage while ClickHouse's insert lags.

Real parts: the SQLite event store, the real chdb engine, the node's API app. The
ClickHouse insert of ``customer_stages`` is held by a real lock in front of the real
client (or made to fail, as a crash there), never replaced.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from api.app import create_api
from events import TrackedEvent
from stack.bootstrap import Platform, platform_on
from stack.settings import Settings
from streams.app import JourneyStreams
from streams.pipeline import JourneyPipeline, PartitionBatch
from streams.topics import ensure_topics
from tests.conftest import make_event
from tests.integration.gateways import ingest_gateway
from tests.integration.test_segments_api import NoSink

pytestmark = pytest.mark.integration

SOURCE = "journey.events#0"


def batch(events: list[TrackedEvent], first_offset: int = 0) -> PartitionBatch:
    return PartitionBatch(
        source=SOURCE, records=[(first_offset + i, e.to_json()) for i, e in enumerate(events)]
    )


class Node:
    """One node's stores, its journey pipeline and its API app over the same objects."""

    def __init__(self, settings: Settings, clickhouse: Client) -> None:
        self.platform: Platform = platform_on(settings, clickhouse, stages_in_flight=True)
        self.pipeline: JourneyPipeline = self.platform.pipeline()
        gateway = ingest_gateway(
            settings,
            clickhouse,
            NoSink(),
            stages=self.platform.stages,
            privacy=self.platform.privacy,
            journeys=self.platform.journeys,
        )
        self.client = TestClient(create_api(gateway), raise_server_exceptions=False)
        self.read = {"Authorization": f"Bearer {settings.read_key}"}

    def customer(self, customer_id: str, **params: str) -> Any:
        return self.client.get(f"/v1/customers/{customer_id}", headers=self.read, params=params)

    def stage_insert(self, around: Callable[[Callable[[Sequence[Any]], None], Any], None]) -> None:
        """Put ``around(real_insert, rows)`` in front of the ``customer_stages`` insert."""
        table = self.platform.stages._stages  # the real client's insert, kept
        real = table.insert

        def insert(rows: Sequence[Any]) -> None:
            around(real, rows)

        table.insert = insert  # type: ignore[method-assign]

    def close(self) -> None:
        self.client.close()
        self.platform.journeys.close()
        self.platform.outreach.close()
        self.platform.access.close()
        if self.platform.segments is not None:
            self.platform.segments.close()


@pytest.fixture
def node(settings: Settings, clickhouse: Client) -> Iterator[Node]:
    made = Node(settings, clickhouse)
    yield made
    made.close()


def browse(customer: str, offset: int) -> TrackedEvent:
    return make_event(f"{customer}-v{offset}", customer, "Product Viewed", offset)


def add_to_cart(customer: str, offset: int) -> TrackedEvent:
    return make_event(f"{customer}-a{offset}", customer, "Product Added", offset, product_id="p1")


def test_the_stage_shows_while_the_clickhouse_insert_is_held(node: Node) -> None:
    # uma is in ClickHouse already (one whole batch): awareness.
    node.pipeline.process(batch([browse("uma", 0)]))
    before = node.customer("uma").json()
    assert before["stage"] == "awareness"

    entered, release = threading.Event(), threading.Event()

    def held(real: Callable[[Sequence[Any]], None], rows: Sequence[Any]) -> None:
        entered.set()
        assert release.wait(60), "the test never released the insert"
        real(rows)

    node.stage_insert(held)
    worker = threading.Thread(
        target=node.pipeline.process,
        args=(batch([add_to_cart("uma", 1), browse("vic", 2)], first_offset=1),),
    )
    worker.start()
    try:
        assert entered.wait(60), "the batch never reached the stage insert"
        # ClickHouse still has uma's old row and no vic; the API shows the new ones.
        stored = node.platform.stages.get("uma", in_flight=False)
        assert stored is not None and stored.stage == "awareness"
        assert node.platform.stages.get("vic", in_flight=False) is None
        now = node.customer("uma").json()
        assert now["stage"] == "consideration"
        assert now["event_count"] == before["event_count"] + 1
        vic = node.customer("vic")
        assert vic.status_code == 200 and vic.json()["stage"] == "awareness"
        # As of a moment: the journeys' committed facts only, never the batch in hand.
        past = node.customer("uma", as_of="2100-01-01T00:00:00Z").json()
        assert past["stage"] == "awareness"
        assert node.customer("vic", as_of="2100-01-01T00:00:00Z").status_code == 404
    finally:
        release.set()
        worker.join(60)
    assert not worker.is_alive()
    # ClickHouse has them now; nothing stays held.
    stored = node.platform.stages.get("uma", in_flight=False)
    assert stored is not None and stored.stage == "consideration"
    assert node.platform.stages.in_flight is not None and len(node.platform.stages.in_flight) == 0
    assert node.customer("uma").json()["stage"] == "consideration"


def test_an_erased_customer_in_flight_is_not_shown(node: Node) -> None:
    node.pipeline.process(batch([browse("wes", 0)]))
    entered, release = threading.Event(), threading.Event()

    def held(real: Callable[[Sequence[Any]], None], rows: Sequence[Any]) -> None:
        entered.set()
        assert release.wait(60), "the test never released the insert"
        real(rows)

    node.stage_insert(held)
    worker = threading.Thread(
        target=node.pipeline.process, args=(batch([add_to_cart("wes", 1)], first_offset=1),)
    )
    worker.start()
    try:
        assert entered.wait(60)
        assert node.customer("wes").json()["stage"] == "consideration"
        assert node.platform.privacy.erase("wes", "test") is not None
        assert node.platform.stages.get("wes") is None  # forgotten, and ClickHouse's deleted
        assert node.customer("wes").status_code == 404
    finally:
        release.set()
        worker.join(60)
    assert node.customer("wes").status_code == 404


def test_a_stage_shown_before_a_crash_is_the_one_the_replay_decides(
    settings: Settings, clickhouse: Client
) -> None:
    events = [browse("xia", 0), add_to_cart("xia", 1), browse("yan", 2)]
    first = Node(settings, clickhouse)
    shown: dict[str, Any] = {}

    def crash(_real: Callable[[Sequence[Any]], None], _rows: Sequence[Any]) -> None:
        for customer in ("xia", "yan"):
            shown[customer] = first.customer(customer).json()
        raise RuntimeError("the worker died in the ClickHouse insert")

    first.stage_insert(crash)
    try:
        with pytest.raises(RuntimeError, match="died in the ClickHouse insert"):
            first.pipeline.process(batch(events))
        assert shown["xia"]["stage"] == "consideration"
        assert shown["yan"]["stage"] == "awareness"
        assert first.platform.stages.get("xia", in_flight=False) is None
    finally:
        first.close()

    # The restarted node (new objects, nothing held) replays the batch from the topic.
    restarted = Node(settings, clickhouse)
    try:
        assert restarted.customer("xia").status_code == 404  # not decided here yet
        restarted.pipeline.process(batch(events))
        for customer in ("xia", "yan"):
            stored = restarted.platform.stages.get(customer, in_flight=False)
            assert stored is not None
            again = restarted.customer(customer).json()
            fields = ("stage", "stage_since", "event_count", "orders", "first_seen", "last_seen")
            assert {f: again[f] for f in fields} == {f: shown[customer][f] for f in fields}
    finally:
        restarted.close()


def _stage_changes_on(settings: Settings) -> list[dict[str, Any]]:
    """Every stage change on the topic so far (up to its end offsets now)."""

    async def read() -> list[dict[str, Any]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
        )
        await consumer.start()
        try:
            topic = settings.stage_changes_topic
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            found: list[dict[str, Any]] = []
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                fetched = await consumer.getmany(timeout_ms=1000)
                found.extend(orjson.loads(r.value or b"{}") for rs in fetched.values() for r in rs)
            return found
        finally:
            await consumer.stop()

    return asyncio.run(read())


def test_the_node_announces_a_stage_once_decided_while_the_insert_is_held(
    settings: Settings, clickhouse: Client
) -> None:
    topics = [settings.events_topic, settings.stage_changes_topic, settings.segments_topic]
    ensure_topics(settings.kafka_bootstrap_servers, [*topics, settings.dead_letter_topic], 1, 1)
    node = Node(settings, clickhouse)
    streams = JourneyStreams(settings, node.pipeline)
    entered, release = threading.Event(), threading.Event()

    def held(real: Callable[[Sequence[Any]], None], rows: Sequence[Any]) -> None:
        entered.set()
        assert release.wait(60), "the test never released the insert"
        real(rows)

    node.stage_insert(held)
    worker = threading.Thread(
        target=streams._apply_journey_batch, args=([batch([browse("zed", 0)])],)
    )
    worker.start()
    try:
        assert entered.wait(60)
        # On the topic while ClickHouse has no row: and the API shows it already.
        announced = [c for c in _stage_changes_on(settings) if c["customer_key"] == "zed"]
        assert [c["stage"] for c in announced] == ["awareness"]
        assert node.platform.stages.get("zed", in_flight=False) is None
        assert node.customer("zed").json()["stage"] == "awareness"
    finally:
        release.set()
        worker.join(60)
        node.close()
    assert not worker.is_alive()
