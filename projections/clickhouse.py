"""One ClickHouse client for both engines: chdb in-process, or a server over HTTP.

The query code above this module is the same for both; only the URL differs.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def connect(url: str, chdb_path: Path) -> Client:
    """A client for ``url`` (http/https server) or, when empty, chdb at ``chdb_path``.

    chdb allows one process per data folder: call this once per process.
    """
    if not url or url.startswith("chdb://"):
        chdb_path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(interface="chdb", path=str(chdb_path))
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
