"""The switch from the trigger rules to flows, at a worker's start (``outreach_engine = "flows"``).

1. **The lifecycle flows on.** The rules in force (the rules file — the
   ``JOURNEYS_TRIGGER_RULES_FILE``, the demo's ``stack/demo_rules.toml``, else the
   shipped journeys/rules.toml — with the API's stored overrides) are read through
   the migration (journeys/flows/migration.py ``lifecycle_flows``: an
   ``abandoned_cart`` rule equal to the shipped one is the canonical flow) and
   put into the stored flows with a new version where the stored flow is still
   the shipped one (the lifecycle flows ship switched off, ``enabled = false``) or
   is missing. A stored flow someone changed (``PUT /v1/flows``) is kept as it is,
   and said so in the log. The same flow again changes nothing, so every start
   after the first is a no-op.
2. **A store with rule history carried forward.** For each lifecycle flow that
   keeps facts, every customer with rule facts (``trigger_customers``) and no
   state in the flow gets a first state seeded from them (``seeded_state``: the
   facts, the rule's settled clocks as anchors entered, its fired dues as the
   cap's sends), waking at once so the timer loop plans its anchors; done once
   per flow (``flow_seeds``), a state a worker wrote meanwhile is kept.
3. **The rule timers dropped** (``trigger_timers``: no rule runs any more; the
   table stays, empty, for a store switched back with ``outreach_engine = "rules"``).

Run by the first worker that starts on the new code, before it consumes: with
several workers, start one first for an upgrade (another one's seeding would only
find the states written, or insert the same seeds: ``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import logging
import time
import tomllib
from dataclasses import dataclass, field
from importlib import resources

from journeys.flows.definitions import FlowDefinition, flows_from_toml, parse_flow
from journeys.flows.migration import lifecycle_flows, seeded_state
from journeys.outreach_rules import TriggerRule, parse_rules
from projections.flow_definition_store import FlowConflict, FlowDefinitions
from stack.outreach import DEFAULT_RULES_FILE, OutreachAdmin
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


def shipped_rules() -> list[TriggerRule]:
    with DEFAULT_RULES_FILE.open("rb") as handle:
        return parse_rules(tomllib.load(handle))


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
    rules = OutreachAdmin(settings, store).rules_in_force()
    migrated = lifecycle_flows(rules, shipped_rules())
    shipped = _shipped_flows()
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
            "flows %s were changed over the API: kept as stored, not replaced by the rules "
            "file's migration",
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
