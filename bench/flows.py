"""Benchmark: backtest the shipped abandoned-cart flow over synthetic history in ClickHouse.

    .venv/bin/python -m bench.flows [--events N] [--customers C] [--runs R] [--json FILE]

Generates ``N`` storefront events (bench/generate.py, chdb in a temporary
folder; 90 days, a fifth of them Product Added), then times, each ``R`` times
(median reported):

- **read**: the backtest's reader alone (projections/flow_history.py: candidates,
  then their events), inputs per second: the raw limit of the backtest;
- **backtest**: the whole backtest (read + the engine + the tally), inputs per
  second, and its ratio to the read;
- **engine**: the engine and tally alone over the same inputs held in memory.

CPU is shared with the other engineers' work: quote ratios and medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.generate import SPAN_DAYS, START, generate_events
from journeys.flows.backtest import BacktestTally, run_history
from journeys.flows.definitions import FlowCatalog
from journeys.flows.engine import FlowEngine
from journeys.flows.inputs import FlowInput, to_ms
from projections.clickhouse import connect
from projections.flow_history import FlowHistory
from projections.migrations import migrate
from stack.flows import backtest, load_flows
from stack.settings import Settings


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    flow = load_flows(Settings(flows_file=None))[0]  # the canonical abandoned cart
    from datetime import UTC, datetime, timedelta

    start = datetime.fromisoformat(START).replace(tzinfo=UTC)
    end = start + timedelta(days=SPAN_DAYS)
    with tempfile.TemporaryDirectory(prefix="bench-flows-") as folder:
        client = connect("", Path(folder))
        database = "bench_flows"
        migrate(client, database)
        began = time.perf_counter()
        generate_events(client, database, args.events, args.customers)
        generated_s = time.perf_counter() - began
        history = FlowHistory(client, database)
        start_ms, end_ms = to_ms(start), to_ms(end)
        reads, backtests, engines = [], [], []
        inputs_read = 0
        report: dict[str, Any] = {}
        for _ in range(args.runs):
            began = time.perf_counter()
            held: list[tuple[str, list[FlowInput]]] = []
            for key, inputs in history.histories(
                history.candidates(flow, start_ms, end_ms), start_ms, end_ms
            ):
                held.append((key, inputs))
            reads.append(time.perf_counter() - began)
            inputs_read = sum(len(inputs) for _, inputs in held)

            began = time.perf_counter()
            report = backtest(flow, history, start, end)
            backtests.append(time.perf_counter() - began)

            began = time.perf_counter()
            engine = FlowEngine(FlowCatalog.of([flow]))
            tally = BacktestTally(flow, start_ms, end_ms)
            for key, inputs in held:
                facts, state = run_history(engine, flow.id, key, inputs, end_ms)
                tally.add(key, facts, state)
            engines.append(time.perf_counter() - began)
        client.close()
    read_s, backtest_s, engine_s = (statistics.median(x) for x in (reads, backtests, engines))
    figures = {
        "events_logged": args.events,
        "customers": args.customers,
        "generated_s": round(generated_s, 2),
        "candidates": report["customers_considered"],
        "inputs": inputs_read,
        "runs": report["entered"]["runs"],
        "read_inputs_per_s": round(inputs_read / read_s),
        "backtest_inputs_per_s": round(inputs_read / backtest_s),
        "backtest_events_logged_per_s": round(args.events / backtest_s),
        "engine_inputs_per_s": round(inputs_read / engine_s),
        "backtest_over_read": round(read_s / backtest_s, 3),
        "median_s": {"read": read_s, "backtest": backtest_s, "engine": engine_s},
    }
    print(f"{args.events} events of {args.customers} customers logged in {generated_s:.1f} s")
    print(f"candidates {figures['candidates']}, inputs read {inputs_read}, runs {figures['runs']}")
    print(f"read (raw limit):   {figures['read_inputs_per_s']:>10} inputs/s  ({read_s:.2f} s)")
    print(
        f"backtest:           {figures['backtest_inputs_per_s']:>10} inputs/s  ({backtest_s:.2f} s,"
        f" {figures['backtest_over_read']:.2f} of the read rate;"
        f" {figures['backtest_events_logged_per_s']} logged events/s)"
    )
    print(f"engine alone:       {figures['engine_inputs_per_s']:>10} inputs/s  ({engine_s:.2f} s)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
