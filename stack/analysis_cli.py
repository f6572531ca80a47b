"""``journeys funnel`` and ``journeys retention``: ask the API, print a table, export CSV.

The CLI is an HTTP client of the API (chdb's folder is locked by the running
node, and a server deployment is reached the same way): the URL comes from
``--url`` or the settings' API host and port, the read key from ``--read-key``,
the settings, or the development keys ``journeys up`` keeps in ``data_dir``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

import httpx

from events import EventType
from projections.analytics.sql import NUMERIC_COLUMNS
from stack.settings import Settings

_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_seconds(text: str) -> int:
    """``7d``, ``12h``, ``30m``, ``45s`` or plain seconds, as seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: use a number with s, m, h, d or w")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def step_body(text: str) -> dict[str, Any]:
    """A canonical type (browse, cart, …) by its name, anything else as an event name."""
    lowered = text.strip().lower()
    if lowered in {t.value for t in EventType}:
        return {"event_type": lowered}
    return {"event": text}


# Longest first, so ">=" is not read as ">" followed by "=value".
_OPERATORS = (("!=", "neq"), (">=", "gte"), ("<=", "lte"), ("=", "eq"), (">", "gt"), ("<", "lt"))
_IN = re.compile(r"^\s*([^\s=!<>]+)\s+in\s+(.+)$", re.IGNORECASE)


def filter_body(text: str) -> dict[str, Any]:
    """``category=shoes``, ``price>=10``, ``campaign!=spring`` or ``category in shoes,bags``.

    The API's filter (see api/analysis.py). Values are sent as text, which is
    how equality compares properties (``campaign=7`` matches a 7 sent as a
    number or as "7"), except for the numeric columns and the order
    comparisons, which take numbers.
    """
    found = _IN.match(text)
    if found:
        name = found.group(1)
        values = [_value(name, "in", v) for v in found.group(2).split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r}: 'in' needs values, e.g. a in x,y")
        return {"property": name, "op": "in", "value": values}
    for symbol, op in _OPERATORS:
        name, sep, value = text.partition(symbol)
        if sep and name.strip() and value.strip():
            return {"property": name.strip(), "op": op, "value": _value(name.strip(), op, value)}
    raise argparse.ArgumentTypeError(
        f"{text!r}: use property=value, !=, >, >=, <, <= or 'property in a,b'"
    )


def _value(name: str, op: str, text: str) -> str | float:
    text = text.strip()
    if name not in NUMERIC_COLUMNS and op in ("eq", "neq", "in"):
        return text
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} {op} {text!r}: give a number") from None
    return int(number) if number.is_integer() else number


_TRAIT_OPERATORS = tuple((symbol, "ne" if op == "neq" else op) for symbol, op in _OPERATORS)


def trait_filter_body(text: str) -> dict[str, Any]:
    """``lifetime_revenue>500``, ``favourite_brand=acme``, ``orders_90d!=0`` or
    ``favourite_brand in acme,zeta``: the API's trait filter (a computed trait now).
    A value that reads as a number is sent as one (traits keep numbers as numbers)."""
    found = _IN.match(text)
    if found:
        values = [_trait_value(v) for v in found.group(2).split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r}: 'in' needs values, e.g. a in x,y")
        return {"trait": found.group(1), "op": "in", "value": values}
    for symbol, op in _TRAIT_OPERATORS:
        name, sep, value = text.partition(symbol)
        if sep and name.strip() and value.strip():
            return {"trait": name.strip(), "op": op, "value": _trait_value(value)}
    raise argparse.ArgumentTypeError(
        f"{text!r}: use trait=value, !=, >, >=, <, <= or 'trait in a,b'"
    )


def _trait_value(text: str) -> str | float:
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else number


class _Step(argparse.Action):
    """``--step``/``--exclude``: append a step; a following ``--where`` filters it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        steps = list(getattr(namespace, self.dest) or [])
        steps.append(step_body(str(values)))
        setattr(namespace, self.dest, steps)
        namespace.last_step = steps[-1]


class _Where(argparse.Action):
    """``--where``: a filter on the step or exclusion given just before it."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        step: dict[str, Any] | None = getattr(namespace, "last_step", None)
        if step is None:
            parser.error("--where filters the --step or --exclude before it: give that first")
        step.setdefault("filters", []).append(values)


def add_commands(commands: Any) -> None:
    """Register ``funnel`` and ``retention`` on the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="API base URL (default: from settings)")
    common.add_argument("--read-key", help="read key (default: settings or data/dev-keys.json)")
    common.add_argument("--start", help="only events at or after this time (ISO 8601)")
    common.add_argument("--end", help="only events before this time (ISO 8601)")
    common.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    common.add_argument("--json", action="store_true", help="print the API's JSON instead")
    common.add_argument(
        "--trait",
        action="append",
        type=trait_filter_body,
        default=[],
        dest="trait_filters",
        help="only customers whose computed trait now meets this: lifetime_revenue>500, "
        "'favourite_brand in acme,zeta' (repeat for several; all must hold)",
    )

    funnel = commands.add_parser("funnel", parents=[common], help="run a funnel and print it")
    funnel.add_argument("--step", action=_Step, required=True, help="event type or name")
    funnel.add_argument("--window", type=duration_seconds, default="7d", help="e.g. 7d, 12h")
    funnel.add_argument("--mode", choices=["ordered", "strict", "any_order"], default="ordered")
    funnel.add_argument("--exclude", action=_Step, default=[], help="exclusion step")
    funnel.add_argument(
        "--where",
        action=_Where,
        type=filter_body,
        help="filter on the step or exclusion before it: category=shoes, price>=10, "
        "'category in shoes,bags' (repeat for several; all must hold)",
    )
    funnel.add_argument("--breakdown", help="property whose first-touch value splits the funnel")
    funnel.add_argument(
        "--breakdown-segment",
        metavar="SEGMENT",
        help="split by membership of a segment (in / not in) at the first step-1 event",
    )

    retention = commands.add_parser("retention", parents=[common], help="print a retention table")
    retention.add_argument("--start-event", default="browse", help="event type or name")
    retention.add_argument("--return-event", default="purchase", help="event type or name")
    retention.add_argument("--period", choices=["day", "week", "month"], default="week")
    retention.add_argument("--periods", type=int, default=8)
    retention.add_argument("--recurring", action="store_true", help="every start, not the first")
    for which in ("start", "return"):
        retention.add_argument(
            f"--{which}-where",
            action="append",
            type=filter_body,
            default=[],
            help=f"filter on the {which} event, as funnel --where",
        )
    retention.add_argument(
        "--breakdown-segment",
        metavar="SEGMENT",
        help="split each cohort by membership of a segment (in / not in) at the customer's "
        "first start event of the cohort's period",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the ``funnel`` or ``retention`` command; 0 on success, 1 on an API error."""
    base = args.url or f"http://{settings.api_host}:{settings.api_port}"
    key = args.read_key or settings.read_key or _stored_read_key(settings)
    span = {k: v for k, v in (("start", args.start), ("end", args.end)) if v}
    if args.command == "funnel":
        body: dict[str, Any] = {
            "steps": args.step,
            "window_seconds": args.window,
            "mode": args.mode,
            "exclusions": args.exclude,
            **span,
        }
        if args.breakdown:
            body["breakdown"] = args.breakdown
        if args.breakdown_segment:
            body["breakdown_segment"] = args.breakdown_segment
        path = "/v1/funnels"
    else:
        body = {
            "start_event": {**step_body(args.start_event), "filters": args.start_where},
            "return_event": {**step_body(args.return_event), "filters": args.return_where},
            "period": args.period,
            "periods": args.periods,
            "mode": "recurring" if args.recurring else "first_time",
            **span,
        }
        if args.breakdown_segment:
            body["breakdown_segment"] = args.breakdown_segment
        path = "/v1/retention"
    if args.trait_filters:
        body["trait_filters"] = args.trait_filters
    try:
        answer = httpx.post(
            base + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
        )
    except httpx.HTTPError as error:
        print(f"cannot reach the API at {base}: {error}", file=sys.stderr)
        return 1
    if answer.status_code != 200:
        print(f"{answer.status_code}: {answer.text}", file=sys.stderr)
        return 1
    result = answer.json()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    header, rows = funnel_table(result) if args.command == "funnel" else retention_table(result)
    print(render(header, rows))
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        print(f"written to {args.csv}")
    return 0


def funnel_table(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The funnel as rows: one per step, and per breakdown value when there is one."""
    header = ["group", "step", "customers", "from previous", "from first", "median", "p90"]
    groups = [("all", result["steps"]), *sorted((result.get("breakdown") or {}).items())]
    rows = [
        [
            group,
            s["step"],
            s["customers"],
            _percent(s["conversion_from_previous"]),
            _percent(s["conversion_from_first"]),
            _duration(s.get("median_seconds")),
            _duration(s.get("p90_seconds")),
        ]
        for group, steps in groups
        for s in steps
    ]
    return header, rows


def retention_table(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The retention table: a row per cohort, a column per period after it (and a group
    column, all / in / not in, with a breakdown by segment)."""
    groups = [("all", result["cohorts"]), *sorted((result.get("breakdown") or {}).items())]
    cohorts = [c for _, found in groups for c in found]
    periods = max((len(c["retained"]) for c in cohorts), default=0)
    header = ["cohort", "size"] + [f"{result['period']} {k}" for k in range(1, periods + 1)]
    rows = [
        [c["cohort"], c["size"]]
        + [f"{n} ({_percent(r)})" for n, r in zip(c["retained"], c["rates"], strict=True)]
        for _, found in groups
        for c in found
    ]
    if result.get("breakdown") is None:
        return header, rows
    names = [group for group, found in groups for _ in found]
    return ["group", *header], [[name, *row] for name, row in zip(names, rows, strict=True)]


def render(header: list[str], rows: list[list[Any]]) -> str:
    """A plain text table with aligned columns."""
    cells = [header, *([str(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _stored_read_key(settings: Settings) -> str:
    path = settings.data_dir / "dev-keys.json"
    if path.exists():
        return str(json.loads(path.read_text()).get("read_key", ""))
    return ""


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
