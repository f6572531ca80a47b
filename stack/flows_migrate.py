"""``journeys flows migrate-rules [RULES_FILE] [--overrides-from-api] [--out FILE]``.

Writes a flows file (TOML) from a trigger rules file (journeys/rules.toml's
format; default: JOURNEYS_TRIGGER_RULES_FILE, else the shipped one), the rules
becoming flows as journeys/flows/migration.py says. With
``--overrides-from-api`` the running node's rules in force (``GET
/v1/outreach/rules``, admin key: its rules file with the overrides stored by
``PUT /v1/outreach/rules/{id}``) replace the file's rules of the same id and add
the others, so what the API changed is migrated too. The output is validated
before it is written.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

from journeys.flows.definitions import FlowError, flows_from_toml
from journeys.flows.migration import flows_from_rules, flows_toml
from journeys.outreach_rules import RuleError, TriggerRule, apply_overrides, parse_rules
from journeys.toml_text import load_toml
from stack.http_commands import api_response, connection, failed
from stack.outreach import declared_rules
from stack.settings import Settings

MIGRATE_VERB = "migrate-rules"


def add_migrate_parser(verbs: Any) -> None:
    """The ``migrate-rules`` verb of ``journeys flows``."""
    verb = verbs.add_parser(MIGRATE_VERB, help="write a flows file from a trigger rules file")
    verb.add_argument(
        "rules_file",
        nargs="?",
        type=Path,
        help="default: JOURNEYS_TRIGGER_RULES_FILE, else journeys/rules.toml",
    )
    verb.add_argument(
        "--overrides-from-api",
        action="store_true",
        help="also the running node's rules in force (the API's overrides; admin key)",
    )
    verb.add_argument("--out", type=Path, help="the flows file to write (default: stdout)")
    connection(verb, "admin")


def run_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Run the verb: 0 written, 1 the API refused, 2 a bad rules file or unreachable API."""
    try:
        rules = _rules(args, settings)
    except (RuleError, tomllib.TOMLDecodeError, OSError) as error:
        print(f"{args.rules_file or 'rules file'}: {error}", file=sys.stderr)
        return 2
    if isinstance(rules, int):
        return rules
    source = args.rules_file or settings.trigger_rules_file or "journeys/rules.toml"
    header = (
        f"Flows migrated from the trigger rules of {source}"
        + (" with the API's overrides" if args.overrides_from_api else "")
        + "\nby `journeys flows migrate-rules` (journeys/flows/migration.py)."
    )
    text = flows_toml(flows_from_rules(rules), header)
    try:
        flows_from_toml(text)  # what is written always loads
    except FlowError as error:
        for path, message in error.errors:
            print(f"{path}: {message}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {len(rules)} flows to {args.out}", file=sys.stderr)
    return 0


def _rules(args: argparse.Namespace, settings: Settings) -> list[TriggerRule] | int:
    if args.rules_file is not None:
        rules = parse_rules(load_toml(args.rules_file.read_text(encoding="utf-8")))
    else:
        rules = declared_rules(settings)
    if not args.overrides_from_api:
        return rules
    response = api_response(args, settings, "admin", "GET", "/v1/outreach/rules", timeout=30)
    if isinstance(response, int):
        return response
    if failed(response):
        return 1
    return apply_overrides(rules, [_as_declared(rule) for rule in response.json()["rules"]])


def _as_declared(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule as the API lists it (``TriggerRule.to_dict``) in the rules file's shape."""
    declared = {k: v for k, v in rule.items() if k not in ("delay_s", "frequency_cap_s")}
    declared["delay"] = rule.get("delay_s", 0)
    declared["frequency_cap"] = rule.get("frequency_cap_s", 0)
    if declared.get("quiet_hours") is None:
        declared.pop("quiet_hours", None)
    return declared
