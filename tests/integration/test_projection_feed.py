"""The projection feed: a journey worker's ClickHouse writes over Kafka, applied by the node.

The same storefront events (views, an identity merge of an anonymous visitor,
orders, a re-send) go through two pipelines over their own event stores: one
writing chdb directly, as the node does, one through the projection recorder
onto a real Tansu topic, whose records are then applied to chdb as the node
applies them. Every projection table holds the same rows under ``FINAL``, and
applying the whole feed a second time (the node died before saving its
position) or a batch recorded twice (a worker died before its commit) changes
nothing.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from kafka import KafkaConsumer

from events import TrackedEvent, event_type_for
from projections.clickhouse import TableInsert
from projections.migrations import migrate
from stack.bootstrap import platform_on
from stack.broker import EmbeddedBroker
from stack.settings import Settings
from streams.pipeline import PartitionBatch
from streams.projection_feed import (
    ProjectionApplier,
    ProjectionRecorder,
    ProjectionsElsewhere,
    encode_command,
    encode_insert,
)
from streams.topics import ensure_topics
from tests.node_process import platform_settings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TABLES = {
    "events": "customer_key, event_id, source, timestamp, event_name, properties, price",
    "stage_changes": "customer_key, stage, at, event_id, revision",
    "customer_stages": "customer_key, stage, event_count, version",
    "customer_orders": "customer_key, order_id, revenue",
    "customer_profiles": "customer_key, version",
    "segment_changes": "segment, customer_key, at, entered, event_id",
}


def call(
    event_id: str, name: str, minutes: int, user: str | None, anonymous: str | None = None, **p: Any
) -> TrackedEvent:
    at = T0 + timedelta(minutes=minutes)
    return TrackedEvent(
        event_id=event_id,
        customer_key=user or f"anon:{anonymous}",
        call_type="track",
        event_type=event_type_for("track", name),
        event_name=name,
        timestamp=at,
        received_at=at,
        user_id=user,
        anonymous_id=anonymous,
        properties=dict(p),
    )


def storefront() -> list[list[TrackedEvent]]:
    """Three batches: an anonymous visitor, then the same person signed in, and a re-send."""
    first = [
        call("a1", "Product Viewed", 0, None, "v9", product_id="p1", category="shoes"),
        call("a2", "Product Added", 1, None, "v9", product_id="p1", price=59.5, quantity=1),
        call("b1", "Product Viewed", 1, "bob", product_id="p2", tags=["x", {"k": 1}]),
    ]
    signed_in = call("a3", "Identify", 2, "ann", "v9")
    signed_in = replace(
        signed_in, call_type="identify", event_type=event_type_for("identify", "Identify")
    )
    second = [
        signed_in,
        call("a4", "Order Completed", 3, "ann", order_id="o1", revenue=59.5),
        call("b2", "Order Completed", 4, "bob", order_id="o2", revenue=12.0),
    ]
    third = [call("b2", "Order Completed", 4, "bob", order_id="o2", revenue=12.0)]
    return [first, second, third]


def rows(clickhouse: Client, database: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: sorted(
            clickhouse.query(f"SELECT {columns} FROM {database}.{table} FINAL").result_rows,
            key=repr,
        )
        for table, columns in TABLES.items()
    }


def feed_values(bootstrap: str, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
        enable_auto_commit=False,
    )
    try:
        return [record.value for record in consumer]
    finally:
        consumer.close()


def run(settings: Settings, client: Any, *, direct: bool) -> None:
    platform = platform_on(settings, client, migrate_schema=direct)
    pipeline = platform.pipeline(reads_clickhouse=direct)
    offset = 0
    batches: list[list[bytes]] = [[e.to_json() for e in events] for events in storefront()]
    try:
        while batches:
            values = batches.pop(0)
            records = [(offset + i, value) for i, value in enumerate(values)]
            offset += len(values)
            prepared = pipeline.prepare(PartitionBatch("journey.events#0", records))
            if not direct and offset == 3:
                # A worker died before this batch's commit: the partition's next owner
                # records it again (the feed carries its writes twice).
                prepared = pipeline.prepare(PartitionBatch("journey.events#0", records))
            assert prepared is not None
            pipeline.commit(prepared)
            # Identity messages (the link to the anonymous visitor, the merged history)
            # come back on the same partition, as the topic brings them.
            forwards = [m.to_json() for m in prepared.update.forwards]
            if forwards:
                batches.insert(0, forwards)
    finally:
        platform.journeys.close()


def applier(clickhouse: Client) -> ProjectionApplier:
    inserts: dict[tuple[str, tuple[str, ...]], TableInsert] = {}

    def insert(table: str, columns: list[str], rows: list[list[Any]]) -> None:
        key = (table, tuple(columns))
        inserts.setdefault(key, TableInsert(clickhouse, table, columns)).insert(rows)

    return ProjectionApplier(insert, lambda sql, p: clickhouse.command(sql, parameters=p))


def test_the_fed_projections_equal_the_direct_ones_and_applying_again_changes_nothing(
    tmp_path: Any, unique: str, broker: EmbeddedBroker, clickhouse: Client
) -> None:
    direct = platform_settings(tmp_path / "direct", f"d{unique}", broker.bootstrap_servers)
    fed = platform_settings(
        tmp_path / "fed", f"f{unique}", broker.bootstrap_servers, journey_workers=2
    )
    ensure_topics(broker.bootstrap_servers, [fed.projections_topic], 1, 1)
    run(direct, clickhouse, direct=True)
    recorder = ProjectionRecorder(broker.bootstrap_servers, fed.projections_topic)
    run(fed, recorder, direct=False)
    with pytest.raises(ProjectionsElsewhere):
        recorder.query("SELECT 1")
    recorder.close()

    migrate(clickhouse, fed.clickhouse_database)
    assert rows(clickhouse, fed.clickhouse_database)["events"] == []
    values = feed_values(broker.bootstrap_servers, fed.projections_topic)
    assert values, "the worker's writes are on the topic"
    inserted = applier(clickhouse).apply(values)
    assert inserted > 0
    expected = rows(clickhouse, direct.clickhouse_database)
    assert expected["events"] and expected["customer_orders"] and expected["stage_changes"]
    # The anonymous visitor's events moved to ann by the merge (a command on the feed).
    assert {r[0] for r in expected["events"]} == {"ann", "bob"}
    assert rows(clickhouse, fed.clickhouse_database) == expected
    # The node died before it saved its position: the whole feed is applied again.
    applier(clickhouse).apply(values)
    assert rows(clickhouse, fed.clickhouse_database) == expected


def test_a_large_insert_is_split_into_records_under_the_size_limit() -> None:
    columns = ["customer_key", "properties", "at"]
    big = [[f"c{i}", {"k": "x" * 500}, T0] for i in range(4000)]
    values = encode_insert("db.events", columns, big)
    assert len(values) > 1
    assert all(len(v) <= 900_000 for v in values)
    seen: list[list[Any]] = []
    ProjectionApplier(lambda _t, _c, r: seen.extend(r), lambda *_: None).apply(values)
    assert seen == big
    # Tuples, dates and dicts keep their types (ClickHouse parameters tell them apart).
    carried: list[tuple[str, dict[str, Any]]] = []
    recorded = ProjectionApplier(lambda *_: None, lambda sql, p: carried.append((sql, p)))
    params = {"rows": [("a", 1, T0.date())], "m": {"$t": "not a tag"}}
    recorded.apply([encode_command("DELETE …", params)])
    assert carried == [("DELETE …", params)]
