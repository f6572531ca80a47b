"""Flows wired to the stack: the flows file, and backtests over the node's event log."""

from __future__ import annotations

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
from journeys.flows.facts import explain
from journeys.flows.inputs import iso, to_ms
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

    def flows(self) -> list[dict[str, Any]]:
        return [flow.summary() for flow in load_flows(self.settings)]

    def flow(self, flow_id: str) -> dict[str, Any] | None:
        found = next((f for f in load_flows(self.settings) if f.id == flow_id), None)
        return None if found is None else {**found.summary(), "definition": dict(found.source)}

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
        if draft is not None:
            flow = parse_flow(flow_id, draft)
        else:
            flow = next((f for f in load_flows(self.settings) if f.id == flow_id), None)
        if flow is None:
            return None
        return backtest(flow, FlowHistory(self.clickhouse, self.database), start, end)
