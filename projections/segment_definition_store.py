"""Trait and segment definitions in force, in the event store's database (issue 17).

The definitions file (``JOURNEYS_SEGMENTS_FILE`` or journeys/segments.toml)
seeds the tables once, when they have never held definitions; from then on the
admin API (``PUT`` / ``DELETE /v1/segments/{id}``) changes them. Every change
bumps a version in the same transaction, so a worker or API process notices
it with a one-row read and re-parses (:meth:`SegmentDefinitions.current`).
A change is validated against all the others inside its transaction (an
unknown reference or a cycle is refused), so what is stored always parses.
The store's shape is shared with flows (projections/definition_store.py).
"""

from __future__ import annotations

from pathlib import Path

from journeys.segment_definitions import Definitions, parse_definitions
from projections.definition_store import DefinitionStore, Document

__all__ = ["Document", "SegmentDefinitions"]


class SegmentDefinitions(DefinitionStore[Definitions]):
    """The stored traits and segments (``segment_definitions``), parsed as Definitions."""

    def __init__(self, sqlite_path: Path | None = None, postgres_dsn: str = "") -> None:
        super().__init__(
            "segment_definitions",
            ("traits", "segments"),
            parse_definitions,
            sqlite_path=sqlite_path,
            postgres_dsn=postgres_dsn,
        )
