"""Definitions in force kept in the event store's database, changed over the admin API.

One shape for segments and traits (projections/segment_definition_store.py) and
journey flows (projections/flow_definition_store.py): a table of definitions by
(kind, id) holding each one's table as written, and a version bumped by every
change in the same transaction, so a worker or API process notices a change
with a one-row read and parses again (:meth:`DefinitionStore.current`). A file
seeds the tables once, when they have never held definitions; a change is
validated with all the other definitions inside its transaction, so what is
stored always parses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson

from projections.sql_tables import SqlTables

# A definitions document: {kind: {id: table}}.
Document = dict[str, dict[str, Any]]
# One change: (kind, id, the definition's table, or None to delete it).
Edit = tuple[str, str, Mapping[str, Any] | None]
Parsed = TypeVar("Parsed")


def _schema(table: str) -> list[str]:
    return [
        # kind: a section of the definitions file; body: the definition's table.
        f"""CREATE TABLE IF NOT EXISTS {table} (
            kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, updated_ms BIGINT NOT NULL,
            PRIMARY KEY (kind, id))""",
        # "version": bumped by every change; "seeded": 1 once the file seeded the tables.
        f"""CREATE TABLE IF NOT EXISTS {table}_meta (
            name TEXT PRIMARY KEY, value BIGINT NOT NULL)""",
    ]


class DefinitionStore(Generic[Parsed]):
    """The stored definitions document, its version, and changes to it."""

    def __init__(
        self,
        table: str,
        kinds: Sequence[str],
        parse: Callable[[Document], Parsed],
        sqlite_path: Path | None = None,
        postgres_dsn: str = "",
    ) -> None:
        self._table = table
        self.kinds = tuple(kinds)
        self._parse = parse
        self.tables = SqlTables(_schema(table), sqlite_path=sqlite_path, postgres_dsn=postgres_dsn)
        self._parsed: tuple[int, Parsed] | None = None

    def close(self) -> None:
        self.tables.close()

    def version(self) -> int:
        """Bumped by every change (0: never seeded nor changed)."""
        return self._meta("version")

    def document(self) -> Document:
        """The stored definitions, as a definitions file's tables."""
        found: Document = {kind: {} for kind in self.kinds}
        for kind, key, body in self.tables.rows(
            f"SELECT kind, id, body FROM {self._table} ORDER BY kind, id"
        ):
            found.setdefault(kind, {})[key] = orjson.loads(body)
        return found

    def current(self) -> Parsed:
        """The definitions in force, parsed again only when the version moved."""
        version = self.version()
        if self._parsed is not None and self._parsed[0] == version:
            return self._parsed[1]
        parsed = self._parse(self.document())
        self._parsed = (version, parsed)
        return parsed

    def seed(self, document: Mapping[str, Mapping[str, Any]]) -> bool:
        """Store ``document`` (validated by the caller) unless seeded before; True if it was."""
        with self.tables.transaction():
            if self._meta("seeded"):
                return False
            for kind in self.kinds:
                for key, body in document.get(kind, {}).items():
                    self._write(kind, key, body)
            self._set_meta("seeded", 1)
            self._bump()
        return True

    def change(
        self,
        kind: str,
        key: str,
        body: Mapping[str, Any] | Callable[[Mapping[str, Any] | None], Mapping[str, Any]] | None,
        check: Callable[[Document], Parsed] | None = None,
        guard: Callable[[Mapping[str, Any] | None], None] | None = None,
        together: Sequence[Edit] = (),
    ) -> tuple[bool, Parsed]:
        """Put (``body``) or delete (None) one definition, if ``check`` accepts the result.
        A callable ``body`` is given the definition it replaces (None: new), inside the
        transaction (a flow's pauses appended to).

        ``check`` (default: the store's parser) raises to refuse the document after
        the change, ``guard`` to refuse it given the definition it replaces (None: new);
        ``together``: more (kind, id, body or None) made in the same transaction (a
        flow's pause deleted with the flow). Returns (whether it existed before, the
        definitions now in force); a refusal leaves everything as it was.
        """
        with self.tables.transaction():
            document = self.document()
            previous = document.get(kind, {}).get(key)
            if guard is not None:
                guard(previous)
            if callable(body):
                body = body(previous)
            edits = [(kind, key, body), *together]
            for edit_kind, edit_key, edit_body in edits:
                if edit_body is None:
                    document.get(edit_kind, {}).pop(edit_key, None)
                else:
                    document.setdefault(edit_kind, {})[edit_key] = dict(edit_body)
            parsed = (check or self._parse)(document)
            for edit_kind, edit_key, edit_body in edits:
                if edit_body is None:
                    self.tables.execute(
                        f"DELETE FROM {self._table} WHERE kind = ? AND id = ?",
                        [edit_kind, edit_key],
                    )
                else:
                    self._write(edit_kind, edit_key, edit_body)
            self._set_meta("seeded", 1)
            version = self._bump()
        self._parsed = (version, parsed)
        return previous is not None, parsed

    def _write(self, kind: str, key: str, body: Mapping[str, Any]) -> None:
        self.tables.execute(
            f"INSERT INTO {self._table} (kind, id, body, updated_ms) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body,"
            " updated_ms = excluded.updated_ms",
            [kind, key, orjson.dumps(body).decode(), int(time.time() * 1000)],
        )

    def _meta(self, name: str) -> int:
        rows = self.tables.rows(f"SELECT value FROM {self._table}_meta WHERE name = ?", [name])
        return int(rows[0][0]) if rows else 0

    def _set_meta(self, name: str, value: int) -> None:
        self.tables.execute(
            f"INSERT INTO {self._table}_meta (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [name, value],
        )

    def _bump(self) -> int:
        version = self._meta("version") + 1
        self._set_meta("version", version)
        return version
