"""``journeys segments validate|list|show|members``: traits and segments.

``validate``, ``list`` and ``show`` read the definitions file (no store, no
running node); ``members`` asks a running node's API (read key).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from journeys.segment_definitions import DefinitionError, Definitions
from stack.bootstrap import load_segment_definitions
from stack.http_commands import connection, key, print_answer
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
    members = verbs.add_parser("members", help="who is in a segment now, or --as-of a moment")
    members.add_argument("segment_id")
    members.add_argument("--as-of", help="ISO-8601 time (default: now)")
    members.add_argument("--limit", type=int, default=1000)
    connection(members, "read")


def run_segments(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``journeys segments <verb>``; 2 for invalid definitions or an unknown segment."""
    if args.verb == "members":
        return _members(args, settings)
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


def _members(args: argparse.Namespace, settings: Settings) -> int:
    base = args.url or settings.api_base_url
    params: dict[str, Any] = {"limit": args.limit}
    if args.as_of:
        params["as_of"] = args.as_of
    try:
        response = httpx.get(
            f"{base}/v1/segments/{quote(args.segment_id, safe='')}/members",
            headers={"Authorization": f"Bearer {key(args, settings, 'read')}"},
            params=params,
            timeout=60,
        )
    except httpx.HTTPError as error:
        print(f"cannot reach the API at {base}: {error}", file=sys.stderr)
        return 2
    return print_answer(response)
