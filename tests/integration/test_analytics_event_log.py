"""The event log's writes: typed e-commerce columns, the rest kept, re-sent blocks collapse."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from clickhouse_connect.driver.client import Client

from projections import migrations
from projections.event_log import EventLog
from projections.migrations import MIGRATIONS, migrate
from tests.conftest import make_event

pytestmark = pytest.mark.integration


@pytest.fixture
def log(clickhouse: Client) -> Iterator[EventLog]:
    db = f"db_{uuid.uuid4().hex[:12]}"
    migrate(clickhouse, db)
    yield EventLog(clickhouse, db)
    clickhouse.command(f"DROP DATABASE {db}")


def test_ecommerce_fields_get_typed_columns_and_the_rest_a_map(log: EventLog) -> None:
    log.append(
        [
            make_event(
                "e1",
                "alice",
                "Product Added",
                0,
                product_id="p1",
                sku="S-1",
                category="shoes",
                brand="acme",
                price="20.5",
                quantity=2,
                cart_id="c9",
                currency="EUR",
                color="red",
                nested={"a": 1},
            ),
            make_event(
                "e2",
                "alice",
                "Order Completed",
                1,
                order_id=42,
                revenue=99,
                quantity=1.5,
                price="cheap",
                coupon=None,
            ),
        ]
    )
    rows = log.client.query(
        "SELECT event_id, product_id, sku, category, brand, price, quantity, cart_id, order_id,"
        f" revenue, currency, coupon, properties FROM {log.database}.events ORDER BY event_id"
    ).result_rows
    assert rows[0] == (
        "e1",
        "p1",
        "S-1",
        "shoes",
        "acme",
        20.5,
        2,
        "c9",
        "",
        None,
        "EUR",
        "",
        {"color": '"red"', "nested": '{"a":1}'},
    )
    # Values of the wrong kind are not lost: they stay in the map as sent.
    assert rows[1] == (
        "e2",
        "",
        "",
        "",
        "",
        None,
        None,
        "",
        "42",
        99.0,
        "",
        "",
        {"quantity": "1.5", "price": '"cheap"'},
    )


def test_a_resent_block_leaves_one_row_per_event(log: EventLog) -> None:
    block = [make_event(f"e{i}", f"c{i % 3}", "Product Viewed", i) for i in range(20)]
    for _ in range(3):
        log.append(block)
    # The same event re-sent later, received at another time: still the same event.
    log.append([replace(block[0], received_at=block[0].received_at + timedelta(hours=1))])
    table = f"{log.database}.events"
    assert log.client.query(f"SELECT count() FROM {table}").result_rows[0][0] == 61
    assert log.event_count() == 20  # read FINAL
    # And the merge really collapses them: not only FINAL's view of the table.
    log.client.command(f"OPTIMIZE TABLE {table} FINAL")
    assert log.client.query(f"SELECT count() FROM {table}").result_rows[0][0] == 20
    assert log.client.query(f"SELECT uniqExact(event_id), count() FROM {table} FINAL").result_rows[
        0
    ] == (20, 20)


def test_two_sources_reusing_a_messageid_are_two_rows_and_each_resend_collapses(
    log: EventLog,
) -> None:
    shop = replace(make_event("m-1", "alice", "Product Viewed", 0), source="shop")
    imported = replace(
        make_event("import:order:1", "alice", "Order Completed", 1),
        source="app",
        context={"historical": True},
        timestamp_clamped=True,
    )
    block = [shop, replace(shop, source="app"), imported]
    for _ in range(2):
        log.append(block)
    table = f"{log.database}.events"
    log.client.command(f"OPTIMIZE TABLE {table} FINAL")
    rows = log.client.query(
        f"SELECT event_id, source, historical, clamped FROM {table} ORDER BY event_id, source"
    ).result_rows
    assert rows == [
        ("import:order:1", "app", True, True),
        ("m-1", "app", False, False),
        ("m-1", "shop", False, False),
    ]


def test_an_existing_log_gains_the_columns_and_keeps_its_rows(
    clickhouse: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"db_{uuid.uuid4().hex[:12]}"
    try:
        # A database at version 6, with a row logged then, upgraded in place.
        with monkeypatch.context() as patch:
            patch.setattr(migrations, "MIGRATIONS", [m for m in MIGRATIONS if m[0] < 7])
            assert migrate(clickhouse, db) == 6
        old = make_event("m-0", "alice", "Product Viewed", 0)
        clickhouse.insert(
            f"{db}.events",
            [[old.event_id, "alice", old.timestamp]],
            column_names=["event_id", "customer_key", "timestamp"],
        )
        assert migrate(clickhouse, db) == max(version for version, _, _ in MIGRATIONS)
        log = EventLog(clickhouse, db)
        log.append([replace(make_event("m-1", "alice", "Product Viewed", 1), source="shop")])
        log.append([replace(make_event("m-1", "alice", "Product Viewed", 1), source="app")])
        rows = clickhouse.query(
            f"SELECT event_id, source, historical, clamped FROM {db}.events FINAL ORDER BY all"
        ).result_rows
        assert rows == [
            ("m-0", "", False, False),
            ("m-1", "app", False, False),
            ("m-1", "shop", False, False),
        ]
    finally:
        clickhouse.command(f"DROP DATABASE IF EXISTS {db}")


def test_the_timeline_view_follows_the_log(log: EventLog) -> None:
    log.append([make_event("e1", "alice", "Product Viewed", 0)])
    log.append([make_event("e2", "alice", "Order Completed", 1)])
    rows = log.client.query(
        "SELECT customer_key, length(finalizeAggregation(tk)), finalizeAggregation(names) "
        f"FROM {log.database}.customer_timelines FINAL"
    ).result_rows
    assert len(rows) == 1 and rows[0][0] == "alice" and rows[0][1] == 2
    assert sorted(rows[0][2]) == ["Order Completed", "Product Viewed"]
