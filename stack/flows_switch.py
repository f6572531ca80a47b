"""The lifecycle flows switched on at a worker's start, before it consumes.

1. **The lifecycle flows on.** Without a configured rules file, the shipped
   lifecycle flows (journeys/flows.toml's, ``enabled = false``) are switched on
   as they are. A configured rules file (``JOURNEYS_TRIGGER_RULES_FILE``, the
   demo's ``stack/demo_rules.toml``) is read through the migration instead
   (journeys/flows/migration.py ``lifecycle_flows``: an ``abandoned_cart`` rule
   equal to the one that shipped is the canonical flow; a lifecycle flow the file
   has no rule for stays off). Rule overrides a store kept from the rules' API
   (``outreach_rule_overrides``) are migrated over either. Each is put into the
   stored flows with a new version where the stored flow is still the shipped one
   or is missing. A stored flow someone changed (``PUT /v1/flows``) is kept as it
   is, and said so in the log. The same flow again changes nothing, so every start
   after the first is a no-op.
2. **A store with rule history carried forward.** For each lifecycle flow that
   keeps facts, every customer with rule facts (``trigger_customers``) and no
   state in the flow gets a first state seeded from them (``seeded_state``: the
   facts, the rule's settled clocks as anchors entered, its fired dues as the
   cap's sends), waking at once so the timer loop plans its anchors; done once
   per flow (``flow_seeds``), a state a worker wrote meanwhile is kept.
3. **The rules' timer table dropped** (``trigger_timers``, with its rows: the rules
   engine was removed, and the seeded anchors stand for its clocks).

Run by the first worker that starts on the new code, before it consumes: with
several workers, start one first for an upgrade (another one's seeding would only
find the states written, or insert the same seeds: ``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from journeys.flows.definitions import FlowDefinition, flows_from_toml, parse_flow
from journeys.flows.migration import LIFECYCLE, lifecycle_flows, seeded_state
from journeys.outreach_rules import apply_overrides
from projections.flow_definition_store import FlowConflict, FlowDefinitions
from stack.outreach import declared_rules
from stack.settings import Settings
from streams.outreach.store import OutreachStore

log = logging.getLogger(__name__)

SEED_CHUNK = 500


@dataclass
class SwitchReport:
    """What a start's switch did (logged; asserted by tests)."""

    switched_on: list[str] = field(default_factory=list)  # flows put with a new version
    kept: list[str] = field(default_factory=list)  # changed by someone: left as stored
    seeded: dict[str, int] = field(default_factory=dict)  # flow → customers seeded
    timers_dropped: int = 0


def _shipped_flows() -> dict[str, FlowDefinition]:
    text = resources.files("journeys").joinpath("flows.toml").read_text("utf-8")
    return {flow.id: flow for flow in flows_from_toml(text)}


def _without_version(source: object) -> dict[str, object]:
    return {k: v for k, v in dict(source).items() if k != "version"}  # type: ignore[call-overload]


def switch_to_flows(
    settings: Settings, definitions: FlowDefinitions, store: OutreachStore
) -> SwitchReport:
    """Switch the lifecycle outreach of this store to flows (see the module's text)."""
    report = SwitchReport()
    shipped = _shipped_flows()
    migrated = lifecycle_tables(settings, store, shipped)
    recorded: dict[str, dict[int, str]] = {}
    for flow_id, version, fingerprint, _ in store.flow_versions():
        recorded.setdefault(flow_id, {})[version] = fingerprint
    in_force = definitions.current()
    for flow_id, table in migrated.items():
        stored = in_force.get(flow_id)
        if stored is not None and _without_version(stored.source) == _without_version(table):
            continue  # switched on by an earlier start
        original = shipped.get(flow_id)
        if stored is not None and (original is None or stored.fingerprint != original.fingerprint):
            report.kept.append(flow_id)
            continue
        versions = [*recorded.get(flow_id, {}), stored.version if stored else 0]
        flow = parse_flow(flow_id, {**table, "version": max(versions) + 1})
        assert flow is not None  # the migration's output always parses (a unit test)
        try:
            definitions.put(flow, recorded.get(flow_id))
        except FlowConflict:
            continue  # another worker starting at once put it first
        report.switched_on.append(flow_id)
    if report.kept:
        log.warning(
            "flows %s were changed over the API: kept as stored, not replaced by the "
            "lifecycle flows",
            ", ".join(report.kept),
        )
    for flow in definitions.current().flows:
        wanted = flow.id in migrated and flow.enabled and flow.keeps_facts
        if wanted and not store.flow_seeded(flow.id):
            report.seeded[flow.id] = _seed(flow, store)
    report.timers_dropped = store.drop_timers()
    log.info(
        "outreach runs on flows: switched on %s; seeded %s; %d rule timers dropped",
        report.switched_on or "none",
        report.seeded or "none",
        report.timers_dropped,
    )
    return report


def lifecycle_tables(
    settings: Settings, store: OutreachStore, shipped: dict[str, FlowDefinition]
) -> dict[str, dict[str, Any]]:
    """The lifecycle flows to switch on, as flow tables by id (see the module's text)."""
    overrides = store.rule_overrides()
    if settings.trigger_rules_file:
        return lifecycle_flows(apply_overrides(declared_rules(settings), overrides))
    tables = {
        flow_id: {**shipped[flow_id].source, "enabled": True}
        for flow_id in LIFECYCLE
        if flow_id in shipped
    }
    return tables | lifecycle_flows(apply_overrides([], overrides))


def _seed(flow: FlowDefinition, store: OutreachStore) -> int:
    """Every customer with rule facts and no state in ``flow``, seeded; how many."""
    seeded, after = 0, ""
    while True:
        found = store.customers_without_flow_state(flow.id, after, SEED_CHUNK)
        now = time.time()  # due at once: the timer loop advances them and plans their anchors
        rows = [
            (key, flow.id, partition, seeded_state(flow, facts).to_dict(), now)
            for key, partition, facts in found
        ]
        seeded += len(rows)
        last = len(found) < SEED_CHUNK
        store.seed_flow_states(rows, (flow.id, seeded) if last else None)
        if last:
            return seeded
        after = found[-1][0]
