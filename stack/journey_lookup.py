"""Which journeys the event store holds, for a whole batch in one query per store.

The pipeline asks the event store for every journey it does not hold in memory;
for a customer seen for the first time the library reads snapshots and events
(two transactions) to find nothing: a tenth of the pipeline (docs/performance.md).
One query per batch answers "which of these are stored" for all of them. The
SQL names the library's tables, so it lives here, in the composition root,
beside the choice of store; the journeys only see a function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Recorder
from eventsourcing.sqlite import SQLiteProcessRecorder

from journeys.application import StoredJourneys

# SQLite's limit on bound parameters was 999 before 3.32: stay below it.
_CHUNK = 500


def stored_journeys_query(recorder: Recorder) -> StoredJourneys | None:
    """A batch query for the store behind ``recorder``; None where lookups are cheap (memory)."""
    if isinstance(recorder, SQLiteProcessRecorder):
        return _SQLiteStoredJourneys(recorder)
    # PostgreSQL's driver is an optional extra (pyproject.toml): only its recorder brings it.
    if type(recorder).__module__ == "eventsourcing.postgres":
        return _PostgresStoredJourneys(recorder)
    return None


class _SQLiteStoredJourneys:
    """The ids with stored events in SQLite (ids are stored as hex text)."""

    def __init__(self, recorder: SQLiteProcessRecorder) -> None:
        self._recorder = recorder

    def __call__(self, ids: Sequence[UUID]) -> set[UUID]:
        found: set[UUID] = set()
        table = self._recorder.events_table_name
        for first in range(0, len(ids), _CHUNK):
            chunk = [journey_id.hex for journey_id in ids[first : first + _CHUNK]]
            marks = ",".join("?" * len(chunk))
            with self._recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(
                    f"SELECT DISTINCT originator_id FROM {table} WHERE originator_id IN ({marks})",
                    chunk,
                )
                found.update(UUID(row[0]) for row in cursor.fetchall())
        return found


class _PostgresStoredJourneys:
    """The ids with stored events in PostgreSQL (a uuid column)."""

    def __init__(self, recorder: Any) -> None:
        from psycopg.sql import SQL, Identifier

        self._recorder = recorder
        self._statement = SQL(
            "SELECT DISTINCT originator_id FROM {schema}.{table} WHERE originator_id = ANY(%s)"
        ).format(
            schema=Identifier(recorder.datastore.schema),
            table=Identifier(recorder.events_table_name),
        )

    def __call__(self, ids: Sequence[UUID]) -> set[UUID]:
        with self._recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(self._statement, (list(ids),))
            return {UUID(str(row["originator_id"])) for row in cursor.fetchall()}
