"""Drive a real ``journeys node`` process from tests: start, stop, kill, ask over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from stack.processes import free_port, spawn, stop, wait_until
from stack.settings import Settings
from streams.topics import ensure_topics


def platform_settings(
    data_dir: Path, name: str, bootstrap_servers: str, **overrides: Any
) -> Settings:
    """Settings of one test's platform: its own topics, group, database, keys and folder."""
    return Settings(
        **{
            "data_dir": data_dir,
            "kafka_bootstrap_servers": bootstrap_servers,
            "kafka_epoch": f"test{name}",
            "topic_prefix": f"t{name}",
            "topic_partitions": 2,
            "worker_group": f"g{name}",
            "kafka_session_timeout_s": 6,
            "clickhouse_database": f"db_{name}",
            "write_key": f"wk_{name}",
            "read_key": f"rk_{name}",
            "admin_key": f"ak_{name}",
            "batch_within_s": 0.05,
            **overrides,
        }
    )


class NodeProcess:
    """The embedded node (journey worker and API) as a child process."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings.model_copy(update={"api_port": free_port()})
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.base = f"http://{self.settings.api_host}:{self.settings.api_port}"

    def start(self, timeout: float = 90) -> None:
        """Start the node and wait until /health says every component is ready."""
        self.process = spawn(
            [sys.executable, "-m", "stack.cli", "node"], self.log_path, env=self.settings.to_env()
        )
        process = self.process
        if not wait_until(self._healthy, timeout, alive=lambda: process.poll() is None):
            raise AssertionError(f"node did not become healthy:\n{self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> int:
        """SIGTERM: ingest stops, the worker catches up, the process exits."""
        assert self.process is not None
        code = stop(self.process, timeout=90)
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: no chance to flush, commit or say goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def track(self, user_id: str, event: str, message_id: str, **properties: Any) -> int:
        """POST a Segment track call with the write key; returns the status code."""
        body = {
            "userId": user_id,
            "event": event,
            "messageId": message_id,
            "properties": properties,
        }
        response = httpx.post(
            f"{self.base}/v1/track", json=body, auth=(self.settings.write_key, ""), timeout=30
        )
        return response.status_code

    def read(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A read-side request with the read key."""
        headers = {"Authorization": f"Bearer {self.settings.read_key}"}
        return httpx.request(method, f"{self.base}{path}", headers=headers, timeout=30, **kwargs)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the node's log, for failure messages."""
        if not self.log_path.exists():
            return ""
        return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-lines:])


def query_chdb_folder(folder: Path, sql: str) -> list[list[Any]]:
    """Run ``sql`` on a chdb folder from a separate process (one folder per process)."""
    script = (
        "import json, sys; from projections.clickhouse import connect; from pathlib import Path;"
        "c = connect('', Path(sys.argv[1])); print(json.dumps(c.query(sys.argv[2]).result_rows,"
        " default=str))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder), sql],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``journeys <args>`` with ``settings`` in a child process (as a user would)."""
    return subprocess.run(
        [sys.executable, "-m", "stack.cli", *args],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def started_node(settings: Settings) -> NodeProcess:
    """A node on ``settings``'s own topics (created first), started; its log is data/node.log."""
    ensure_topics(
        settings.kafka_bootstrap_servers,
        settings.all_topics,
        settings.topic_partitions,
        settings.topic_replication_factor,
    )
    node = NodeProcess(settings, settings.data_dir / "node.log")
    node.start()
    return node
