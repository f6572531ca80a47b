"""A small connection to SQLite or PostgreSQL for the stores that keep a few tables.

The same SQL (``?`` placeholders) runs on both: SQLite for the embedded default,
PostgreSQL where many processes share the event store's database.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


class _OwnedLock:
    """A reentrant lock that knows whether the calling thread holds it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = threading.local()

    def __enter__(self) -> None:
        self._lock.acquire()
        self._depth.n = getattr(self._depth, "n", 0) + 1

    def __exit__(self, *_: object) -> None:
        self._depth.n -= 1
        self._lock.release()

    def held(self) -> bool:
        """True when the calling thread holds the lock."""
        return getattr(self._depth, "n", 0) > 0


class SqlTables:
    """One connection, serialised by a lock; autocommit unless in :meth:`transaction`.

    On SQLite, :meth:`rows` from a thread not holding the lock reads through a second
    connection: in WAL a read never waits for the write lock, so a reader (the API)
    does not queue behind a transaction waiting for it (up to the 30 s busy timeout).

    A schema statement may say ``{serial}`` for an auto-numbered primary key and
    ``{blob}`` for bytes.
    """

    def __init__(
        self, schema: Sequence[str], sqlite_path: Path | None = None, postgres_dsn: str = ""
    ) -> None:
        # Held by every call; reentrant, so a caller may hold it across several.
        self.lock = _OwnedLock()
        self.postgres = bool(postgres_dsn)
        self._reader: sqlite3.Connection | None = None
        self._reading = threading.Lock()
        if postgres_dsn:
            import psycopg

            self._conn: Any = psycopg.connect(postgres_dsn, autocommit=True)
        else:
            assert sqlite_path is not None
            sqlite_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not sqlite_path.exists():
                # Personal data and secrets: the owner's alone whatever the umask, before
                # SQLite writes (it gives -wal and -shm the database file's mode). Only
                # when new: closing any descriptor of a file drops every POSIX lock this
                # process holds on it, the event store's own connection's too.
                os.close(os.open(sqlite_path, os.O_WRONLY | os.O_CREAT, 0o600))
            self._conn = sqlite3.connect(
                str(sqlite_path), timeout=30, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._reader = sqlite3.connect(
                str(sqlite_path), timeout=30, isolation_level=None, check_same_thread=False
            )
        types = (
            {"{serial}": "BIGSERIAL PRIMARY KEY", "{blob}": "BYTEA"}
            if self.postgres
            else {"{serial}": "INTEGER PRIMARY KEY AUTOINCREMENT", "{blob}": "BLOB"}
        )
        with self.transaction():
            for statement in schema:
                for placeholder, sql_type in types.items():
                    statement = statement.replace(placeholder, sql_type)
                self.execute(statement)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; its cursor."""
        if self.postgres:
            sql = sql.replace("?", "%s")
        with self.lock:
            return self._conn.execute(sql, tuple(params))

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of a query (what committed transactions wrote, or the caller's own)."""
        if self._reader is not None and not self.lock.held():
            with self._reading:
                return list(self._reader.execute(sql, tuple(params)).fetchall())
        with self.lock:
            return list(self.execute(sql, params).fetchall())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit of work (SQLite: taking the write lock at once)."""
        with self.lock:
            self.execute("BEGIN" if self.postgres else "BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.execute("ROLLBACK")
                raise
            self.execute("COMMIT")

    def close(self) -> None:
        """Close the connections."""
        with self.lock:
            self._conn.close()
        if self._reader is not None:
            with self._reading:
                self._reader.close()
