"""The SQLite recorder that inserts a commit's events in one statement, on a real SQLite file.

Its notification ids, tracking records and stored rows must be the library's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking
from eventsourcing.sqlite import SQLiteFactory, SQLiteProcessRecorder

from stack.sqlite_recorder import RECORDER_TOPIC, BatchSQLiteProcessRecorder

pytestmark = pytest.mark.integration


def _recorder(path: Path, topic: str = RECORDER_TOPIC) -> SQLiteProcessRecorder:
    env = {"SQLITE_DBNAME": str(path), "PROCESS_RECORDER_TOPIC": topic}
    recorder = SQLiteFactory(env).process_recorder()
    assert isinstance(recorder, SQLiteProcessRecorder)
    return recorder


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[SQLiteProcessRecorder]:
    """The batch recorder on a fresh SQLite file."""
    found = _recorder(tmp_path / "events.db")
    assert isinstance(found, BatchSQLiteProcessRecorder)
    yield found
    found.datastore.close()


def _events(count: int, first_version: int = 1) -> list[StoredEvent]:
    journey = uuid4()
    return [
        StoredEvent(journey, first_version + n, "journeys.domainmodel:E", f"{n}".encode())
        for n in range(count)
    ]


def test_notification_ids_are_those_select_notifications_reads(
    recorder: SQLiteProcessRecorder,
) -> None:
    first = recorder.insert_events(_events(3), tracking=Tracking("topic#0", 10))
    second = recorder.insert_events(_events(2) + _events(2), tracking=Tracking("topic#0", 14))
    assert first == [1, 2, 3]
    assert second == [4, 5, 6, 7]
    notifications = recorder.select_notifications(start=1, limit=10)
    assert [n.id for n in notifications] == [1, 2, 3, 4, 5, 6, 7]
    assert [n.state for n in notifications] == [b"0", b"1", b"2", b"0", b"1", b"0", b"1"]
    assert recorder.max_tracking_id("topic#0") == 14


def test_rows_and_ids_match_the_library_recorder(tmp_path: Path) -> None:
    library = _recorder(tmp_path / "library.db", topic="eventsourcing.sqlite:SQLiteProcessRecorder")
    batched = _recorder(tmp_path / "batched.db")
    assert type(library) is SQLiteProcessRecorder
    batches = [_events(5), _events(1), _events(40, first_version=7)]
    for number, batch in enumerate(batches):
        tracking = Tracking("topic#1", number + 1)
        assert batched.insert_events(batch, tracking=tracking) == library.insert_events(
            batch, tracking=tracking
        )
    assert batched.select_notifications(start=1, limit=100) == library.select_notifications(
        start=1, limit=100
    )
    assert batched.max_tracking_id("topic#1") == library.max_tracking_id("topic#1") == 3
    library.datastore.close()
    batched.datastore.close()


def test_a_conflicting_version_stores_nothing_of_the_commit(
    recorder: SQLiteProcessRecorder,
) -> None:
    events = _events(2)
    recorder.insert_events(events, tracking=Tracking("topic#0", 1))
    with pytest.raises(IntegrityError):
        recorder.insert_events(_events(3) + events[1:], tracking=Tracking("topic#0", 2))
    assert len(recorder.select_notifications(start=1, limit=10)) == 2
    assert recorder.max_tracking_id("topic#0") == 1


def test_ids_are_read_back_when_sqlite_picks_rowids_at_random(
    recorder: SQLiteProcessRecorder,
) -> None:
    # At the largest 64-bit rowid SQLite picks new rowids at random: not consecutive.
    with recorder.datastore.transaction(commit=True) as cursor:
        cursor.execute(
            f"INSERT INTO {recorder.events_table_name} (rowid, originator_id, "
            "originator_version, topic, state) VALUES (?, ?, 1, 't', x'00')",
            (2**63 - 1, uuid4().hex),
        )
    ids = recorder.insert_events(_events(4), tracking=Tracking("topic#0", 1))
    assert ids is not None
    stored = recorder.select_notifications(start=None, limit=10)
    by_id = {n.id: n.state for n in stored}
    assert [by_id[i] for i in ids] == [b"0", b"1", b"2", b"3"]
