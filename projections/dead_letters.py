"""Rejected events, from the dead-letter topic into ``dead_letters``, listed newest first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from projections.clickhouse import as_utc

_COLUMNS = ["id", "rejected_at", "source", "reasons", "payload"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected event (or request), with why it was rejected."""

    id: str
    rejected_at: datetime
    source: str
    reasons: list[dict[str, Any]]
    payload: str

    @property
    def cursor(self) -> str:
        """Where the next page (older letters) starts."""
        return f"{int(self.rejected_at.timestamp() * 1000)}:{self.id}"


class DeadLetterLog:
    """Appends to and pages through ``<database>.dead_letters``."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._table = f"{database}.dead_letters"

    def append(self, letters: Sequence[DeadLetter]) -> None:
        """Insert letters; the same id inserted again leaves one row (queries read FINAL)."""
        if not letters:
            return
        rows = [
            [d.id, d.rejected_at, d.source, orjson.dumps(d.reasons).decode(), d.payload]
            for d in letters
        ]
        self._client.insert(self._table, rows, column_names=_COLUMNS)

    def page(
        self, limit: int, before: str | None = None, source: str | None = None
    ) -> list[DeadLetter]:
        """Up to ``limit`` letters, newest first, older than the cursor ``before``.

        ``source`` keeps one write key's letters. Raises ValueError for a cursor
        this log did not hand out.
        """
        conditions, parameters = [], dict[str, Any]({"limit": limit})
        if source is not None:
            conditions.append("source = {source:String}")
            parameters["source"] = source
        if before is not None:
            millis, _, letter_id = before.partition(":")
            if not millis.isdigit() or not letter_id:
                raise ValueError("before must be a cursor from a previous page")
            conditions.append(
                "(toUnixTimestamp64Milli(rejected_at), id) < ({millis:Int64}, {letter_id:String})"
            )
            parameters.update({"millis": int(millis), "letter_id": letter_id})
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        result = self._client.query(
            f"SELECT {', '.join(_COLUMNS)} FROM {self._table} FINAL {where} "
            "ORDER BY rejected_at DESC, id DESC LIMIT {limit:UInt32}",
            parameters=parameters,
        )
        return [
            DeadLetter(
                id=letter_id,
                rejected_at=as_utc(rejected_at),
                source=source,
                reasons=orjson.loads(reasons),
                payload=payload,
            )
            for letter_id, rejected_at, source, reasons, payload in result.result_rows
        ]

    def count(self) -> int:
        """How many dead letters are kept."""
        return int(self._client.query(f"SELECT count() FROM {self._table} FINAL").result_rows[0][0])
