"""The SQLite event store's recorder, inserting a commit's events with one ``executemany``.

The library's SQLite application recorder runs one ``INSERT`` per domain event
to read each row's notification id (``lastrowid``): with the Python loop around
it, a tenth of the journey pipeline's commit (docs/performance.md). This one
inserts the events and the tracking record in the same transaction, as the
library does, with one ``executemany``, then reads the notification ids back:

- the table is a rowid table without AUTOINCREMENT, so SQLite gives each new
  row the largest rowid so far plus one (https://sqlite.org/autoinc.html): the
  rows inserted in one statement, under the write lock the first of them took,
  have consecutive rowids ending at the table's largest;
- that is checked on the first of them (one lookup by rowid); if it does not
  hold (the largest rowid was ever the 64-bit maximum and SQLite picked rowids
  at random), each event's rowid is read by its primary key.

The stored rows, the tracking records and the notification ids are the
library's; ``select_notifications`` and ``max_tracking_id`` are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent, Tracking
from eventsourcing.sqlite import SQLiteCursor, SQLiteProcessRecorder


class BatchSQLiteProcessRecorder(SQLiteProcessRecorder):
    """The library's SQLite process recorder, with a commit's events inserted in one statement."""

    def _insert_events(
        self,
        c: SQLiteCursor,
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> Sequence[int] | None:
        """Insert the events (one ``executemany``), then the tracking record; their ids."""
        ids: list[int] = []
        if stored_events:
            rows = [
                (_hex(s.originator_id), s.originator_version, s.topic, s.state)
                for s in stored_events
            ]
            c.executemany(self.insert_events_statement, rows)
            ids = self._notification_ids(c, rows)
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is not None:
            self._insert_tracking(c, tracking)
        return ids

    def _notification_ids(self, c: SQLiteCursor, rows: list[tuple[Any, ...]]) -> list[int]:
        table = self.events_table_name
        last = self._max_notification_id(c)
        first = last - len(rows) + 1
        c.execute(f"SELECT originator_id, originator_version FROM {table} WHERE rowid=?", (first,))
        found = c.fetchone()
        if found is not None and tuple(found) == rows[0][:2]:
            return list(range(first, last + 1))
        ids = []
        for row in rows:
            c.execute(
                f"SELECT rowid FROM {table} WHERE originator_id=? AND originator_version=?",
                row[:2],
            )
            ids.append(c.fetchone()[0])
        return ids


def _hex(originator_id: UUID | str) -> str:
    return originator_id.hex if isinstance(originator_id, UUID) else originator_id


# The topic the library's factory resolves (its PROCESS_RECORDER_TOPIC setting).
RECORDER_TOPIC = f"{__name__}:{BatchSQLiteProcessRecorder.__qualname__}"
