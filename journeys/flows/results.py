"""A flow's live results: the backtest's tally over the facts the worker recorded.

Pure. The live facts of each customer (``flow_facts``) and their state
(``flow_states``) are counted by the backtest's own :class:`BacktestTally`, so
entered, reached, skipped by reason, left and the treatment-versus-holdout
comparison (difference and 95 % interval) mean the same live and in a
backtest; then, per node, what only the live side has: customers waiting there
now, messages sent, their deliveries (delivered, failed, pending, skipped) and
the conversions counted where the run stood when the goal was reached.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from journeys.flows.backtest import BacktestTally
from journeys.flows.definitions import FlowDefinition
from journeys.flows.engine import FlowState
from journeys.flows.facts import Entered, FlowFact, GoalReached, Sent
from journeys.flows.inputs import iso

# A delivery's state → the results' name for it ("dead": retried to the end, failed).
DELIVERY_STATES = {"delivered": "delivered", "dead": "failed", "pending": "pending"}


def live_results(
    flow: FlowDefinition,
    customers: Iterable[tuple[str, Sequence[FlowFact], FlowState]],
    deliveries: Iterable[tuple[str, str, int]],
    now_ms: int,
    kinds: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``flow`` (the version in force) counted over every customer's recorded facts.

    ``deliveries``: (send node, delivery state, count) of the flow's messages;
    ``kinds``: node → kind of older versions' nodes seen in the facts.
    """
    tally = BacktestTally(flow, 0, now_ms)
    waiting: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    converted: Counter[str] = Counter()
    entered: Counter[str] = Counter()
    first_ms: int | None = None
    for customer_key, facts, state in customers:
        tally.add(customer_key, facts, state)
        for fact in facts:
            first_ms = fact.at_ms if first_ms is None else min(first_ms, fact.at_ms)
            if isinstance(fact, Entered):
                entered[fact.node] += 1
            elif isinstance(fact, Sent):
                sent[fact.node] += 1
            elif isinstance(fact, GoalReached):
                converted[fact.node] += 1
        run = state.run
        if run is not None:
            waiting[run.node or ""] += 1
    delivered: dict[str, Counter[str]] = defaultdict(Counter)
    for node, status, count in deliveries:
        delivered[node][DELIVERY_STATES.get(status, status)] += count
    report = tally.report()
    nodes: dict[str, dict[str, Any]] = report["nodes"]
    for node_id in sorted({*sent, *converted, *waiting, *delivered} - set(nodes) - {""}):
        nodes[node_id] = {
            "kind": (kinds or {}).get(node_id, ""),
            "reached": tally.reached[node_id],
            "skipped": dict(tally.skipped_at.get(node_id, {})),
        }
    entries = {node.id for node in flow.entries}
    for node_id, shown in nodes.items():
        if node_id in entries:
            shown["reached"] = entered[node_id]  # an entry is reached by entering
        shown["waiting"] = waiting[node_id]
        shown["sent"] = sent[node_id]
        counts = delivered.get(node_id, Counter())
        shown["deliveries"] = {
            name: counts[name] for name in (*DELIVERY_STATES.values(), "skipped")
        }
        shown["converted"] = converted[node_id]
    totals: Counter[str] = Counter()
    for counts in delivered.values():
        totals.update(counts)
    return {
        "flow": flow.id,
        "version": flow.version,
        "since": None if first_ms is None else iso(first_ms),
        "as_of": iso(now_ms),
        "customers": report["customers_considered"],
        "entered": report["entered"],
        "reentry_refused": report["reentry_refused"],
        "inside_now": report["inside_at_end"],
        "waiting_at_the_end": waiting[""],  # paths ended, the goal's window still open
        "messages": report["messages"],
        "deliveries": {name: totals[name] for name in (*DELIVERY_STATES.values(), "skipped")},
        "skipped": report["skipped"],
        "left": report["left"],
        "converted": sum(converted.values()),
        "converted_at_the_end": converted[""],  # after the path ended, in the goal's window
        "conversions": report["conversions"],
        "paths": report["paths"],
        "nodes": nodes,
    }
