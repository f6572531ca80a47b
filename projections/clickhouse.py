"""One ClickHouse client for both engines: chdb in-process, or a server over HTTP.

The query code above this module is the same for both; only the URL differs.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.insert import InsertContext

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def connect(url: str, chdb_path: Path) -> Client:
    """A client for ``url`` (http/https server) or, when empty, chdb at ``chdb_path``.

    chdb allows one process per data folder: call this once per process.
    """
    if not url or url.startswith("chdb://"):
        chdb_path.mkdir(parents=True, exist_ok=True)
        # BACKUP/RESTORE ... TO File(...) needs an allowed path (none by default), and
        # chdb takes it once per process: any, since a backup goes where its operator
        # says. Only our own SQL reaches the engine (the API takes no SQL).
        return clickhouse_connect.get_client(
            interface="chdb", path=str(chdb_path), chdb_options={"backups.allowed_path": "/"}
        )
    parts = urlsplit(url)
    return clickhouse_connect.get_client(
        interface=parts.scheme,
        host=parts.hostname or "localhost",
        port=parts.port or (8443 if parts.scheme == "https" else 8123),
        username=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
    )


def database_name(name: str) -> str:
    """``name`` checked to be a plain identifier: it is spliced into DDL."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"ClickHouse database name {name!r} is not a plain identifier")
    return name


def as_utc(moment: datetime) -> datetime:
    """chdb returns naive datetimes for UTC columns; make them aware."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class TableInsert:
    """Inserts rows into one table through one insert context, kept between inserts.

    Without a context, clickhouse_connect asks ClickHouse for the table's column
    types before every insert: a query per table per batch, measured at a tenth
    of the pipeline's ClickHouse time (docs/performance.md). The types are read
    once here; the migrations run before any writer is built.
    """

    def __init__(self, client: Client, table: str, columns: Sequence[str]) -> None:
        self._client = client
        self._table = table
        self._columns = list(columns)
        self._context: InsertContext | None = None
        # The context holds one insert's rows: two threads must not share it at once.
        self._lock = threading.Lock()

    def insert(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` (values in the order of the columns); nothing when empty."""
        if not rows:
            return
        with self._lock:
            if self._context is None:
                self._context = self._client.create_insert_context(
                    self._table, column_names=self._columns
                )
            context = self._context
            context.data = rows
            try:
                self._client.insert(context=context)
            finally:
                context.data = None  # empty again, for the next insert
