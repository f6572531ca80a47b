"""What the benchmarks that run the whole stack share: `journeys up` in a folder of
its own, and SDK-like senders of storefront calls that re-send until their 200."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from bench.run import storefront_call_stream

BATCH = 100  # storefront calls per /v1/batch request


def stack_env(port: int, **settings: str) -> dict[str, str]:
    """This process's environment without its JOURNEYS_* settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEYS_")}
    return env | {"JOURNEYS_API_PORT": str(port)} | settings


@dataclass(frozen=True)
class RunningStack:
    process: subprocess.Popen[bytes]
    base: str
    write_key: str
    output: Path  # the supervisor's stdout and stderr


def caught_up(base: str) -> bool:
    """Healthy with no backlog: every event acknowledged has been processed."""
    try:
        components = httpx.get(f"{base}/health", timeout=10).json()["components"]
    except (httpx.HTTPError, ValueError, KeyError):
        return False
    return bool(components["backlog"]["lag_events"] == 0)


@contextmanager
def journeys_up(
    folder: Path,
    env: dict[str, str],
    *,
    timeout_s: float = 180,
    ready: Callable[[str], bool] = lambda _base: True,
) -> Iterator[RunningStack]:
    """`journeys up` in ``folder`` until it says it is up and ``ready(base)`` holds;
    stopped (SIGTERM, drained) on the way out, whatever happened."""
    output = folder / "up.out"
    # A SIGTERM of the benchmark (a timeout) unwinds through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with open(output, "wb") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "stack.cli", "up"],
            cwd=folder,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{env['JOURNEYS_API_PORT']}"
    try:
        deadline = time.monotonic() + timeout_s
        while not ("is up" in output.read_text(errors="replace") and ready(base)):
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"journeys up did not come up:\n{output.read_text()}")
            time.sleep(0.3)
        found = re.search(r"write key\s+(\S+)", output.read_text(errors="replace"))
        if found is None:
            raise RuntimeError(f"journeys up printed no write key:\n{output.read_text()}")
        yield RunningStack(up, base, found.group(1), output)
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=180)
        except subprocess.TimeoutExpired:
            up.kill()


class Senders:
    """Threads sending ``events`` storefront calls, ``BATCH`` a request, each request
    re-sent until its 200 as an SDK does (the stack may be down for a roll or a restart)."""

    def __init__(self, stack: RunningStack, events: int, senders: int, seed: int) -> None:
        self.base, self.key = stack.base, stack.write_key
        self.calls = storefront_call_stream(events, seed=seed)
        self.lock = threading.Lock()
        self.acked = 0
        self.bytes = 0
        self.longest = 0.0  # the longest a request waited for its 200, in seconds
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(senders)]

    def start(self) -> Senders:
        for thread in self.threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def _next(self) -> bytes | None:
        with self.lock:
            chunk = list(itertools.islice(self.calls, BATCH))
        return orjson.dumps({"batch": chunk}) if chunk else None

    def _send(self) -> None:
        with httpx.Client(base_url=self.base, auth=(self.key, ""), timeout=60) as client:
            while (body := self._next()) is not None:
                began = time.monotonic()
                while True:
                    try:
                        answer = client.post(
                            "/v1/batch", content=body, headers={"content-type": "application/json"}
                        )
                        if answer.status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.2)
                with self.lock:
                    self.acked += body.count(b'"messageId"')
                    self.bytes += len(body)
                    self.longest = max(self.longest, time.monotonic() - began)
