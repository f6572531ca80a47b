"""Trigger rules as declared in a rules file: what starts a clock, how long, and what stops it.

Pure: parsing takes already-loaded data (the stack reads the TOML file), and
nothing here knows about Kafka, SQL or HTTP.

A rule::

    [[rule]]
    id = "abandoned_cart"           # unique, also the webhook's "rule" field
    trigger = "abandoned_cart"      # one of TRIGGER_KINDS
    delay = "1h"                    # "90s", "15m", "1h", "7d" or seconds
    frequency_cap = "24h"           # at most one trigger of this rule per customer per window
    exit = ["Order Completed"]      # events (stamped after the clock started) that cancel it
    channels = ["webhook"]          # webhook and/or email
    conditions = { min_cart_value = 0 }
    quiet_hours = { start = "21:00", end = "08:00" }   # customer's local time; optional
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import time, timedelta
from typing import Any

from events import normalized_name

# What can start a rule's clock (see journeys/triggers.py for each one's anchor).
TRIGGER_KINDS = (
    "abandoned_cart",
    "post_purchase",
    "ticket_resolved",
    "ticket_open",
    "repurchase",
    "win_back",
    "birthday",
    "high_value",
)
CHANNELS = ("webhook", "email")
# The RFM segments a high-value rule can watch for, as named by the analysis
# read side (projections/analytics/reports.py SEGMENTS; a unit test keeps them equal).
RFM_SEGMENTS = frozenset(
    {
        "champions",
        "loyal",
        "cannot_lose",
        "at_risk",
        "new_customers",
        "potential_loyalists",
        "hibernating",
        "needs_attention",
    }
)

MAX_DURATION_S = 3650 * 86400
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class RuleError(ValueError):
    """A rule that cannot be used; ``field`` names what is wrong."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.rule = rule
        self.message = message


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily window, in the customer's local time, in which nothing is sent."""

    start: time
    end: time

    def contains(self, moment: time) -> bool:
        """True when ``moment`` (local wall time) falls in the window; it may wrap midnight."""
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


@dataclass(frozen=True, slots=True)
class TriggerRule:
    """One declared outreach rule."""

    id: str
    trigger: str
    delay: timedelta
    frequency_cap: timedelta = timedelta(0)
    exit_events: tuple[str, ...] = ()
    channels: tuple[str, ...] = ("webhook",)
    conditions: Mapping[str, Any] = field(default_factory=dict)
    quiet_hours: QuietHours | None = None
    enabled: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The rule as plain data (API and rules file shape, durations in seconds)."""
        return {
            "id": self.id,
            "trigger": self.trigger,
            "delay_s": self.delay.total_seconds(),
            "frequency_cap_s": self.frequency_cap.total_seconds(),
            "exit": list(self.exit_events),
            "channels": list(self.channels),
            "conditions": dict(self.conditions),
            "quiet_hours": (
                {
                    "start": self.quiet_hours.start.strftime("%H:%M"),
                    "end": self.quiet_hours.end.strftime("%H:%M"),
                }
                if self.quiet_hours
                else None
            ),
            "enabled": self.enabled,
        }


def parse_duration(value: Any, field_name: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"7d"``, ``"250ms"`` or a number of seconds."""
    if isinstance(value, bool):
        raise RuleError(field_name, "duration", "must be a duration such as '1h' or seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise RuleError(field_name, "duration", "must be a duration such as '1h' or seconds")
    if seconds < 0:
        raise RuleError(field_name, "duration", "must not be negative")
    if seconds > MAX_DURATION_S:
        raise RuleError(field_name, "duration", "must be at most 3650 days")
    return timedelta(seconds=seconds)


def _parse_clock(value: Any, field_name: str) -> time:
    try:
        hours, minutes = str(value).split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise RuleError(field_name, "time", "must be HH:MM") from None


def parse_quiet_hours(value: Any, field_name: str) -> QuietHours:
    """``{start = "21:00", end = "08:00"}``; raises :class:`RuleError` naming the field."""
    if not isinstance(value, Mapping) or "start" not in value or "end" not in value:
        raise RuleError(field_name, "type", "must have start and end (HH:MM)")
    return QuietHours(
        _parse_clock(value["start"], f"{field_name}.start"),
        _parse_clock(value["end"], f"{field_name}.end"),
    )


# Known conditions and what they accept: (low, high) for numbers, a set for names.
_CONDITIONS: dict[str, tuple[float, float] | frozenset[str]] = {
    "min_cart_value": (0, 1e12),
    "min_orders": (2, 1e6),
    "cycle_factor": (0, 100),
    "local_hour": (0, 23),
    "stage": frozenset({"awareness", "consideration", "purchase", "service", "loyalty"}),
    "segment": RFM_SEGMENTS,
}


def _check_conditions(conditions: Mapping[str, Any], where: str) -> None:
    for name, value in conditions.items():
        accepted = _CONDITIONS.get(name)
        if accepted is None:
            known = ", ".join(_CONDITIONS)
            raise RuleError(f"{where}.{name}", "unknown", f"is not a condition; known: {known}")
        if isinstance(accepted, frozenset):
            if value not in accepted:
                choices = ", ".join(sorted(accepted))
                raise RuleError(f"{where}.{name}", "enum", f"must be one of {choices}")
            continue
        low, high = accepted
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise RuleError(
                f"{where}.{name}", "range", f"must be a number from {low:g} to {high:g}"
            )
        if name == "local_hour" and value != int(value):
            raise RuleError(f"{where}.{name}", "integer", "must be a whole hour")


def _field(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def parse_rule(data: Mapping[str, Any], where: str = "rule") -> TriggerRule:
    """One rule from its declared form; raises :class:`RuleError` naming the field."""
    rule_id = data.get("id")
    if not isinstance(rule_id, str) or not re.fullmatch(r"[a-z0-9_\-]{1,64}", rule_id):
        raise RuleError(_field(where, "id"), "pattern", "must be 1-64 of a-z, 0-9, _ and -")
    trigger = data.get("trigger")
    if trigger not in TRIGGER_KINDS:
        raise RuleError(
            _field(where, "trigger"), "enum", f"must be one of {', '.join(TRIGGER_KINDS)}"
        )
    channels = tuple(data.get("channels", ("webhook",)))
    for channel in channels:
        if channel not in CHANNELS:
            raise RuleError(
                _field(where, "channels"), "enum", f"must be among {', '.join(CHANNELS)}"
            )
    exits = data.get("exit", ())
    if not isinstance(exits, list | tuple) or not all(isinstance(e, str) for e in exits):
        raise RuleError(_field(where, "exit"), "type", "must be a list of event names")
    conditions = data.get("conditions", {})
    if not isinstance(conditions, Mapping):
        raise RuleError(_field(where, "conditions"), "type", "must be a table of conditions")
    _check_conditions(conditions, _field(where, "conditions"))
    quiet = data.get("quiet_hours")
    quiet_hours = None if quiet is None else parse_quiet_hours(quiet, _field(where, "quiet_hours"))
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError(_field(where, "enabled"), "type", "must be true or false")
    return TriggerRule(
        id=rule_id,
        trigger=str(trigger),
        delay=parse_duration(data.get("delay", 0), _field(where, "delay")),
        frequency_cap=parse_duration(data.get("frequency_cap", 0), _field(where, "frequency_cap")),
        exit_events=tuple(normalized_name(e) for e in exits),
        channels=channels,
        conditions=dict(conditions),
        quiet_hours=quiet_hours,
        enabled=enabled,
    )


def parse_rules(document: Mapping[str, Any]) -> list[TriggerRule]:
    """Every rule of a rules document (``{"rule": [...]}``, as TOML loads it)."""
    items = document.get("rule", [])
    if not isinstance(items, list):
        raise RuleError("rule", "type", "must be an array of tables ([[rule]])")
    rules = [parse_rule(item, f"rule[{index}]") for index, item in enumerate(items)]
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise RuleError("rule.id", "unique", f"{rule.id!r} is declared twice")
        seen.add(rule.id)
    return rules


def apply_overrides(
    rules: Sequence[TriggerRule], overrides: Iterable[Mapping[str, Any]]
) -> list[TriggerRule]:
    """The declared rules with the API's overrides on top (a full rule per override).

    An override with an id not in the file adds a rule; one with the same id
    replaces the declared one entirely.
    """
    by_id = {rule.id: rule for rule in rules}
    for override in overrides:
        rule = parse_rule(override)
        by_id[rule.id] = rule
    return list(by_id.values())


def disabled(rule: TriggerRule) -> TriggerRule:
    """The same rule, switched off."""
    return replace(rule, enabled=False)
