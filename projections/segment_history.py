"""Customers' histories from the ClickHouse event log, for backfilling segments (issue 17).

A backfill walks the customers in key order, a chunk at a time: ClickHouse
lists the next keys after a cursor and hands each customer's events, in
event-time order, as the segment evaluator reads them (name, type, time,
properties: the typed e-commerce columns and the rest, decoded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from journeys.segment_state import SegmentEvent
from projections.event_log import STRING_FIELDS, TYPED_FIELDS


class SegmentHistory:
    """The event log read per customer."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._db = database

    def customer_count(self) -> int:
        """How many customers the event log holds."""
        result = self._client.query(f"SELECT uniqExact(customer_key) FROM {self._db}.events")
        return int(result.result_rows[0][0])

    def customers_after(self, cursor: str, limit: int) -> list[str]:
        """The next ``limit`` customer keys after ``cursor``, in key order."""
        result = self._client.query(
            f"SELECT DISTINCT customer_key FROM {self._db}.events"
            " WHERE customer_key > {cursor:String} ORDER BY customer_key LIMIT {limit:UInt32}",
            parameters={"cursor": cursor, "limit": limit},
        )
        return [row[0] for row in result.result_rows]

    def events_of(self, customer_keys: Sequence[str]) -> dict[str, list[SegmentEvent]]:
        """Each customer's events (one row per event: FINAL), oldest first."""
        return self.histories(customer_keys)[0]

    def histories(
        self, customer_keys: Sequence[str]
    ) -> tuple[dict[str, list[SegmentEvent]], dict[str, int]]:
        """As :meth:`events_of`, and each event's arrival (epoch ms) by event id."""
        received: dict[str, int] = {}
        if not customer_keys:
            return {}, received
        columns = ", ".join(TYPED_FIELDS)
        result = self._client.query(
            "SELECT customer_key, event_id, event_name, event_type,"
            f" toUnixTimestamp64Milli(timestamp), {columns}, properties,"
            " toUnixTimestamp64Milli(received_at)"
            f" FROM {self._db}.events FINAL WHERE customer_key IN {{keys:Array(String)}}"
            " ORDER BY customer_key, timestamp, event_id",
            parameters={"keys": list(customer_keys)},
        )
        found: dict[str, list[SegmentEvent]] = {key: [] for key in customer_keys}
        for row in result.result_rows:
            key, event_id, name, kind, at_ms = row[:5]
            typed = row[5 : 5 + len(TYPED_FIELDS)]
            received[event_id] = int(row[-1])
            found[key].append(
                SegmentEvent(
                    event_id=event_id,
                    at_ms=int(at_ms),
                    name=name,
                    type=kind,
                    properties=_properties(typed, row[-2]),
                )
            )
        return found, received


def _properties(typed: Sequence[Any], rest: dict[str, str]) -> dict[str, Any]:
    # The inverse of projections.event_log.split_properties: empty strings and NULL
    # numbers were absent properties; the others are JSON text.
    found: dict[str, Any] = {}
    for name, value in zip(TYPED_FIELDS, typed, strict=True):
        absent = value == "" if name in STRING_FIELDS else value is None
        if not absent:
            found[name] = value
    for name, text in rest.items():
        try:
            found[name] = orjson.loads(text)
        except orjson.JSONDecodeError:
            found[name] = text
    return found
