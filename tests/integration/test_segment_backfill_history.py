"""The backfill's reads of the event log (projections/segment_history.py), on real chdb.

A backfill reads a partition's key ranges with the partition computed in SQL,
and decodes the typed columns back into the properties the live worker folds:
both must agree with the Python side exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from projections.event_log import EventLog
from projections.migrations import migrate
from projections.segment_history import SegmentHistory
from streams.journal import partition_of
from tests.conftest import make_event

pytestmark = pytest.mark.integration

PARTITIONS = 4
# As sent, and as the evaluator must read them back (typed columns coerce a few).
SENT: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({}, {}),
    (
        {"product_id": "p1", "category": "shoes", "price": 0.0, "quantity": 0, "revenue": 12.5},
        {"product_id": "p1", "category": "shoes", "price": 0.0, "quantity": 0, "revenue": 12.5},
    ),
    (
        {"sku": 7, "price": "3.25", "quantity": 2.0, "coupon": "", "currency": "EUR"},
        {"sku": "7", "price": 3.25, "quantity": 2, "currency": "EUR"},
    ),
    (
        {"price": "cheap", "quantity": 1.5, "brand": True, "note": {"a": [1, "x"]}, "ok": False},
        {"price": "cheap", "quantity": 1.5, "brand": True, "note": {"a": [1, "x"]}, "ok": False},
    ),
    (
        {"order_id": "o-9", "cart_id": "c-1", "tier": None},
        {"order_id": "o-9", "cart_id": "c-1", "tier": None},
    ),
]


def test_partition_reads_decode_every_property_as_the_key_lookup_does(
    clickhouse: Client, unique: str
) -> None:
    database = f"history_{unique}"
    migrate(clickhouse, database)
    keys = [f"cust-{n:03d}" for n in range(40)] + ["ünï-ç☃de", "a b"]
    events = [
        make_event(f"e{n}-{i}", key, "Product Viewed", minutes=i, **sent)
        for n, key in enumerate(keys)
        for i, (sent, _) in enumerate(SENT)
    ]
    EventLog(clickhouse, database).append(events)
    history = SegmentHistory(clickhouse, database)
    wanted = [read for _, read in SENT]

    by_key, _ = history.histories(keys)
    assert {k: [e.properties for e in by_key[k]] for k in keys} == {k: wanted for k in keys}

    seen: dict[str, list[dict[str, Any]]] = {}
    for partition in range(PARTITIONS):
        own = sorted(k for k in keys if partition_of(k.encode(), PARTITIONS) == partition)
        assert own, partition  # each partition has keys: the SQL hash is exercised
        # The SQL partition is the producers' murmur2, whatever the key's bytes.
        listed = history.partition_keys(partition, PARTITIONS, "", 1000)
        assert listed == own
        # A bounded range and an open one, split at an own key.
        middle = own[len(own) // 2]
        low, received = history.partition_histories(partition, PARTITIONS, "", middle)
        high, _ = history.partition_histories(partition, PARTITIONS, middle, None)
        assert sorted(low) == [k for k in own if k <= middle]
        assert sorted(high) == [k for k in own if k > middle]
        for key, found in {**low, **high}.items():
            assert [e.event_id for e in found] == [e.event_id for e in by_key[key]]
            assert [e.at_ms for e in found] == [e.at_ms for e in by_key[key]]
            seen[key] = [e.properties for e in found]
        assert all(e.event_id in received for found in low.values() for e in found)
    assert seen == {k: wanted for k in keys}

    # Only the properties asked for, typed or in the JSON (a value not fitting its
    # typed column is there), and none at all.
    asked = {"category", "price", "note", "absent_everywhere"}
    some, _ = history.partition_histories(0, PARTITIONS, "", None, asked)
    none, _ = history.partition_histories(0, PARTITIONS, "", None, ())
    want = [{k: v for k, v in read.items() if k in asked} for read in wanted]
    assert want[2] == {"price": 3.25} and want[3] == {"price": "cheap", "note": {"a": [1, "x"]}}
    first = sorted(k for k in keys if partition_of(k.encode(), PARTITIONS) == 0)
    assert sorted(some) == sorted(none) == first
    assert {k: [e.properties for e in v] for k, v in some.items()} == {k: want for k in first}
    assert {k: [e.properties for e in v] for k, v in none.items()} == {k: [{}] * 5 for k in first}
