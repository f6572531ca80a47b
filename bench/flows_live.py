"""Benchmarks of flows running live (issue 18): timer precision, and the worker's rate.

    .venv/bin/python -m bench.flows_live timers [--waiting 100000] [--due-per-s 200]
        [--measure-s 30] [--json FILE] [--profile FILE]
    .venv/bin/python -m bench.flows_live worker [--events 40000] [--custom 20] [--runs 3]
        [--shipped-on] [--json FILE]

**timers** — a due step runs within 1 s of its due time at p99 with
``--waiting`` customers waiting in flows. The worker's own parts, in this
process: the outreach store (SQLite), the FlowRunner and the engine, driven as
the worker's timer loop drives them (every ``trigger_tick_s``: the due states of
the ready partitions advanced to now, their facts, states and messages — a
trigger row and its delivery each — committed in one transaction). Each
customer entered a flow whose wait ends at a due time of its own; the due
times are spread at ``--due-per-s`` over the measured window and beyond it, so
the whole population stays waiting throughout. Lateness of each step: from its
due time to the commit of its decision. Beside it, the raw limits measured in
the same run: the store's due-range query (nothing due, and a tick's worth
due) with the population in the table, and the tick interval. No broker and
no consumer: a consumer's batch holds the same lock in the worker, so under
ingest load a tick also waits for the batch in hand (``worker`` measures that
cost the other way round).

**worker** — the worker's events/s with the shipped flows plus
``--custom`` flows active, against the same run with no flow (target ≥ 0.8).
Each run starts a broker-backed ``journeys node`` in a temporary folder (its
own topics), produces ``--events`` storefront events and times until both the
journey consumer and the trigger consumer (facts and flows) have consumed
every record of their topics. Runs alternate between the two setups; medians.

Each prints a row per target with "met" or the gap. CPU is shared with other
work: quote ratios and medians from one run.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from events.segment import TrackCall, accept_call
from journeys.flows.definitions import flows_from_toml
from journeys.flows.inputs import FlowInput, from_ms, tracked_input
from stack.settings import Settings
from streams.outreach.flows import FlowRunner
from streams.outreach.store import FlowWrite, OutreachStore
from streams.pipeline import source_name

PARTITIONS = 4
BATCH = 2000
TIMER_TARGET_S = 1.0
WORKER_TARGET = 0.8
# The waiting flow's wait: long enough that every entry lies in the past when advanced.
WAIT_S = 3600

WAITING_FLOW = f"""
[flows.bench_wait]
version = 1
reentry = "always"
[flows.bench_wait.nodes.start]
kind = "entry"
event = "Product Added"
next = "pause"
[flows.bench_wait.nodes.pause]
kind = "wait"
duration = "{WAIT_S}s"
next = "hello"
[flows.bench_wait.nodes.hello]
kind = "send"
channel = "webhook"
body = "{{{{ traits.first_name | default('Hi') }}}}, {{{{ entry.name | default('it') }}}} waits."
"""


def _row(name: str, figure: float, target: float, unit: str, met: bool, gap: str) -> str:
    verdict = "met" if met else f"gap: {gap}"
    return f"{name:<44} {figure:>10.3f} {unit:<4} target {target:g} {unit:<4} {verdict}"


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# --- timers ---------------------------------------------------------------------------


def _entries(waiting: int, first_due_ms: int, due_per_s: float) -> list[list[tuple[str, Any]]]:
    """Each customer's Product Added, stamped so that its wait ends at its own due time,
    batched per partition as the trigger consumer hands them over."""
    received = from_ms(first_due_ms)
    spacing_ms = 1000.0 / due_per_s
    batches: list[list[tuple[str, Any]]] = [[] for _ in range(PARTITIONS)]
    for i in range(waiting):
        key = f"c{i:07d}"
        at_ms = first_due_ms - WAIT_S * 1000 + int(i * spacing_ms)
        call = {
            "type": "track",
            "event": "Product Added",
            "userId": key,
            "messageId": f"m{i}",
            "timestamp": from_ms(at_ms).isoformat(),
            "properties": {"product_id": f"p{i % 500}", "name": "Mug", "price": 12},
        }
        event = accept_call(TrackCall, call, received, "bench")
        batches[zlib.crc32(key.encode()) % PARTITIONS].append((key, tracked_input(event)))
    return batches


def _targets(rule: str, channels: Sequence[str], message: dict[str, Any]) -> list[Any]:
    return [("wh_bench", "webhook", "pending")]  # one endpoint: a delivery row per message


def _populate(store: OutreachStore, runner: FlowRunner, batches: list[list[Any]]) -> float:
    """Observe the entries and advance them into their waits; seconds taken.

    Advanced to the last entry's instant, not to the wall clock: however long this
    takes, no wait ends in it (the first ends an hour after the first entry)."""
    began = time.perf_counter()
    now_ms = int(time.time() * 1000)
    last_entry_ms = max(item.at_ms for items in batches for _, item in items)
    for partition, items in enumerate(batches):
        for first in range(0, len(items), BATCH):
            chunk: list[tuple[str, FlowInput]] = items[first : first + BATCH]
            write = runner.observe(partition, chunk, now_ms)
            store.save_batch([], f"bench#{partition}", first + len(chunk), write)
    ready = list(range(PARTITIONS))
    while True:
        # Every entry is in the past: the timer loop takes them in, 200 a call.
        write = runner.advance_due(ready, last_entry_ms)
        if not write:
            break
        store.save_flows(write)
    return time.perf_counter() - began


def _pilot_rate(flows: Any, customers: int = 2000) -> float:
    """Customers per second populated, in a scratch store."""
    with tempfile.TemporaryDirectory(prefix="bench-flow-pilot-") as folder:
        store = OutreachStore(sqlite_path=Path(folder) / "events.sqlite")
        runner = FlowRunner(store, flows, _targets, 900_000)
        batches = _entries(customers, int((time.time() + 3600) * 1000), 1.0)
        rate = customers / _populate(store, runner, batches)
        store.close()
    return rate


def _count_waiting(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        now = time.time()
        return int(
            db.execute(
                "SELECT count(*) FROM flow_states WHERE wake_ts IS NOT NULL AND wake_ts > ?",
                (now,),
            ).fetchone()[0]
        )


def _query_ms(store: OutreachStore, now_ts: float, repeats: int = 30) -> float:
    ready = list(range(PARTITIONS))
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        store.due_flow_states(ready, now_ts)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def timers(args: argparse.Namespace) -> dict[str, Any]:
    tick_s = Settings().trigger_tick_s
    flows = flows_from_toml(WAITING_FLOW)
    with tempfile.TemporaryDirectory(prefix="bench-flow-timers-") as folder:
        path = Path(folder) / "events.sqlite"
        store = OutreachStore(sqlite_path=path)
        runner = FlowRunner(store, flows, _targets, 900_000)
        # Due times start once the population is in: its time is estimated from a
        # pilot of 2,000 customers (then waited for), so all of it waits at the start.
        lead_s = 30 + 3 * args.waiting / _pilot_rate(flows)
        first_due_ms = int((time.time() + lead_s) * 1000)
        batches = _entries(args.waiting, first_due_ms, args.due_per_s)
        populate_s = _populate(store, runner, batches)
        waiting = _count_waiting(path)
        if time.time() > first_due_ms / 1000:
            print(f"populating took {populate_s:.0f} s, past the first due time: rerun")
        measure_from = time.time()
        # The raw limits, with the population in the table.
        idle_query_ms = _query_ms(store, min(measure_from, first_due_ms / 1000 - 1))
        tick_due_ts = first_due_ms / 1000 + tick_s * 3
        # Made before the window: making them took seconds in which steps came due.
        load = _ingest_batches(args.ingest_per_s, tick_s, args.measure_s)
        while time.time() < first_due_ms / 1000:
            time.sleep(0.01)
        lateness: list[float] = []
        tick_work: list[float] = []
        steps = 0
        profile = cProfile.Profile() if args.profile else None
        end = max(first_due_ms / 1000, time.time()) + args.measure_s
        ready = list(range(PARTITIONS))
        busy_query_ms = 0.0
        if profile is not None:
            profile.enable()
        loaded = 0
        consume_work: list[float] = []
        while time.time() < end:
            if load:
                # A consumer batch holds the worker's lock: the tick waits for it.
                began = time.perf_counter()
                loaded += _consume(store, runner, load.pop())
                consume_work.append(time.perf_counter() - began)
            tick = time.time()
            if not busy_query_ms and tick >= tick_due_ts:
                began = time.perf_counter()
                store.due_flow_states(ready, tick)
                busy_query_ms = (time.perf_counter() - began) * 1000
            write = runner.advance_due(ready, int(tick * 1000))
            if write:
                store.save_flows(write)
            committed = time.time()
            tick_work.append(committed - tick)
            lateness += _lateness(write, committed)
            steps += len(write.states)
            # mode's timer: the next run tick_s after this one began, at once when late.
            time.sleep(max(0.0, tick + tick_s - time.time()))
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
        waiting_after = _count_waiting(path)
        store.close()
    p50, p99 = _percentile(lateness, 0.5), _percentile(lateness, 0.99)
    figures = {
        "waiting_at_start": waiting,
        "waiting_at_end": waiting_after,
        "populate_s": round(populate_s, 1),
        "due_per_s": args.due_per_s,
        "measured_s": args.measure_s,
        "sends_measured": len(lateness),
        "states_advanced": steps,
        "lateness_p50_s": round(p50, 4),
        "lateness_p99_s": round(p99, 4),
        "lateness_max_s": round(max(lateness, default=float("nan")), 4),
        "tick_work_p50_s": round(_percentile(tick_work, 0.5), 4),
        "tick_work_p99_s": round(_percentile(tick_work, 0.99), 4),
        "tick_s": tick_s,
        "due_query_idle_ms": round(idle_query_ms, 3),
        "due_query_busy_ms": round(busy_query_ms, 3),
        "ingest_per_s": args.ingest_per_s,
        "ingested": loaded,
        "batch_work_p99_s": round(_percentile(consume_work, 0.99), 4),
        "batch_work_max_s": round(max(consume_work, default=0.0), 4),
    }
    print(
        f"{waiting} customers waiting in a flow (populated in {populate_s:.1f} s), "
        f"{args.due_per_s:g} due steps/s over {args.measure_s:g} s; {waiting_after} still "
        "waiting at the end"
    )
    if loaded:
        print(
            f"with {loaded} storefront events of other customers consumed meanwhile "
            f"({args.ingest_per_s:g}/s, through the same flows, between ticks); a batch's "
            f"work p99 {figures['batch_work_p99_s']:.4f} s, max {figures['batch_work_max_s']:.4f} s"
        )
    print(
        f"raw limits: tick interval {tick_s:g} s; due-range query {idle_query_ms:.2f} ms "
        f"with nothing due, {busy_query_ms:.2f} ms with a tick's steps due; a tick's work "
        f"p50 {figures['tick_work_p50_s']:.4f} s, p99 {figures['tick_work_p99_s']:.4f} s"
    )
    print(
        f"lateness, due time to committed decision, {len(lateness)} sends: p50 {p50:.4f} s, "
        f"p99 {p99:.4f} s, max {figures['lateness_max_s']:.4f} s"
    )
    print(
        _row(
            f"timer p99 lateness, {waiting} waiting",
            p99,
            TIMER_TARGET_S,
            "s",
            p99 <= TIMER_TARGET_S,
            f"{p99 - TIMER_TARGET_S:.3f} s over",
        )
    )
    return figures


def _ingest_batches(per_s: float, tick_s: float, measure_s: float) -> list[list[Any]]:
    """Storefront events of other customers, stamped now, one batch per tick (popped)."""
    if not per_s:
        return []
    per_tick = max(1, round(per_s * tick_s))
    ticks = int(measure_s / tick_s) + 10
    events = live_events(per_tick * ticks)
    batches = [events[i : i + per_tick] for i in range(0, len(events), per_tick)]
    return batches[::-1]


def _consume(store: OutreachStore, runner: FlowRunner, batch: list[tuple[bytes, bytes]]) -> int:
    """One consumer batch through the flows (the rules' part left out), saved as the
    worker saves it."""
    from streams.outreach.trigger_events import TriggerEvent

    by_partition: dict[int, list[tuple[str, FlowInput]]] = {}
    for key, value in batch:
        touch = TriggerEvent.from_json(value)
        item = (touch.customer_key, tracked_input(touch))
        by_partition.setdefault(zlib.crc32(key) % PARTITIONS, []).append(item)
    for partition, items in by_partition.items():
        write = runner.observe(partition, items, int(time.time() * 1000))
        store.save_batch([], f"load#{partition}", 0, write)
    return len(batch)


def _lateness(write: FlowWrite, committed_s: float) -> list[float]:
    return [committed_s - float(message["due_ts"]) for message, _ in write.sends]


# --- worker ---------------------------------------------------------------------------

_CUSTOM_ENTRIES = [
    ("Product Viewed", ""),
    ("Product Viewed", "properties = { price = { gt = 20 } }"),
    ("Product List Viewed", ""),
    ("Products Searched", ""),
    ("Product Added", ""),
    ("Checkout Started", ""),
    ("Payment Info Entered", ""),
    ("Order Completed", ""),
    ("Order Completed", "properties = { revenue = { gt = 100 } }"),
    ("Ticket Created", ""),
]


def custom_flows(count: int) -> str:
    """``count`` flows of the shapes marketers write, on the storefront's events."""
    reentry = ['reentry = "always"', 'reentry = "never"', 'reentry = "cooldown"\ncooldown = "1d"']
    parts = []
    for i in range(count):
        event, filters = _CUSTOM_ENTRIES[i % len(_CUSTOM_ENTRIES)]
        name = f"custom_{i:02d}"
        goal = 'goal = { event = "Order Completed", within = "2d" }' if i % 2 == 0 else ""
        parts.append(
            f"""
[flows.{name}]
version = 1
{reentry[i % 3]}
{goal}
exit = [{{ event = "Ticket Created" }}]
[flows.{name}.nodes.start]
kind = "entry"
event = "{event}"
{filters}
next = "split"
[flows.{name}.nodes.split]
kind = "split"
branches = [
  {{ name = "holdout", percent = 10, holdout = true, next = "wait" }},
  {{ name = "treatment", percent = 90, next = "wait" }},
]
[flows.{name}.nodes.wait]
kind = "wait_until"
event = "Order Completed"
timeout = "{30 + i}m"
on_timeout = "route"
[flows.{name}.nodes.route]
kind = "branch"
cases = [{{ when = {{ property = "price", gt = 20 }}, next = "hook" }}]
else = "mail"
[flows.{name}.nodes.hook]
kind = "send"
channel = "webhook"
body = "{{{{ traits.name | default('Hi') }}}}: {{{{ entry.name | default('') }}}} ({name})"
[flows.{name}.nodes.mail]
kind = "send"
channel = "email"
subject = "{{{{ traits.name | default('Hello') }}}}"
body = "We kept it for you. {{{{ unsubscribe_url }}}}"
"""
        )
    return "".join(parts)


def live_events(count: int) -> list[tuple[bytes, bytes]]:
    """The synthetic storefront's events as a live stream: in their order, stamped over the
    last ``count`` milliseconds (the storefront's own dates lie months back, where every
    wait of a flow would end at once and every send expire: a replay, not live work)."""
    from bench.run import storefront_calls
    from events.segment import CALL_MODELS, to_tracked_event

    now = datetime.now(UTC)
    out = []
    for i, call in enumerate(storefront_calls(count, seed=5)):
        stamped = {**call, "timestamp": (now - timedelta(milliseconds=count - i)).isoformat()}
        event = to_tracked_event(CALL_MODELS[call["type"]].model_validate(stamped), now)
        out.append((event.customer_key.encode(), event.to_json()))
    return out


def worker(args: argparse.Namespace) -> dict[str, Any]:
    from bench.run import BenchNode, PeakMemory, node_settings, pipeline_rate
    from stack.broker import EmbeddedBroker
    from streams.topics import ensure_topics

    shipped = (Path(__file__).resolve().parent.parent / "journeys" / "flows.toml").read_text()
    if args.shipped_on:  # on in the file too (the switch at start turns them on anyway)
        shipped = shipped.replace("enabled = false", "enabled = true")
    with_flows = shipped + custom_flows(args.custom)
    # In force: the canonical flow, the seven lifecycle flows (switched on at start)
    # and the custom ones.
    from journeys.flows.migration import LIFECYCLE

    flow_count = sum(
        1 for flow in flows_from_toml(with_flows) if flow.enabled or flow.id in LIFECYCLE
    )
    payloads = live_events(args.events)
    rates: dict[str, list[float]] = {"no flow": [], "flows": []}
    # Events per CPU-second of the node (all its threads): steadier than the rate on a
    # machine whose load moves between runs.
    per_cpu: dict[str, list[float]] = {"no flow": [], "flows": []}
    with tempfile.TemporaryDirectory(prefix="bench-flow-worker-") as tmp:
        folder = Path(tmp)
        files = {"no flow": folder / "none.toml", "flows": folder / "flows.toml"}
        files["no flow"].write_text("")
        files["flows"].write_text(with_flows)
        no_rules = folder / "no-rules.toml"
        no_rules.write_text("")
        # "no flow": nothing sends (the raw limit): no flows file, an empty rules file
        # (so the switch at start turns no lifecycle flow on).
        setups: dict[str, dict[str, Any]] = {
            "no flow": {"flows_file": files["no flow"], "trigger_rules_file": str(no_rules)},
            "flows": {"flows_file": files["flows"]},
        }
        broker = EmbeddedBroker(folder / "broker.log")
        broker.start()
        memory = PeakMemory()
        attempt = 0
        try:
            for _ in range(args.runs):
                for setup in ("no flow", "flows"):
                    attempt += 1
                    settings = node_settings(folder, broker.bootstrap_servers, attempt)
                    settings = settings.model_copy(update=setups[setup])
                    ensure_topics(
                        broker.bootstrap_servers,
                        settings.all_topics,
                        settings.topic_partitions,
                        1,
                    )
                    node = BenchNode(settings, folder / f"node{attempt}", memory)
                    try:
                        process = psutil.Process(node.process.pid)
                        before = process.cpu_times()
                        began = time.perf_counter()
                        pipeline_rate(node, payloads)
                        _wait_triggers_caught_up(node)
                        rate = len(payloads) / (time.perf_counter() - began)
                        after = process.cpu_times()
                    finally:
                        node.close()
                    cpu = (after.user + after.system) - (before.user + before.system)
                    rates[setup].append(rate)
                    per_cpu[setup].append(len(payloads) / cpu)
                    print(
                        f"  run {attempt}: {setup:<8} {rate:>8,.0f} events/s, "
                        f"{len(payloads) / cpu:>8,.0f} events per node CPU-second",
                        flush=True,
                    )
        finally:
            memory.close()
            broker.stop()
    none_rate = statistics.median(rates["no flow"])
    flows_rate = statistics.median(rates["flows"])
    ratio = flows_rate / none_rate
    # Each flows run against the no-flow run just before it: the machine's load drifts.
    pairs = [f / n for n, f in zip(rates["no flow"], rates["flows"], strict=True)]
    cpu_none, cpu_flows = (statistics.median(per_cpu[k]) for k in ("no flow", "flows"))
    cpu_ratio = cpu_flows / cpu_none
    baseline = "no flow (raw limit)"
    figures = {
        "events": args.events,
        "baseline": baseline,
        "flows_active": flow_count,
        "rates": rates,
        "no_flow_events_per_s": round(none_rate),
        "flows_events_per_s": round(flows_rate),
        "ratio": round(ratio, 3),
        "pair_ratios": [round(r, 3) for r in pairs],
        "events_per_cpu_s": per_cpu,
        "cpu_ratio": round(cpu_ratio, 3),
    }
    print(
        f"{args.events} storefront events; medians of {args.runs}: "
        f"{baseline} {none_rate:,.0f} events/s, {flow_count} flows "
        f"{flows_rate:,.0f} events/s; run by run {', '.join(f'{r:.2f}' for r in pairs)}"
    )
    print(
        f"events per node CPU-second, medians: {baseline} {cpu_none:,.0f}, {flow_count} flows "
        f"{cpu_flows:,.0f}"
    )
    print(
        _row(
            f"worker events per CPU-s, {flow_count} flows / none",
            cpu_ratio,
            WORKER_TARGET,
            "x",
            cpu_ratio >= WORKER_TARGET,
            f"{WORKER_TARGET - cpu_ratio:.3f} short",
        )
    )
    print(
        _row(
            f"worker events/s with {flow_count} flows / none",
            ratio,
            WORKER_TARGET,
            "x",
            ratio >= WORKER_TARGET,
            f"{WORKER_TARGET - ratio:.3f} short",
        )
    )
    return figures


def _wait_triggers_caught_up(node: Any, timeout: float = 3600) -> None:
    """Until the trigger consumer has consumed every record of the events and stage-changes
    topics (the journey consumer is done: its stage changes are all on the topic)."""
    from confluent_kafka import Consumer, TopicPartition

    settings = node.settings
    topics = (settings.events_topic, settings.stage_changes_topic)
    watermarks = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "bench-flow-marks"}
    )
    try:
        ends = {
            (topic, p): watermarks.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for topic in topics
            for p in range(settings.topic_partitions)
        }
    finally:
        watermarks.close()
    deadline = time.monotonic() + timeout
    while True:
        if _trigger_positions(settings.sqlite_path, ends, settings.kafka_epoch):
            return
        if time.monotonic() > deadline or node.process.poll() is not None:
            raise RuntimeError("the trigger consumer did not catch up")
        time.sleep(0.05)


def _trigger_positions(path: Path, ends: dict[tuple[str, int], int], epoch: str) -> bool:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            rows = db.execute("SELECT source, position FROM trigger_positions").fetchall()
    except sqlite3.OperationalError:
        return False
    held = {str(source): int(position) for source, position in rows}
    return all(
        held.get(source_name(topic, partition, epoch), 0) >= end
        for (topic, partition), end in ends.items()
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    timer_args = commands.add_parser("timers", help="timer precision with customers waiting")
    timer_args.add_argument("--waiting", type=int, default=100_000)
    timer_args.add_argument("--due-per-s", type=float, default=200.0)
    timer_args.add_argument("--measure-s", type=float, default=30.0)
    timer_args.add_argument(
        "--ingest-per-s", type=float, default=0.0, help="events consumed between ticks"
    )
    timer_args.add_argument("--profile", type=Path, help="cProfile of the measured ticks")
    timer_args.add_argument("--json", type=Path)
    worker_args = commands.add_parser("worker", help="the worker's events/s with flows")
    worker_args.add_argument("--events", type=int, default=40_000)
    worker_args.add_argument("--custom", type=int, default=20)
    worker_args.add_argument("--runs", type=int, default=3)
    worker_args.add_argument(
        "--shipped-on", action="store_true", help="the seven lifecycle flows on as well"
    )
    worker_args.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    figures = timers(args) if args.command == "timers" else worker(args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if args.command == "timers" and args.profile:
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(25)
    return figures


if __name__ == "__main__":
    main()
