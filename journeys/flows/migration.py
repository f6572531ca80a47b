"""Trigger rules (the rules file format) as flows: ``journeys flows migrate-rules``.

Pure: :func:`flows_from_rules` turns parsed rules into flow tables (the flows
file's shape) and :func:`flows_toml` writes them as TOML. One function per
trigger kind in :data:`MIGRATIONS` builds the entry (and wait) of the flow; the
parts every rule has are the same for all:

- the rule's delay, counted from its anchor, is a date anchor's ``after`` (or,
  for the ticket left open, the paired wait's timeout; for a birthday or an RFM
  welcome, a ``wait``); a newer fact moves the anchor as it restarted the rule's
  clock;
- ``frequency_cap`` is the flow's (per channel; the rule's sends went to all its
  channels at once), ``quiet_hours`` the flow's with ``policy = "defer"`` (the
  rules held the trigger until the quiet hours ended);
- ``exit`` events are the flow's exits; they cancel an anchor stamped before them
  (the rules' exit) and end a run inside;
- ``channels``: one send node per channel, in order (webhook, then e-mail);
- ``reentry = "always"``: the rules ran every clock; the cap is what held one back;
- ``enabled`` carries over.

The shipped flows file holds the seven lifecycle rules that shipped
(tests/data/lifecycle_rules.toml) migrated so (tests/unit/test_rules_as_flows.py
keeps them equal), beside the canonical abandoned cart; a rules file's
``abandoned_cart`` rule migrates to the rule's own single reminder (a ``cart``
anchor), not to the canonical flow, unless it is the one that shipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from journeys.flows.definitions import FlowDefinition
from journeys.flows.engine import FlowState
from journeys.flows.nodes import SendNode
from journeys.outreach_rules import TriggerRule, parse_rule
from journeys.segment_state import to_ms
from journeys.triggers import CustomerFacts

# Templates per trigger kind: (webhook body, e-mail subject, e-mail body). ``data`` is
# what the rules' payloads carried (journeys/flows/templates.py).
_HELLO = "{{ traits.first_name | default('Hi') }}"
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "abandoned_cart": (
        _HELLO + ", {{ data.cart.lines | length }} items ({{ data.cart.value }}) are in your cart.",
        _HELLO + ", your cart is waiting",
        "You left {{ data.cart.lines | length }} items in your cart.\n",
    ),
    "post_purchase": (
        _HELLO + ", how was your order? Tell us in a review.",
        _HELLO + ", how was your order?",
        "Thank you for your order. A short review helps other customers.\n",
    ),
    "ticket_resolved": (
        _HELLO + ", how did we do with ticket {{ data.ticket_id | default('') }}?",
        "How did we do?",
        "Your ticket {{ data.ticket_id | default('') }} was resolved. How did we do?\n",
    ),
    "ticket_open": (
        "Ticket {{ entry.ticket_id | default('') }} of {{ customer_id }} is open too long"
        " (open: {{ data.open_tickets | join(', ') }}).",
        "Your ticket is being escalated",
        "Your ticket {{ entry.ticket_id | default('') }} is taking long: we escalated it.\n",
    ),
    "repurchase": (
        _HELLO + ", time to stock up again?",
        _HELLO + ", time to stock up again?",
        "It is about time for your next order ({{ data.orders }} so far).\n",
    ),
    "win_back": (
        _HELLO + ", we miss you.",
        _HELLO + ", we miss you",
        "It has been a while. Come back and see what is new.\n",
    ),
    "birthday": (
        "Happy birthday, {{ traits.first_name | default('friend') }}!",
        "Happy birthday, {{ traits.first_name | default('friend') }}!",
        "All the best for your birthday from all of us.\n",
    ),
    "high_value": (
        _HELLO + ", welcome among our best customers"
        " ({{ data.orders }} orders, {{ data.lifetime_revenue }}).",
        _HELLO + ", welcome among our best customers",
        "Thank you for your {{ data.orders }} orders: here is what our best customers get.\n",
    ),
}
NAMES = {
    "abandoned_cart": "Abandoned cart (rule)",
    "post_purchase": "Review request",
    "ticket_resolved": "Satisfaction survey",
    "ticket_open": "Ticket escalation",
    "repurchase": "Repurchase reminder",
    "win_back": "Win-back",
    "birthday": "Birthday",
    "high_value": "High-value welcome",
}
VOIDED = ("Order Refunded", "Order Cancelled")  # a review request's own exits (as the rule's)
# journeys/flows.toml's lifecycle flows: shipped off, switched on at a worker's start
# (stack/flows_switch.py), or replaced by a configured rules file's migration.
LIFECYCLE = (
    "review_request",
    "satisfaction_survey",
    "ticket_escalation",
    "repurchase_reminder",
    "win_back",
    "birthday",
    "high_value_welcome",
)
# The abandoned-cart rule as the rules file shipped it: a rules file holding it
# unchanged (a copy of the shipped file) keeps the canonical abandoned-cart flow.
SHIPPED_ABANDONED_CART = parse_rule(
    {
        "id": "abandoned_cart",
        "trigger": "abandoned_cart",
        "delay": "1h",
        "frequency_cap": "24h",
        "exit": ["Order Completed"],
        "channels": ["webhook", "email"],
        "conditions": {"min_cart_value": 0},
    }
)


def duration(value: timedelta) -> str:
    """``7d``, ``48h``, ``90m``, ``30s`` or ``250ms``: the shortest exact unit."""
    ms = round(value.total_seconds() * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms" if ms else "0s"


Entry = dict[str, dict[str, Any]]  # node id → node table, the first one the entry


def _anchor(anchor: str, **fields: Any) -> Callable[[TriggerRule], Entry]:
    def build(rule: TriggerRule) -> Entry:
        node: dict[str, Any] = {"kind": "date_entry", "anchor": anchor}
        for name, value in fields.items():
            found = value(rule) if callable(value) else value
            if found is not None:
                node[name] = found
        if rule.delay:
            node["after"] = duration(rule.delay)
        return {"due": node}

    return build


def _waited(entry: dict[str, Any], rule: TriggerRule) -> Entry:
    if not rule.delay:
        return {"start": entry}
    return {"start": entry, "delay": {"kind": "wait", "duration": duration(rule.delay)}}


def _birthday(rule: TriggerRule) -> Entry:
    hour = int(rule.conditions.get("local_hour", 9))
    return _waited({"kind": "date_entry", "anchor": "birthday", "at": f"{hour:02d}:00"}, rule)


def _high_value(rule: TriggerRule) -> Entry:
    segment = str(rule.conditions.get("segment", "champions"))
    return _waited({"kind": "entry", "segment": f"rfm:{segment}"}, rule)


def _ticket_open(rule: TriggerRule) -> Entry:
    return {
        "opened": {"kind": "entry", "event": "Ticket Created"},
        "until_resolved": {
            "kind": "wait_paired",
            "opens": {"event": "Ticket Created"},
            "closes": {"event": "Ticket Resolved"},
            "by": "ticket_id",
            "timeout": duration(rule.delay),
            # resolved in time: the path ends (on_closed left out)
        },
    }


def _number(name: str) -> Callable[[TriggerRule], Any]:
    return lambda rule: rule.conditions.get(name)


MIGRATIONS: dict[str, Callable[[TriggerRule], Entry]] = {
    "abandoned_cart": _anchor("cart", min_value=_number("min_cart_value")),
    "post_purchase": _anchor("last_order"),
    "ticket_resolved": _anchor("event", event="Ticket Resolved"),
    "ticket_open": _ticket_open,
    "repurchase": _anchor(
        "purchase_cycle", min_orders=_number("min_orders"), cycle_factor=_number("cycle_factor")
    ),
    "win_back": _anchor("inactivity", stage=lambda rule: rule.conditions.get("stage", "loyalty")),
    "birthday": _birthday,
    "high_value": _high_value,
}
# The field a node leads on by (the paired wait leads on when it times out).
_ONWARD = {"wait_paired": "on_timeout"}


def flow_from_rule(rule: TriggerRule) -> dict[str, Any]:
    """One rule as a flow table (the flows file's ``[flows.<id>]``)."""
    nodes = MIGRATIONS[rule.trigger](rule)
    webhook_body, subject, email_body = TEMPLATES[rule.trigger]
    for channel in rule.channels:
        if channel == "email":
            nodes[f"send_{channel}"] = {
                "kind": "send",
                "channel": channel,
                "subject": subject,
                "body": email_body,
            }
        else:
            nodes[f"send_{channel}"] = {"kind": "send", "channel": channel, "body": webhook_body}
    ids = list(nodes)
    for here, after in itertools.pairwise(ids):
        nodes[here][_ONWARD.get(nodes[here]["kind"], "next")] = after
    exits = list(dict.fromkeys([*rule.exit_events, *_own_exits(rule)]))
    flow: dict[str, Any] = {
        "name": NAMES[rule.trigger],
        "description": f"The trigger rule {rule.id} ({rule.trigger}), as a flow.",
        "version": 1,
        "enabled": rule.enabled,
        "reentry": "always",
    }
    if rule.frequency_cap:
        flow["frequency_cap"] = duration(rule.frequency_cap)
    if rule.quiet_hours is not None:
        flow["quiet_hours"] = {
            "start": rule.quiet_hours.start.strftime("%H:%M"),
            "end": rule.quiet_hours.end.strftime("%H:%M"),
            "policy": "defer",
        }
    if exits:
        flow["exit"] = [{"event": _title(name)} for name in exits]
    flow["nodes"] = nodes
    return flow


def _own_exits(rule: TriggerRule) -> tuple[str, ...]:
    return tuple(name.lower() for name in VOIDED) if rule.trigger == "post_purchase" else ()


def _title(name: str) -> str:
    # Rules store exit names normalized (lower case); names compare case-insensitively.
    return " ".join(word.capitalize() for word in name.split())


def flows_from_rules(rules: Sequence[TriggerRule]) -> dict[str, dict[str, Any]]:
    """Every rule as a flow table, by id (a rule id with ``-`` becomes ``_``)."""
    return {rule.id.replace("-", "_"): flow_from_rule(rule) for rule in rules}


def lifecycle_flows(rules: Sequence[TriggerRule]) -> dict[str, dict[str, Any]]:
    """A configured rules file's rules as the flows switched on at a worker's start.

    Every rule becomes its flow, as :func:`flows_from_rules`, except an
    ``abandoned_cart`` rule equal to :data:`SHIPPED_ABANDONED_CART`: the canonical
    ``abandoned_cart`` flow (journeys/flows.toml) is the shipped abandoned cart, so
    that rule migrates to nothing and the canonical flow stands. A rules file whose
    ``abandoned_cart`` differs (the demo's 15 s reminder, a store's own delay) was
    configured on purpose: it migrates to the rule's own reminder, replacing the
    canonical flow under that id.
    """
    kept = [rule for rule in rules if rule != SHIPPED_ABANDONED_CART]
    return flows_from_rules(kept)


def seeded_state(flow: FlowDefinition, facts: CustomerFacts) -> FlowState:
    """A customer's first state for a lifecycle flow, carried forward from the rule's.

    The store kept the rules' facts per customer (``trigger_customers``: orders, tickets,
    birthday, stage, segment…) and each rule's ended clocks (``settled``: anchor, due,
    outcome). The flow of the rule of the same id gets those facts as its own (so the
    orders before the switch count), each settled clock as an anchor entered already
    (``anchored``: a clock the rule fired, capped, expired or took as history is never
    entered again), and the fired ones' due times as its sends per channel (so the
    frequency cap counts the rule's sends). The e-mail address, time zone and stage the
    rule knew become the state's, until newer events say otherwise.
    """
    state = FlowState(facts.customer_key, flow.id)
    state.facts = facts.to_dict()
    settled = facts.settled.get(flow.id, [])
    ended = [[_ms(item["anchor"]), _ms(item["due"]), item["outcome"]] for item in settled]
    for node in flow.date_entries:
        if ended:
            state.anchored[node.id] = [list(item) for item in ended]
    fired = sorted(_ms(item["due"]) for item in settled if item["outcome"] == "fired")
    if fired:
        for channel in dict.fromkeys(
            node.channel for node in flow.nodes.values() if isinstance(node, SendNode)
        ):
            state.sends[channel] = list(fired)
    if facts.email is not None:
        state.traits["email"] = [facts.email, 0]
    if facts.timezone:
        state.timezone = [facts.timezone, 0]
    if facts.stage is not None:
        state.stage = [facts.stage, _ms(facts.stage_at) if facts.stage_at else 0]
    return state


def _ms(value: str) -> int:
    moment = datetime.fromisoformat(value)
    return to_ms(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


# --- writing TOML (the flows file's shape only: tables of scalars, lists, inline tables) ---


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if "\n" in value:
            return '"""\n' + value.replace("\\", "\\\\").replace('"""', '\\"""') + '"""'
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_scalar(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def flows_toml(flows: Mapping[str, Mapping[str, Any]], header: str = "") -> str:
    """The flows file's text for ``flows`` (as :func:`flows_from_rules` returns them)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for flow_id, flow in flows.items():
        lines += ["", f"[flows.{flow_id}]"]
        lines += [f"{k} = {_scalar(v)}" for k, v in flow.items() if k != "nodes"]
        for node_id, node in flow.get("nodes", {}).items():
            lines += ["", f"[flows.{flow_id}.nodes.{node_id}]"]
            lines += [f"{k} = {_scalar(v)}" for k, v in node.items()]
    return "\n".join(lines).lstrip("\n") + "\n"
