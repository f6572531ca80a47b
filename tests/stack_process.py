"""``journeys up`` in a subprocess, as a user runs it from a terminal (e2e tests)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

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
