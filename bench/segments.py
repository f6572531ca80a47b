"""Benchmark of live segments and computed traits (issue 17), each figure beside its limit.

    .venv/bin/python -m bench.segments                          # default sizes
    .venv/bin/python -m bench.segments --events 2000 --latency-seconds 3 \\
        --backfill-events 3000 --backfill-customers 300          # tiny, as the test runs it

Three targets, one row each saying "met" or the gap:

1. **Throughput.** One node (its own broker, as ``bench/node.py``) given the
   same storefront events with 20 segments and 10 computed traits defined,
   and with an empty definitions file (no segment work at all), runs
   alternated; the medians' ratio must be at least 0.8.
2. **Entry latency.** On the node with the 20 segments, paced storefront calls
   through the API at a sustained load (default: half the rate the node took
   above) and, beside them, probes: a new customer's one ``Product Viewed`` of
   category ``probe`` (segment ``probe_viewers``); from its ``200`` the bench
   polls ``GET /v1/customers/{id}`` until the segment shows. p99 must be
   at most 1 s.
3. **Backfill.** A new segment backfilled over the generated event log
   (``bench/generate.py``, the data ``make bench-funnel`` keeps in
   ``bench/results/data-10m``) by the worker's own backfill
   (streams/segment_backfill.py, in process, over a SQLite state store) beside
   a plain ClickHouse query computing the same membership; the member counts
   must be equal. The target size is 10M events of 1M customers; the time
   split (listing customers, reading histories, folding, saving) is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.run import (
    BenchNode,
    PeakMemory,
    node_settings,
    pipeline_rate,
    post_request,
    read_answer,
    storefront_call_stream,
    storefront_events,
)
from stack.broker import EmbeddedBroker
from stack.settings import Settings
from streams.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent
PROBE_SEGMENT = "probe_viewers"
POLL_S = 0.1  # each probe's customer read this often until the segment shows

# Ten computed traits over what the synthetic storefront sends.
TRAITS: dict[str, dict[str, Any]] = {
    "lifetime_revenue": {"op": "sum", "property": "revenue", "event": "Order Completed"},
    "revenue_90d": {
        "op": "sum",
        "property": "revenue",
        "event": "Order Completed",
        "within": "90d",
    },
    "orders_90d": {"op": "count", "event": "Order Completed", "within": "90d"},
    "views_7d": {"op": "count", "event": "Product Viewed", "within": "7d"},
    "largest_order": {"op": "max", "property": "revenue", "event": "Order Completed"},
    "cheapest_view": {"op": "min", "property": "price", "event": "Product Viewed"},
    "first_category": {"op": "first", "property": "category", "event": "Product Viewed"},
    "last_viewed_category": {"op": "last", "property": "category", "event": "Product Viewed"},
    "favourite_brand": {"op": "most_frequent", "property": "brand", "type": "browse"},
    "days_since_last_order": {"op": "days_since_last", "event": "Order Completed"},
}
CATEGORIES = ("shoes", "jackets", "bags", "watches", "shirts", "outdoor", "beauty", "home")


def twenty_segments() -> dict[str, dict[str, Any]]:
    """Twenty segments of every kind of condition, one of them the latency probe's."""
    segments: dict[str, dict[str, Any]] = {
        PROBE_SEGMENT: {"where": {"event": "Product Viewed", "properties": {"category": "probe"}}},
        "shoe_lookers": {
            "where": {
                "and": [
                    {
                        "event": "Product Viewed",
                        "properties": {"category": "shoes"},
                        "within": "7d",
                        "count": 3,
                    },
                    {"event": "Order Completed", "within": "7d", "absent": True},
                ]
            }
        },
        "big_spenders": {"where": {"trait": "revenue_90d", "gt": 500}},
        "loyal_lapsing": {
            "where": {
                "and": [
                    {"stage": "loyalty"},
                    {"event": "Order Completed", "within": "60d", "absent": True},
                ]
            }
        },
        "cart_abandoners": {
            "where": {
                "and": [
                    {"event": "Product Added", "within": "7d"},
                    {"not": {"event": "Order Completed", "within": "7d"}},
                ]
            }
        },
        "repeat_buyers": {"where": {"trait": "orders_90d", "gte": 2}},
        "lapsed_buyers": {"where": {"trait": "days_since_last_order", "gte": 30}},
        "browsers": {"where": {"trait": "views_7d", "gte": 5}},
        "support_seekers": {"where": {"type": "support", "within": "30d"}},
        "northwind_fans": {"where": {"trait": "favourite_brand", "eq": "Northwind"}},
        "premium_lookers": {
            "where": {"event": "Product Viewed", "properties": {"price": {"gt": 150}}, "count": 2}
        },
        "big_spender_abandoners": {
            "where": {"and": [{"segment": "big_spenders"}, {"segment": "cart_abandoners"}]}
        },
    }
    for category in CATEGORIES:
        segments[f"{category}_viewers"] = {
            "where": {
                "event": "Product Viewed",
                "properties": {"category": category},
                "within": "7d",
                "count": 2,
            }
        }
    assert len(segments) == 20
    return segments


def definitions_document(with_segments: bool) -> dict[str, Any]:
    """The benchmark's definitions: 20 segments and 10 traits, or none at all."""
    if not with_segments:
        return {"traits": {}, "segments": {}}
    return {"traits": TRAITS, "segments": twenty_segments()}


def write_definitions(path: Path, document: dict[str, Any]) -> Path:
    """``document`` as a TOML definitions file (JSON values are valid TOML inline values)."""
    lines: list[str] = []
    for kind in ("traits", "segments"):
        for name, table in document[kind].items():
            lines.append(f"[{kind}.{name}]")
            lines.extend(f"{key} = {_toml(value)}" for key, value in table.items())
            lines.append("")
    path.write_text("\n".join(lines) or "# nothing defined\n", encoding="utf-8")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"


@dataclass
class Row:
    """One target: the figure, the target it is held to, the limit measured beside it."""

    target: str
    value: float
    unit: str
    goal: str
    met: bool
    gap: str
    beside: str = ""


@dataclass
class Report:
    sizes: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


# --- 1. throughput ------------------------------------------------------------------


def throughput(
    broker: EmbeddedBroker, folder: Path, events: int, runs: int, memory: PeakMemory
) -> tuple[dict[str, list[float]], Settings]:
    """Events/s of a node with and without the definitions, runs alternated.

    Returns the rates and the settings of a last node with the segments, left
    unstarted, for the latency measure.
    """
    payloads = storefront_events(events, seed=3)
    rates: dict[str, list[float]] = {"segments": [], "none": []}
    attempt = 0
    for _ in range(runs):
        for mode in ("segments", "none"):
            settings = _settings(broker, folder, attempt, mode == "segments")
            node = BenchNode(settings, settings.data_dir, memory, name=f"node{attempt}")
            try:
                rates[mode].append(pipeline_rate(node, payloads))
            finally:
                node.close()
            attempt += 1
    return rates, _settings(broker, folder, attempt, True)


def _settings(broker: EmbeddedBroker, folder: Path, attempt: int, with_segments: bool) -> Settings:
    base = node_settings(folder, broker.bootstrap_servers, attempt)
    path = write_definitions(
        folder / f"definitions{attempt}.toml", definitions_document(with_segments)
    )
    settings = base.model_copy(update={"segments_file": path})
    ensure_topics(broker.bootstrap_servers, settings.all_topics, settings.topic_partitions, 1)
    return settings


# --- 2. entry latency ---------------------------------------------------------------

CALL_PATHS = {"track": "/v1/track", "page": "/v1/page", "identify": "/v1/identify"}


async def entry_latency(
    node: BenchNode, rate: float, seconds: float, probes_per_s: float, senders: int = 32
) -> dict[str, float]:
    """From a probe's ``200`` to ``probe_viewers`` listed by ``GET /v1/customers/{id}``.

    ``rate`` storefront calls/s are offered for ``seconds`` on kept-alive
    connections; about ``probes_per_s`` of them are probes. Each probe is
    polled every ``POLL_S`` through the API (the read key), as a dashboard
    would: the figure is exact to that, and the polls load the node measured
    (every 20 ms made ~90 probes in flight poll 4,500 times a second).
    """
    settings = node.settings
    host, port = "127.0.0.1", settings.api_port
    calls = storefront_call_stream(int(rate * seconds) + senders, seed=11)
    probe_every = max(1, round(rate / probes_per_s))
    latencies: list[float] = []
    pollers: list[asyncio.Task[None]] = []
    counts = {"sent": 0, "accepted": 0, "probes": 0}
    reader_headers = {"Authorization": f"Bearer {settings.read_key}"}
    client = httpx.AsyncClient(base_url=node.base, timeout=30, headers=reader_headers)

    async def poll(customer: str, accepted: float) -> None:
        deadline = accepted + 120
        while time.perf_counter() < deadline:
            answer = await client.get(f"/v1/customers/{customer}")
            if answer.status_code == 200:
                found = (answer.json().get("segments") or {}).get("segments") or []
                if PROBE_SEGMENT in found:
                    latencies.append((time.perf_counter() - accepted) * 1000)
                    return
            await asyncio.sleep(POLL_S)
        raise RuntimeError(f"probe {customer} never entered {PROBE_SEGMENT}")

    # Warm-up: the worker has joined its group and taken its first batches.
    async with httpx.AsyncClient(base_url=node.base, timeout=30) as warm:
        body = orjson.dumps(
            {
                "userId": "segprobe-warm-up",
                "event": "Product Viewed",
                "properties": {"category": "probe"},
                "messageId": "segprobe-warm-up",
            }
        )
        posted = await warm.post(
            "/v1/track",
            content=body,
            auth=(settings.write_key, ""),
            headers={"content-type": "application/json"},
        )
        posted.raise_for_status()
    await poll("segprobe-warm-up", time.perf_counter())
    latencies.clear()
    started = time.perf_counter()

    async def sender() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while (due := counts["sent"] / rate) < seconds and time.perf_counter() - started < seconds:
            index = counts["sent"]
            counts["sent"] += 1
            await asyncio.sleep(max(0.0, started + due - time.perf_counter()))
            probe = index % probe_every == 0
            if probe:
                customer = f"segprobe-{index}-{time.time_ns()}"
                call: dict[str, Any] = {
                    "type": "track",
                    "userId": customer,
                    "event": "Product Viewed",
                    "properties": {"category": "probe", "product_id": "probe"},
                    "messageId": f"{customer}-m",
                }
            else:
                call = next(calls)
            body = orjson.dumps({k: v for k, v in call.items() if k != "type"})
            path = CALL_PATHS[call["type"]]
            writer.write(post_request(host, port, body, settings.write_key, path))
            status, _ = await read_answer(reader)
            if status == 200:
                counts["accepted"] += 1
                if probe:
                    counts["probes"] += 1
                    pollers.append(asyncio.create_task(poll(customer, time.perf_counter())))
        writer.close()

    try:
        await asyncio.gather(*(sender() for _ in range(senders)))
        elapsed = time.perf_counter() - started
        await asyncio.gather(*pollers)
    finally:
        await client.aclose()
    if not latencies:
        raise RuntimeError("no probe was accepted")
    ordered = sorted(latencies)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max_ms": ordered[-1],
        "offered_per_s": counts["sent"] / elapsed,
        "accepted_per_s": counts["accepted"] / elapsed,
        "probes": len(ordered),
    }


# --- 3. backfill --------------------------------------------------------------------

BACKFILL_SEGMENT = "shoe_fans_never_bought"
# Viewed shoes at least three times and never bought (all time: the generated data
# lies in 2026's first 90 days, so rolling windows ending now would be empty).
BACKFILL_DEFINITION = {
    "where": {
        "and": [
            {"event": "Product Viewed", "properties": {"category": "shoes"}, "count": 3},
            {"event": "Order Completed", "absent": True},
        ]
    }
}
PLAIN_QUERY = """
    SELECT count() FROM (
        SELECT customer_key FROM {db}.events FINAL GROUP BY customer_key
        HAVING countIf(event_name = 'Product Viewed' AND category = 'shoes') >= 3
           AND countIf(event_name = 'Order Completed') = 0)
"""


def backfill(
    data: Path,
    events: int,
    customers: int,
    partitions: int,
    plain_runs: int,
    work: Path,
    chunk_size: int = 0,
) -> dict[str, Any]:
    """The worker's backfill of a new segment over the event log, beside the plain query."""
    from bench.funnel import DATABASE, prepare
    from journeys.segment_definitions import parse_definitions
    from projections.clickhouse import connect
    from projections.segment_changes import SegmentChangeLog
    from projections.segment_history import SegmentHistory
    from projections.segment_store import SegmentStore
    from streams.segment_backfill import BACKFILL_CHUNK, SegmentBackfill
    from streams.segments import SegmentMaintainer

    data.mkdir(parents=True, exist_ok=True)
    client = connect("", data)
    generated = prepare(client, data, events, customers, seed=42)
    history = SegmentHistory(client, DATABASE)
    spent: dict[str, float] = defaultdict(float)
    history.partition_keys = _timed(history.partition_keys, spent, "list customers")  # type: ignore[method-assign]
    history.partition_histories = _timed(history.partition_histories, spent, "read histories")  # type: ignore[method-assign]
    store = SegmentStore(sqlite_path=work / "segments.sqlite")
    try:
        definitions = parse_definitions({"segments": {BACKFILL_SEGMENT: BACKFILL_DEFINITION}})
        maintainer = SegmentMaintainer(
            definitions,
            store,
            SegmentChangeLog(client, DATABASE),
            history=history,
            partitions=partitions,
        )
        store.save_backfilled = _timed(store.save_backfilled, spent, "save states")  # type: ignore[method-assign]
        changes = maintainer.log
        changes.append_flagged = _timed(changes.append_flagged, spent, "write changes")  # type: ignore[method-assign]
        runner = SegmentBackfill(maintainer, chunk_size or BACKFILL_CHUNK)
        began = time.perf_counter()
        runner.start()
        now_ms = int(time.time() * 1000)
        done, shown = 0, began
        # Each chunk's time: what the worker holds the journey batch lock for.
        held: list[float] = []
        while True:
            taken = time.perf_counter()
            chunk = runner.next_chunk(list(range(partitions)), now_ms)
            if chunk is None:
                break
            runner.write(chunk)
            runner.commit(chunk)
            held.append(time.perf_counter() - taken)
            done += len(chunk.states)
            if time.perf_counter() - shown > 30:  # a run stopped early still says its rate
                shown = time.perf_counter()
                rate = done / (shown - began)
                print(f"backfill: {done:,} customers in {shown - began:,.0f} s ({rate:,.0f}/s)",
                      file=sys.stderr, flush=True)  # fmt: skip
        took = time.perf_counter() - began
        members = sum(1 for _, state in store.all_states() if BACKFILL_SEGMENT in state.members)
    finally:
        store.close()
    plain_times, plain_count = [], 0
    for _ in range(plain_runs):
        began = time.perf_counter()
        plain_count = int(client.query(PLAIN_QUERY.format(db=DATABASE)).result_rows[0][0])
        plain_times.append(time.perf_counter() - began)
    plain = statistics.median(plain_times)
    accounted = sum(spent.values())
    spent["fold and the rest"] = max(0.0, took - accounted)
    return {
        "events": events,
        "customers": customers,
        "partitions": partitions,
        "generate_seconds": generated,
        "backfill_seconds": took,
        "chunk_customers": runner.chunk,
        "chunks": len(held),
        "chunk_median_seconds": statistics.median(held) if held else 0.0,
        "chunk_max_seconds": max(held, default=0.0),
        "plain_median_seconds": plain,
        "members": members,
        "plain_members": plain_count,
        "equal": members == plain_count,
        "split_seconds": dict(spent),
    }


def _timed(function: Callable[..., Any], spent: dict[str, float], name: str) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - began

    return timed


# --- the run ------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> Report:
    """All three targets, in one run."""
    report = Report(sizes={k: v for k, v in vars(args).items() if k != "json"})
    with tempfile.TemporaryDirectory(prefix="journeys-segments-bench-") as tmp:
        folder = Path(tmp)
        if not args.skip_nodes:
            broker = EmbeddedBroker(folder / "broker.log")
            broker.start()
            memory = PeakMemory()
            try:
                rates, latency_settings = throughput(broker, folder, args.events, args.runs, memory)
                with_segments = statistics.median(rates["segments"])
                without = statistics.median(rates["none"])
                ratio = with_segments / without
                report.details["throughput"] = rates
                report.rows.append(
                    Row(
                        "worker events/s, 20 segments + 10 traits",
                        with_segments,
                        "events/s",
                        ">= 0.8 of the run without segments",
                        ratio >= 0.8,
                        "met" if ratio >= 0.8 else f"ratio {ratio:.2f}, short by {0.8 - ratio:.2f}",
                        f"without segments: {without:,.0f} events/s, ratio {ratio:.2f}",
                    )
                )
                load = args.load or with_segments / 2
                node = BenchNode(latency_settings, latency_settings.data_dir, memory, "latency")
                try:
                    latency = asyncio.run(
                        entry_latency(node, load, args.latency_seconds, args.probes_per_s)
                    )
                finally:
                    node.close()
                report.details["latency"] = latency
                p99 = latency["p99_ms"]
                report.rows.append(
                    Row(
                        "segment entry visible via API, p99",
                        p99,
                        "ms",
                        "<= 1000 ms from the event's 200",
                        p99 <= 1000,
                        "met" if p99 <= 1000 else f"{p99 - 1000:,.0f} ms over",
                        f"p50 {latency['p50_ms']:,.0f} ms, {latency['probes']:.0f} probes; "
                        f"offered {latency['offered_per_s']:,.0f}/s, "
                        f"accepted {latency['accepted_per_s']:,.0f}/s",
                    )
                )
            finally:
                memory.close()
                broker.stop()
        if args.backfill_events:
            work = folder / "backfill"
            work.mkdir()
            data = args.data or folder / "data"
            found = backfill(
                data,
                args.backfill_events,
                args.backfill_customers,
                args.partitions,
                args.plain_runs,
                work,
                args.backfill_chunk,
            )
            report.details["backfill"] = found
            target = args.backfill_events >= 10_000_000 and args.backfill_customers >= 1_000_000
            ratio = found["backfill_seconds"] / found["plain_median_seconds"]
            report.rows.append(
                Row(
                    f"backfill of a new segment, {args.backfill_events:,} events "
                    f"of {args.backfill_customers:,} customers",
                    found["backfill_seconds"],
                    "s",
                    "10M events of 1M customers, reported beside the plain query",
                    target and found["equal"],
                    ("met (size)" if target else "gap: below the 10M/1M target size")
                    + ("" if found["equal"] else "; MEMBER COUNTS DIFFER"),
                    f"plain ClickHouse query: {found['plain_median_seconds']:.3f} s, "
                    f"ratio {ratio:,.0f}; members {found['members']:,} vs "
                    f"{found['plain_members']:,}",
                )
            )
    return report


def render(report: Report) -> str:
    lines = [f"{'target':<58} {'value':>12}  {'verdict':<40} beside (same run)", "-" * 140]
    for row in report.rows:
        digits = 1 if row.value < 100 else 0
        value = f"{row.value:,.{digits}f} {row.unit}"
        lines.append(f"{row.target:<58} {value:>12}  {row.gap:<40} {row.beside}")
        lines.append(f"{'':<58} {'':>12}  (target: {row.goal})")
    backfill_found = report.details.get("backfill")
    if backfill_found:
        split = ", ".join(f"{k} {v:.1f} s" for k, v in backfill_found["split_seconds"].items())
        lines.append(
            f"backfill time split: {split}; {backfill_found['chunks']} chunks of "
            f"{backfill_found['chunk_customers']} customers, each (the batch lock held) "
            f"median {backfill_found['chunk_median_seconds'] * 1000:,.0f} ms, "
            f"max {backfill_found['chunk_max_seconds'] * 1000:,.0f} ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000, help="events of the throughput")
    parser.add_argument("--runs", type=int, default=2, help="throughput runs of each kind")
    parser.add_argument("--load", type=float, default=0, help="calls/s (0: half the rate)")
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--probes-per-s", type=float, default=5)
    parser.add_argument("--skip-nodes", action="store_true", help="only the backfill")
    parser.add_argument("--backfill-events", type=int, default=10_000_000, help="0: skipped")
    parser.add_argument("--backfill-customers", type=int, default=1_000_000)
    parser.add_argument("--backfill-chunk", type=int, default=0, help="customers (0: the worker's)")
    partitions = Settings.model_fields["topic_partitions"].default
    parser.add_argument("--partitions", type=int, default=partitions, help="of the events topic")
    parser.add_argument("--plain-runs", type=int, default=3)
    parser.add_argument("--data", type=Path, help="chdb folder to keep and reuse")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    report = measure(args)
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
