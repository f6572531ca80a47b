"""Child processes of the local stack: spawn them tied to us, stop them in order."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1
# Connections the supervisor's listening sockets hold while nothing accepts them (a
# restart). Whoever serves on one passes it again: asyncio's listen() resets it.
API_BACKLOG = 4096


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    """True when something accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM if its parent dies, even by SIGKILL: no orphans.
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    args: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    stdin_pipe: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``args`` with output to ``log_path``; it dies if this process dies.

    ``pass_fds``: descriptors the child inherits (the API's listening socket);
    ``stdin_pipe``: its standard input is a pipe from us (else /dev/null)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its life
    return subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        preexec_fn=_die_with_parent,
        pass_fds=tuple(pass_fds),
        # Its own session: a Ctrl-C at the terminal reaches only `journeys up`, which
        # then stops the children in order (API, drain, worker, broker).
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_until(
    ready: Callable[[], bool], timeout: float, alive: Callable[[], bool], interval: float = 0.2
) -> bool:
    """Poll ``ready`` until true, the deadline passes, or ``alive`` turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if not alive():
            return False
        time.sleep(interval)
    return False
