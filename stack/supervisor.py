"""Supervision of the embedded stack's children: restart the dead, give up on a crash loop.

`journeys up` runs a broker, a node and ingest gateways as children. A child that dies is
started again after a backoff that doubles with each recent restart; the other
children keep running. A child that dies more than ``max_restarts`` times
within ``window_s`` seconds is a crash loop: restarting it again would only hide
the fault, so the stack stops and says which child and which log.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stack.processes import stop


class CrashLoop(Exception):
    """A child died too often within the window: the stack stops."""

    def __init__(self, child: Supervised, restarts: int, window_s: float) -> None:
        self.child = child
        super().__init__(
            f"the {child.name} died {restarts} times within {window_s:.0f} s; "
            f"stopping the stack (see {child.log_path})"
        )


@dataclass
class RestartPolicy:
    """How long to wait before a restart, and when restarting is a crash loop."""

    max_restarts: int = 5
    window_s: float = 60.0
    first_backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def backoff(self, recent: int) -> float:
        """The wait before restart number ``recent`` within the window (1, 2, …)."""
        return float(min(self.max_backoff_s, self.first_backoff_s * 2 ** (recent - 1)))


@dataclass
class Supervised:
    """One child process: how to start it, where it logs, when it died lately."""

    name: str
    log_path: Path
    launch: Callable[[], subprocess.Popen[bytes]]
    stop_timeout_s: float
    process: subprocess.Popen[bytes] | None = None
    deaths: deque[float] = field(default_factory=deque)
    # The child this one cannot outlive (the broker, for the node and the gateways:
    # a new broker is a new epoch): its death restarts this one too.
    depends_on: str | None = None

    def start(self) -> None:
        self.process = self.launch()

    def exit_code(self) -> int | None:
        """The exit code if the child has died, else None (also None if never started)."""
        return None if self.process is None else self.process.poll()

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM (the node drains), SIGKILL after the timeout (``stop_timeout_s``)."""
        if self.process is not None:
            stop(self.process, self.stop_timeout_s if timeout_s is None else timeout_s)

    def kill(self) -> None:
        """SIGKILL at once: for a child whose peer is gone (a node whose broker died)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def record_death(self, now: float, policy: RestartPolicy) -> float:
        """Count a death; the backoff before the restart, or CrashLoop."""
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - policy.window_s:
            self.deaths.popleft()
        if len(self.deaths) > policy.max_restarts:
            raise CrashLoop(self, len(self.deaths), policy.window_s)
        return policy.backoff(len(self.deaths))


class Standby:
    """A child started ahead of need, that waits for its settings on standard input.

    A node's start is mostly Python imports (3 to 7 s here, FastAPI and the API modules
    the most): at a broker roll the next node imports while the old one drains, and
    is handed its settings (the new broker's) once the old one is gone.
    """

    def __init__(self, launch: Callable[[], subprocess.Popen[bytes]]) -> None:
        self._launch = launch
        self._process: subprocess.Popen[bytes] | None = None

    def prepare(self) -> None:
        """Start the standby now (if none waits already)."""
        if self._process is None or self._process.poll() is not None:
            self._process = self._launch()

    def adopt(self, env: dict[str, str]) -> subprocess.Popen[bytes] | None:
        """Hand the waiting standby its settings; the process, or None if none waits."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None or process.stdin is None:
            return None
        try:
            process.stdin.write(json.dumps(env).encode() + b"\n")
            process.stdin.close()
        except OSError:  # it died meanwhile
            process.kill()
            return None
        return process

    def discard(self) -> None:
        """Stop a standby that was never adopted (closing its input ends it)."""
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                process.stdin.close()
            stop(process, 10)


def sleep_unless(stopping: Callable[[], bool], seconds: float, step: float = 0.1) -> bool:
    """Sleep ``seconds`` in small steps; False as soon as ``stopping()`` turns true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if stopping():
            return False
        time.sleep(min(step, max(0.0, deadline - time.monotonic())))
    return not stopping()
