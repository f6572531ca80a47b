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
from journeys.flows.engine import FlowEngine
from journeys.flows.inputs import to_ms
from projections.flow_history import FlowHistory
from stack.settings import Settings


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

    def flows(self) -> list[dict[str, Any]]:
        return [flow.summary() for flow in load_flows(self.settings)]

    def flow(self, flow_id: str) -> dict[str, Any] | None:
        found = next((f for f in load_flows(self.settings) if f.id == flow_id), None)
        return None if found is None else {**found.summary(), "definition": dict(found.source)}

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
