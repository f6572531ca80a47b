"""The stage projection: each customer's current stage and counters."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from projections.clickhouse import as_utc

_COLUMNS = [
    "customer_key",
    "stage",
    "stage_since",
    "event_count",
    "orders",
    "first_seen",
    "last_seen",
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
    version: int


class CustomerStageView:
    """Reads and writes ``customer_stages``; a row per customer, newest version wins.

    Rows carry absolute state taken from the aggregate, so writing the same
    batch twice (after a crash) leaves the same answer.
    """

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._table = f"{database}.customer_stages"

    def upsert(self, summaries: Iterable[dict[str, Any]]) -> None:
        """Write the current state of each journey (``CustomerJourney.summary()``)."""
        rows = [[s[column] for column in _COLUMNS] for s in summaries if s["stage"]]
        if rows:
            self._client.insert(self._table, rows, column_names=_COLUMNS)

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
        for column in ("stage_since", "first_seen", "last_seen"):
            row[column] = as_utc(row[column])
        return CustomerStage(**row)

    def stage_counts(self) -> dict[str, int]:
        """How many customers are in each stage now."""
        result = self._client.query(
            f"SELECT stage, count() FROM {self._table} FINAL GROUP BY stage"
        )
        return {str(stage): int(count) for stage, count in result.result_rows}
