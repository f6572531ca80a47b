"""``journeys segments validate|list|show|members|status|set|delete`` and
``journeys traits list|show|set|delete``: segments and computed traits.

``segments validate``, ``list`` and ``show`` read a definitions file (no
store, no running node; the file seeds the stored definitions the first time
only); ``members`` and ``status`` ask a running node's API (read key), ``set``
and ``delete`` change the stored definitions through it, ``upload`` a static
segment's list (admin key). ``traits``
does the same for computed traits, always through the API.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from journeys.segment_definitions import DefinitionError, Definitions
from stack.bootstrap import load_segment_definitions
from stack.http_commands import ask_api, connection, definition_table
from stack.settings import Settings

SEGMENTS_COMMAND = "segments"
TRAITS_COMMAND = "traits"


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
    status = verbs.add_parser("status", help="one segment as the node has it (GET /v1/segments/ID)")
    status.add_argument("segment_id")
    connection(status, "read")
    put = verbs.add_parser("set", help="define or replace a segment from FILE (TOML or JSON)")
    put.add_argument("segment_id")
    put.add_argument(
        "file", type=Path, help="the segment's table (name, where), or a file with [segments.ID]"
    )
    connection(put, "admin")
    delete = verbs.add_parser("delete", help="delete a segment (refused while others use it)")
    delete.add_argument("segment_id")
    connection(delete, "admin")
    upload = verbs.add_parser(
        "upload", help="make a CSV of customer ids (one a row) a static segment's list"
    )
    upload.add_argument("segment_id")
    upload.add_argument("file", type=Path, help="CSV: one customer id a row, optional header")
    connection(upload, "admin")
    _add_traits_parser(commands)


def _add_traits_parser(commands: Any) -> None:
    parser = commands.add_parser(TRAITS_COMMAND, help="computed traits (through the admin API)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    connection(verbs.add_parser("list", help="the traits in force (GET /v1/traits)"), "read")
    show = verbs.add_parser("show", help="one trait and the segments using it")
    show.add_argument("trait_id")
    connection(show, "read")
    put = verbs.add_parser("set", help="define or replace a trait from FILE (TOML or JSON)")
    put.add_argument("trait_id")
    put.add_argument("file", type=Path, help="the trait's table (op, event...), or [traits.ID]")
    connection(put, "admin")
    delete = verbs.add_parser("delete", help="delete a trait (refused while a segment uses it)")
    delete.add_argument("trait_id")
    connection(delete, "admin")


def run_traits(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``journeys traits <verb>`` through the API; 2 for an unreadable file."""
    if args.verb == "list":
        return ask_api(args, settings, "read", "GET", "/v1/traits")
    path = f"/v1/traits/{quote(args.trait_id, safe='')}"
    if args.verb == "show":
        return ask_api(args, settings, "read", "GET", path)
    if args.verb == "delete":
        return ask_api(args, settings, "admin", "DELETE", path)
    try:
        table = definition_table(args.file, "traits", args.trait_id)
    except (OSError, ValueError) as error:
        print(f"{args.file}: {error}", file=sys.stderr)
        return 2
    return ask_api(args, settings, "admin", "PUT", path, json=table)


def run_segments(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``journeys segments <verb>`` (or ``traits``); 2 for invalid definitions or an
    unknown segment."""
    if args.command == TRAITS_COMMAND:
        return run_traits(args, settings)
    if args.verb in _API_VERBS:
        return _API_VERBS[args.verb](args, settings)
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
    params: dict[str, Any] = {"limit": args.limit}
    if args.as_of:
        params["as_of"] = args.as_of
    return _ask(args, settings, "GET", "read", "/members", params=params)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    return _ask(args, settings, "GET", "read", "")


def _set(args: argparse.Namespace, settings: Settings) -> int:
    try:
        table = segment_table(args.file, args.segment_id)
    except (OSError, ValueError) as error:
        print(f"{args.file}: {error}", file=sys.stderr)
        return 2
    return _ask(args, settings, "PUT", "admin", "", json_body=table)


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    return _ask(args, settings, "DELETE", "admin", "")


def _upload(args: argparse.Namespace, settings: Settings) -> int:
    try:
        content = args.file.read_bytes()
    except OSError as error:
        print(f"{args.file}: {error}", file=sys.stderr)
        return 2
    return _ask(args, settings, "POST", "admin", "/members", content=content)


def segment_table(path: Path, segment_id: str) -> dict[str, Any]:
    """A segment's table from a TOML or JSON file: the file itself, or its [segments.ID]."""
    return definition_table(path, "segments", segment_id)


def _ask(
    args: argparse.Namespace,
    settings: Settings,
    method: str,
    kind: str,
    tail: str,
    **kwargs: Any,
) -> int:
    json_body = kwargs.pop("json_body", None)
    path = f"/v1/segments/{quote(args.segment_id, safe='')}{tail}"
    return ask_api(args, settings, kind, method, path, json=json_body, **kwargs)


_API_VERBS = {
    "members": _members,
    "status": _status,
    "set": _set,
    "delete": _delete,
    "upload": _upload,
}
