"""Benchmark: backtest the shipped abandoned-cart flow over synthetic history in ClickHouse.

    .venv/bin/python -m bench.flows [--events N] [--customers C] [--runs R] [--json FILE]

Generates ``N`` storefront events (bench/generate.py, chdb in a temporary
folder; 90 days, a fifth of them Product Added), then times, each ``R`` times
(median reported):

- **scan**: a plain ClickHouse read of every logged event's columns the reader
  asks for (the same ``FINAL`` table, rows into Python tuples, nothing decoded),
  events per second: the raw limit of the backtest's events/s;
- **read**: the backtest's reader alone (projections/flow_history.py: candidates,
  then their events), inputs per second: the raw limit of the backtest;
- **backtest**: the whole backtest (read + the engine + the tally), inputs per
  second, and its ratio to the read;
- **engine**: the engine and tally alone over the same inputs held in memory.

``--profile FILE`` writes a cProfile of one more backtest and prints its top
functions by own time (where the backtest's time goes).

CPU is shared with the other engineers' work: quote ratios and medians.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
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
from projections.event_log import FLOAT_FIELDS, INT_FIELDS, STRING_FIELDS
from projections.flow_history import FlowHistory
from projections.migrations import migrate
from stack.flows import backtest, load_flows
from stack.settings import Settings

TYPED_FIELDS = (*STRING_FIELDS, *FLOAT_FIELDS, *INT_FIELDS)
# What the reader asks of each event (projections/flow_history.py), read plainly.
SCAN = """
    SELECT customer_key, event_id, source, event_type, event_name,
           toUnixTimestamp64Milli(timestamp), historical, properties, {typed}
    FROM {db}.events FINAL
"""


def scan(client: Any, database: str) -> int:
    """Every logged event's row, as the reader's columns, into Python; the row count."""
    typed = ", ".join(TYPED_FIELDS)
    rows = 0
    with client.query_row_block_stream(SCAN.format(typed=typed, db=database)) as blocks:
        for block in blocks:
            rows += len(block)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, help="write a cProfile of one more backtest")
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
        scans, reads, backtests, engines = [], [], [], []
        inputs_read = scanned = 0
        report: dict[str, Any] = {}
        for _ in range(args.runs):
            began = time.perf_counter()
            scanned = scan(client, database)
            scans.append(time.perf_counter() - began)

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
        top: list[str] = []
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(backtest, flow, history, start, end)
            profiler.dump_stats(args.profile)
            top = _top(pstats.Stats(str(args.profile)))
        client.close()
    scan_s, read_s, backtest_s, engine_s = (
        statistics.median(x) for x in (scans, reads, backtests, engines)
    )
    figures = {
        "events_logged": args.events,
        "customers": args.customers,
        "generated_s": round(generated_s, 2),
        "candidates": report["customers_considered"],
        "inputs": inputs_read,
        "runs": report["entered"]["runs"],
        "scanned_events": scanned,
        "scan_events_per_s": round(scanned / scan_s),
        "read_inputs_per_s": round(inputs_read / read_s),
        "backtest_inputs_per_s": round(inputs_read / backtest_s),
        "backtest_events_logged_per_s": round(args.events / backtest_s),
        "engine_inputs_per_s": round(inputs_read / engine_s),
        "backtest_over_read": round(read_s / backtest_s, 3),
        "backtest_over_scan": round(scan_s / backtest_s, 3),
        "median_s": {"scan": scan_s, "read": read_s, "backtest": backtest_s, "engine": engine_s},
    }
    print(f"{args.events} events of {args.customers} customers logged in {generated_s:.1f} s")
    print(f"candidates {figures['candidates']}, inputs read {inputs_read}, runs {figures['runs']}")
    print(
        f"scan (raw limit):   {figures['scan_events_per_s']:>10} events/s  ({scan_s:.2f} s,"
        f" {scanned} events read plainly from ClickHouse)"
    )
    print(
        f"backtest (events):  {figures['backtest_events_logged_per_s']:>10} events/s"
        f"  ({figures['backtest_over_scan']:.3f} of the scan rate)"
    )
    print(f"read (raw limit):   {figures['read_inputs_per_s']:>10} inputs/s  ({read_s:.2f} s)")
    print(
        f"backtest:           {figures['backtest_inputs_per_s']:>10} inputs/s  ({backtest_s:.2f} s,"
        f" {figures['backtest_over_read']:.2f} of the read rate;"
        f" {figures['backtest_events_logged_per_s']} logged events/s)"
    )
    print(f"engine alone:       {figures['engine_inputs_per_s']:>10} inputs/s  ({engine_s:.2f} s)")
    for line in top:
        print(line)
    if args.json:
        args.json.write_text(json.dumps({**figures, "profile_top": top}, indent=2))
    return figures


def _top(stats: pstats.Stats, count: int = 15) -> list[str]:
    """The functions with the most own time, as "share of the total, cumulative, name"."""
    table: Any = stats.stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in table.values()) or 1.0
    ranked = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:count]
    return [
        f"{own / total:6.1%} own {cumulative:8.2f} s cum  {Path(file).name}:{line} {name}"
        for (file, line, name), (_, _, own, cumulative, _) in ranked
    ]


if __name__ == "__main__":
    main()
