"""The stage projection: each customer's current stage, their orders, and stages as of a moment."""

from __future__ import annotations

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
    batch twice (after a crash) leaves the same answer.
    """

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._db = database
        self._table = f"{database}.customer_stages"
        self._stages = TableInsert(client, self._table, _COLUMNS)
        self._orders = TableInsert(
            client, f"{database}.customer_orders", ["customer_key", "order_id", "at", "revenue"]
        )

    def upsert(self, summaries: Iterable[dict[str, Any]]) -> None:
        """Write the current state of each journey (``CustomerJourney.summary()``)."""
        self._stages.insert([[s[column] for column in _COLUMNS] for s in summaries if s["stage"]])

    def append_orders(self, orders: Iterable[tuple[str, Touch]]) -> None:
        """Record orders (customer, touch); the same order written again collapses."""
        # Without an order id, the event (its messageId within its source) is the order.
        self._orders.insert(
            [[key, t.order_id or t.dedup_keys[0], t.at, t.revenue] for key, t in orders]
        )

    def get(self, customer_key: str) -> CustomerStage | None:
        """The customer's row, or None if the customer was never seen."""
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
