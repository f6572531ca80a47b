"""Backtest: a flow run by the same engine over recorded history, sending nothing.

Pure: the caller reads each customer's inputs (projections/flow_history.py
reads them from the ClickHouse event log) and hands them in; inputs stamped
before the window are history (``historical``: they tell the flow about the
customer, they never start a run). Each customer's inputs are taken in event
time and the state advanced to each input's instant and finally to the end of
the window, as the live worker advances it as time passes, so the decisions
are the ones the flow would have taken live.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import groupby
from typing import Any

from journeys.flows.definitions import FlowDefinition
from journeys.flows.engine import FlowEngine, FlowState
from journeys.flows.facts import (
    Entered,
    FlowFact,
    GoalReached,
    Left,
    NodeReached,
    Sent,
    Skipped,
    Waiting,
)
from journeys.flows.inputs import FlowInput, iso, order_key

SAMPLE_CUSTOMERS = 20
TOP_PATHS = 20
PATH_CUSTOMERS = 5  # customers named per path (the dashboard opens their "why")


def run_history(
    engine: FlowEngine,
    flow_id: str,
    customer_key: str,
    inputs: Iterable[FlowInput],
    end_ms: int,
) -> tuple[list[FlowFact], FlowState]:
    """One customer's facts over ``inputs`` (any order), advanced to ``end_ms``."""
    state = FlowState(customer_key, flow_id)
    facts: list[FlowFact] = []
    for at_ms, same_instant in groupby(sorted(inputs, key=order_key), key=lambda i: i.at_ms):
        if at_ms > end_ms:
            break
        for item in same_instant:
            facts.extend(engine.observe(state, item).facts)
        facts.extend(engine.advance(state, at_ms).facts)
    facts.extend(engine.advance(state, end_ms).facts)
    return facts, state


class BacktestTally:
    """Counts of a backtest, customer by customer."""

    def __init__(self, flow: FlowDefinition, start_ms: int, end_ms: int) -> None:
        self.flow = flow
        self.start_ms, self.end_ms = start_ms, end_ms
        self.customers = 0
        self.entered_customers = 0
        self.runs = 0
        self.refused = 0
        self.reached: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.per_day: Counter[tuple[str, str]] = Counter()
        self.skipped: Counter[str] = Counter()
        self.skipped_at: dict[str, Counter[str]] = defaultdict(Counter)
        self.skipped_who: dict[str, list[str]] = defaultdict(list)
        self.deferred = 0
        self.left: Counter[str] = Counter()
        self.inside = 0
        self.paths: Counter[tuple[str, ...]] = Counter()
        self.path_who: dict[tuple[str, ...], list[str]] = defaultdict(list)
        self.groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # group → [runs, converted]

    def add(self, customer_key: str, facts: Sequence[FlowFact], state: FlowState) -> None:
        self.customers += 1
        runs: dict[str, list[str]] = defaultdict(list)
        converted: set[str] = set()
        ended: dict[str, Left] = {}
        for fact in facts:
            if isinstance(fact, Entered):
                self.runs += 1
                self.reached[fact.node] += 1  # an entry is reached by entering
                runs[fact.run_id].append(fact.node)
            elif isinstance(fact, NodeReached):
                self.reached[fact.node] += 1
                runs[fact.run_id].append(fact.node)
            elif isinstance(fact, Sent):
                self.sent[fact.channel] += 1
                self.per_day[(iso(fact.at_ms)[:10], fact.channel)] += 1
            elif isinstance(fact, Skipped):
                if fact.reason == "reentry":
                    self.refused += 1
                    continue
                self.skipped[fact.reason] += 1
                self.skipped_at[fact.node][fact.reason] += 1
                who = self.skipped_who[fact.reason]
                if len(who) < SAMPLE_CUSTOMERS and customer_key not in who:
                    who.append(customer_key)
            elif isinstance(fact, Waiting) and fact.reason == "quiet_hours":
                self.deferred += 1
            elif isinstance(fact, GoalReached):
                converted.add(fact.run_id)
            elif isinstance(fact, Left):
                self.left[fact.reason] += 1
                ended[fact.run_id] = fact
        if runs:
            self.entered_customers += 1
        for run_id, path in runs.items():
            self.paths[tuple(path)] += 1
            who = self.path_who[tuple(path)]
            if len(who) < PATH_CUSTOMERS and customer_key not in who:
                who.append(customer_key)
            left = ended.get(run_id)
            if left is not None:
                group = "holdout" if left.holdout else "treatment"
            elif state.run is not None and state.run.run_id == run_id:
                self.inside += 1
                group = "holdout" if state.run.holdout else "treatment"
            else:
                continue
            tally = self.groups[group]
            tally[0] += 1
            tally[1] += run_id in converted

    def report(self) -> dict[str, Any]:
        flow = self.flow
        return {
            "flow": flow.id,
            "version": flow.version,
            "from": iso(self.start_ms),
            "to": iso(self.end_ms),
            "customers_considered": self.customers,
            "entered": {"customers": self.entered_customers, "runs": self.runs},
            "reentry_refused": self.refused,
            "nodes": {
                node_id: {
                    "kind": node.kind,
                    "reached": self.reached[node_id],
                    "skipped": dict(self.skipped_at.get(node_id, {})),
                }
                for node_id, node in flow.nodes.items()
            },
            "messages": dict(self.sent),
            "messages_per_day": [
                {"day": day, "channel": channel, "count": count}
                for (day, channel), count in sorted(self.per_day.items())
            ],
            "skipped": dict(self.skipped),
            "skipped_customers": {k: list(v) for k, v in self.skipped_who.items()},
            "quiet_hours": {"deferred": self.deferred, "skipped": self.skipped["quiet_hours"]},
            "caps_hit": self.skipped["cap"],
            "left": dict(self.left),
            "inside_at_end": self.inside,
            "paths": [
                {"path": list(path), "runs": count, "customers": self.path_who[path]}
                for path, count in self.paths.most_common(TOP_PATHS)
            ],
            "conversions": compare_conversions(self.groups),
        }


def compare_conversions(groups: dict[str, list[int]]) -> dict[str, Any]:
    """Treatment versus holdout conversion, the difference and its 95 % interval (normal)."""
    shown: dict[str, Any] = {}
    rates: dict[str, float] = {}
    for name in ("treatment", "holdout"):
        runs, converted = groups.get(name, [0, 0])
        rate = converted / runs if runs else None
        shown[name] = {"runs": runs, "converted": converted, "rate": rate}
        if rate is not None:
            rates[name] = rate
    difference = interval = None
    if len(rates) == 2:
        t, h = rates["treatment"], rates["holdout"]
        n_t, n_h = groups["treatment"][0], groups["holdout"][0]
        difference = t - h
        spread = 1.96 * math.sqrt(t * (1 - t) / n_t + h * (1 - h) / n_h)
        interval = [difference - spread, difference + spread]
    shown["difference"] = difference
    shown["ci95"] = interval
    return shown
