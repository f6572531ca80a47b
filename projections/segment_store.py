"""Customers' segment states and the consumed positions they include, in the event store's DB.

Saved in one transaction with the position of the batch they fold in, so a
crash either keeps both or neither (docs/architecture.md, "Segments and
computed traits"); tables on SQLite or PostgreSQL (projections/sql_tables.py).

Each state's next due instant (when time alone may change a membership) is
saved with it in ``segment_due``, indexed by (partition, due), so the timer
loop asks "which customers of partitions P are due before now?" as a range
query, as the outreach timers do.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from journeys.segment_state import SegmentState
from projections.sql_tables import SqlTables

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS segment_states (
        customer_key TEXT PRIMARY KEY, state TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS segment_positions (
        source TEXT PRIMARY KEY, position BIGINT NOT NULL)""",
    # A customer's partition (of the events topic) and the instant (epoch ms) at
    # which time alone may next change one of their memberships; no row: never.
    """CREATE TABLE IF NOT EXISTS segment_due (
        customer_key TEXT PRIMARY KEY, partition INTEGER NOT NULL, due_ms BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS segment_due_by_time ON segment_due (partition, due_ms)",
    # A segment's backfill at one definition (fingerprint), per partition: every
    # customer of the partition with a key <= cursor is done; total: customers in
    # the event log when it started (all partitions); started_ms: when the worker took
    # the definition (changes caused by what arrived before are history).
    """CREATE TABLE IF NOT EXISTS segment_backfills (
        segment TEXT NOT NULL, partition INTEGER NOT NULL, fingerprint TEXT NOT NULL,
        cursor TEXT NOT NULL, done BIGINT NOT NULL, total BIGINT NOT NULL,
        finished INTEGER NOT NULL, started_ms BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (segment, partition))""",
    # Static segments: each one's list as uploaded (or saved from a funnel's drop-outs),
    # and the changes to it the worker has not applied to the states yet (the latest
    # change per customer wins: listed 1 on, 0 off, at its instant).
    """CREATE TABLE IF NOT EXISTS segment_lists (
        segment TEXT NOT NULL, customer_key TEXT NOT NULL, PRIMARY KEY (segment, customer_key))""",
    """CREATE TABLE IF NOT EXISTS segment_list_pending (
        segment TEXT NOT NULL, customer_key TEXT NOT NULL, listed INTEGER NOT NULL,
        at_ms BIGINT NOT NULL, PRIMARY KEY (segment, customer_key))""",
    # The worker drains the queue oldest first, a chunk at a time: no sort of it all.
    """CREATE INDEX IF NOT EXISTS segment_list_pending_by_time
        ON segment_list_pending (at_ms, segment, customer_key)""",
]

# (partition, due instant in epoch ms or None) of a customer's state.
Due = tuple[int, int | None]
# States of batches folded and not yet saved, served to readers: at most this many
# (the oldest go; a reader then sees the saved state until the batch is saved).
HELD_STATES = 100_000


@dataclass(frozen=True, slots=True)
class BackfillPart:
    """One partition's share of a segment's backfill."""

    cursor: str
    done: int
    finished: bool


@dataclass(frozen=True, slots=True)
class Backfill:
    """A segment's backfill at one definition: its parts by partition."""

    segment: str
    fingerprint: str
    total: int
    parts: Mapping[int, BackfillPart]
    # Epoch ms from which what arrives is live: a change it caused is not flagged.
    started_ms: int = 0

    @property
    def finished(self) -> bool:
        return all(part.finished for part in self.parts.values())

    @property
    def done(self) -> int:
        return sum(part.done for part in self.parts.values())

    @property
    def progress(self) -> float:
        """Done customers over those the log held at the start (1.0 once finished)."""
        if self.finished:
            return 1.0
        return min(0.99, self.done / self.total) if self.total else 0.0

    def covers(self, partition: int, customer_key: str) -> bool:
        """True when the customer's history was backfilled (or live since it was)."""
        part = self.parts.get(partition)
        return part is None or part.finished or customer_key <= part.cursor


class SegmentStore:
    """Per-customer :class:`SegmentState` and per-source consumed positions."""

    def __init__(self, sqlite_path: Path | None = None, postgres_dsn: str = "") -> None:
        self.tables = SqlTables(SCHEMA, sqlite_path=sqlite_path, postgres_dsn=postgres_dsn)
        self._migrate()
        # customer → (batch token, state JSON) of batches folded, not yet saved
        self._held: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._held_lock = threading.Lock()  # the batch's thread beside the API's
        self._tokens = 0

    def _migrate(self) -> None:
        # Stores made before started_ms: a backfill under way counts as started now,
        # so nothing that arrived before this version ran is taken as live.
        if self.tables.postgres:
            sql = (
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'segment_backfills' AND table_schema = current_schema()"
            )
        else:
            sql = "SELECT name FROM pragma_table_info('segment_backfills')"
        if "started_ms" in {str(row[0]) for row in self.tables.rows(sql)}:
            return
        with self.tables.transaction():
            self.tables.execute(
                "ALTER TABLE segment_backfills ADD COLUMN started_ms BIGINT NOT NULL DEFAULT 0"
            )
            self.tables.execute(
                "UPDATE segment_backfills SET started_ms = ?", [int(time.time() * 1000)]
            )

    def close(self) -> None:
        self.tables.close()

    def position(self, source: str) -> int:
        """The next offset of ``source`` not yet folded into the states (0: none)."""
        rows = self.tables.rows("SELECT position FROM segment_positions WHERE source = ?", [source])
        return int(rows[0][0]) if rows else 0

    def states(self, customer_keys: Iterable[str]) -> dict[str, SegmentState]:
        """The stored state of each of ``customer_keys`` that has one."""
        return {
            key: SegmentState.from_dict(orjson.loads(text))
            for key, text in self.stored_texts(customer_keys).items()
        }

    def all_states(self) -> Iterator[tuple[str, SegmentState]]:
        """Every stored (customer, state), by customer."""
        rows = self.tables.rows("SELECT customer_key, state FROM segment_states ORDER BY 1")
        for key, text in rows:
            yield key, SegmentState.from_dict(orjson.loads(text))

    def due(self, partitions: Sequence[int], until_ms: int, limit: int) -> list[tuple[str, int]]:
        """(customer, partition) of ``partitions`` due at or before ``until_ms``, earliest first."""
        if not partitions:
            return []
        marks = ",".join("?" * len(partitions))
        rows = self.tables.rows(
            f"SELECT customer_key, partition FROM segment_due WHERE partition IN ({marks})"
            " AND due_ms <= ? ORDER BY due_ms, customer_key LIMIT ?",
            [*partitions, until_ms, limit],
        )
        return [(str(key), int(partition)) for key, partition in rows]

    # --- states of batches in flight ------------------------------------------------------

    def hold(self, states: Mapping[str, SegmentState]) -> tuple[int, dict[str, str]]:
        """Serve ``states`` (a batch's, folded and not yet saved) to :meth:`current_states`
        until :meth:`landed`; the batch's token and the states' JSON (for :meth:`save`:
        serialised once). Before the batch's ClickHouse inserts,
        most of its time: a held state is what a replay of the batch folds again (a state
        is a function of the saved one and the partition's records in order), so serving
        it early shows no membership a crash could take back (as StagesInFlight's rows)."""
        texts = {key: orjson.dumps(state.to_dict()).decode() for key, state in states.items()}
        with self._held_lock:
            self._tokens += 1
            for key, text in texts.items():
                self._held[key] = (self._tokens, text)
                self._held.move_to_end(key)
            while len(self._held) > HELD_STATES:
                self._held.popitem(last=False)
            return self._tokens, texts

    def landed(self, customer_keys: Iterable[str], token: int) -> None:
        """The batch of ``token`` is saved: its held states go (a later batch's stay)."""
        with self._held_lock:
            for key in customer_keys:
                held = self._held.get(key)
                if held is not None and held[0] <= token:
                    del self._held[key]

    def current_states(self, customer_keys: Iterable[str]) -> dict[str, SegmentState]:
        """As :meth:`states`, with the states of batches folded and not yet saved (the
        readers'; the worker folds from the saved ones)."""
        keys = list(dict.fromkeys(customer_keys))
        with self._held_lock:
            texts = {key: self._held[key][1] for key in keys if key in self._held}
        texts |= self.stored_texts(key for key in keys if key not in texts)
        return {key: SegmentState.from_dict(orjson.loads(text)) for key, text in texts.items()}

    def forget_customers(self, customer_keys: Sequence[str]) -> dict[str, int]:
        """Delete the customers' states (erasure); the count deleted, by table."""
        with self._held_lock:
            for key in customer_keys:
                self._held.pop(key, None)
        deleted = 0
        with self.tables.transaction():
            for key in customer_keys:
                cursor = self.tables.execute(
                    "DELETE FROM segment_states WHERE customer_key = ?", [key]
                )
                deleted += max(0, cursor.rowcount)
                self.tables.execute("DELETE FROM segment_due WHERE customer_key = ?", [key])
                for table in ("segment_lists", "segment_list_pending"):
                    self.tables.execute(f"DELETE FROM {table} WHERE customer_key = ?", [key])
        return {"segment_states": deleted}

    # --- static segments' lists ---------------------------------------------------------

    def list_members(self, segment: str) -> list[str]:
        """The customers on static ``segment``'s list, sorted."""
        rows = self.tables.rows(
            "SELECT customer_key FROM segment_lists WHERE segment = ? ORDER BY 1", [segment]
        )
        return [str(key) for (key,) in rows]

    def replace_list(
        self, segment: str, customer_keys: Iterable[str], at_ms: int
    ) -> tuple[int, int]:
        """Make ``customer_keys`` static ``segment``'s list; (added, removed).

        Each customer put on or taken off is queued for the worker, which applies it
        to their state and records the entry or exit, stamped ``at_ms``.
        """
        wanted = set(customer_keys)
        with self.tables.transaction():
            held = set(self.list_members(segment))
            added, removed = sorted(wanted - held), sorted(held - wanted)
            for key in added:
                self.tables.execute(
                    "INSERT INTO segment_lists (segment, customer_key) VALUES (?, ?)",
                    [segment, key],
                )
            for key in removed:
                self.tables.execute(
                    "DELETE FROM segment_lists WHERE segment = ? AND customer_key = ?",
                    [segment, key],
                )
            for keys, listed in ((added, 1), (removed, 0)):
                for key in keys:
                    self.tables.execute(_UPSERT_PENDING, [segment, key, listed, at_ms])
        return len(added), len(removed)

    def forget_list(self, segment: str) -> None:
        """Drop a deleted static segment's list (its states drop it on their next fold)."""
        with self.tables.transaction():
            for table in ("segment_lists", "segment_list_pending"):
                self.tables.execute(f"DELETE FROM {table} WHERE segment = ?", [segment])

    def pending_lists(self, limit: int) -> list[tuple[str, str, bool, int]]:
        """(segment, customer, listed, at ms) changes of lists not applied yet, oldest first."""
        rows = self.tables.rows(
            "SELECT segment, customer_key, listed, at_ms FROM segment_list_pending"
            " ORDER BY at_ms, segment, customer_key LIMIT ?",
            [limit],
        )
        return [(str(s), str(k), bool(listed), int(at)) for s, k, listed, at in rows]

    def save_listed(
        self,
        states: Mapping[str, SegmentState],
        read: Mapping[str, str],
        due: Mapping[str, Due],
        applied: Sequence[tuple[str, str, bool, int]],
    ) -> list[str]:
        """Save states a list change was applied to, and drop those changes, atomically.

        As :meth:`save_ticked` (compare and set on the text read); a customer without a
        stored state gets one unless another process saved one meanwhile. A pending
        change is dropped only if its customer was saved and it is still the one applied.
        """
        saved: list[str] = []
        with self.tables.transaction():
            for key, state in states.items():
                text = orjson.dumps(state.to_dict()).decode()
                if key in read:
                    cursor = self.tables.execute(
                        "UPDATE segment_states SET state = ? WHERE customer_key = ? AND state = ?",
                        [text, key, read[key]],
                    )
                else:
                    cursor = self.tables.execute(
                        "INSERT INTO segment_states (customer_key, state) VALUES (?, ?)"
                        " ON CONFLICT (customer_key) DO NOTHING",
                        [key, text],
                    )
                if cursor.rowcount == 1:
                    saved.append(key)
            self._save_due({key: due[key] for key in saved if key in due})
            done = set(saved)
            for segment, key, listed, at_ms in applied:
                if key in done:
                    self.tables.execute(
                        "DELETE FROM segment_list_pending WHERE segment = ? AND customer_key = ?"
                        " AND listed = ? AND at_ms = ?",
                        [segment, key, int(listed), at_ms],
                    )
        return saved

    def save(
        self,
        batches: Sequence[tuple[str, int, Mapping[str, SegmentState]]],
        due: Mapping[str, Due] | None = None,
        texts: Mapping[str, str] | None = None,
    ) -> None:
        """Save each (source, position, states) and the states' due instants, all atomically
        (``texts``: states' JSON made already, by :meth:`hold`)."""
        with self.tables.transaction():
            for source, position, states in batches:
                self._save_states(states, texts)
                self.tables.execute(_UPSERT_POSITION, [source, position])
            self._save_due(due or {})

    def save_ticked(
        self,
        states: Mapping[str, SegmentState],
        read: Mapping[str, str],
        due: Mapping[str, Due],
    ) -> list[str]:
        """Save states a timer advanced and their due instants, atomically; the keys saved.

        ``read``: each state's stored text when the timer read it. A customer whose
        stored state changed since (another worker took the partition and folded
        events) is left as it is: its new owner's state is the newer one. A due row
        whose customer has no state (erased since) is dropped.
        """
        saved: list[str] = []
        with self.tables.transaction():
            for key, state in states.items():
                text = orjson.dumps(state.to_dict()).decode()
                cursor = self.tables.execute(
                    "UPDATE segment_states SET state = ? WHERE customer_key = ? AND state = ?",
                    [text, key, read.get(key, "")],
                )
                if cursor.rowcount == 1:
                    saved.append(key)
            kept = {key: due[key] for key in saved if key in due}
            orphans = {k: (partition, None) for k, (partition, _) in due.items() if k not in read}
            self._save_due({**kept, **orphans})
        return saved

    def stored_texts(self, customer_keys: Iterable[str]) -> dict[str, str]:
        """The stored state of each of ``customer_keys`` as saved (JSON text)."""
        keys = list(dict.fromkeys(customer_keys))
        found: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, text in self.tables.rows(
                f"SELECT customer_key, state FROM segment_states WHERE customer_key IN ({marks})",
                chunk,
            ):
                found[key] = text
        return found

    def backfills(self) -> dict[str, Backfill]:
        """Every segment's backfill as recorded (at the fingerprint it was started for)."""
        rows = self.tables.rows(
            "SELECT segment, partition, fingerprint, cursor, done, total, finished, started_ms"
            " FROM segment_backfills ORDER BY segment, partition"
        )
        grouped: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            grouped.setdefault(str(row[0]), []).append(row)
        return {
            segment: Backfill(
                segment,
                str(found[0][2]),
                int(found[0][5]),
                {int(r[1]): BackfillPart(str(r[3]), int(r[4]), bool(r[6])) for r in found},
                int(found[0][7]),
            )
            for segment, found in grouped.items()
        }

    def start_backfill(
        self, segment: str, fingerprint: str, partitions: int, total: int, started_ms: int = 0
    ) -> bool:
        """Start the segment's backfill at ``fingerprint`` unless it is; True if started here.

        ``started_ms``: from when what arrives is live (the definition was taken then).
        """
        with self.tables.transaction():
            rows = self.tables.rows(
                "SELECT fingerprint FROM segment_backfills WHERE segment = ?", [segment]
            )
            if rows and all(row[0] == fingerprint for row in rows):
                return False
            self.tables.execute("DELETE FROM segment_backfills WHERE segment = ?", [segment])
            for partition in range(partitions):
                self.tables.execute(
                    "INSERT INTO segment_backfills (segment, partition, fingerprint, cursor,"
                    " done, total, finished, started_ms) VALUES (?, ?, ?, '', 0, ?, 0, ?)",
                    [segment, partition, fingerprint, total, started_ms],
                )
        return True

    def forget_backfills(self, keep: Iterable[str]) -> None:
        """Drop the backfills of segments not in ``keep`` (deleted: a new one starts afresh)."""
        kept = set(keep)
        # Read before writing: this runs at every definitions reload (2 s) under the
        # batch lock, and an empty write transaction would wait on the event store's
        # write lock there, holding the journey batches behind it.
        rows = self.tables.rows("SELECT DISTINCT segment FROM segment_backfills")
        dropped = [segment for (segment,) in rows if segment not in kept]
        if not dropped:
            return
        with self.tables.transaction():
            for segment in dropped:
                self.tables.execute("DELETE FROM segment_backfills WHERE segment = ?", [segment])

    def save_backfilled(
        self,
        segment: str,
        fingerprint: str,
        partition: int,
        part: BackfillPart,
        states: Mapping[str, SegmentState],
        due: Mapping[str, Due],
    ) -> bool:
        """Save a backfilled chunk's states, due instants and the part's new cursor, atomically.

        False (nothing saved) when the backfill was restarted meanwhile at another
        definition.
        """
        try:
            with self.tables.transaction():
                cursor = self.tables.execute(
                    "UPDATE segment_backfills SET cursor = ?, done = ?, finished = ?"
                    " WHERE segment = ? AND partition = ? AND fingerprint = ?",
                    [part.cursor, part.done, int(part.finished), segment, partition, fingerprint],
                )
                if cursor.rowcount != 1:
                    raise _Restarted
                self._save_states(states)
                self._save_due(due)
        except _Restarted:
            return False
        return True

    def _save_states(
        self, states: Mapping[str, SegmentState], texts: Mapping[str, str] | None = None
    ) -> None:
        made = texts or {}
        for key, state in states.items():
            text = made.get(key) or orjson.dumps(state.to_dict()).decode()
            self.tables.execute(_UPSERT_STATE, [key, text])

    def _save_due(self, due: Mapping[str, Due]) -> None:
        for key, (partition, due_ms) in due.items():
            if due_ms is None:
                self.tables.execute("DELETE FROM segment_due WHERE customer_key = ?", [key])
            else:
                self.tables.execute(_UPSERT_DUE, [key, partition, due_ms])


class _Restarted(Exception):
    """Rolls a backfill chunk back: its backfill is no longer the one recorded."""


_UPSERT_STATE = (
    "INSERT INTO segment_states (customer_key, state) VALUES (?, ?)"
    " ON CONFLICT (customer_key) DO UPDATE SET state = excluded.state"
)
_UPSERT_PENDING = (
    "INSERT INTO segment_list_pending (segment, customer_key, listed, at_ms) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (segment, customer_key) DO UPDATE SET listed = excluded.listed,"
    " at_ms = excluded.at_ms"
)
_UPSERT_POSITION = (
    "INSERT INTO segment_positions (source, position) VALUES (?, ?)"
    " ON CONFLICT (source) DO UPDATE SET position = excluded.position"
)
_UPSERT_DUE = (
    "INSERT INTO segment_due (customer_key, partition, due_ms) VALUES (?, ?, ?)"
    " ON CONFLICT (customer_key) DO UPDATE SET partition = excluded.partition,"
    " due_ms = excluded.due_ms"
)
