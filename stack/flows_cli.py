"""``journeys flows validate|list|show|backtest|results|set|delete|pause|resume``.

Journey flows (issue 18). ``validate`` checks a flows file (no store, no running
node; the file seeds the stored flows the first time only); ``list`` and
``show`` read the stored flows through a running node's API (what the worker
runs), ``backtest`` and ``results`` ask it too, as it reads the event log (the
node holds the chdb folder); ``set``, ``delete``, ``pause`` and ``resume``
change the stored flows through it (admin key), as ``journeys segments set``
does.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from journeys.flows.definitions import FlowDefinition, FlowError
from stack.flows import load_flows
from stack.flows_migrate import MIGRATE_VERB, add_migrate_parser, run_migrate
from stack.http_commands import (
    api_response,
    ask_api,
    connection,
    definition_table,
    failed,
)
from stack.settings import Settings

FLOWS_COMMAND = "flows"
_FILE_HELP = "default: JOURNEYS_FLOWS_FILE, else journeys/flows.toml"


def add_flows_parser(commands: Any) -> None:
    """The ``flows`` subcommand and its verbs."""
    parser = commands.add_parser(FLOWS_COMMAND, help="journey flows: validate, list, backtest")
    verbs = parser.add_subparsers(dest="verb", required=True)
    check = verbs.add_parser(
        "validate", help="check a flows file; errors name the node and the field"
    )
    check.add_argument("--file", type=Path, help=_FILE_HELP)
    listing = verbs.add_parser("list", help="the stored flows in force (GET /v1/flows)")
    listing.add_argument(
        "--deleted", action="store_true", help="also deleted flows whose runs left facts"
    )
    connection(listing, "admin")
    show = verbs.add_parser("show", help="one stored flow's definition, as JSON")
    show.add_argument("flow_id")
    connection(show, "admin")
    run = verbs.add_parser(
        "backtest", help="run a flow over recorded history in event time, sending nothing"
    )
    run.add_argument("flow_id")
    run.add_argument("--from", dest="start", required=True, help="ISO-8601 date or time")
    run.add_argument("--to", dest="end", required=True, help="ISO-8601 date or time (exclusive)")
    run.add_argument("--file", type=Path, help="backtest this file's version of the flow (a draft)")
    connection(run, "admin")
    results = verbs.add_parser("results", help="a flow's live counts per node and its uplift")
    results.add_argument("flow_id")
    results.add_argument("--version", type=int, help="only the runs entered on this version")
    results.add_argument("--from", dest="start", help="only runs entered from this time on")
    results.add_argument("--to", dest="end", help="only runs entered before this time")
    connection(results, "admin")
    put = verbs.add_parser("set", help="define or replace a flow from FILE (TOML or JSON)")
    put.add_argument("flow_id")
    put.add_argument("file", type=Path, help="the flow's table, or a file with [flows.ID]")
    connection(put, "admin")
    for name, help_text in (
        ("delete", "take a flow out of force (runs inside finish)"),
        ("pause", "no new entries and nothing sent until resumed"),
        ("resume", "let a paused flow go on"),
    ):
        verb = verbs.add_parser(name, help=help_text)
        verb.add_argument("flow_id")
        connection(verb, "admin")
    add_migrate_parser(verbs)


def run_flows(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``journeys flows <verb>``; 2 for an invalid file or no API, 1 for the API's
    refusal (an unknown flow's 404)."""
    if args.verb == "backtest":
        return _backtest(args, settings)
    if args.verb in _API_VERBS:
        method, tail = _API_VERBS[args.verb]
        body = None
        params = {}
        if args.verb == "results":
            given = {"version": args.version, "from": args.start, "to": args.end}
            params = {name: value for name, value in given.items() if value is not None}
        if args.verb == "set":
            try:
                body = definition_table(args.file, "flows", args.flow_id)
            except (OSError, ValueError) as error:
                print(f"{args.file}: {error}", file=sys.stderr)
                return 2
        path = f"/v1/flows/{quote(args.flow_id, safe='')}{tail}"
        return ask_api(args, settings, "admin", method, path, json=body, params=params)
    if args.verb == MIGRATE_VERB:
        return run_migrate(args, settings)
    if args.verb == "list":
        return _list(args, settings)
    if args.file is not None:
        settings = settings.model_copy(update={"flows_file": args.file})
    flows = _loaded(settings)
    if flows is None:
        return 2
    nodes = sum(len(flow.nodes) for flow in flows)
    print(f"ok: {len(flows)} flows, {nodes} nodes")
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    """One line per stored flow: id, version, name, state, re-entry, nodes (kinds)."""
    params = {"include_deleted": "true"} if args.deleted else {}
    response = api_response(args, settings, "admin", "GET", "/v1/flows", params=params)
    if isinstance(response, int):
        return response
    if failed(response):
        return 1
    for flow in response.json()["flows"]:
        kinds = ", ".join(f"{nid} ({kind})" for nid, kind in flow["nodes"].items())
        state = (
            " [deleted]"
            if flow["deleted"]
            else " [paused]"
            if flow["paused"]
            else ""
            if flow["enabled"]
            else " [disabled]"
        )
        print(
            f"{flow['id']} v{flow['version']}: {flow['name']}{state}, "
            f"reentry {flow['reentry']}: {kinds}"
        )
    return 0


def _loaded(settings: Settings) -> list[FlowDefinition] | None:
    try:
        return load_flows(settings)
    except (FlowError, ValueError) as error:
        errors = error.errors if isinstance(error, FlowError) else [("", str(error))]
        for path, message in errors:
            print(f"{path}: {message}" if path else message, file=sys.stderr)
        return None


def _backtest(args: argparse.Namespace, settings: Settings) -> int:
    body: dict[str, Any] = {"from": args.start, "to": args.end}
    if args.file is not None:
        # The draft is validated here first, so its errors name the file's lines' fields.
        if _loaded(settings.model_copy(update={"flows_file": args.file})) is None:
            return 2
        document = tomllib.loads(args.file.read_text(encoding="utf-8"))
        draft = document.get("flows", {}).get(args.flow_id)
        if draft is None:
            print(f"flow_id: {args.file} has no flow {args.flow_id!r}", file=sys.stderr)
            return 2
        body["definition"] = draft
    path = f"/v1/flows/{quote(args.flow_id, safe='')}/backtest"
    return ask_api(args, settings, "admin", "POST", path, 600, json=body)


# verb → (method, path after /v1/flows/ID)
_API_VERBS = {
    "show": ("GET", ""),
    "results": ("GET", "/results"),
    "set": ("PUT", ""),
    "delete": ("DELETE", ""),
    "pause": ("POST", "/pause"),
    "resume": ("POST", "/resume"),
}
