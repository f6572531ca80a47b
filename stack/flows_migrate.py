"""``journeys flows migrate-rules [RULES_FILE] [--out FILE]``.

Writes a flows file (TOML) from a trigger rules file (journeys/outreach_rules.py's
format; default: JOURNEYS_TRIGGER_RULES_FILE), the rules becoming flows as
journeys/flows/migration.py says, to edit and load as flows. The output is
validated before it is written. A worker does the same at its start for a
configured rules file and a store's rule overrides (stack/flows_switch.py).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

from journeys.flows.definitions import FlowError, flows_from_toml
from journeys.flows.migration import flows_from_rules, flows_toml
from journeys.outreach_rules import RuleError, TriggerRule, parse_rules
from journeys.toml_text import load_toml
from stack.settings import Settings

MIGRATE_VERB = "migrate-rules"


def add_migrate_parser(verbs: Any) -> None:
    """The ``migrate-rules`` verb of ``journeys flows``."""
    verb = verbs.add_parser(MIGRATE_VERB, help="write a flows file from a trigger rules file")
    verb.add_argument(
        "rules_file",
        nargs="?",
        type=Path,
        help="default: JOURNEYS_TRIGGER_RULES_FILE",
    )
    verb.add_argument("--out", type=Path, help="the flows file to write (default: stdout)")


def run_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Run the verb: 0 written, 2 no or a bad rules file."""
    source = args.rules_file or (
        Path(settings.trigger_rules_file) if settings.trigger_rules_file else None
    )
    if source is None:
        print("no rules file: name one (or set JOURNEYS_TRIGGER_RULES_FILE)", file=sys.stderr)
        return 2
    try:
        rules = _rules(source)
    except (RuleError, tomllib.TOMLDecodeError, OSError) as error:
        print(f"{source}: {error}", file=sys.stderr)
        return 2
    header = (
        f"Flows migrated from the trigger rules of {source}"
        "\nby `journeys flows migrate-rules` (journeys/flows/migration.py)."
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


def _rules(path: Path) -> list[TriggerRule]:
    return parse_rules(load_toml(path.read_text(encoding="utf-8")))
