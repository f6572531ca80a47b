"""CLI commands that talk to a running API: write keys, dead letters, history import.

They are HTTP clients on purpose: the node holds the chdb folder (one process
per folder), so the CLI cannot open it while the node runs; and in scale-out
the API is the one way in anyway.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from events.history import batches, plan_import
from journeys.toml_text import load_toml
from stack.settings import Settings

# Requests of the import: well under the 500 KB and 2500-event batch limits.
IMPORT_BATCH_EVENTS = 200


def add_commands(commands: Any) -> None:
    """Register ``keys``, ``dead-letters`` and ``import`` on the CLI's subparsers."""
    keys = commands.add_parser("keys", help="create, list or revoke write keys (admin key)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new write key for a source")
    create.add_argument("name", help="the source, e.g. shop-eu")
    create.add_argument(
        "--origin",
        action="append",
        default=[],
        help="a browser origin that may send with it, e.g. https://shop.example (repeat); "
        "default: JOURNEYS_INGEST_ORIGINS of the API",
    )
    listing = actions.add_parser("list", help="every write key, without secrets")
    revoke = actions.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key_id")
    origins = actions.add_parser("origins", help="set the browser origins a key accepts")
    origins.add_argument("key_id")
    origins.add_argument("origins", nargs="*", help="none: back to the API's default")
    # On each action, so the flags go where users put them: `keys list --url …`.
    for action in (create, listing, revoke, origins):
        connection(action, "admin")

    letters = commands.add_parser("dead-letters", help="list rejected events, newest first")
    connection(letters, "admin")
    letters.add_argument("--limit", type=int, default=50)
    letters.add_argument("--json", action="store_true", help="one JSON object per line")
    letters.add_argument("--source", help="only this write key id's letters")
    letters.add_argument("--before", help="the cursor printed after a full page")

    customers = commands.add_parser(
        "customers", help="erase or export one customer's data (GDPR; admin key)"
    )
    customer_actions = customers.add_subparsers(dest="action", required=True)
    erase = customer_actions.add_parser(
        "erase", help="destroy the customer's key, delete their rows, suppress their ids"
    )
    export = customer_actions.add_parser("export", help="everything held about them, as JSON")
    for action in (erase, export):
        action.add_argument("customer_id")
        connection(action, "admin")

    history = commands.add_parser("import", help="import customers and orders from CSV files")
    connection(history, "write")
    history.add_argument("files", nargs="+", type=Path, help="customers.csv, orders.csv")
    history.add_argument("--dry-run", action="store_true", help="validate only; send nothing")


COMMANDS = ("keys", "dead-letters", "customers", "import")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of :data:`COMMANDS`; returns the exit code."""
    url = args.url or settings.api_base_url
    try:
        if args.command == "keys":
            return _keys(args, url, key(args, settings, "admin"))
        if args.command == "dead-letters":
            return _dead_letters(args, url, key(args, settings, "admin"))
        if args.command == "customers":
            return _customers(args, url, key(args, settings, "admin"))
        return _import(args, url, key(args, settings, "write"))
    except httpx.HTTPError as error:
        print(f"cannot reach the API at {url}: {error}", file=sys.stderr)
        return 2


def connection(parser: argparse.ArgumentParser, kind: str, *, nested: bool = False) -> None:
    """``--url`` and ``--<kind>-key``: how every HTTP command finds the API and its key.

    ``nested``: the flags of a command's sub-parser, which only set what is
    given there, so they may come before or after the subcommand.
    """
    default = argparse.SUPPRESS if nested else ""
    parser.add_argument(
        "--url", default=default, help="the API (default: JOURNEYS_API_URL, or host:port)"
    )
    parser.add_argument(
        f"--{kind}-key",
        default=default,
        help=f"default: JOURNEYS_{kind.upper()}_KEY, or data/dev-keys.json of `journeys up`",
    )


def key(args: argparse.Namespace, settings: Settings, kind: str) -> str:
    """The key given, configured or kept by `journeys up` (in that order)."""
    given = getattr(args, f"{kind}_key") or getattr(settings, f"{kind}_key")
    if given:
        return str(given)
    stored = settings.data_dir / "dev-keys.json"
    if stored.exists():
        return str(json.loads(stored.read_text()).get(f"{kind}_key", ""))
    return ""


def api_response(
    args: argparse.Namespace,
    settings: Settings,
    kind: str,
    method: str,
    path: str,
    timeout: float = 60,
    **request: Any,
) -> httpx.Response | int:
    """Send ``method path`` to the API with the ``kind`` key: its answer, or exit code 2
    (said on stderr) when the API cannot be reached."""
    base = args.url or settings.api_base_url
    try:
        return httpx.request(
            method,
            f"{base}{path}",
            headers={"Authorization": f"Bearer {key(args, settings, kind)}"},
            timeout=timeout,
            **request,
        )
    except httpx.HTTPError as error:
        print(f"cannot reach the API at {base}: {error}", file=sys.stderr)
        return 2


def ask_api(
    args: argparse.Namespace,
    settings: Settings,
    kind: str,
    method: str,
    path: str,
    timeout: float = 60,
    **request: Any,
) -> int:
    """Send ``method path`` to the API with the ``kind`` key, print its JSON answer;
    the exit code (2 when the API cannot be reached)."""
    response = api_response(args, settings, kind, method, path, timeout, **request)
    return response if isinstance(response, int) else print_answer(response)


def print_answer(response: httpx.Response) -> int:
    """Print the API's JSON answer (stdout on success, else stderr); the exit code."""
    text = json.dumps(response.json(), indent=2) if response.content else ""
    print(text, file=sys.stdout if response.is_success else sys.stderr)
    return 0 if response.is_success else 1


def failed(response: httpx.Response) -> bool:
    if response.is_success:
        return False
    try:
        message = response.json().get("message", response.text)
    except ValueError:
        message = response.text
    print(f"the API answered {response.status_code}: {message}", file=sys.stderr)
    return True


def _keys(args: argparse.Namespace, url: str, admin_key: str) -> int:
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        if args.action == "create":
            body = {"name": args.name, "allowed_origins": args.origin}
            response = client.post("/v1/write-keys", json=body)
            if failed(response):
                return 1
            created = response.json()
            print(f"write key for {created['name']} (id {created['key_id']}), shown only now:")
            print(created["write_key"])
            return 0
        if args.action == "revoke":
            response = client.delete(f"/v1/write-keys/{args.key_id}")
            if failed(response):
                return 1
            print(f"revoked {args.key_id}")
            return 0
        if args.action == "origins":
            body = {"allowed_origins": args.origins}
            response = client.put(f"/v1/write-keys/{args.key_id}/origins", json=body)
            if failed(response):
                return 1
            print(f"{args.key_id} accepts {', '.join(args.origins) or 'the default origins'}")
            return 0
        response = client.get("/v1/write-keys")
        if failed(response):
            return 1
        for found in response.json():
            state = "active" if found["active"] else f"revoked {found['revoked_at']}"
            created = f"created {found['created_at']}" if found["created_at"] else "from settings"
            origins = ", ".join(found.get("allowed_origins") or []) or "default origins"
            print(f"{found['key_id']}  {found['name']:<38} {created}  {state}  ({origins})")
        return 0


def _customers(args: argparse.Namespace, url: str, admin_key: str) -> int:
    path = f"/v1/customers/{quote(args.customer_id, safe='')}"
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
        erasing = args.action == "erase"
        response = client.delete(path) if erasing else client.get(f"{path}/export")
    if failed(response):
        return 1
    print(json.dumps(response.json(), indent=2))
    return 0


def _dead_letters(args: argparse.Namespace, url: str, admin_key: str) -> int:
    response = httpx.get(
        f"{url}/v1/dead-letters",
        params={
            k: v
            for k, v in {"limit": args.limit, "source": args.source, "before": args.before}.items()
            if v is not None
        },
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=30,
    )
    if failed(response):
        return 1
    for letter in response.json()["dead_letters"]:
        if args.json:
            print(json.dumps(letter))
            continue
        reasons = "; ".join(f"{r.get('field')}: {r.get('message')}" for r in letter["reasons"])
        print(f"{letter['rejected_at']}  {letter['source'] or '-':<10} {reasons}")
        print(f"    {letter['payload'][:200]}")
    cursor = response.json()["next_before"]
    if cursor and not args.json:
        print(f"more: journeys dead-letters --before {cursor}")
    return 0


def _import(args: argparse.Namespace, url: str, write_key: str) -> int:
    plans = []
    for path in args.files:
        if not path.exists():
            print(f"{path}: no such file", file=sys.stderr)
            return 2
        plan = plan_import(path)
        plans.append(plan)
        print(f"{path}: {plan.rows} rows, {len(plan.calls)} events, {len(plan.problems)} bad rows")
        for problem in plan.problems:
            print(f"  {problem}", file=sys.stderr)
    calls = [call for plan in plans for call in plan.calls]
    bad = sum(len(plan.problems) for plan in plans)
    if args.dry_run or not calls:
        return 1 if bad else 0
    sent = 0
    with httpx.Client(base_url=url, auth=(write_key, ""), timeout=60) as client:
        for chunk in batches(calls, IMPORT_BATCH_EVENTS):
            response = client.post("/v1/batch", json={"batch": chunk})
            if failed(response):
                print(f"stopped after {sent} of {len(calls)} events", file=sys.stderr)
                return 1
            sent += len(chunk)
            print(f"\rsent {sent}/{len(calls)} events", end="", flush=True)
    print(f"\nimported {sent} events as history; {bad} bad rows skipped")
    return 1 if bad else 0


def definition_table(path: Path, section: str, key: str) -> dict[str, Any]:
    """A definition's table from a TOML or JSON file: the file itself, or its [section.KEY]
    (``journeys segments set``, ``journeys flows set``)."""
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            # Dates and times (since = 2026-01-01) travel as ISO-8601 text.
            data = json.loads(json.dumps(load_toml(text), default=lambda v: v.isoformat()))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("must hold a table")
    nested = data.get(section)
    if isinstance(nested, dict) and key in nested:
        data = nested[key]
    if not isinstance(data, dict):
        raise ValueError(f"{section}.{key} must be a table")
    return data
