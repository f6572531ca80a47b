"""``journeys segments validate|list|show``: the traits and segments of a definitions file.

Reads the file only (no store, no running node): membership is not served yet
(see docs/architecture.md, "Segments and computed traits").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from journeys.segment_definitions import DefinitionError, Definitions
from stack.bootstrap import load_segment_definitions
from stack.settings import Settings

SEGMENTS_COMMAND = "segments"


def add_segments_parser(commands: Any) -> None:
    """The ``segments`` subcommand and its verbs."""
    parser = commands.add_parser(
        SEGMENTS_COMMAND, help="computed traits and segments (definitions file)"
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    for name, help_text in (
        ("validate", "check a definitions file; errors name the node path and the field"),
        ("list", "the segments and traits defined"),
        ("show", "one segment's definition, as JSON"),
    ):
        verb = verbs.add_parser(name, help=help_text)
        verb.add_argument(
            "--file", type=Path, help="default: JOURNEYS_SEGMENTS_FILE, else journeys/segments.toml"
        )
        if name == "show":
            verb.add_argument("segment_id")


def run_segments(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``journeys segments <verb>``; 2 for invalid definitions or an unknown segment."""
    if args.file is not None:
        settings = settings.model_copy(update={"segments_file": args.file})
    try:
        definitions = load_segment_definitions(settings)
    except (DefinitionError, ValueError) as error:
        errors = error.errors if isinstance(error, DefinitionError) else [("", str(error))]
        for path, message in errors:
            print(f"{path}: {message}" if path else message, file=sys.stderr)
        return 2
    if args.verb == "validate":
        print(f"ok: {len(definitions.traits)} traits, {len(definitions.segments)} segments")
        return 0
    if args.verb == "list":
        for line in _listing(definitions):
            print(line)
        return 0
    segment = definitions.segments.get(args.segment_id)
    if segment is None:
        print(f"segment_id: unknown segment {args.segment_id!r}", file=sys.stderr)
        return 2
    shown = {"id": segment.id, **dict(segment.source), "backfilled": False}
    print(json.dumps(shown, indent=2, default=str))
    return 0


def _listing(definitions: Definitions) -> list[str]:
    lines = [f"segment {s.id}: {s.name}" for s in definitions.segments.values()]
    for trait in definitions.traits.values():
        of = trait.match.name or (f"type {trait.match.type}" if trait.match.type else "")
        within = trait.window.within_ms
        span = f" within {within // 1000}s" if within else ""
        prop = f" {trait.property_name}" if trait.property_name else ""
        lines.append(f"trait {trait.id}: {trait.op}{prop} of {of or 'any event'}{span}")
    return lines
