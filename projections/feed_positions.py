"""How far the node has applied the journey workers' projection records (per topic partition).

Saved after the records' ClickHouse writes (at least once: a crash in between
applies them again, which they allow; streams/projection_feed.py). In a file of
its own, not the event store: the journey workers write that one, and this
position has nothing to commit with their journeys.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class FeedPositions:
    """``source`` (topic, partition and broker epoch) → the next offset to apply."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock, self._connection:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS feed_positions "
                "(source TEXT PRIMARY KEY, position INTEGER NOT NULL)"
            )

    def position(self, source: str) -> int:
        with self._lock:
            row = self._connection.execute(
                "SELECT position FROM feed_positions WHERE source = ?", (source,)
            ).fetchone()
        return int(row[0]) if row else 0

    def save(self, source: str, position: int) -> None:
        with self._lock, self._connection:
            self._connection.execute(
                "INSERT INTO feed_positions (source, position) VALUES (?, ?) "
                "ON CONFLICT (source) DO UPDATE SET position = excluded.position",
                (source, position),
            )

    def close(self) -> None:
        self._connection.close()
