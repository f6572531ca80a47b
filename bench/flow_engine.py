"""Benchmark: the pure flow engine with the canonical flow only vs the eight shipped flows on.

    .venv/bin/python -m bench.flow_engine [--events N] [--customers C] [--runs R]
        [--profile] [--json FILE]

Generates ``N`` synthetic storefront events of ``C`` customers (seeded: identify
with a birthday and a time zone, page views, carts, orders, tickets), in event
time, and feeds them to :class:`journeys.flows.engine.FlowEngine` as the live
runner does (streams/outreach/flows.py): each event to every flow that
``wants`` it, observed (the flows keeping facts through the customer's shared
memory), then the states due advanced to the event's instant (the timer loop's
step), and each row serialised, counted as a write when it changed (the store
skips the rest). Timed each ``R`` times, alternating the two set-ups
(medians of wall time and of the process's CPU time, which a loaded shared
machine disturbs less):

- **canonical**: only the canonical abandoned cart (journeys/flows.toml) on:
  the raw limit here, the engine's cost for one event-triggered flow;
- **eight**: the eight shipped flows on (the seven lifecycle rules' flows
  switched on), events/s and the ratio to the canonical run.

Also prints the state writes per event of each. ``--live BATCH`` also runs both
through the worker's ``FlowRunner`` over a real SQLite outreach store (batches of
``BATCH`` events saved with their position, the timer's tick after each).
``--profile`` prints cProfile's top functions of one eight-flow run.
CPU is shared: quote ratios and medians.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import heapq
import json
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from journeys.flows.definitions import FlowCatalog, FlowDefinition, flows_from_toml
from journeys.flows.engine import CustomerMemory, CustomerStep, FlowEngine, FlowState, FlowStep
from journeys.flows.inputs import FlowInput, TrackedInput
from streams.outreach.flows import FlowRunner
from streams.outreach.store import FlowWrite, OutreachStore

START_MS = 1_790_000_000_000  # 2026-09-21
_ZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC")
# (name, type, weight): a storefront's mix
_KINDS = (
    ("page viewed", "browse", 40),
    ("product viewed", "browse", 20),
    ("product added", "cart", 18),
    ("order completed", "purchase", 8),
    ("ticket created", "support", 3),
    ("ticket resolved", "support", 3),
    ("identify", "identify", 8),
)


def shipped_flows(all_on: bool) -> list[FlowDefinition]:
    """The shipped flows: all eight switched on, or the canonical abandoned cart alone."""
    text = resources.files("journeys").joinpath("flows.toml").read_text("utf-8")
    if all_on:
        return flows_from_toml(text.replace("enabled = false", "enabled = true"))
    return [flow for flow in flows_from_toml(text) if flow.id == "abandoned_cart"]


def synthetic_inputs(events: int, customers: int, seed: int = 7) -> list[tuple[str, FlowInput]]:
    """``events`` inputs of ``customers`` customers over ~90 days, in event time."""
    rng = random.Random(seed)
    names = [kind for kind in _KINDS for _ in range(kind[2])]
    found: list[tuple[str, FlowInput]] = []
    span_ms = 90 * 86_400_000
    for number in range(events):
        customer = f"c{rng.randrange(customers)}"
        at_ms = START_MS + number * span_ms // events
        name, kind, _ = rng.choice(names)
        properties: dict[str, Any] = {}
        if kind == "identify":
            properties = {
                "first_name": f"name{customer}",
                "birthday": f"{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                "timezone": rng.choice(_ZONES),
            }
        elif kind == "cart":
            product = rng.randrange(50)
            properties = {
                "cart_id": f"{customer}-cart{number // 200}",
                "product_id": str(product),
                "price": 5.0 + product,
                "quantity": 1,
            }
        elif kind == "purchase":
            properties = {
                "order_id": f"o{number}",
                "cart_id": f"{customer}-cart{number // 200}",
                "revenue": round(rng.uniform(10, 300), 2),
            }
        elif kind == "support":
            properties = {"ticket_id": f"t{customer}-{number // 500}"}
        found.append(
            (customer, TrackedInput(f"e{number}", at_ms, name, kind, properties, False, ""))
        )
    return found


def run_engine(flows: list[FlowDefinition], inputs: list[tuple[str, FlowInput]]) -> dict[str, Any]:
    """The inputs through the engine as the live runner takes them; counts of the work.

    Each event is observed by the flows that want it, the flows that keep facts sharing
    one memory per customer (``observe_customer``: the event kept there, one row), then
    the timer advances every state (or memory: the customer's sharing flows together)
    whose wake-up time has come to the event's instant; each row is serialised (orjson,
    as the store writes it) and counted as a write when it changed. At the end every
    state is advanced 60 days on. ``digest`` hashes the ids of all facts decided: equal
    digests, equal decisions.
    """
    engine = FlowEngine(FlowCatalog.of(flows))
    flow_ids = engine.catalog.flow_ids()
    shared = [flow_id for flow_id in flow_ids if engine.shares_memory(flow_id)]
    alone = [flow_id for flow_id in flow_ids if flow_id not in shared]
    states: dict[tuple[str, str], FlowState] = {}
    memories: dict[str, CustomerMemory] = {}
    rows: dict[tuple[str, str], bytes] = {}  # as written last
    due: list[tuple[int, str, str]] = []  # (wake, customer, flow or ""): the timer's index
    writes = 0
    fact_ids: list[str] = []

    def row(key: str, name: str, data: dict[str, Any], wake: int | None) -> None:
        nonlocal writes
        text = orjson.dumps(data)
        if rows.get((key, name)) != text:
            rows[(key, name)] = text
            writes += 1
        if wake is not None:
            heapq.heappush(due, (wake, key, name))

    def sharing(key: str) -> dict[str, FlowState]:
        return {flow_id: state_of(key, flow_id) for flow_id in shared}

    def state_of(key: str, flow_id: str) -> FlowState:
        state = states.get((key, flow_id))
        if state is None:
            state = states[(key, flow_id)] = FlowState(key, flow_id)
        return state

    def written(step: FlowStep) -> None:
        fact_ids.extend(fact.fact_id for fact in step.facts)
        state = step.state
        row(state.customer_key, state.flow_id, state.to_dict(), step.wake_ms)

    def written_customer(key: str, step: CustomerStep) -> None:
        fact_ids.extend(fact.fact_id for fact in step.facts)
        row(key, "", memories[key].to_dict(), step.wake_ms)
        for state in step.states:
            row(key, state.flow_id, state.to_dict(), engine.wake(state))

    def tick(now_ms: int) -> None:
        together: dict[str, None] = {}  # customers whose sharing flows advance as one
        while due and due[0][0] <= now_ms:
            wake, key, name = heapq.heappop(due)
            if name in alone:
                state = states[(key, name)]
                if engine.wake(state) == wake:  # else moved since: another entry stands
                    written(engine.advance(state, now_ms, now_ms))
            elif key not in together and wake in (
                _wake_of(memories[key]),
                *(engine.wake(state) for state in sharing(key).values()),
            ):
                together[key] = None
        for key in together:
            written_customer(
                key, engine.advance_customer(memories[key], sharing(key), now_ms, now_ms)
            )

    for key, item in inputs:
        for flow_id in alone:
            if engine.wants(flow_id, item):
                written(engine.observe(state_of(key, flow_id), item, item.at_ms))
        if shared:
            memory = memories.setdefault(key, CustomerMemory(key))
            written_customer(
                key, engine.observe_customer(memory, partial(sharing, key), item, item.at_ms)
            )
        tick(item.at_ms)
    if inputs:
        tick(inputs[-1][1].at_ms + 60 * 86_400_000)
    digest = hashlib.sha256("\n".join(sorted(fact_ids)).encode()).hexdigest()[:16]
    return {"state_writes": writes, "facts": len(fact_ids), "digest": digest}


def _wake_of(memory: CustomerMemory) -> int | None:
    return memory.pending[0]["at_ms"] if memory.pending else None


def _no_targets(
    rule: str, channels: Sequence[str], message: dict[str, Any]
) -> list[tuple[str, str, str]]:
    return [("bench", channel, "pending") for channel in channels]


def run_live(
    flows: list[FlowDefinition], inputs: list[tuple[str, FlowInput]], folder: Path, batch: int
) -> dict[str, Any]:
    """The inputs through the worker's FlowRunner over a real SQLite outreach store:
    batches of ``batch`` events (observed, saved with their position), each followed
    by the timer's tick at the batch's last instant; at the end 60 days of ticks."""
    store = OutreachStore(sqlite_path=folder / "events.sqlite")
    runner = FlowRunner(store, flows, _no_targets, None)
    last: dict[tuple[str, str], tuple[Any, ...]] = {}

    def changed(write: FlowWrite) -> int:
        """Rows the store writes: those unlike the one it committed last (it skips the rest)."""
        count = 0
        for key, flow_id, _, state, wake in write.states:
            row = (orjson.dumps(state), wake)
            if last.get((key, flow_id)) != row:
                last[(key, flow_id)] = row
                count += 1
        return count

    rows = 0
    now = START_MS
    for position, first in enumerate(range(0, len(inputs), batch), start=1):
        chunk = inputs[first : first + batch]
        now = chunk[-1][1].at_ms + 2_000
        write = runner.observe(0, chunk, now)
        rows += changed(write)
        store.save_batch([], "events#0", position, write)
        due = runner.advance_due([0], now)
        rows += changed(due)
        store.save_flows(due)
    end = now + 60 * 86_400_000
    while now < end:
        now += 86_400_000
        due = runner.advance_due([0], now)
        rows += changed(due)
        store.save_flows(due)
    store.close()
    return {"state_writes": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--live",
        type=int,
        default=0,
        metavar="BATCH",
        help="also through the worker's FlowRunner over SQLite, BATCH events per batch",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    inputs = synthetic_inputs(args.events, args.customers)
    setups = {"canonical": shipped_flows(all_on=False), "eight": shipped_flows(all_on=True)}
    times: dict[str, list[float]] = {name: [] for name in setups}
    cpu: dict[str, list[float]] = {name: [] for name in setups}
    work: dict[str, dict[str, Any]] = {}
    for _ in range(args.runs):  # alternated, so both see the same load
        for name, flows in setups.items():
            began, began_cpu = time.perf_counter(), time.process_time()
            work[name] = run_engine(flows, inputs)
            times[name].append(time.perf_counter() - began)
            cpu[name].append(time.process_time() - began_cpu)
    median = {name: statistics.median(values) for name, values in times.items()}
    rate = {name: round(args.events / seconds) for name, seconds in median.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    rate_cpu = {name: round(args.events / seconds) for name, seconds in median_cpu.items()}
    figures: dict[str, Any] = {
        "events": args.events,
        "customers": args.customers,
        "runs": args.runs,
        "canonical_events_per_s": rate["canonical"],
        "eight_events_per_s": rate["eight"],
        "eight_over_canonical": round(median["canonical"] / median["eight"], 3),
        "canonical_events_per_cpu_s": rate_cpu["canonical"],
        "eight_events_per_cpu_s": rate_cpu["eight"],
        "eight_over_canonical_cpu": round(median_cpu["canonical"] / median_cpu["eight"], 3),
        "state_writes_per_event": {
            name: round(counts["state_writes"] / args.events, 2) for name, counts in work.items()
        },
        "facts": {name: counts["facts"] for name, counts in work.items()},
        "digest": {name: counts["digest"] for name, counts in work.items()},
        "median_s": median,
        "median_cpu_s": median_cpu,
    }
    print(f"{args.events} events of {args.customers} customers, median of {args.runs}")
    for name in setups:
        print(
            f"{name + ':':<11}{rate[name]:>9} events/s  ({median[name]:.2f} s;"
            f" {rate_cpu[name]} events per CPU s,"
            f" {figures['state_writes_per_event'][name]} state writes/event,"
            f" {figures['facts'][name]} facts, digest {figures['digest'][name]})"
        )
    print(
        f"eight over canonical: {figures['eight_over_canonical']:.3f}"
        f" (CPU time: {figures['eight_over_canonical_cpu']:.3f})"
    )
    if args.live:
        live: dict[str, list[float]] = {name: [] for name in setups}
        for _ in range(args.runs):
            for name, flows in setups.items():
                with tempfile.TemporaryDirectory(prefix="bench-flow-engine-") as folder:
                    began = time.perf_counter()
                    rows = run_live(flows, inputs, Path(folder), args.live)["state_writes"]
                    live[name].append(time.perf_counter() - began)
                figures[f"live_{name}_state_rows"] = rows
        live_median = {name: statistics.median(values) for name, values in live.items()}
        for name in setups:
            figures[f"live_{name}_events_per_s"] = round(args.events / live_median[name])
            print(
                f"live {name + ':':<11}{figures[f'live_{name}_events_per_s']:>9} events/s"
                f"  ({live_median[name]:.2f} s, {figures[f'live_{name}_state_rows']} state rows)"
            )
        figures["live_eight_over_canonical"] = round(
            live_median["canonical"] / live_median["eight"], 3
        )
        print(f"live eight over canonical: {figures['live_eight_over_canonical']:.3f}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run_engine(setups["eight"], inputs)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
