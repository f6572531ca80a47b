"""One node given storefront events: its rate, its CPU per event, optionally its profile.

    .venv/bin/python -m bench.node 40000                    # events/s, events per node CPU-second
    .venv/bin/python -m bench.node 150000 --profile OUT    # and py-spy (--gil) of the node to OUT

Starts a broker and a `journeys node` in a temporary folder, produces the
events to the events topic and waits until the worker's tracked positions
cover them (as ``bench/run.py``'s pipeline figure), then prints the rate and
how many events the node process handled per CPU-second (all its threads:
the journey pipeline, the outreach worker, chdb's inserts). Quicker than the
whole benchmark for comparing two trees: run each in turn, several times.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.run import BenchNode, PeakMemory, node_settings, pipeline_rate, storefront_events
from stack.broker import EmbeddedBroker
from streams.topics import ensure_topics


def main(argv: list[str] | None = None) -> int:
    """Run one node over the events and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("events", type=int, nargs="?", default=40_000)
    parser.add_argument(
        "--profile", type=Path, help="py-spy the node for 25 s (raw format) into this file"
    )
    args = parser.parse_args(argv)
    payloads = storefront_events(args.events, seed=3)
    with tempfile.TemporaryDirectory(prefix="journeys-node-bench-") as tmp:
        folder = Path(tmp)
        broker = EmbeddedBroker(folder / "broker.log")
        broker.start()
        memory = PeakMemory()
        try:
            settings = node_settings(folder, broker.bootstrap_servers, 0)
            ensure_topics(
                broker.bootstrap_servers, settings.all_topics, settings.topic_partitions, 1
            )
            node = BenchNode(settings, folder / "node0", memory)
            process = psutil.Process(node.process.pid)
            spy = threading.Thread(target=_py_spy, args=(node.process.pid, args.profile))
            if args.profile:
                spy.start()
            before = process.cpu_times()
            rate = pipeline_rate(node, payloads)
            after = process.cpu_times()
            if args.profile:
                spy.join()
            node.close()
        finally:
            memory.close()
            broker.stop()
    cpu = (after.user + after.system) - (before.user + before.system)
    print(
        f"{args.events} events: {rate:,.0f} events/s, {args.events / cpu:,.0f} events per "
        f"node CPU-second, node peak {memory.peaks.get('node', 0) / 2**20:,.0f} MiB"
    )
    return 0


def _py_spy(pid: int, out: Path) -> None:
    time.sleep(3)  # past the start of the stream
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [str(py_spy), "record", "-p", str(pid), "-d", "25", "-r", "100"]
    command += ["-f", "raw", "-o", str(out), "--threads", "--gil"]
    subprocess.run(command, capture_output=True, check=False)


if __name__ == "__main__":
    sys.exit(main())
