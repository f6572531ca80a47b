"""The stage projection: each customer's current stage, their orders, and stages as of a moment."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from journeys.stages import JOURNEY_STAGES, Stage
from journeys.touches import Touch
from projections.clickhouse import TableInsert, as_utc

_COLUMNS = [
    "customer_key",
    "stage",
    "stage_since",
    "event_count",
    "orders",
    "first_seen",
    "last_seen",
    "last_order_at",
    "merged_into",
    "absorbed_keys",
    "version",
]


@dataclass(frozen=True, slots=True)
class CustomerStage:
    """A customer's row of the stage projection."""

    customer_key: str
    stage: str
    stage_since: datetime
    event_count: int
    orders: int
    first_seen: datetime
    last_seen: datetime
    last_order_at: datetime | None
    merged_into: str
    absorbed_keys: list[str]
    version: int

    def stage_at(self, moment: datetime, lapse_days: int) -> str:
        """The stage at ``moment`` (after this row's last event): loyalty may have lapsed."""
        if (
            self.stage == Stage.LOYALTY
            and self.last_order_at is not None
            and moment > self.last_order_at + timedelta(days=lapse_days)
        ):
            return Stage.LAPSED.value
        return self.stage


class StagesInFlight:
    """Rows decided by the worker of this process and not yet in ClickHouse (bounded, LRU).

    The journey batch holds its customers' rows here as soon as the journeys have
    recorded their events, before its ClickHouse inserts (most of a batch's
    time) and its commit; the rows leave once the insert that carries them
    returns. A held row is what a replay of the batch decides again (a journey
    is a function of its stored events and the partition's records in order), so
    serving it early shows no stage a crash could take back. Thread-safe: the
    batch runs in a worker thread, readers in the API's threads.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._rows: OrderedDict[str, CustomerStage] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def hold(self, rows: Iterable[CustomerStage]) -> None:
        """Serve ``rows`` until ClickHouse has them (the oldest go past ``maxsize``)."""
        with self._lock:
            for row in rows:
                self._rows[row.customer_key] = row
                self._rows.move_to_end(row.customer_key)
            while len(self._rows) > self.maxsize:
                self._rows.popitem(last=False)

    def landed(self, rows: Iterable[CustomerStage]) -> None:
        """``rows`` are in ClickHouse: drop each held row no newer than them."""
        with self._lock:
            for row in rows:
                held = self._rows.get(row.customer_key)
                if held is not None and held.version <= row.version:
                    del self._rows[row.customer_key]

    def forget(self, customer_keys: Iterable[str]) -> None:
        """Drop the keys' rows (an erasure)."""
        with self._lock:
            for key in customer_keys:
                self._rows.pop(key, None)

    def newer(self, customer_key: str, stored: CustomerStage | None) -> CustomerStage | None:
        """The held row of ``customer_key`` if it is newer than ``stored``, else ``stored``."""
        with self._lock:
            held = self._rows.get(customer_key)
        if held is not None and (stored is None or held.version > stored.version):
            return held
        return stored


def _row(summary: dict[str, Any]) -> CustomerStage:
    return CustomerStage(**{column: summary[column] for column in _COLUMNS})


def current_stage_changes(database: str) -> str:
    """``stage_changes`` as a subquery of only each customer's newest revision.

    A revised stage history is written whole under a higher revision; the rows
    of earlier revisions that it no longer holds are superseded by it.
    """
    table = f"{database}.stage_changes"
    return (
        f"(SELECT * FROM {table} FINAL WHERE (customer_key, revision) IN "
        f"(SELECT customer_key, max(revision) FROM {table} GROUP BY customer_key))"
    )


class CustomerStageView:
    """Reads and writes ``customer_stages`` and ``customer_orders``.

    Rows carry absolute state taken from the aggregate, so writing the same
    batch twice (after a crash) leaves the same answer. With ``in_flight`` (the
    node, whose API shares this object with the worker) the current row of a
    customer is served from the worker's decision while its insert is under way.
    """

    def __init__(
        self, client: Client, database: str, in_flight: StagesInFlight | None = None
    ) -> None:
        self.in_flight = in_flight
        self._client = client
        self._db = database
        self._table = f"{database}.customer_stages"
        self._stages = TableInsert(client, self._table, _COLUMNS)
        self._orders = TableInsert(
            client, f"{database}.customer_orders", ["customer_key", "order_id", "at", "revenue"]
        )

    def hold(self, summaries: Iterable[dict[str, Any]]) -> None:
        """Serve these journeys' rows now, ahead of their ``upsert`` (no-op without in_flight)."""
        if self.in_flight is not None:
            self.in_flight.hold(_row(s) for s in summaries if s["stage"])

    def upsert(self, summaries: Iterable[dict[str, Any]]) -> None:
        """Write the current state of each journey (``CustomerJourney.summary()``)."""
        rows = [[s[column] for column in _COLUMNS] for s in summaries if s["stage"]]
        self._stages.insert(rows)
        if self.in_flight is not None and rows:
            self.in_flight.landed(CustomerStage(*row) for row in rows)

    def append_orders(self, orders: Iterable[tuple[str, Touch]]) -> None:
        """Record orders (customer, touch); the same order written again collapses."""
        # Without an order id, the event (its messageId within its source) is the order.
        self._orders.insert(
            [[key, t.order_id or t.dedup_keys[0], t.at, t.revenue] for key, t in orders]
        )

    def get(self, customer_key: str, in_flight: bool = True) -> CustomerStage | None:
        """The customer's row, or None if the customer was never seen.

        The newest of ClickHouse's row and the one in flight (unless ``in_flight``
        is False: ClickHouse's alone).
        """
        stored = self._stored(customer_key)
        if in_flight and self.in_flight is not None:
            return self.in_flight.newer(customer_key, stored)
        return stored

    def _stored(self, customer_key: str) -> CustomerStage | None:
        result = self._client.query(
            f"SELECT {', '.join(_COLUMNS)} FROM {self._table} FINAL "
            "WHERE customer_key = {customer:String}",
            parameters={"customer": customer_key},
        )
        if not result.result_rows:
            return None
        row = dict(zip(_COLUMNS, result.result_rows[0], strict=True))
        for column in ("stage_since", "first_seen", "last_seen", "last_order_at"):
            if row[column] is not None:
                row[column] = as_utc(row[column])
        row["absorbed_keys"] = list(row["absorbed_keys"])
        return CustomerStage(**row)

    def stage_counts(self) -> dict[str, int]:
        """How many customers are in each stage after their last event (lapse not applied)."""
        result = self._client.query(
            f"SELECT stage, count() FROM {self._table} FINAL WHERE stage != 'merged' GROUP BY stage"
        )
        return {str(stage): int(count) for stage, count in result.result_rows}

    def stage_as_of(self, customer_key: str, moment: datetime, lapse_days: int) -> str | None:
        """The journey's stage at ``moment`` from the stage history; None before the first."""
        rows = self._stages_as_of(moment, lapse_days, customer_key)
        return rows[0][1] if rows else None

    def person_stage_as_of(
        self, customer: CustomerStage, moment: datetime, lapse_days: int
    ) -> str | None:
        """The person's stage at ``moment``: the furthest of their journey's and of the
        anonymous journeys merged into it (the aggregate's ``stage_as_of`` rule)."""
        best: Stage | None = None
        for key in [customer.customer_key, *customer.absorbed_keys]:
            found = self.stage_as_of(key, moment, lapse_days)
            if found is None or found == Stage.MERGED:
                continue
            stage = Stage(found)
            if best is None or stage.rank > best.rank:
                best = stage
        return best.value if best is not None else None

    def distribution(self, moment: datetime, lapse_days: int) -> dict[str, int]:
        """Customers per stage at ``moment`` (every journey stage listed, merged ones left out)."""
        counts = {stage.value: 0 for stage in JOURNEY_STAGES}
        for _, stage in self._stages_as_of(moment, lapse_days):
            if stage in counts:
                counts[stage] += 1
        return counts

    def _stages_as_of(
        self, moment: datetime, lapse_days: int, customer_key: str | None = None
    ) -> list[tuple[str, str]]:
        # The last stage reached by `moment`, and loyalty lapsed when the last order
        # by then is older than the lapse period: the same rule as the aggregate's.
        where = "AND customer_key = {customer:String}" if customer_key is not None else ""
        sql = f"""
            SELECT s.customer_key,
                   if(s.stage = 'loyalty' AND o.last_order IS NOT NULL
                      AND {{moment:DateTime64(3, 'UTC')}}
                          > o.last_order + toIntervalDay({{lapse:UInt32}}),
                      'lapsed', s.stage)
            FROM (
                SELECT customer_key, argMax(stage, (at, rank)) AS stage
                FROM (
                    SELECT customer_key, stage, at,
                           indexOf({{order:Array(String)}}, stage) AS rank
                    FROM {current_stage_changes(self._db)}
                    WHERE at <= {{moment:DateTime64(3, 'UTC')}} {where}
                          -- A merged anonymous journey is part of its person at every
                          -- moment: its facts are in the person's history from their
                          -- own times, so counting it too would count them twice.
                          AND customer_key NOT IN (
                              SELECT customer_key FROM {self._table} FINAL
                              WHERE stage = 'merged')
                )
                GROUP BY customer_key
            ) AS s
            LEFT JOIN (
                SELECT customer_key, toNullable(max(at)) AS last_order
                FROM {self._db}.customer_orders FINAL
                WHERE at <= {{moment:DateTime64(3, 'UTC')}} {where}
                GROUP BY customer_key
            ) AS o ON s.customer_key = o.customer_key
            SETTINGS join_use_nulls = 1
        """
        params: dict[str, Any] = {
            "moment": moment,
            "lapse": lapse_days,
            "order": [stage.value for stage in Stage],
        }
        if customer_key is not None:
            params["customer"] = customer_key
        result = self._client.query(sql, parameters=params)
        return [(str(key), str(stage)) for key, stage in result.result_rows]
