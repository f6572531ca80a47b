"""Flows wired to the stack: the stored flows (seeded from the flows file), changes to
them over the admin API, and backtests over the node's event log."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from clickhouse_connect.driver.client import Client

from journeys.flows.backtest import BacktestTally, run_history
from journeys.flows.definitions import (
    FlowCatalog,
    FlowDefinition,
    FlowError,
    flows_from_toml,
    parse_flow,
)
from journeys.flows.engine import FlowEngine, FlowState
from journeys.flows.facts import Entered, FlowFact, Sent, explain, fact_from_dict
from journeys.flows.inputs import iso, to_ms
from journeys.flows.pauses import FlowPause
from journeys.flows.results import live_results
from projections.flow_definition_store import FlowDefinitions, FlowsInForce
from projections.flow_history import FlowHistory
from stack.settings import Settings
from streams.outreach.store import OutreachStore


def load_flows(settings: Settings) -> list[FlowDefinition]:
    """The flows: ``settings.flows_file``, or journeys/flows.toml; raises FlowError / ValueError."""
    if settings.flows_file is None:
        text = resources.files("journeys").joinpath("flows.toml").read_text("utf-8")
        return flows_from_toml(text)
    try:
        return flows_from_toml(settings.flows_file.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"JOURNEYS_FLOWS_FILE={settings.flows_file}: {error}") from error
    except FlowError as error:
        raise FlowError(
            [(f"{settings.flows_file}: {path}", message) for path, message in error.errors]
        ) from error


def build_flow_definitions(settings: Settings) -> FlowDefinitions:
    """The stored flows (event store's database), seeded from the flows file the first time."""
    if settings.event_store == "postgres":
        stored = FlowDefinitions(postgres_dsn=settings.postgres_dsn)
    else:
        stored = FlowDefinitions(sqlite_path=settings.sqlite_path)
    if not stored.version():
        stored.seed({"flows": {flow.id: dict(flow.source) for flow in load_flows(settings)}})
    return stored


def backtest(
    flow: FlowDefinition, history: FlowHistory, start: datetime, end: datetime
) -> dict[str, Any]:
    """What ``flow`` would have decided over the recorded history in ``[start, end)``."""
    start_ms, end_ms = to_ms(start), to_ms(end)
    # No grace: in event time nothing is late, and nothing is sent anyway.
    engine = FlowEngine(FlowCatalog.of([flow]))
    tally = BacktestTally(flow, start_ms, end_ms)
    customers = history.candidates(flow, start_ms, end_ms)
    for customer_key, inputs in history.histories(customers, start_ms, end_ms):
        facts, state = run_history(engine, flow.id, customer_key, inputs, end_ms)
        tally.add(customer_key, facts, state)
    return tally.report()


@dataclass
class FlowsAdmin:
    """What the flows API reads and runs (api/dependencies.py FlowControl)."""

    settings: Settings
    clickhouse: Client
    database: str
    # The live flows' states and facts; None: backtests only.
    store: OutreachStore | None = None
    # The flows in force (seeded from the file); None: the file, read per request.
    definitions: FlowDefinitions | None = None
    # Epoch seconds now: the instant a pause or resume takes effect (inputs are judged
    # by their stamps against it).
    clock: Callable[[], float] = time.time

    def in_force(self) -> FlowsInForce:
        if self.definitions is None:
            return FlowsInForce(tuple(load_flows(self.settings)))
        return self.definitions.current()

    def flows(self, include_deleted: bool = False) -> list[dict[str, Any]]:
        found = self.in_force()
        listed = [_summary(flow, found) for flow in found.flows]
        if include_deleted and self.store is not None:
            recorded: dict[str, list[tuple[int, str]]] = {}
            for flow_id, number, _, source in self.store.flow_versions():
                if found.get(flow_id) is None:
                    recorded.setdefault(flow_id, []).append((number, source))
            for flow_id, versions in sorted(recorded.items()):
                try:
                    flow = parse_flow(flow_id, json.loads(max(versions)[1]))
                except FlowError:
                    continue  # a version today's rules refuse (the runner logs it)
                if flow is not None and self.store.has_flow_facts(flow_id):
                    listed.append(
                        {
                            **_summary(flow, FlowsInForce()),
                            "deleted": True,
                            "versions": sorted(number for number, _ in versions),
                        }
                    )
        return listed

    def flow(self, flow_id: str) -> dict[str, Any] | None:
        found = self.in_force()
        flow = found.get(flow_id)
        if flow is None:
            return None
        # The versions runs were started on, and the one in force (no run on it yet, maybe).
        versions = {flow.version}
        if self.store is not None:
            versions.update(v for fid, v, _, _ in self.store.flow_versions() if fid == flow_id)
        return {
            **_summary(flow, found),
            "versions": sorted(versions),
            "definition": dict(flow.source),
        }

    def put(self, flow_id: str, body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Define or replace a flow; (whether it existed, the flow as shown).

        Raises FlowError (invalid: 422) or FlowConflict (a change without a new
        version: 409).
        """
        stored = self._stored()
        flow = parse_flow(flow_id, body)
        assert flow is not None  # parse_flow raises when it finds nothing valid
        recorded = {
            version: fingerprint
            for fid, version, fingerprint, _ in (self.store.flow_versions() if self.store else [])
            if fid == flow_id
        }
        existed, _ = stored.put(flow, recorded)
        shown = self.flow(flow_id)
        assert shown is not None
        return existed, shown

    def delete(self, flow_id: str) -> dict[str, Any] | None:
        """Remove a flow from force (runs inside finish on their version); None: unknown."""
        shown = self.flow(flow_id)
        if shown is not None:
            self._stored().delete(flow_id)
        return shown

    def pause(self, flow_id: str) -> dict[str, Any] | None:
        if not self._stored().pause(flow_id, int(self.clock() * 1000)):
            return None
        return self.flow(flow_id)

    def resume(self, flow_id: str) -> dict[str, Any] | None:
        if not self._stored().resume(flow_id, int(self.clock() * 1000)):
            return None
        return self.flow(flow_id)

    def results(
        self,
        flow_id: str,
        version: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> dict[str, Any] | None:
        """The flow's live counts per node and its holdout comparison; None when the flow
        (or that version) was never defined or recorded (LookupError: no live store).

        ``version``: only the runs entered on it, counted against its nodes;
        ``start``/``end``: only the runs entered in ``[start, end)`` (a cohort followed to
        now). A deleted flow's results are its runs' (they finish on their versions),
        counted against its newest recorded version, with ``deleted`` true.
        """
        if self.store is None:
            raise LookupError("flows do not run in this process")
        found = self.in_force()
        recorded: dict[int, dict[str, Any]] = {}
        kinds: dict[str, str] = {}
        for fid, number, _, source in sorted(self.store.flow_versions()):
            if fid == flow_id:
                recorded[number] = json.loads(source)
                nodes = recorded[number].get("nodes") or {}
                kinds.update({nid: str(node.get("kind", "")) for nid, node in nodes.items()})
        in_force = found.get(flow_id)
        wanted = version  # the version whose nodes the counts are drawn against
        if wanted is None and in_force is None:
            wanted = max(recorded, default=0)  # deleted: its newest recorded version
        flow = in_force
        if wanted is not None and (in_force is None or in_force.version != wanted):
            flow = parse_flow(flow_id, recorded[wanted]) if wanted in recorded else None
        if flow is None:
            return None
        kept = RunFilter(
            version,
            None if start is None else to_ms(start),
            None if end is None else to_ms(end),
        )
        # A list, not a generator: the filter collects the kept runs' messages before
        # their deliveries are read.
        customers = [
            kept.of(key, [fact_from_dict(fact) for fact in facts], FlowState.from_dict(state))
            for key, facts, state in self.store.flow_runs(flow_id)
        ]
        report = live_results(
            flow,
            customers,
            self.store.flow_deliveries(flow_id, kept.message_ids),
            int(time.time() * 1000),
            kinds,
        )
        return {
            **report,
            "paused": flow_id in found.paused,
            "deleted": in_force is None,
            "runs_of": {
                "version": version,
                "from": None if start is None else iso(to_ms(start)),
                "to": None if end is None else iso(to_ms(end)),
            },
        }

    def node_customers(
        self, flow_id: str, node: str, limit: int, offset: int
    ) -> dict[str, Any] | None:
        """The customers at ``node`` now (their run stands there: waiting, or held while
        paused) and those who reached it before and went on, newest first, one list
        paginated (``limit``/``offset``); None for an unknown flow, ValueError for a node
        it never had (LookupError: no live store)."""
        if self.store is None:
            raise LookupError("flows do not run in this process")
        in_force = self.in_force().get(flow_id)
        known = set(in_force.nodes) if in_force is not None else set()
        for fid, _, _, source in self.store.flow_versions():
            if fid == flow_id:
                known.update((json.loads(source).get("nodes") or {}).keys())
        if not known:
            return None
        if node not in known:
            raise ValueError(f"flow {flow_id!r} has no node {node!r}")
        states, arrivals = self.store.flow_node_rows(flow_id)
        here: list[dict[str, Any]] = []
        standing: set[str] = set()
        for key, stored in states:
            run = FlowState.from_dict(stored).run
            if run is not None and run.node == node:
                standing.add(run.run_id)
                until = iso(run.deadline_ms) if run.deadline_ms else None
                here.append(
                    {
                        "customer_id": key,
                        "at_node": "now",
                        "version": run.version,
                        "since": iso(run.since_ms),
                        "waiting_until": until,
                    }
                )
        here.sort(key=lambda c: str(c["since"]), reverse=True)
        passed = [
            {
                "customer_id": key,
                "at_node": "passed",
                "version": fact["version"],
                "since": fact["at"],
                "waiting_until": None,
            }
            for key, fact in arrivals
            if fact.get("node") == node and fact["run_id"] not in standing
        ]
        everyone = here + passed
        return {
            "flow_id": flow_id,
            "node": node,
            "now": len(here),
            "passed": len(passed),
            "limit": limit,
            "offset": offset,
            "customers": everyone[offset : offset + limit],
        }

    def _stored(self) -> FlowDefinitions:
        if self.definitions is None:
            raise LookupError("flows are read from the file in this process")
        return self.definitions

    def customer_flows(self, customer_key: str) -> dict[str, Any] | None:
        """Each flow the customer has a state in: where they are, and every decision with
        its reason ("why did or didn't they get this message?"); None without a store."""
        if self.store is None:
            return None
        facts_by_flow: dict[str, list[dict[str, Any]]] = {}
        for fact in self.store.flow_facts(customer_key):
            facts_by_flow.setdefault(fact["flow_id"], []).append({**fact, "why": explain(fact)})
        flows = []
        for row in self.store.flow_states(customer_key):
            state = FlowState.from_dict(row["state"])
            run = state.run
            flows.append(
                {
                    "flow_id": row["flow_id"],
                    "inside": run is not None,
                    "run": None
                    if run is None
                    else {
                        "run_id": run.run_id,
                        "version": run.version,
                        "entered_at": iso(run.entered_ms),
                        "node": run.node,
                        "since": iso(run.since_ms),
                        "waiting_until": iso(run.deadline_ms) if run.deadline_ms else None,
                        "group": run.group,
                        "holdout": run.holdout,
                    },
                    "entries": state.entries,
                    "facts": facts_by_flow.pop(row["flow_id"], []),
                }
            )
        return {"customer_id": customer_key, "flows": flows}

    def backtest(
        self, flow_id: str, draft: dict[str, Any] | None, start: datetime, end: datetime
    ) -> dict[str, Any] | None:
        """``draft`` (the flow's table) if given, else the flows file's; None when unknown.

        Raises FlowError for an invalid draft.
        """
        flow = parse_flow(flow_id, draft) if draft is not None else self.in_force().get(flow_id)
        if flow is None:
            return None
        return backtest(flow, FlowHistory(self.clickhouse, self.database), start, end)


@dataclass
class RunFilter:
    """Which runs a flow's results count: those entered on ``version`` and in
    ``[start_ms, end_ms)`` (None: any). A fact outside a run (a refused entry) is judged
    by its own version and instant. The messages of the runs kept are collected in
    ``message_ids`` (None: no filter), so their deliveries are counted alone."""

    version: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    message_ids: set[str] | None = None

    def __post_init__(self) -> None:
        if self.version is not None or self.start_ms is not None or self.end_ms is not None:
            self.message_ids = set()

    def _takes(self, fact: FlowFact) -> bool:
        return (
            (self.version is None or fact.version == self.version)
            and (self.start_ms is None or fact.at_ms >= self.start_ms)
            and (self.end_ms is None or fact.at_ms < self.end_ms)
        )

    def of(
        self, key: str, facts: list[FlowFact], state: FlowState
    ) -> tuple[str, list[FlowFact], FlowState]:
        """The customer's facts of the runs kept, and the state without a run not kept."""
        if self.message_ids is None:
            return key, facts, state
        runs = {fact.run_id for fact in facts if isinstance(fact, Entered) and self._takes(fact)}
        entered = {fact.run_id for fact in facts if isinstance(fact, Entered)}
        kept = [
            fact
            for fact in facts
            if fact.run_id in runs or (fact.run_id not in entered and self._takes(fact))
        ]
        self.message_ids.update(fact.message_id for fact in kept if isinstance(fact, Sent))
        if state.run is not None and state.run.run_id not in runs:
            state.run = None
        return key, kept, state


def _summary(flow: FlowDefinition, found: FlowsInForce) -> dict[str, Any]:
    pauses = found.pauses.get(flow.id, FlowPause())
    return {
        **flow.summary(),
        "deleted": False,
        "paused": pauses.in_force,
        "paused_at": None if pauses.since_ms is None else iso(pauses.since_ms),
        "pauses": [{"from": iso(start), "to": iso(end)} for start, end in pauses.ended],
    }
