"""Trait and segment definitions in force, in the event store's database (issue 17).

The definitions file (``JOURNEYS_SEGMENTS_FILE`` or journeys/segments.toml)
seeds the tables once, when they have never held definitions; from then on the
admin API (``PUT`` / ``DELETE /v1/segments/{id}``) changes them. Every change
bumps a version in the same transaction, so a worker or API process notices
it with a one-row read and re-parses (:meth:`SegmentDefinitions.current`).
A change is validated against all the others inside its transaction (an
unknown reference or a cycle is refused), so what is stored always parses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from journeys.segment_definitions import Definitions, parse_definitions
from projections.sql_tables import SqlTables

SCHEMA = [
    # kind: "traits" or "segments" (the sections of a definitions file); body: its table.
    """CREATE TABLE IF NOT EXISTS segment_definitions (
        kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, updated_ms BIGINT NOT NULL,
        PRIMARY KEY (kind, id))""",
    # "version": bumped by every change; "seeded": 1 once the file seeded the tables.
    """CREATE TABLE IF NOT EXISTS segment_definitions_meta (
        name TEXT PRIMARY KEY, value BIGINT NOT NULL)""",
]

# A definitions document: {"traits": {id: table}, "segments": {id: table}}.
Document = dict[str, dict[str, Any]]


class SegmentDefinitions:
    """The stored definitions document, its version, and changes to it."""

    def __init__(self, sqlite_path: Path | None = None, postgres_dsn: str = "") -> None:
        self.tables = SqlTables(SCHEMA, sqlite_path=sqlite_path, postgres_dsn=postgres_dsn)
        self._parsed: tuple[int, Definitions] | None = None

    def close(self) -> None:
        self.tables.close()

    def version(self) -> int:
        """Bumped by every change (0: never seeded nor changed)."""
        return self._meta("version")

    def document(self) -> Document:
        """The stored definitions, as a definitions file's tables."""
        found: Document = {"traits": {}, "segments": {}}
        for kind, key, body in self.tables.rows(
            "SELECT kind, id, body FROM segment_definitions ORDER BY kind, id"
        ):
            found.setdefault(kind, {})[key] = orjson.loads(body)
        return found

    def current(self) -> Definitions:
        """The definitions in force, parsed again only when the version moved."""
        version = self.version()
        if self._parsed is not None and self._parsed[0] == version:
            return self._parsed[1]
        definitions = parse_definitions(self.document())
        self._parsed = (version, definitions)
        return definitions

    def seed(self, document: Mapping[str, Mapping[str, Any]]) -> bool:
        """Store ``document`` (validated by the caller) unless seeded before; True if it was."""
        with self.tables.transaction():
            if self._meta("seeded"):
                return False
            for kind in ("traits", "segments"):
                for key, body in document.get(kind, {}).items():
                    self._write(kind, key, body)
            self._set_meta("seeded", 1)
            self._bump()
        return True

    def change(
        self,
        kind: str,
        key: str,
        body: Mapping[str, Any] | None,
        check: Callable[[Document], Definitions] = parse_definitions,
    ) -> tuple[bool, Definitions]:
        """Put (``body``) or delete (None) one definition, if ``check`` accepts the result.

        Returns (whether it existed before, the definitions now in force);
        ``check``'s DefinitionError leaves everything as it was.
        """
        with self.tables.transaction():
            document = self.document()
            existed = key in document.get(kind, {})
            if body is None:
                document.get(kind, {}).pop(key, None)
            else:
                document.setdefault(kind, {})[key] = dict(body)
            definitions = check(document)
            if body is None:
                self.tables.execute(
                    "DELETE FROM segment_definitions WHERE kind = ? AND id = ?", [kind, key]
                )
            else:
                self._write(kind, key, body)
            self._set_meta("seeded", 1)
            version = self._bump()
        self._parsed = (version, definitions)
        return existed, definitions

    def _write(self, kind: str, key: str, body: Mapping[str, Any]) -> None:
        self.tables.execute(
            "INSERT INTO segment_definitions (kind, id, body, updated_ms) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body,"
            " updated_ms = excluded.updated_ms",
            [kind, key, orjson.dumps(body).decode(), int(time.time() * 1000)],
        )

    def _meta(self, name: str) -> int:
        rows = self.tables.rows("SELECT value FROM segment_definitions_meta WHERE name = ?", [name])
        return int(rows[0][0]) if rows else 0

    def _set_meta(self, name: str, value: int) -> None:
        self.tables.execute(
            "INSERT INTO segment_definitions_meta (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [name, value],
        )

    def _bump(self) -> int:
        version = self._meta("version") + 1
        self._set_meta("version", version)
        return version
