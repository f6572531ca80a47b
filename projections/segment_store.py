"""Customers' segment states and the consumed positions they include, in the event store's DB.

Saved in one transaction with the position of the batch they fold in, so a
crash either keeps both or neither (docs/architecture.md, "Segments and
computed traits"); tables on SQLite or PostgreSQL (projections/sql_tables.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import orjson

from journeys.segment_state import SegmentState
from projections.sql_tables import SqlTables

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS segment_states (
        customer_key TEXT PRIMARY KEY, state TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS segment_positions (
        source TEXT PRIMARY KEY, position BIGINT NOT NULL)""",
]


class SegmentStore:
    """Per-customer :class:`SegmentState` and per-source consumed positions."""

    def __init__(self, sqlite_path: Path | None = None, postgres_dsn: str = "") -> None:
        self.tables = SqlTables(SCHEMA, sqlite_path=sqlite_path, postgres_dsn=postgres_dsn)

    def close(self) -> None:
        self.tables.close()

    def position(self, source: str) -> int:
        """The next offset of ``source`` not yet folded into the states (0: none)."""
        rows = self.tables.rows("SELECT position FROM segment_positions WHERE source = ?", [source])
        return int(rows[0][0]) if rows else 0

    def states(self, customer_keys: Iterable[str]) -> dict[str, SegmentState]:
        """The stored state of each of ``customer_keys`` that has one."""
        keys = list(dict.fromkeys(customer_keys))
        found: dict[str, SegmentState] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, text in self.tables.rows(
                f"SELECT customer_key, state FROM segment_states WHERE customer_key IN ({marks})",
                chunk,
            ):
                found[key] = SegmentState.from_dict(orjson.loads(text))
        return found

    def all_states(self) -> Iterator[tuple[str, SegmentState]]:
        """Every stored (customer, state), by customer."""
        rows = self.tables.rows("SELECT customer_key, state FROM segment_states ORDER BY 1")
        for key, text in rows:
            yield key, SegmentState.from_dict(orjson.loads(text))

    def forget_customers(self, customer_keys: Sequence[str]) -> dict[str, int]:
        """Delete the customers' states (erasure); the count deleted, by table."""
        deleted = 0
        with self.tables.transaction():
            for key in customer_keys:
                cursor = self.tables.execute(
                    "DELETE FROM segment_states WHERE customer_key = ?", [key]
                )
                deleted += max(0, cursor.rowcount)
        return {"segment_states": deleted}

    def save(self, batches: Sequence[tuple[str, int, Mapping[str, SegmentState]]]) -> None:
        """Save each (source, position, states), all atomically."""
        upsert_state = (
            "INSERT INTO segment_states (customer_key, state) VALUES (?, ?)"
            " ON CONFLICT (customer_key) DO UPDATE SET state = excluded.state"
        )
        upsert_position = (
            "INSERT INTO segment_positions (source, position) VALUES (?, ?)"
            " ON CONFLICT (source) DO UPDATE SET position = excluded.position"
        )
        with self.tables.transaction():
            for source, position, states in batches:
                for key, state in states.items():
                    text = orjson.dumps(state.to_dict()).decode()
                    self.tables.execute(upsert_state, [key, text])
                self.tables.execute(upsert_position, [source, position])
