"""Flow definitions: parsed from TOML/JSON-like data, validated, versioned.

A flows file (``journeys/flows.toml`` ships the canonical abandoned cart)::

    [flows.abandoned_cart]
    name = "Abandoned cart"
    version = 1                      # a changed flow is a new version
    reentry = "cooldown"             # never | cooldown | always
    cooldown = "7d"                  # since the previous entry (reentry = "cooldown")
    frequency_cap = "12h"            # per channel: sends of this flow at least this far apart
    quiet_hours = { start = "21:00", end = "08:00", policy = "defer" }   # or "skip"
    goal = { event = "Order Completed", within = "3d" }    # from entry: converted
    exit = [{ event = "Order Refunded" }]                  # leaves the run (after entry)

    [flows.abandoned_cart.nodes.entry]
    kind = "entry"
    event = "Product Added"
    next = "holdout_split"
    ...

Nodes: see :mod:`journeys.flows.nodes`; triggers and conditions:
:mod:`journeys.flows.conditions`. The graph must be acyclic, every node
reachable from an entry node, and every ``next``-like field must name a node
(or be left out: the path ends there). Every error is (path, message) naming
the node and the field: ``flows.abandoned_cart.nodes.reminder.body: unknown
variable 'cart' (known: …)``.

Customers already inside a flow finish on the version they entered: the
:class:`FlowCatalog` keeps every version it was given, and new runs start on
the newest.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from journeys.flows.conditions import Problems, Trigger, parse_trigger
from journeys.flows.nodes import (
    ENTRY_NODES,
    NODE_KINDS,
    DateEntryNode,
    EntryNode,
    Node,
    SendNode,
    duration_ms,
)
from journeys.outreach_rules import QuietHours, RuleError, parse_quiet_hours
from journeys.segment_definitions import DefinitionError
from journeys.toml_text import load_toml

REENTRY = ("never", "cooldown", "always")
QUIET_POLICIES = ("defer", "skip")
_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# A version is an SQLite INTEGER in the stores (2**63 made the worker fail writing it);
# a node count bounds the graph walks (a 2000-node chain overflowed the recursion).
MAX_VERSION = 2**31 - 1
MAX_NODES = 200
_FLOW_FIELDS = {
    "name",
    "description",
    "version",
    "enabled",
    "reentry",
    "cooldown",
    "frequency_cap",
    "quiet_hours",
    "goal",
    "exit",
    "nodes",
}


class FlowError(DefinitionError):
    """Invalid flows; ``errors`` holds (path of the field, message) pairs."""


@dataclass(frozen=True, slots=True)
class Goal:
    """A conversion: the trigger within ``within_ms`` of entering."""

    trigger: Trigger
    within_ms: int


@dataclass(frozen=True)
class FlowDefinition:
    """One version of a flow."""

    id: str
    version: int
    name: str
    nodes: Mapping[str, Node]
    entries: tuple[EntryNode, ...]
    description: str = ""
    enabled: bool = True
    reentry: str = "never"
    cooldown_ms: int = 0
    frequency_cap_ms: int = 0
    quiet_hours: QuietHours | None = None
    quiet_policy: str = "defer"
    goal: Goal | None = None
    exits: tuple[Trigger, ...] = ()
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def fingerprint(self) -> str:
        """Of the definition as written: two different flows under one version differ here."""
        text = json.dumps(self.source, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @cached_property
    def date_entries(self) -> tuple[DateEntryNode, ...]:
        """The entries planned from the customer's facts (date anchors)."""
        return tuple(node for node in self.nodes.values() if isinstance(node, DateEntryNode))

    @cached_property
    def keeps_facts(self) -> bool:
        """Whether the flow's states keep the customer's facts: date anchors plan from
        them, and a template reading ``data`` (cart lines, orders…) renders them."""
        return bool(self.date_entries) or self._templates_read("data")

    @cached_property
    def reads_computed_traits(self) -> bool:
        """Whether a template renders ``computed_traits`` (its sends carry them)."""
        return self._templates_read("computed_traits")

    def _templates_read(self, name: str) -> bool:
        """Whether a send's subject or body reads the template variable ``name``."""
        return any(
            name in template.names
            for node in self.nodes.values()
            if isinstance(node, SendNode)
            for template in (node.body, node.subject)
            if template is not None
        )

    @cached_property
    def uses_computed_traits(self) -> bool:
        """Whether a branch compares a computed trait or a template renders them: the flow
        takes the worker's ``TraitsChanged`` reports (journeys/flows/inputs.py TraitsInput)."""
        return self.reads_computed_traits or _names_key(self.source, "computed_trait")

    def triggers(self) -> list[Trigger]:
        """Every trigger the flow reacts to: entries, wait_until nodes, the goal, exits."""
        found: list[Trigger] = [*self.exits]
        if self.goal is not None:
            found.append(self.goal.trigger)
        for node in self.nodes.values():
            trigger = getattr(node, "trigger", None)
            if trigger is not None:
                found.append(trigger)
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "name": self.name,
            "description": self.description,
            "enabled": self.enabled,
            "reentry": self.reentry,
            "nodes": {node_id: node.kind for node_id, node in self.nodes.items()},
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class FlowCatalog:
    """Every known version of every flow; new runs start on the newest of each."""

    versions: Mapping[str, Mapping[int, FlowDefinition]] = field(default_factory=dict)
    # The version new runs start on, per flow; None: the newest of every flow. A flow
    # not listed takes no new runs (removed from the file), its runs inside finish.
    in_force: Mapping[str, int] | None = None

    @classmethod
    def of(cls, flows: Iterable[FlowDefinition]) -> FlowCatalog:
        catalog = cls()
        for flow in flows:
            catalog = catalog.with_version(flow)
        return catalog

    def with_version(self, flow: FlowDefinition) -> FlowCatalog:
        """This catalog with ``flow`` added (older versions kept for the runs on them)."""
        versions = {fid: dict(known) for fid, known in self.versions.items()}
        versions.setdefault(flow.id, {})[flow.version] = flow
        # Which versions take new runs does not change by knowing another one.
        return FlowCatalog(versions, self.in_force)

    def definition(self, flow_id: str, version: int) -> FlowDefinition | None:
        return self.versions.get(flow_id, {}).get(version)

    def current(self, flow_id: str) -> FlowDefinition | None:
        """The version new runs of the flow start on; None when it takes none."""
        known = self.versions.get(flow_id)
        if not known:
            return None
        if self.in_force is None:
            return known[max(known)]
        version = self.in_force.get(flow_id)
        return None if version is None else known.get(version)

    def flow_ids(self) -> list[str]:
        """Every flow with a known version (runs may be inside those no longer in force)."""
        return sorted(self.versions)


def parse_flows(document: Mapping[str, Any]) -> list[FlowDefinition]:
    """Every flow of ``{"flows": {id: {...}}}``; raises :class:`FlowError` with every error."""
    problems = Problems()
    if not isinstance(document, Mapping):
        raise FlowError([("", "must be a table")])
    problems.unknown(document, {"flows"}, "")
    table = document.get("flows", {})
    if not isinstance(table, Mapping):
        raise FlowError([("flows", "must be a table of flows")])
    flows = []
    for flow_id, raw in table.items():
        found = parse_flow(str(flow_id), raw, problems)
        if found is not None:
            flows.append(found)
    if problems.errors:
        raise FlowError(problems.errors)
    return flows


def parse_flow(
    flow_id: str, raw: object, problems: Problems | None = None
) -> FlowDefinition | None:
    """One flow's table; with ``problems`` errors are added there, else raised (FlowError)."""
    own = problems is None
    problems = problems or Problems()
    path = f"flows.{flow_id}"
    flow = _flow(flow_id, raw, path, problems)
    if own and problems.errors:
        raise FlowError(problems.errors)
    return flow


def flows_from_toml(text: str) -> list[FlowDefinition]:
    """A flows file's text (TOML); raises :class:`FlowError`."""
    try:
        data = load_toml(text)
    except tomllib.TOMLDecodeError as error:
        raise FlowError([("", f"not valid TOML: {error}")]) from error
    return parse_flows(data)


def _flow(flow_id: str, raw: object, path: str, problems: Problems) -> FlowDefinition | None:
    if not _ID.match(flow_id):
        problems.add(path, "id must be lower-case letters, digits and _ (at most 64)")
        return None
    if not isinstance(raw, Mapping):
        problems.add(path, "must be a table")
        return None
    before = len(problems.errors)
    problems.unknown(raw, _FLOW_FIELDS, path)
    version = raw.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        problems.add(f"{path}.version", "is required: an integer >= 1")
    elif version > MAX_VERSION:
        problems.add(f"{path}.version", f"must be at most {MAX_VERSION}")
    name = raw.get("name", flow_id)
    if not isinstance(name, str) or not name.strip():
        problems.add(f"{path}.name", "must be a non-empty string")
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.add(f"{path}.description", "must be a string")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.add(f"{path}.enabled", "must be true or false")
    reentry = raw.get("reentry", "never")
    if reentry not in REENTRY:
        problems.add(f"{path}.reentry", f"must be one of {', '.join(REENTRY)}")
    cooldown = duration_ms(raw, "cooldown", path, problems, required=reentry == "cooldown")
    if cooldown is not None and reentry != "cooldown":
        problems.add(f"{path}.cooldown", 'is only for reentry = "cooldown"')
    cap = duration_ms(raw, "frequency_cap", path, problems, required=False) or 0
    quiet, policy = _quiet_hours(raw.get("quiet_hours"), f"{path}.quiet_hours", problems)
    goal = _goal(raw.get("goal"), f"{path}.goal", problems)
    exits = _exits(raw.get("exit", []), f"{path}.exit", problems)
    nodes = _nodes(raw.get("nodes"), f"{path}.nodes", problems)
    if len(problems.errors) != before:
        return None
    entries = tuple(node for node in nodes.values() if isinstance(node, EntryNode))
    return FlowDefinition(
        id=flow_id,
        version=int(version),  # type: ignore[arg-type]
        name=str(name),
        nodes=nodes,
        entries=entries,
        description=str(description),
        enabled=bool(enabled),
        reentry=str(reentry),
        cooldown_ms=cooldown or 0,
        frequency_cap_ms=cap,
        quiet_hours=quiet,
        quiet_policy=policy,
        goal=goal,
        exits=exits,
        source=dict(raw),
    )


def _quiet_hours(raw: object, path: str, problems: Problems) -> tuple[QuietHours | None, str]:
    if raw is None:
        return None, "defer"
    if not isinstance(raw, Mapping):
        problems.add(path, "must be a table {start, end, policy}")
        return None, "defer"
    problems.unknown(raw, {"start", "end", "policy"}, path)
    policy = raw.get("policy", "defer")
    if policy not in QUIET_POLICIES:
        problems.add(f"{path}.policy", f"must be one of {', '.join(QUIET_POLICIES)}")
    try:
        return parse_quiet_hours(raw, path), str(policy)
    except RuleError as error:
        problems.add(error.field, error.message)
        return None, "defer"


def _goal(raw: object, path: str, problems: Problems) -> Goal | None:
    if raw is None:
        return None
    trigger = parse_trigger(raw, path, problems, extra={"within"})
    if not isinstance(raw, Mapping):
        return None
    within = duration_ms(raw, "within", path, problems, required=True)
    if within == 0:
        problems.add(f"{path}.within", "must be longer than 0")
    return None if trigger is None or not within else Goal(trigger, within)


def _exits(raw: object, path: str, problems: Problems) -> tuple[Trigger, ...]:
    if not isinstance(raw, list):
        problems.add(path, "must be a list of triggers ({event = ...}, {stage = ...}, …)")
        return ()
    found = [parse_trigger(item, f"{path}[{i}]", problems) for i, item in enumerate(raw)]
    return tuple(trigger for trigger in found if trigger is not None)


def _nodes(raw: object, path: str, problems: Problems) -> dict[str, Node]:
    if not isinstance(raw, Mapping) or not raw:
        problems.add(path, "must be a table of nodes, with at least one entry node")
        return {}
    if len(raw) > MAX_NODES:
        problems.add(path, f"a flow has at most {MAX_NODES} nodes ({len(raw)} given)")
        return {}
    nodes: dict[str, Node] = {}
    for node_id, item in raw.items():
        here = f"{path}.{node_id}"
        if not isinstance(node_id, str) or not _ID.match(node_id):
            problems.add(here, "id must be lower-case letters, digits and _ (at most 64)")
            continue
        if not isinstance(item, Mapping):
            problems.add(here, "must be a table with a kind")
            continue
        kind = NODE_KINDS.get(item.get("kind"))  # type: ignore[arg-type]
        if kind is None:
            problems.add(f"{here}.kind", f"must be one of {', '.join(NODE_KINDS)}")
            continue
        node = kind.parse(node_id, item, here, problems)
        if node is not None:
            nodes[node_id] = node
    if len(nodes) == len(raw):
        _check_graph(nodes, path, problems)
    return nodes


def _check_graph(nodes: Mapping[str, Node], path: str, problems: Problems) -> None:
    entries = [nid for nid, node in nodes.items() if isinstance(node, ENTRY_NODES)]
    if not entries:
        problems.add(path, "needs at least one node of kind entry or date_entry")
    for node_id, node in nodes.items():
        for field_name, target in node.targets().items():
            if target is None:
                continue
            if target not in nodes:
                problems.add(f"{path}.{node_id}.{field_name}", f"unknown node {target!r}")
            elif isinstance(nodes[target], ENTRY_NODES):
                problems.add(
                    f"{path}.{node_id}.{field_name}", f"cannot lead to entry node {target!r}"
                )
    reached: set[str] = set()
    frontier = list(entries)
    while frontier:
        current = frontier.pop()
        if current in reached or current not in nodes:
            continue
        reached.add(current)
        frontier.extend(t for t in nodes[current].targets().values() if t is not None)
    for node_id in nodes:
        if node_id not in reached:
            problems.add(f"{path}.{node_id}", "is not reachable from an entry node")
    cycle = _cycle(nodes)
    if cycle:
        problems.add(f"{path}.{cycle[0]}", "nodes lead back to themselves: " + " -> ".join(cycle))


def _cycle(nodes: Mapping[str, Node]) -> list[str]:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node_id: str) -> list[str]:
        state[node_id] = 1
        stack.append(node_id)
        for target in nodes[node_id].targets().values():
            if target is None or target not in nodes:
                continue
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node_id] = 2
        return []

    for node_id in nodes:
        if node_id not in state and (found := visit(node_id)):
            return found
    return []


def _names_key(source: Any, key: str) -> bool:
    """Whether ``key`` is a key anywhere in a definition as written (tables, lists)."""
    if isinstance(source, Mapping):
        return key in source or any(_names_key(value, key) for value in source.values())
    if isinstance(source, list | tuple):
        return any(_names_key(value, key) for value in source)
    return False
