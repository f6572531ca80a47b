"""Benchmark: a 4-step funnel, the plain ``windowFunnel`` query against ours, same data.

    python -m bench.funnel --events 10000000 --customers 1000000 --runs 7

Generates the data (``bench.generate``) into a fresh chdb folder of its own,
merges the parts of both tables (what background merges do over time), then
alternates the two queries ``--runs`` times after one warm-up each and prints
the medians and their ratio; ``--json`` writes the same as JSON. Both answers'
counts are compared: a faster wrong answer is not a result. ``--data DIR``
keeps the chdb folder and reuses it when it already holds the same sizes and
seed (generating 10M events takes minutes on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from bench.generate import generate_events
from events import EventType
from journeys.funnels import Funnel, FunnelStep
from projections.analytics.funnels import FunnelQueries
from projections.clickhouse import connect
from projections.event_log import EventLog
from projections.migrations import migrate

DATABASE = "bench"
FUNNEL = Funnel(
    steps=tuple(
        FunnelStep(event_type=t)
        for t in (EventType.BROWSE, EventType.CART, EventType.CHECKOUT, EventType.PURCHASE)
    ),
    window=timedelta(days=7),
)


def prepare(client: Client, folder: Path, events: int, customers: int, seed: int) -> float | None:
    """The benchmark's data in ``folder`` (generated unless it holds these sizes and seed).

    The seconds generating took, None when the data was reused.
    """
    marker = folder / "bench-data.json"
    wanted = {"events": events, "customers": customers, "seed": seed}
    generated: float | None = None
    if not marker.exists() or json.loads(marker.read_text()) != wanted:
        client.command(f"DROP DATABASE IF EXISTS {DATABASE}")
        marker.unlink(missing_ok=True)
    migrate(client, DATABASE)  # kept data gets the migrations added since
    if not marker.exists():
        began = time.perf_counter()
        generate_events(client, DATABASE, events, customers, seed)
        generated = time.perf_counter() - began
        for table in ("events", "customer_timelines", "customer_type_times"):
            client.command(f"OPTIMIZE TABLE {DATABASE}.{table} FINAL")
        marker.write_text(json.dumps(wanted))
    return generated


def run(events: int, customers: int, runs: int, seed: int, folder: Path) -> dict[str, Any]:
    """Generate (unless ``folder`` already holds this data), measure, return the figures."""
    client = connect("", folder)
    generated = prepare(client, folder, events, customers, seed)
    log, ours = EventLog(client, DATABASE), FunnelQueries(client, DATABASE)

    def plain() -> list[int]:
        return log.funnel_counts(FUNNEL)

    def optimised() -> list[int]:
        ours.validate(FUNNEL)
        return [s.customers for s in ours.run(FUNNEL).steps]

    plain_counts, our_counts = plain(), optimised()  # warm-up
    timings: dict[str, list[float]] = {"plain": [], "ours": []}
    for _ in range(runs):
        for name, query in (("plain", plain), ("ours", optimised)):
            began = time.perf_counter()
            query()
            timings[name].append(time.perf_counter() - began)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    return {
        "events": events,
        "customers": customers,
        "seed": seed,
        "runs": runs,
        "generate_seconds": None if generated is None else round(generated, 2),
        "plain_counts": plain_counts,
        "our_counts": our_counts,
        "counts_equal": plain_counts == our_counts,
        "plain_seconds": [round(v, 4) for v in timings["plain"]],
        "our_seconds": [round(v, 4) for v in timings["ours"]],
        "plain_median_seconds": round(medians["plain"], 4),
        "our_median_seconds": round(medians["ours"], 4),
        "ratio": round(medians["ours"] / medians["plain"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: sizes, runs, seed, JSON output."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--data", type=Path, help="chdb folder to keep and reuse")
    args = parser.parse_args(argv)
    if args.data is not None:
        figures = run(args.events, args.customers, args.runs, args.seed, args.data)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-funnel-") as folder:
            figures = run(args.events, args.customers, args.runs, args.seed, Path(folder))
    made = figures["generate_seconds"]
    print(
        f"{figures['events']:,} events, {figures['customers']:,} customers, "
        f"4-step funnel, {figures['runs']} runs each "
        + (f"(generated in {made} s)" if made is not None else "(data reused)")
    )
    print(f"  plain windowFunnel (events FINAL)   median {figures['plain_median_seconds']:.3f} s")
    print(f"  ours (customer_type_times, lookups) median {figures['our_median_seconds']:.3f} s")
    print(f"  ratio ours / plain                  {figures['ratio']:.3f}")
    print(f"  counts equal: {figures['counts_equal']}  {figures['our_counts']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures["counts_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
