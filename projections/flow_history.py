"""A flow's inputs read back from the event log, for backtests (journeys/flows/backtest.py).

Events, stage changes and segment changes are read per customer from
ClickHouse and turned into the inputs the live engine takes, keyed as the live
worker keys them (``<source>/<messageId>``, ``history/<messageId>`` for
imports), so a backtest and a live run of one history decide alike. Only
customers with an input that can start a run inside the window are read:
those with an event of an entry node's name or type (property filters are the
engine's), an entry stage reached, or an entry segment entered or exited.

What the event log does not hold, a backtest cannot know: ``context`` is not
logged, so a customer's time zone for quiet hours comes from the ``timezone``
property or identify trait only (UTC otherwise); typed e-commerce columns read
back as the log stores them (``product_id`` 7 comes back as "7").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from events.envelope import HISTORY_SCOPE, scoped_dedup_keys
from journeys.flows.conditions import EventTrigger, SegmentTrigger, StageTrigger
from journeys.flows.definitions import FlowDefinition
from journeys.flows.inputs import FlowInput, SegmentInput, StageInput, TrackedInput
from projections.customer_stages import current_stage_changes
from projections.event_log import FLOAT_FIELDS, INT_FIELDS, STRING_FIELDS

# Customers read per query: their whole window of events is held at once.
CUSTOMERS_PER_READ = 500
_TYPED = (*STRING_FIELDS, *FLOAT_FIELDS, *INT_FIELDS)


class FlowHistory:
    """Reads a flow's candidates and their inputs from one database's event log."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._db = database

    def candidates(self, flow: FlowDefinition, start_ms: int, end_ms: int) -> list[str]:
        """Customers with an input in ``[start, end)`` that may start a run, sorted."""
        window = {"start": start_ms, "end": end_ms}
        found: set[str] = set()
        for entry in flow.entries:
            trigger = entry.trigger
            if isinstance(trigger, EventTrigger):
                column, value = (
                    ("lower(trimBoth(event_name))", trigger.match.name)
                    if trigger.match.name
                    else ("event_type", trigger.match.type)
                )
                sql = (
                    f"SELECT DISTINCT customer_key FROM {self._db}.events FINAL "
                    f"WHERE {column} = {{value:String}} AND {_WINDOW}"
                )
                found |= self._keys(sql, {**window, "value": value})
            elif isinstance(trigger, StageTrigger):
                sql = (
                    f"SELECT DISTINCT customer_key FROM {current_stage_changes(self._db)} "
                    f"WHERE stage IN {{stages:Array(String)}} AND {_AT_WINDOW}"
                )
                found |= self._keys(sql, {**window, "stages": sorted(trigger.stages)})
            elif isinstance(trigger, SegmentTrigger):
                sql = (
                    f"SELECT DISTINCT customer_key FROM {self._db}.segment_changes FINAL "
                    "WHERE segment = {segment:String} AND entered = {entered:UInt8} AND "
                    + _AT_WINDOW
                )
                params = {**window, "segment": trigger.segment, "entered": int(trigger.entered)}
                found |= self._keys(sql, params)
        return sorted(found)

    def histories(
        self, customers: Sequence[str], start_ms: int, end_ms: int
    ) -> Iterator[tuple[str, list[FlowInput]]]:
        """Each customer's inputs before ``end``; those before ``start`` marked historical.

        Before the window only what the flow remembers about a customer is read
        (identify traits, consent events, stage and segment changes), not every event.
        """
        for first in range(0, len(customers), CUSTOMERS_PER_READ):
            chunk = list(customers[first : first + CUSTOMERS_PER_READ])
            found: dict[str, list[FlowInput]] = defaultdict(list)
            for key, item in self._events(chunk, start_ms, end_ms):
                found[key].append(item)
            for key, item in self._stages(chunk, start_ms, end_ms):
                found[key].append(item)
            for key, item in self._segments(chunk, start_ms, end_ms):
                found[key].append(item)
            for key in chunk:
                yield key, found.get(key, [])

    def _keys(self, sql: str, params: dict[str, Any]) -> set[str]:
        return {row[0] for row in self._client.query(sql, parameters=params).result_rows}

    def _events(
        self, customers: list[str], start_ms: int, end_ms: int
    ) -> Iterator[tuple[str, FlowInput]]:
        columns = ", ".join(_TYPED)
        sql = f"""
            SELECT customer_key, event_id, source, event_type, event_name,
                   toUnixTimestamp64Milli(timestamp), historical, properties, {columns}
            FROM {self._db}.events FINAL
            WHERE customer_key IN {{customers:Array(String)}}
              AND timestamp < fromUnixTimestamp64Milli({{end:Int64}})
              AND (timestamp >= fromUnixTimestamp64Milli({{start:Int64}})
                   OR event_type = 'identify'
                   OR lower(trimBoth(event_name)) IN ('subscribed', 'unsubscribed'))
        """
        params = {"customers": customers, "start": start_ms, "end": end_ms}
        for row in self._client.query(sql, parameters=params).result_rows:
            key, event_id, source, kind, name, at_ms, historical, rest = row[:8]
            properties: dict[str, Any] = {}
            for prop, text in rest.items():
                try:
                    properties[prop] = orjson.loads(text)
                except orjson.JSONDecodeError:
                    properties[prop] = text
            for prop, value in zip(_TYPED, row[8:], strict=True):
                if value is not None and value != "":
                    properties[prop] = value
            before = at_ms < start_ms
            scope = HISTORY_SCOPE if historical else source
            zone = properties.get("timezone")
            yield (
                key,
                TrackedInput(
                    event_id=scoped_dedup_keys(scope, event_id)[0],
                    at_ms=int(at_ms),
                    name=name.strip().lower(),
                    type=kind,
                    properties=properties,
                    historical=bool(historical) or before,
                    timezone=zone if isinstance(zone, str) else "",
                ),
            )

    def _stages(
        self, customers: list[str], start_ms: int, end_ms: int
    ) -> Iterator[tuple[str, FlowInput]]:
        sql = (
            f"SELECT customer_key, event_id, stage, toUnixTimestamp64Milli(at) "
            f"FROM {current_stage_changes(self._db)} "
            "WHERE customer_key IN {customers:Array(String)} "
            "AND at < fromUnixTimestamp64Milli({end:Int64})"
        )
        params = {"customers": customers, "end": end_ms}
        for key, event_id, stage, at_ms in self._client.query(sql, parameters=params).result_rows:
            yield key, StageInput(event_id, int(at_ms), stage, historical=at_ms < start_ms)

    def _segments(
        self, customers: list[str], start_ms: int, end_ms: int
    ) -> Iterator[tuple[str, FlowInput]]:
        sql = (
            f"SELECT customer_key, event_id, segment, entered, toUnixTimestamp64Milli(at) "
            f"FROM {self._db}.segment_changes FINAL "
            "WHERE customer_key IN {customers:Array(String)} "
            "AND at < fromUnixTimestamp64Milli({end:Int64})"
        )
        params = {"customers": customers, "end": end_ms}
        for row in self._client.query(sql, parameters=params).result_rows:
            key, event_id, segment, entered, at_ms = row
            yield (
                key,
                SegmentInput(event_id, int(at_ms), segment, bool(entered), at_ms < start_ms),
            )


_WINDOW = (
    "timestamp >= fromUnixTimestamp64Milli({start:Int64}) "
    "AND timestamp < fromUnixTimestamp64Milli({end:Int64})"
)
_AT_WINDOW = _WINDOW.replace("timestamp", "at")
