"""The ClickHouse event log: every recorded event and stage change, for analysis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from events import TrackedEvent
from journeys.domainmodel import StageChange
from journeys.funnels import Funnel
from projections.clickhouse import TableInsert

# The e-commerce fields with a column of their own, by kind. A property of
# the wrong kind (a price that is not a number) stays in ``properties``.
STRING_FIELDS = (
    "product_id",
    "sku",
    "category",
    "brand",
    "cart_id",
    "order_id",
    "currency",
    "coupon",
)
FLOAT_FIELDS = ("price", "revenue")
INT_FIELDS = ("quantity",)
TYPED_FIELDS = STRING_FIELDS + FLOAT_FIELDS + INT_FIELDS

_EVENT_COLUMNS = [
    "event_id",
    "customer_key",
    "user_id",
    "anonymous_id",
    "call_type",
    "event_type",
    "event_name",
    "timestamp",
    "received_at",
    *TYPED_FIELDS,
    "properties",
    # Migration 7: the write key's id (part of the dedup key), imported, clamped.
    "source",
    "historical",
    "clamped",
]
_STAGE_CHANGE_COLUMNS = [
    "customer_key",
    "stage",
    "previous_stage",
    "reason",
    "event_id",
    "at",
    # Migration 10: the journey's stage-history revision; reads keep the newest.
    "revision",
]


def split_properties(properties: dict[str, Any]) -> tuple[list[Any], dict[str, str]]:
    """Typed column values (in ``TYPED_FIELDS`` order) and the rest as JSON text per key.

    Deterministic: the same properties always give the same row, which is what
    lets a re-sent event collapse onto the first copy.
    """
    if _TYPED.isdisjoint(properties):
        # No e-commerce field (page views, identify calls): every column empty.
        return list(_NO_TYPED), {key: _json(value) for key, value in properties.items()}
    rest = {key: value for key, value in properties.items() if key not in _TYPED}
    typed: list[Any] = []
    for name in STRING_FIELDS:
        value = properties.get(name)
        if value is None:
            typed.append("")
        elif type(value) is str:
            typed.append(value)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            typed.append(str(value))
        else:
            typed.append("")
            rest[name] = value
    for name in FLOAT_FIELDS:
        typed.append(_number(properties, name, float, rest))
    for name in INT_FIELDS:
        typed.append(_number(properties, name, int, rest))
    return typed, {key: _json(value) for key, value in rest.items()}


# A set for the membership test per property; the columns of properties without any.
_TYPED = frozenset(TYPED_FIELDS)
_NO_TYPED: list[Any] = [""] * len(STRING_FIELDS) + [None] * (len(FLOAT_FIELDS) + len(INT_FIELDS))


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _number(properties: dict[str, Any], name: str, kind: type, rest: dict[str, Any]) -> Any:
    value = properties.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        rest[name] = value
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        rest[name] = value
        return None
    if kind is int and isinstance(value, float) and value != number:
        rest[name] = value  # 1.5 items is not a quantity; keep it as sent
        return None
    return number


class EventLog:
    """Appends to and queries the ``events`` and ``stage_changes`` tables."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._db = database
        self._events = TableInsert(client, f"{database}.events", _EVENT_COLUMNS)
        self._stage_changes = TableInsert(
            client, f"{database}.stage_changes", _STAGE_CHANGE_COLUMNS
        )

    @property
    def client(self) -> Client:
        """The ClickHouse client the log writes through (analysis queries share it)."""
        return self._client

    @property
    def database(self) -> str:
        """The database holding ``events`` and ``stage_changes``."""
        return self._db

    def append(self, events: Sequence[TrackedEvent]) -> None:
        """Insert events; re-inserting the same event leaves one row (see migrations).

        One row per (customer, time, messageId, source): two sources' events
        with one messageId are two rows.
        """
        if not events:
            return
        rows = []
        for e in events:
            typed, rest = split_properties(e.properties)
            rows.append(
                [
                    e.event_id,
                    e.customer_key,
                    e.user_id or "",
                    e.anonymous_id or "",
                    e.call_type,
                    e.event_type.value,
                    e.event_name,
                    e.timestamp,
                    e.received_at,
                    *typed,
                    rest,
                    e.source,
                    e.historical,
                    e.timestamp_clamped,
                ]
            )
        self._events.insert(rows)

    def merge_identities(self, merges: Sequence[tuple[str, str]]) -> None:
        """Move each anonymous key's events to the customer it merged into: one person.

        ``merges`` holds (anonymous key, customer key) pairs, as the journeys
        decide them. The anonymous rows are copied under the customer (the
        materialized views append them to the customer's per-customer arrays)
        and deleted from ``events``; the anonymous key's arrays are marked
        merged, and the funnels skip them. Repeating it is harmless: the
        copies collapse under ``FINAL`` onto the first ones (the sort key
        holds the customer, time, event id and source), the arrays gain
        copies no funnel answer depends on (see analytics/funnels.py), and
        once the anonymous rows are gone there is nothing left to move. Only
        the anonymous key's own worker writes rows under that key, and it
        calls this after logging its batch, so no anonymous row arrives later
        (events for a merged key are forwarded to the customer).
        """
        if not merges:
            return
        params = {"anon": [a for a, _ in merges], "into": [c for _, c in merges]}
        columns = ", ".join(_EVENT_COLUMNS)
        moved = ", ".join(
            "transform(customer_key, {anon:Array(String)}, {into:Array(String)}, customer_key)"
            if c == "customer_key"
            else c
            for c in _EVENT_COLUMNS
        )
        self._client.command(
            f"INSERT INTO {self._db}.events ({columns}) SELECT {moved} "
            f"FROM {self._db}.events FINAL WHERE customer_key IN {{anon:Array(String)}}",
            parameters=params,
        )
        # The anonymous keys' per-customer arrays stay, marked merged (migration 8):
        # that table kind has no cheap delete, and the funnels skip merged keys.
        for table in ("customer_timelines", "customer_type_times"):
            self._client.command(
                f"INSERT INTO {self._db}.{table} (customer_key, merged) "
                "SELECT arrayJoin({anon:Array(String)}), 1",
                parameters={"anon": params["anon"]},
            )
        # A patch-part delete (migration 8): a small part masking the rows, applied
        # on read until merges drop them; a mutation over every part of a 10M-row
        # log took seconds. A crash part-way is repaired by the replay.
        self._client.command(
            f"DELETE FROM {self._db}.events WHERE customer_key IN {{anon:Array(String)}}",
            parameters={"anon": params["anon"]},
            settings={"lightweight_delete_mode": "lightweight_update"},
        )

    def append_stage_changes(self, changes: Sequence[StageChange]) -> None:
        """Insert stage transitions; idempotent like :meth:`append`."""
        if not changes:
            return
        rows = [
            [
                c.customer_key,
                c.stage.value,
                c.previous.value if c.previous else "",
                c.reason,
                c.at_event_id,
                c.at,
                c.revision,
            ]
            for c in changes
        ]
        self.append_stage_rows(rows)

    def append_stage_rows(self, rows: Sequence[list[Any]]) -> None:
        """Insert stage-change rows as they are stored (a replay's), in the columns'
        order: customer, stage, previous stage, reason, event id, time, revision."""
        if rows:
            self._stage_changes.insert(rows)

    def event_count(self, customer_key: str | None = None) -> int:
        """Distinct events in the log, for one customer or all."""
        where, params = "", {}
        if customer_key is not None:
            where, params = "WHERE customer_key = {customer:String}", {"customer": customer_key}
        result = self._client.query(
            f"SELECT count() FROM {self._db}.events FINAL {where}", parameters=params
        )
        return int(result.result_rows[0][0])

    def received_since(self, seconds: int) -> int:
        """Distinct events received in the last ``seconds`` seconds (the ingest rate)."""
        result = self._client.query(
            f"SELECT count() FROM {self._db}.events FINAL "
            "WHERE received_at >= now64(3) - toIntervalSecond({seconds:UInt32})",
            parameters={"seconds": seconds},
        )
        return int(result.result_rows[0][0])

    def funnel_counts(self, funnel: Funnel) -> list[int]:
        """Customers reaching each step, in order, within the window (ClickHouse windowFunnel)."""
        params: dict[str, Any] = {"window_ms": int(funnel.window.total_seconds() * 1000)}
        conditions = []
        for index, step in enumerate(funnel.steps):
            name = f"s{index}"
            if step.event_type is not None:
                conditions.append(f"event_type = {{{name}:String}}")
                params[name] = step.event_type.value
            else:
                conditions.append(f"event_name = {{{name}:String}}")
                params[name] = step.event_name
        reached = ", ".join(f"countIf(level >= {i + 1})" for i in range(len(funnel.steps)))
        sql = f"""
            SELECT {reached}
            FROM (
                SELECT customer_key,
                       windowFunnel({{window_ms:UInt64}})(
                           toUInt64(toUnixTimestamp64Milli(timestamp)), {", ".join(conditions)}
                       ) AS level
                FROM {self._db}.events FINAL
                WHERE {" OR ".join(f"({c})" for c in conditions)}
                GROUP BY customer_key
            )
        """
        row = self._client.query(sql, parameters=params).result_rows[0]
        return [int(value) for value in row]
