"""Customers' histories from the ClickHouse event log, for backfilling segments (issue 17).

A backfill walks each partition's customers in key order, a chunk at a time:
ClickHouse lists many chunks' worth of a partition's next keys after a cursor
at once (the partition computed in SQL: ``kafkaMurmurHash`` is the producers'
murmur2), and hands the events of a key range, ``cursor < customer_key <=
last``, in event-time order, as the segment evaluator reads them (name, type,
time, properties: the typed e-commerce columns and the rest, decoded). Both
are bounded by the primary key (``customer_key`` leads it), so their cost
follows the range read, not the table's size.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from journeys.segment_state import SegmentEvent
from projections.event_log import STRING_FIELDS, TYPED_FIELDS

# The partition of the events topic a key lands on (streams.journal.partition_of).
_PARTITION = "bitAnd(kafkaMurmurHash(customer_key), 2147483647) % {partitions:UInt32}"


class SegmentHistory:
    """The event log read per customer."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._db = database

    def customer_count(self) -> int:
        """How many customers the event log holds."""
        result = self._client.query(f"SELECT uniqExact(customer_key) FROM {self._db}.events")
        return int(result.result_rows[0][0])

    def partition_keys(self, partition: int, partitions: int, cursor: str, limit: int) -> list[str]:
        """The next ``limit`` customer keys of ``partition`` after ``cursor``, in key order."""
        result = self._client.query(
            f"SELECT customer_key FROM {self._db}.events"
            f" WHERE customer_key > {{cursor:String}} AND {_PARTITION} = {{partition:UInt32}}"
            " GROUP BY customer_key ORDER BY customer_key LIMIT {limit:UInt32}",
            parameters={
                "cursor": cursor,
                "partition": partition,
                "partitions": partitions,
                "limit": limit,
            },
        )
        return [row[0] for row in result.result_rows]

    def partition_histories(
        self,
        partition: int,
        partitions: int,
        after: str,
        through: str | None,
        properties: Collection[str] | None = None,
    ) -> tuple[dict[str, list[SegmentEvent]], dict[str, int]]:
        """As :meth:`histories`, for the keys of ``partition`` in ``(after, through]``.

        ``through`` None: every key after ``after``. ``properties``: only these are
        read (those the evaluator reads; None: all).
        """
        bound = "" if through is None else " AND customer_key <= {through:String}"
        return self._read(
            f"customer_key > {{after:String}}{bound} AND {_PARTITION} = {{partition:UInt32}}",
            {
                "after": after,
                "through": through or "",
                "partition": partition,
                "partitions": partitions,
            },
            {},
            properties,
        )

    def events_of(self, customer_keys: Sequence[str]) -> dict[str, list[SegmentEvent]]:
        """Each customer's events (one row per event: FINAL), oldest first."""
        return self.histories(customer_keys)[0]

    def histories(
        self, customer_keys: Sequence[str]
    ) -> tuple[dict[str, list[SegmentEvent]], dict[str, int]]:
        """As :meth:`events_of`, and each event's arrival (epoch ms) by event id."""
        if not customer_keys:
            return {}, {}
        return self._read(
            "customer_key IN {keys:Array(String)}",
            {"keys": list(customer_keys)},
            {key: [] for key in customer_keys},
        )

    def _read(
        self,
        where: str,
        parameters: dict[str, Any],
        found: dict[str, list[SegmentEvent]],
        properties: Collection[str] | None = None,
    ) -> tuple[dict[str, list[SegmentEvent]], dict[str, int]]:
        # Only the columns and JSON keys asked for: fetching and decoding the rest
        # was most of a backfill's read (a property may also sit in the JSON when
        # its value does not fit its typed column, so both are filtered).
        typed = [n for n in TYPED_FIELDS if properties is None or n in properties]
        absent = [_ABSENT[n] for n in typed]
        columns = "".join(f" {n}," for n in typed)
        if properties is None:
            rest = " properties,"
        elif properties:
            rest = " mapFilter((k, v) -> has({wanted:Array(String)}, k), properties),"
            parameters = {**parameters, "wanted": sorted(properties)}
        else:
            rest = ""
        result = self._client.query(
            "SELECT customer_key, event_id, event_name, event_type,"
            f" toUnixTimestamp64Milli(timestamp),{columns}{rest}"
            " toUnixTimestamp64Milli(received_at)"
            f" FROM {self._db}.events FINAL WHERE {where}"
            " ORDER BY customer_key, timestamp, event_id",
            parameters=parameters,
        )
        received: dict[str, int] = {}
        typed_end = 5 + len(typed)
        for row in result.result_rows:
            key, event_id = row[0], row[1]
            received[event_id] = row[-1]
            # Absent typed properties: empty strings and NULL numbers; the rest is JSON text.
            found_properties = {
                name: value
                for name, value, none in zip(typed, row[5:typed_end], absent, strict=True)
                if value != none
            }
            if rest and (text := row[-2]):
                found_properties.update(_decoded(text))
            event = SegmentEvent(event_id, row[4], row[2], row[3], found_properties)
            events = found.get(key)
            if events is None:
                found[key] = [event]
            else:
                events.append(event)
        return found, received


# What an absent typed property reads as (projections.event_log.split_properties).
_ABSENT = {name: "" if name in STRING_FIELDS else None for name in TYPED_FIELDS}


def _decoded(rest: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, text in rest.items():
        try:
            found[name] = orjson.loads(text)
        except orjson.JSONDecodeError:
            found[name] = text
    return found
