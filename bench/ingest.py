"""The ingest gateway's own cost per event, apart from the journey worker.

    python -m bench.ingest                          # 50k events, 16 connections, 3 repeats
    python -m bench.ingest --events 400 --repeats 1 # tiny, as the test suite runs it
    python -m bench.ingest --processes 2            # also 2 gateway processes on one port
    python -m bench.ingest --baseline DIR           # also DIR's gateway (a before/after)
    python -m bench.ingest --journal                # also a gateway behind the ingest journal

Starts a Tansu broker and the gateway in a process of its own (the real ASGI
app under uvicorn, the real librdkafka sink, no worker), drives ``/v1/batch``
with 100 storefront calls per request over N connections, and prints events/s
and events per CPU-second of the gateway process beside a raw librdkafka
producer measured in the same run. Rates are medians of ``--repeats``; the
gateways measured take turns with the raw producer. Each gateway's latency of
a single ``/v1/track`` (to its 200) is measured too, on one connection and on
16 at once, in the same turns. A ``--baseline`` checkout
needs this file in its bench/ (copy it there).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.run import (
    node_settings,
    post_request,
    raw_produce_rate,
    read_answer,
    storefront_calls,
    storefront_events,
)
from stack.broker import EmbeddedBroker
from stack.processes import free_port, spawn, stop, wait_until
from stack.settings import Settings
from streams.topics import ensure_topics

BATCH_SIZE = 100
HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Rate:
    """One timed run: events/s by the wall clock and per CPU-second of the process measured."""

    events_per_s: float
    events_per_cpu_s: float


def serve(settings: Settings) -> None:
    """The gateway as production runs it alone: the API under uvicorn, the librdkafka sink.

    Its own chdb folder (no worker holds it here), so the whole app is served.
    """
    import uvicorn

    from stack.node import standalone_api

    api, platform = standalone_api(settings, journaled=settings.uses_journal)
    # SO_REUSEPORT: several gateway processes may listen on one port (the kernel
    # spreads connections over them), as replicas behind one address would.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((settings.api_host, settings.api_port))
    listener.listen(1024)
    try:
        # log_level info: the parent waits for "Application startup complete".
        uvicorn.Server(uvicorn.Config(api, log_level="info", access_log=False)).run([listener])
    finally:
        platform.close()


def _started(log: Path) -> bool:
    return b"Application startup complete" in log.read_bytes()


def _running(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


class Gateway:
    """Gateway processes of the benchmark's own (``python -m bench.ingest serve``) on one port."""

    def __init__(
        self, settings: Settings, folder: Path, tree: Path = ROOT, processes: int = 1
    ) -> None:
        self.port = settings.api_port
        self.processes = []
        for index in range(processes):
            # Each its own chdb folder: chdb allows one process per folder.
            own = settings.model_copy(update={"data_dir": folder / f"process{index}"})
            log = folder / f"gateway{index}.log"
            # -P: the platform's code from ``tree`` (PYTHONPATH), not from the current folder.
            process = spawn(
                [sys.executable, "-P", "-m", "bench.ingest", "serve"],
                log,
                env={**own.to_env(), "PYTHONPATH": str(tree)},
            )
            self.processes.append(process)
            if not wait_until(partial(_started, log), 120, alive=partial(_running, process)):
                raise RuntimeError(f"the gateway did not start; see {log}")
        self._measured = [psutil.Process(process.pid) for process in self.processes]

    def cpu_seconds(self) -> float:
        """User and system time of the gateway processes so far (all their threads)."""
        return sum(float(p.cpu_times().user + p.cpu_times().system) for p in self._measured)

    def close(self) -> None:
        """Stop them (each producer flushes first)."""
        for process in self.processes:
            stop(process, timeout=30)


async def drive(host: str, port: int, requests: list[bytes], connections: int) -> float:
    """Send every request over ``connections`` keep-alive connections; the seconds it took.

    A plain HTTP/1.1 client on asyncio streams, so the load generator takes as
    little of the machine's two cores as it can. Anything but a 200 (every
    event broker-acknowledged) stops the run.
    """
    pending = iter(requests)
    opened = [await asyncio.open_connection(host, port) for _ in range(connections)]

    async def sender(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for request in pending:
            writer.write(request)
            status, body = await read_answer(reader)
            if status != 200:
                raise RuntimeError(f"/v1/batch answered {status}: {body.decode()}")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(sender(reader, writer) for reader, writer in opened))
        return time.perf_counter() - started
    finally:
        for _, writer in opened:
            writer.close()


def gateway_rate(
    gateway: Gateway, bodies: list[tuple[bytes, int]], write_key: str, connections: int
) -> Rate:
    """Events/s the gateway accepts and the events per CPU-second it spent on them."""
    events = sum(count for _, count in bodies)
    requests = [post_request(HOST, gateway.port, body, write_key) for body, _ in bodies]
    cpu = gateway.cpu_seconds()
    elapsed = asyncio.run(drive(HOST, gateway.port, requests, connections))
    spent = gateway.cpu_seconds() - cpu
    return Rate(events / elapsed, events / spent if spent else float("inf"))


async def track_latencies(
    host: str, port: int, requests: list[bytes], connections: int
) -> list[float]:
    """Seconds from each single /v1/track request sent to its 200, over ``connections``."""
    pending = iter(requests)
    latencies: list[float] = []
    opened = [await asyncio.open_connection(host, port) for _ in range(connections)]

    async def sender(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for request in pending:
            started = time.perf_counter()
            writer.write(request)
            status, body = await read_answer(reader)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"/v1/track answered {status}: {body.decode()}")

    try:
        await asyncio.gather(*(sender(reader, writer) for reader, writer in opened))
    finally:
        for _, writer in opened:
            writer.close()
    return latencies


def track_requests(port: int, write_key: str, count: int, run: str) -> list[bytes]:
    """``count`` single track calls, new message ids each ``run``."""
    return [
        post_request(
            HOST,
            port,
            orjson.dumps(
                {
                    "userId": f"lat-{i % 500}",
                    "event": "Product Viewed",
                    "messageId": f"lat-{run}-{i}",
                    "properties": {"product_id": f"p{i % 50}", "price": 9.5},
                }
            ),
            write_key,
            path="/v1/track",
        )
        for i in range(count)
    ]


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def raw_rate(bootstrap: str, topic: str, payloads: list[tuple[bytes, bytes]]) -> Rate:
    """The raw librdkafka producer (bench/run.py's), with the CPU it used in this process."""
    cpu = time.process_time()
    per_s = raw_produce_rate(bootstrap, topic, payloads)
    spent = time.process_time() - cpu
    return Rate(per_s, len(payloads) / spent if spent else float("inf"))


def batch_bodies(calls: list[dict[str, Any]]) -> list[tuple[bytes, int]]:
    """``/v1/batch`` bodies of BATCH_SIZE calls each, with their event counts."""
    return [
        (orjson.dumps({"batch": calls[i : i + BATCH_SIZE]}), len(calls[i : i + BATCH_SIZE]))
        for i in range(0, len(calls), BATCH_SIZE)
    ]


def median_rate(rates: list[Rate]) -> Rate:
    """The median of each figure."""
    return Rate(
        statistics.median(r.events_per_s for r in rates),
        statistics.median(r.events_per_cpu_s for r in rates),
    )


# Single /v1/track calls per latency sample: on one connection, and on 16 at once.
TRACKS = {"1 connection": (1, 300), "16 connections": (16, 1600)}


def measure(
    events: int,
    connections: int,
    repeats: int,
    baseline: Path | None = None,
    processes: int = 1,
    journal: bool = False,
) -> tuple[dict[str, Rate], dict[str, list[float]]]:
    """Raw producer and gateway, alternating, ``repeats`` times each; medians.

    With ``processes`` > 1, that many gateway processes on one port are measured
    too. With ``baseline`` (another checkout with this file), its gateway runs
    beside this one, alternating, for a before/after in one run.
    """
    calls = storefront_calls(events, seed=7)
    bodies = batch_bodies(calls)
    payloads = storefront_events(events, seed=7)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        folder = Path(tmp)
        broker = EmbeddedBroker(folder / "broker.log")
        broker.start()
        try:
            settings = node_settings(folder, broker.bootstrap_servers, 0)
            ensure_topics(
                broker.bootstrap_servers, settings.all_topics, settings.topic_partitions, 1
            )
            trees = {"gateway": (ROOT, 1)}
            if journal:
                trees["journaled gateway"] = (ROOT, 1)
            if processes > 1:
                trees[f"{processes} gateway processes"] = (ROOT, processes)
            if baseline is not None:
                trees["baseline gateway"] = (baseline, 1)
            gateways: dict[str, Gateway] = {}
            try:
                for name, (tree, count) in trees.items():
                    # The journal is on only where asked: the same settings otherwise.
                    port = settings.model_copy(
                        update={"api_port": free_port(), "journal_enabled": name.startswith("j")}
                    )
                    gateways[name] = Gateway(port, folder / name.replace(" ", "-"), tree, count)
                    # Warm up: connections, the producer's metadata, first-call imports.
                    gateway_rate(gateways[name], bodies[:20], settings.write_key, connections)
                rates: dict[str, list[Rate]] = {"raw producer": []}
                latencies: dict[str, list[float]] = {}
                for attempt in range(repeats):
                    topic = f"bench.raw.{attempt}"
                    ensure_topics(broker.bootstrap_servers, [topic], settings.topic_partitions, 1)
                    rates["raw producer"].append(
                        raw_rate(broker.bootstrap_servers, topic, payloads)
                    )
                    for name, gateway in gateways.items():
                        rates.setdefault(name, []).append(
                            gateway_rate(gateway, bodies, settings.write_key, connections)
                        )
                        for label, (senders, count) in TRACKS.items():
                            run = f"{attempt}-{label}"
                            # A tiny run (the test suite's) sends fewer.
                            count = min(count, max(4 * senders, events // 10))
                            requests = track_requests(gateway.port, settings.write_key, count, run)
                            latencies.setdefault(f"{name}, {label}", []).extend(
                                asyncio.run(track_latencies(HOST, gateway.port, requests, senders))
                            )
            finally:
                for gateway in gateways.values():
                    gateway.close()
        finally:
            broker.stop()
    return {name: median_rate(measured) for name, measured in rates.items()}, latencies


def render(
    rates: dict[str, Rate],
    events: int,
    connections: int,
    repeats: int,
    latencies: dict[str, list[float]] | None = None,
) -> str:
    """The table: each rate, and each gateway's as a share of the raw producer's."""
    raw = rates["raw producer"]
    lines = [
        f"{events:,} storefront events, {BATCH_SIZE} per /v1/batch request, "
        f"{connections} connections, median of {repeats}",
        f"{'':42} {'events/s':>10} {'events/CPU-s':>13}",
    ]
    for name, rate in rates.items():
        label = "raw producer (librdkafka, acks=all)" if rate is raw else f"{name}: /v1/batch"
        lines.append(f"{label:42} {rate.events_per_s:>10,.0f} {rate.events_per_cpu_s:>13,.0f}")
    for name, rate in rates.items():
        if rate is not raw:
            lines.append(
                f"{name + ' / raw producer':42} {rate.events_per_s / raw.events_per_s:>10.3f} "
                f"{rate.events_per_cpu_s / raw.events_per_cpu_s:>13.3f}"
            )
    if latencies:
        lines.append(f"single /v1/track to its 200, all repeats {'p50 ms':>14} {'p99 ms':>13}")
        for name, values in latencies.items():
            p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
            lines.append(f"{name:42} {p50:>10.2f} {p99:>13.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and print; ``serve`` runs the gateway process itself."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["measure", "serve"], default="measure")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--processes", type=int, default=1, help="also measure this many gateway processes"
    )
    parser.add_argument(
        "--baseline", type=Path, help="another checkout whose gateway runs beside this one"
    )
    parser.add_argument(
        "--journal", action="store_true", help="also a gateway behind the ingest journal"
    )
    args = parser.parse_args(argv)
    if args.mode == "serve":
        serve(Settings())
        return 0
    rates, latencies = measure(
        args.events, args.connections, args.repeats, args.baseline, args.processes, args.journal
    )
    print(render(rates, args.events, args.connections, args.repeats, latencies))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
