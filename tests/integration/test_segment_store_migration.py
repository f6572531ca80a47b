"""A segment store made before ``started_ms`` is carried forward, on SQLite and PostgreSQL.

A backfill under way in such a store counts as started at the migration: nothing
that arrived before this version ran is taken as a live entry.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from projections.segment_store import SegmentStore
from projections.sql_tables import SqlTables

pytestmark = pytest.mark.integration

OLD_BACKFILLS = """CREATE TABLE segment_backfills (
    segment TEXT NOT NULL, partition INTEGER NOT NULL, fingerprint TEXT NOT NULL,
    cursor TEXT NOT NULL, done BIGINT NOT NULL, total BIGINT NOT NULL,
    finished INTEGER NOT NULL, PRIMARY KEY (segment, partition))"""


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, object]:
    if request.param == "sqlite":
        return {"sqlite_path": tmp_path / "events.sqlite"}
    return {"postgres_dsn": request.getfixturevalue("postgres_dsn")}


def test_a_backfill_under_way_counts_as_started_at_the_migration(
    where: dict[str, object],
) -> None:
    old = SqlTables([OLD_BACKFILLS], **where)  # type: ignore[arg-type]
    if old.postgres:
        # A table of that name elsewhere, already migrated, must not hide this one.
        old.execute("CREATE SCHEMA elsewhere")
        old.execute("CREATE TABLE elsewhere.segment_backfills (segment TEXT, started_ms BIGINT)")
    old.execute(
        "INSERT INTO segment_backfills VALUES ('shoe_lookers', 0, 'f1', 'c0042', 42, 100, 0)"
    )
    old.close()

    before = int(time.time() * 1000)
    store = SegmentStore(**where)  # type: ignore[arg-type]
    after = int(time.time() * 1000)
    (migrated,) = store.tables.rows(
        "SELECT segment, cursor, done, started_ms FROM segment_backfills"
    )
    segment, cursor, done, started_ms = migrated
    assert (segment, cursor, done) == ("shoe_lookers", "c0042", 42)
    assert before <= started_ms <= after
    store.close()

    # Opened again: already carried forward, the instant stays.
    again = SegmentStore(**where)  # type: ignore[arg-type]
    assert again.tables.rows("SELECT started_ms FROM segment_backfills") == [(started_ms,)]
    again.close()
