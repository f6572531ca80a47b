"""``journeys outreach …``: manage outreach over the API (the CLI is an HTTP client)."""

from __future__ import annotations

import argparse
from typing import Any

from stack.http_commands import ask_api, connection
from stack.settings import Settings


def add_parser(commands: Any) -> None:
    """The ``outreach`` subcommand and its verbs."""
    parser = commands.add_parser("outreach", help="webhooks and triggers (admin key)")
    connection(parser, "admin")
    areas = parser.add_subparsers(dest="area", required=True)
    verbs_made: list[argparse.ArgumentParser] = []

    def verb(verbs: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = verbs.add_parser(name, **kwargs)
        verbs_made.append(made)
        return made

    webhooks = areas.add_parser("webhooks", help="subscribed webhook endpoints")
    verbs = webhooks.add_subparsers(dest="verb", required=True)
    verb(verbs, "list")
    add = verb(verbs, "add")
    add.add_argument("url_to_call", metavar="url")
    add.add_argument("--rule", action="append", default=[], help="subscribe to a rule (repeat)")
    add.add_argument("--secret", help="signing secret (default: generated, shown once)")
    remove = verb(verbs, "remove")
    remove.add_argument("endpoint_id")

    triggers = areas.add_parser("triggers", help="recent triggers and re-delivery")
    verbs = triggers.add_subparsers(dest="verb", required=True)
    listing = verb(verbs, "list")
    listing.add_argument("--customer")
    listing.add_argument("--limit", type=int, default=50)
    again = verb(verbs, "redeliver", help="re-deliver a dead-lettered trigger")
    again.add_argument("trigger_id")
    # As every HTTP command: `outreach webhooks list --url …` as well as `outreach --url …`.
    for made in verbs_made:
        connection(made, "admin", nested=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Do what was asked; print the API's JSON answer; non-zero on a 4xx/5xx."""
    method, path, body, params = _request(args)
    return ask_api(
        args, settings, "admin", method, f"/v1/outreach{path}", 30, json=body, params=params
    )


def _request(args: argparse.Namespace) -> tuple[str, str, Any, dict[str, Any]]:
    if args.area == "webhooks":
        if args.verb == "list":
            return "GET", "/webhooks", None, {}
        if args.verb == "add":
            body = {"url": args.url_to_call, "rules": args.rule}
            if args.secret:
                body["secret"] = args.secret
            return "POST", "/webhooks", body, {}
        return "DELETE", f"/webhooks/{args.endpoint_id}", None, {}
    if args.verb == "list":
        params: dict[str, Any] = {"limit": args.limit}
        if args.customer:
            params["customer_id"] = args.customer
        return "GET", "/triggers", None, params
    return "POST", f"/triggers/{args.trigger_id}/redeliver", None, {}
