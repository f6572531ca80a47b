"""Customers' data keys, wrapped by the master key, and the suppression list.

In ``data/keys.sqlite`` for the embedded stack, or tables of the event store's
PostgreSQL database. Destroying a customer's key is deleting its row: every
copy of what was sealed with it, in every store and topic, stops opening.
The suppression list names the ids erased: their later events are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from projections.privacy.cipher import CipherError, new_key, unwrap, wrap
from projections.sql_tables import SqlTables

_TABLES = [
    """CREATE TABLE IF NOT EXISTS privacy_data_keys (
        customer_id TEXT PRIMARY KEY, wrapped {blob} NOT NULL,
        created_ts DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS privacy_suppressed (
        customer_id TEXT PRIMARY KEY, erased_ts DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS privacy_meta (
        name TEXT PRIMARY KEY, wrapped {blob} NOT NULL)""",
]
# The key of the keyed hashes: random, wrapped like a data key, so rotating the
# master key leaves every stored hash valid.
_LOOKUP = "lookup"
# Rows per IN (...) list.
_CHUNK = 500


class KeyStoreLocked(CipherError):
    """The master key given does not open this key store."""


class KeyStore:
    """Data keys by customer id (wrapped), the lookup key, the suppression list."""

    def __init__(
        self, master: bytes, sqlite_path: Path | None = None, postgres_dsn: str = ""
    ) -> None:
        self._master = master
        self._tables = SqlTables(_TABLES, sqlite_path, postgres_dsn)
        self.lookup_key = self._lookup_key()

    def close(self) -> None:
        """Close the connection."""
        self._tables.close()

    # --- keys --------------------------------------------------------------------------

    def _lookup_key(self) -> bytes:
        with self._tables.transaction():
            found = self._tables.rows("SELECT wrapped FROM privacy_meta WHERE name = ?", (_LOOKUP,))
            if found:
                try:
                    return unwrap(self._master, bytes(found[0][0]), _LOOKUP)
                except CipherError:
                    raise KeyStoreLocked(
                        "the master key does not open this key store (a different master key "
                        "wrapped its keys: JOURNEYS_MASTER_KEY / JOURNEYS_MASTER_KEY_FILE)"
                    ) from None
            key = new_key()
            self._tables.execute(
                "INSERT INTO privacy_meta (name, wrapped) VALUES (?, ?)",
                (_LOOKUP, wrap(self._master, key, _LOOKUP)),
            )
            return key

    def data_keys(self, customer_ids: Iterable[str], *, create: bool) -> dict[str, bytes]:
        """The data key of each customer id; with ``create``, a new one for those without.

        Never creates a key for a suppressed (erased) id: its values stay unopenable.
        """
        wanted = list(dict.fromkeys(customer_ids))
        found: dict[str, bytes] = {}
        with self._tables.transaction():
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                for customer_id, wrapped in self._tables.rows(
                    f"SELECT customer_id, wrapped FROM privacy_data_keys "
                    f"WHERE customer_id IN ({marks})",
                    chunk,
                ):
                    found[customer_id] = unwrap(self._master, bytes(wrapped), customer_id)
            missing = [c for c in wanted if c not in found]
            if not create or not missing:
                return found
            erased = self._suppressed_among(missing)
            now = time.time()
            rows = []
            for customer_id in missing:
                if customer_id in erased:
                    continue
                key = new_key()
                found[customer_id] = key
                rows.append((customer_id, wrap(self._master, key, customer_id), now))
            for row in rows:
                self._tables.execute(
                    "INSERT INTO privacy_data_keys (customer_id, wrapped, created_ts) "
                    "VALUES (?, ?, ?)",
                    row,
                )
        return found

    def destroy(self, customer_ids: Iterable[str]) -> int:
        """Delete the data keys of ``customer_ids``; how many there were."""
        ids = list(dict.fromkeys(customer_ids))
        destroyed = 0
        with self._tables.transaction():
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                cursor = self._tables.execute(
                    f"DELETE FROM privacy_data_keys WHERE customer_id IN ({marks})", chunk
                )
                destroyed += max(cursor.rowcount, 0)
        return destroyed

    def count(self) -> int:
        """How many data keys the store holds."""
        with self._tables.lock:
            return int(self._tables.rows("SELECT count(*) FROM privacy_data_keys")[0][0])

    def rewrap(self, new_master: bytes) -> int:
        """Every data key (and the lookup key) wrapped under ``new_master``, in one transaction.

        Returns how many data keys were re-wrapped; afterwards the old master key
        opens none of them.
        """
        with self._tables.transaction():
            rows = self._tables.rows("SELECT customer_id, wrapped FROM privacy_data_keys")
            for customer_id, wrapped in rows:
                key = unwrap(self._master, bytes(wrapped), customer_id)
                self._tables.execute(
                    "UPDATE privacy_data_keys SET wrapped = ? WHERE customer_id = ?",
                    (wrap(new_master, key, customer_id), customer_id),
                )
            self._tables.execute(
                "UPDATE privacy_meta SET wrapped = ? WHERE name = ?",
                (wrap(new_master, self.lookup_key, _LOOKUP), _LOOKUP),
            )
        self._master = new_master
        return len(rows)

    # --- suppression ---------------------------------------------------------------

    def suppress(self, customer_ids: Iterable[str], erased_ts: float) -> None:
        """Put ``customer_ids`` on the suppression list (kept if already there)."""
        with self._tables.transaction():
            for customer_id in dict.fromkeys(customer_ids):
                self._tables.execute(
                    "INSERT INTO privacy_suppressed (customer_id, erased_ts) VALUES (?, ?) "
                    "ON CONFLICT (customer_id) DO NOTHING",
                    (customer_id, erased_ts),
                )

    def suppressed(self) -> set[str]:
        """Every suppressed id."""
        rows = self._tables.rows("SELECT customer_id FROM privacy_suppressed")
        return {row[0] for row in rows}

    def _suppressed_among(self, customer_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(customer_ids), _CHUNK):
            chunk = list(customer_ids[start : start + _CHUNK])
            marks = ", ".join("?" * len(chunk))
            found.update(
                row[0]
                for row in self._tables.rows(
                    f"SELECT customer_id FROM privacy_suppressed WHERE customer_id IN ({marks})",
                    chunk,
                )
            )
        return found
