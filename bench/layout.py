"""Single browser calls through the real `journeys up`: the node alone on the socket, then gateways.

    .venv/bin/python -m bench.layout                   # 20 s of saturation, latency at 1,000/s
    .venv/bin/python -m bench.layout --seconds 2 --latency-rate 50 --latency-seconds 2  # tiny

Back to back, in one run, each layout is started as a user starts it (`journeys
up` in a temporary folder, its own broker): first with ``JOURNEYS_GATEWAYS=0``
(the node serves the public socket: the layout before issue 19), then with the
default ingest gateways (one per core). For each: single ``/v1/track`` calls/s
from closed-loop keep-alive connections, and the p50/p99 of their 200s; the
journey worker's backlog when the load stops and how long it takes to drain
(is the pipeline keeping up?); the CPU seconds each process spent (the
profile); and the stage-visible latency at a fixed offered rate (bench/run.py's
measure: a /v1/track 200 to its stage change on the topic). Beside them, the raw
limit in the same run: the same client against a bare HTTP server (uvicorn, a
trivial ASGI app) on one process, and on as many processes as gateways.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import psutil

from bench.run import Figure, Run, post_request, read_answer, render, track_to_stage_latency
from stack.processes import free_port
from stack.settings import Settings
from streams.journal import partition_of

BARE_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"16")]})
    await send({"type": "http.response.body", "body": b'{"success":true}'})
"""


@dataclass
class Saturation:
    """Closed-loop single calls: what was taken, how fast the 200s came."""

    calls_per_s: float
    p50_ms: float
    p99_ms: float
    refused: int
    not_ok: int


async def saturate(
    port: int, write_key: str, seconds: float, connections: int, prefix: str
) -> Saturation:
    """``connections`` keep-alive connections, each sending its next call on the answer."""
    host = "127.0.0.1"
    latencies: list[float] = []
    refused = not_ok = 0
    started = time.perf_counter()

    async def connection(index: int) -> None:
        nonlocal refused, not_ok
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            refused += 1
            return
        sent = 0
        while time.perf_counter() - started < seconds:
            customer = f"{prefix}-{index}-{sent % 50}"
            body = {"userId": customer, "event": "Product Viewed", "messageId": f"{index}-{sent}"}
            request = post_request(host, port, orjson.dumps(body), write_key, "/v1/track")
            began = time.perf_counter()
            writer.write(request)
            status, _ = await read_answer(reader)
            latencies.append((time.perf_counter() - began) * 1000)
            if status != 200:
                not_ok += 1
            sent += 1
        writer.close()

    await asyncio.gather(*(connection(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    ok = len(ordered) - not_ok
    return Saturation(
        calls_per_s=ok / elapsed,
        p50_ms=statistics.median(ordered) if ordered else 0.0,
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0,
        refused=refused,
        not_ok=not_ok,
    )


def bare_rate(processes: int, seconds: float, connections: int) -> Saturation:
    """The same client against uvicorn serving a trivial app on ``processes`` processes
    sharing one listening socket (the gateways' arrangement): the HTTP stack's limit."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        module = Path(folder) / "bare_app.py"
        module.write_text(BARE_APP)
        args = [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port)]
        args += ["--log-level", "warning", "--no-access-log", "--workers", str(processes)]
        server = subprocess.Popen(args, cwd=folder)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    httpx.post(f"http://127.0.0.1:{port}/", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            time.sleep(1.0 if processes > 1 else 0.0)  # every worker up
            return asyncio.run(saturate(port, "k", seconds, connections, "bare"))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(30)


@dataclass(frozen=True)
class BatchTotals:
    """The journey worker's batches over a stretch: what a stage's latency is made of."""

    batches: float = 0.0
    seconds: float = 0.0
    events: float = 0.0
    clickhouse_seconds: float = 0.0
    # ClickHouse writes timed: the journey batches', or (journey workers apart) the
    # node's applications of their projection records.
    clickhouse_writes: float = 0.0

    def __sub__(self, earlier: BatchTotals) -> BatchTotals:
        return BatchTotals(
            self.batches - earlier.batches,
            self.seconds - earlier.seconds,
            self.events - earlier.events,
            self.clickhouse_seconds - earlier.clickhouse_seconds,
            self.clickhouse_writes - earlier.clickhouse_writes,
        )

    def __str__(self) -> str:
        if not self.batches and self.clickhouse_writes:
            # The journey batches are the workers' (not in the node's /metrics).
            return (
                f"{self.clickhouse_writes:.0f} projection applications of "
                f"{self.clickhouse_seconds / self.clickhouse_writes * 1000:.0f} ms each in the node"
            )
        if not self.batches:
            return "no journey batch"
        return (
            f"{self.batches:.0f} journey batches of {self.events / self.batches:.0f} events, "
            f"{self.seconds / self.batches * 1000:.0f} ms each "
            f"({self.clickhouse_seconds / self.batches * 1000:.0f} ms ClickHouse inserts)"
        )


class UpStack:
    """`journeys up` in a temporary folder, as a user runs it."""

    def __init__(
        self, folder: Path, gateways: int | None, extra: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEYS_")}
        env.update(
            JOURNEYS_API_PORT=str(self.port),
            JOURNEYS_DATA_DIR=str(folder / "data"),
            JOURNEYS_INGEST_RATE_PER_S="0",
            JOURNEYS_KAFKA_SESSION_TIMEOUT_S="6",
            # The benchmark's load is not a storefront's: no broker roll mid-measure.
            JOURNEYS_BROKER_MAX_RSS_MIB="0",
        )
        if gateways is not None:
            env["JOURNEYS_GATEWAYS"] = str(gateways)
        env.update(extra or {})
        self.output_path = folder / "up.out"
        self._output = open(self.output_path, "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stack.cli", "up"],
            cwd=folder,
            env=env,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        text = self._banner()
        self.write_key = _found(r"write key\s+(\S+)", text)
        self.read_key = _found(r"read key\s+(\S+)", text)
        self.settings = Settings(
            kafka_bootstrap_servers=_found(r"(?m)^\s+broker\s+(\S+) \(", text),
            api_port=self.port,
            write_key=self.write_key,
            read_key=self.read_key,
        )

    def _banner(self) -> str:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            text = self.output_path.read_text(errors="replace")
            if "is up" in text:
                return text
            if self.process.poll() is not None:
                raise RuntimeError(f"journeys up exited:\n{text}")
            time.sleep(0.3)
        raise RuntimeError("journeys up did not come up")

    def children(self) -> dict[str, psutil.Process]:
        """Its processes by role (broker, node, gateway N)."""
        found: dict[str, psutil.Process] = {}
        for child in psutil.Process(self.process.pid).children(recursive=True):
            line = " ".join(child.cmdline())
            if "tansu" in line:
                found["broker"] = child
            elif "stack.cli node" in line:
                found["node"] = child
            elif "stack.cli gateway" in line:
                found[f"gateway {line.rsplit(' ', 1)[-1]}"] = child
            elif "stack.cli journey-worker" in line:
                found[f"journey worker {line.rsplit(' ', 1)[-1]}"] = child
        return found

    def lag_events(self) -> int:
        try:
            body = httpx.get(f"{self.base}/health", timeout=30).json()
        except (httpx.HTTPError, ValueError):
            return -1
        return int(body["components"]["backlog"]["lag_events"])

    def batches(self) -> BatchTotals:
        """The journey worker's batch counters so far (its /metrics histograms' sums)."""
        try:
            text = httpx.get(f"{self.base}/metrics", timeout=30).text
        except httpx.HTTPError:
            return BatchTotals()

        def total(name: str) -> float:
            found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
            return float(found[1]) if found else 0.0

        return BatchTotals(
            total("journeys_batch_duration_seconds_count"),
            total("journeys_batch_duration_seconds_sum"),
            total("journeys_batch_events_sum"),
            total("journeys_clickhouse_insert_seconds_sum"),
            total("journeys_clickhouse_insert_seconds_count"),
        )

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(300)
        self._output.close()


def _found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in the banner")
    return match.group(1)


# Issue 19's targets on this machine, for the rows that have one.
CALLS_TARGET = 3000.0
P99_TARGET_MS = 50.0
# Stage-visible p99 by offered rate.
STAGE_P99_TARGET_MS = {1000.0: 250.0, 3000.0: 1000.0}


def verdict(value: float, target: float, *, at_least: bool) -> str:
    """'met', or the gap to ``target``, for the row's note."""
    met = value >= target if at_least else value <= target
    if met:
        return f"target {'>=' if at_least else '<='} {target:,.0f}: met"
    return f"target {'>=' if at_least else '<='} {target:,.0f}: gap {abs(target - value):,.0f}"


def _py_spy(pid: int, out: Path, seconds: float) -> None:
    """py-spy (raw, with idle, GIL) of ``pid`` through the middle of the saturation."""
    time.sleep(seconds / 2)
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [str(py_spy), "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "100"]
    command += ["-f", "raw", "-o", str(out), "--idle"]
    subprocess.run(command, capture_output=True, check=False)


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    seconds = {}
    for role, process in processes.items():
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[role] = times.user + times.system
    return seconds


async def pipeline_rate(stack: UpStack, events: int, senders: int = 4) -> tuple[float, float]:
    """Events/s from the first ``/v1/batch`` post until every event is visible through the
    API; and the ingest seconds of it. The posts outpace the pipeline, so this is the
    pipeline's rate (journeys, commit, ClickHouse) over a backlog of ``events``.

    Visible: the last event of each partition is a sentinel customer's only event, and a
    partition's events are processed in order, so every sentinel's stage through the API
    (a ClickHouse row) means every event before it is in too.
    """
    partitions = stack.settings.topic_partitions
    sentinels: dict[int, str] = {}
    n = 0
    while len(sentinels) < partitions:
        key = f"pipeline-end-{n}"
        sentinels.setdefault(partition_of(key.encode(), partitions), key)
        n += 1
    calls = [
        {
            "type": "track",
            "userId": f"pipeline-{i % 2000}",
            "event": "Product Viewed",
            "messageId": f"pipeline-{i}",
            "properties": {"product_id": f"p{i % 97}"},
        }
        for i in range(events)
    ]
    requests = [calls[i : i + 100] for i in range(0, events, 100)]
    ends = [
        {"type": "track", "userId": key, "event": "Product Viewed", "messageId": key}
        for key in sentinels.values()
    ]
    reader = {"Authorization": f"Bearer {stack.read_key}"}
    async with httpx.AsyncClient(
        base_url=stack.base, auth=(stack.write_key, ""), timeout=60
    ) as client:
        began = time.perf_counter()

        async def sender() -> None:
            while requests:
                batch = requests.pop()
                while (await client.post("/v1/batch", json={"batch": batch})).status_code != 200:
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(sender() for _ in range(senders)))
        assert (await client.post("/v1/batch", json={"batch": ends})).status_code == 200
        ingested = time.perf_counter() - began
        waiting = set(sentinels.values())
        deadline = time.perf_counter() + 900
        while waiting and time.perf_counter() < deadline:
            for key in list(waiting):
                # Without the client's write key (its Basic auth would replace the bearer).
                answer = await client.get(f"/v1/customers/{key}", headers=reader, auth=None)
                if answer.status_code == 200:
                    waiting.discard(key)
            await asyncio.sleep(0.1)
        if waiting:
            raise RuntimeError(f"never visible: {sorted(waiting)}")
        return (events + len(ends)) / (time.perf_counter() - began), ingested


def measure_layout(
    name: str,
    gateways: int | None,
    args: argparse.Namespace,
    run: Run,
    bare: Callable[[], float],
    journey_workers: int = 0,
) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-layout-") as folder:
        extra = {"JOURNEYS_JOURNEY_WORKERS": str(journey_workers)} if journey_workers else None
        stack = UpStack(Path(folder), gateways, extra)
        try:
            roles = stack.children()
            client = psutil.Process()
            before = cpu_seconds({**roles, "load client": client})
            spies = []
            if args.profile is not None and gateways:
                for role in ("gateway 0", "node"):
                    out = args.profile / f"{role.replace(' ', '-')}.txt"
                    spy = threading.Thread(
                        target=_py_spy, args=(roles[role].pid, out, args.seconds / 2)
                    )
                    spy.start()
                    spies.append(spy)
            began = time.monotonic()
            taken = asyncio.run(
                saturate(stack.port, stack.write_key, args.seconds, args.connections, name)
            )
            spent = time.monotonic() - began
            after = cpu_seconds({**roles, "load client": client})
            for spy in spies:
                spy.join()
            lag = stack.lag_events()
            drain_began = time.monotonic()
            while stack.lag_events() > 0 and time.monotonic() - drain_began < 600:
                time.sleep(0.5)
            drained = time.monotonic() - drain_began
            raw = bare()
            run.figures.append(
                Figure(
                    f"{name}: single /v1/track calls",
                    taken.calls_per_s,
                    "calls/s",
                    "bare uvicorn, same client",
                    raw,
                    f"{args.connections} connections; refused {taken.refused}, "
                    f"not 200: {taken.not_ok}; "
                    + verdict(taken.calls_per_s, CALLS_TARGET, at_least=True),
                )
            )
            run.figures.append(Figure(f"{name}: p50 of the 200", taken.p50_ms, "ms"))
            run.figures.append(
                Figure(
                    f"{name}: p99 of the 200",
                    taken.p99_ms,
                    "ms",
                    note=verdict(taken.p99_ms, P99_TARGET_MS, at_least=False),
                )
            )
            run.figures.append(
                Figure(
                    f"{name}: worker backlog when the load stopped",
                    lag,
                    "events",
                    note=f"drained in {drained:.1f} s",
                )
            )
            shares = {
                role: (after.get(role, 0.0) - before.get(role, 0.0)) / spent
                for role in sorted(after)
            }
            profile = ", ".join(f"{role} {share:.2f}" for role, share in shares.items())
            run.figures.append(
                Figure(
                    f"{name}: CPU cores busy under that load",
                    sum(shares.values()),
                    "cores",
                    note=profile,
                )
            )
            if args.pipeline_events:
                rate, ingested = asyncio.run(pipeline_rate(stack, args.pipeline_events))
                run.figures.append(
                    Figure(
                        f"{name}: pipeline, until visible through the API",
                        rate,
                        "events/s",
                        note=f"{args.pipeline_events:,} events by /v1/batch of 100, "
                        f"ingested in {ingested:.1f} s",
                    )
                )
            for rate in (args.latency_low_rate, args.latency_rate):
                batches_before = stack.batches()
                latency = asyncio.run(
                    track_to_stage_latency(
                        stack, rate, args.latency_seconds, through_api=journey_workers > 0
                    )
                )
                batches = stack.batches() - batches_before
                target = STAGE_P99_TARGET_MS.get(rate)
                judged = (
                    "; " + verdict(latency["p99_ms"], target, at_least=False)
                    if target is not None
                    else ""
                )
                run.figures.append(
                    Figure(
                        f"{name}: stage visible after the 200 @{rate:g}/s, p99",
                        latency["p99_ms"],
                        "ms",
                        note=f"p50 {latency['p50_ms']:.0f} ms, offered "
                        f"{latency['offered_per_s']:.0f}/s, accepted "
                        f"{latency['accepted_per_s']:.0f}/s, {latency['probes']} probes; "
                        f"{batches}" + judged,
                    )
                )
        finally:
            stack.close()


def main(argv: list[str] | None = None) -> int:
    """Run both layouts back to back and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20, help="saturation per layout")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--latency-rate", type=float, default=1000)
    parser.add_argument("--latency-low-rate", type=float, default=100)
    parser.add_argument("--latency-seconds", type=float, default=15)
    parser.add_argument("--gateways", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--journey-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="a third layout: the gateways and this many journey worker processes (0: skip)",
    )
    parser.add_argument(
        "--pipeline-events", type=int, default=20_000, help="backlog for the pipeline row (0: skip)"
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy gateway 0 and the node under load into this folder"
    )
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    run = Run(
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        machine={"cpus": os.cpu_count()},
        sizes={"seconds": int(args.seconds), "connections": args.connections},
    )
    bare_seconds = max(2.0, args.seconds / 4)

    def bare_one() -> float:
        return bare_rate(1, bare_seconds, args.connections).calls_per_s

    def bare_many() -> float:
        return bare_rate(args.gateways, bare_seconds, args.connections).calls_per_s

    measure_layout("node on the socket", 0, args, run, bare_one)
    measure_layout(f"{args.gateways} gateways", args.gateways, args, run, bare_many)
    if args.journey_workers:
        measure_layout(
            f"{args.gateways} gateways + {args.journey_workers} journey workers",
            args.gateways,
            args,
            run,
            bare_many,
            journey_workers=args.journey_workers,
        )
    print(render(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
