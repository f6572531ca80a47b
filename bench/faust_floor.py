"""Faust's own cost: an agent that does nothing with its events, batched as the journey agent.

    .venv/bin/python -m bench.faust_floor BOOTSTRAP TOPIC EXPECTED

Prints one JSON line, ``{"events_per_s": ...}``: events/s from the first batch
taken to the one holding the ``EXPECTED``-th event, through ``stream.take_events``
with the batch size of the platform's settings and Faust's defaults, as the
journey agent. The run (bench/run.py) starts it as a process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import faust

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from stack.settings import Settings


def main(argv: list[str] | None = None) -> None:
    """Consume ``EXPECTED`` events with a do-nothing agent; print the rate; exit."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("expected", type=int)
    args = parser.parse_args(argv)
    settings = Settings()
    app = faust.App(
        f"bench-faust-{time.time_ns()}",
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="faust-floor-"),
        web_enabled=False,
        autodiscover=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
    )
    topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    seen = first = 0
    started: float | None = None

    @app.agent(topic)
    async def nothing(stream: faust.StreamT[bytes]) -> None:
        nonlocal seen, started, first
        assert isinstance(stream, faust.Stream)
        async for events in stream.take_events(
            settings.batch_max_events, within=settings.batch_within_s
        ):
            if started is None:
                # Timed from the first batch, as the raw consumer from its first records.
                started, first = time.perf_counter(), len(events)
            seen += len(events)
            if seen >= args.expected:
                elapsed = time.perf_counter() - started
                # All in one batch (a tiny run): nothing was timed but that batch.
                rate = (seen - first) / elapsed if seen > first else seen / settings.batch_within_s
                print(json.dumps({"events_per_s": rate}), flush=True)
                # A measuring process: nothing to drain or commit.
                os._exit(0)

    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
