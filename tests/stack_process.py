"""``journeys up`` in a subprocess, as a user runs it from a terminal (e2e tests)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

from stack.settings import Settings
from tests.node_process import query_chdb_folder

BANNER_TIMEOUT_S = 180
# Command-line markers of `journeys up`'s children (``stack.child(NODE)``).
NODE = "stack.cli node"
GATEWAY = "stack.cli gateway"


class RunningStack:
    """``journeys up`` in a subprocess, as from a terminal."""

    def __init__(self, workdir: Path, port: int, **settings: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEYS_")}
        env["JOURNEYS_API_PORT"] = str(port)
        env["JOURNEYS_KAFKA_SESSION_TIMEOUT_S"] = "6"
        env.update({f"JOURNEYS_{name.upper()}": value for name, value in settings.items()})
        self.output_path = workdir / "up.out"
        self._output = open(self.output_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stack.cli", "up"],
            cwd=workdir,
            env=env,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_for_banner(self) -> tuple[str, str]:
        """Wait for 'is up'; return the printed write and read keys."""
        deadline = time.monotonic() + BANNER_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.output()
            if "is up" in text:
                write = re.search(r"write key\s+(\S+)", text)
                read = re.search(r"read key\s+(\S+)", text)
                assert write and read, text
                assert f"{self.base}/docs" in text
                return write.group(1), read.group(1)
            assert self.process.poll() is None, f"journeys up exited early:\n{text}"
            time.sleep(0.3)
        raise AssertionError(f"no banner within {BANNER_TIMEOUT_S}s:\n{self.output()}")

    def children(self) -> list[psutil.Process]:
        """Its child processes now (broker, node), recursively."""
        return list(psutil.Process(self.process.pid).children(recursive=True))

    def child(self, marker: str) -> psutil.Process | None:
        """The child whose command line contains ``marker`` (``tansu``, ``stack.cli node``)."""
        for child in self.children():
            try:
                if marker in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        return None

    def children_matching(self, marker: str) -> list[psutil.Process]:
        """Every child whose command line contains ``marker`` (``GATEWAY``: the gateways)."""
        found = []
        for child in self.children():
            try:
                if marker in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    def interrupt(self, signum: int = signal.SIGINT) -> tuple[int, list[int]]:
        """Ctrl-C (or ``signum``); returns the exit code and the pids of the children it had."""
        children = [c.pid for c in self.children()]
        self.process.send_signal(signum)
        code = self.process.wait(timeout=120)
        self._output.close()
        return code, children


def wait_for(check, timeout: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    return check()


def leftovers(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies do not count)."""
    return [
        pid
        for pid in pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]


class Sender:
    """An SDK's delivery loop over ``requests`` (lists of calls), shared by ``run`` threads:
    each request is sent again until it is answered 200, then ``pause_s`` passes.
    Notes when each call was first sent and when it got its 200 (``time.monotonic``)."""

    def __init__(
        self,
        base: str,
        write_key: str,
        requests: list[list[dict[str, Any]]],
        pause_s: float = 0.0,
    ) -> None:
        self.base, self.write_key, self.pause_s = base, write_key, pause_s
        self.pending = list(reversed(requests))
        self.lock = threading.Lock()
        self.times: dict[str, tuple[float, float]] = {}  # messageId -> (first sent, acked)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, auth=(self.write_key, ""), timeout=30) as client:
            while True:
                with self.lock:
                    if not self.pending:
                        return
                    batch = self.pending.pop()
                first = time.monotonic()
                while not self._sent(client, batch):
                    time.sleep(0.2)
                acknowledged = time.monotonic()
                with self.lock:
                    for call in batch:
                        self.times[call["messageId"]] = (first, acknowledged)
                time.sleep(self.pause_s)

    def _sent(self, client: httpx.Client, batch: list[dict[str, Any]]) -> bool:
        try:
            return client.post("/v1/batch", json={"batch": batch}).status_code == 200
        except httpx.HTTPError:
            return False  # the stack is restarting a process: try again, as an SDK does

    def done(self) -> int:
        with self.lock:
            return len(self.times)


def counted_events(base: str, read_key: str, customers: int) -> int:
    """The event counts of customers ``u0`` … ``u{customers - 1}`` summed; -1 while any
    of them cannot be read yet."""
    reader = {"Authorization": f"Bearer {read_key}"}
    total = 0
    for customer in range(customers):
        try:
            response = httpx.get(f"{base}/v1/customers/u{customer}", headers=reader, timeout=10)
        except httpx.HTTPError:
            return -1  # the node is restarting (a roll): its calls wait, up to the timeout
        if response.status_code != 200:
            return -1
        total += response.json()["event_count"]
    return total


def assert_counted_once(data_dir: Path, expected: Counter[str]) -> None:
    """The stopped stack's event log holds each customer's ``expected`` events, each once,
    and the stage counters agree."""
    settings = Settings(data_dir=data_dir)
    db = settings.clickhouse_database
    rows = query_chdb_folder(
        settings.chdb_path,
        f"SELECT customer_key, count(), uniqExact(event_id) FROM {db}.events FINAL "
        "GROUP BY customer_key",
    )
    assert {key: n for key, n, _ in rows} == dict(expected)
    assert all(n == unique for _, n, unique in rows)
    counters = query_chdb_folder(
        settings.chdb_path, f"SELECT customer_key, event_count FROM {db}.customer_stages FINAL"
    )
    assert {key: n for key, n in counters} == dict(expected)
