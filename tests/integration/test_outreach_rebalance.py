"""Flows' waits survive a rebalance: a second worker joins, the first is killed, each cart is
sent for once.

Node A (worker + API) and worker B share the event store (SQLite file) and the
consumer group; each has its own chdb folder (one folder per process). Carts
are scheduled while the partitions are split between them; A is SIGKILLed
before any is due; B takes A's partitions over and ends every wait, sending once.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack.processes import free_port, spawn, stop, wait_until
from stack.settings import Settings
from streams.topics import ensure_topics
from tests.node_process import NodeProcess

pytestmark = pytest.mark.integration

DELAY_S = 12.0
CUSTOMERS = [f"r{i}" for i in range(12)]


@pytest.fixture
def accepted() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", seen
    server.shutdown()


def test_flow_waits_move_with_their_partitions_and_send_once(
    settings: Settings, accepted: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, seen = accepted
    flows = tmp_path / "flows.toml"
    flows.write_text(
        '[flows.abandoned_cart]\nname = "Abandoned cart"\nversion = 1\n'
        '[flows.abandoned_cart.nodes.due]\nkind = "date_entry"\nanchor = "cart"\n'
        f'after = "{DELAY_S:g}s"\nnext = "send"\n'
        '[flows.abandoned_cart.nodes.send]\nkind = "send"\nchannel = "webhook"\nbody = "cart"\n'
    )
    rules = tmp_path / "rules.toml"
    rules.write_text("")  # no rules file to migrate: only this flow sends
    settings = settings.model_copy(
        update={"flows_file": flows, "trigger_rules_file": str(rules), "trigger_grace_s": 300.0}
    )
    ensure_topics(
        settings.kafka_bootstrap_servers,
        settings.all_topics,
        settings.topic_partitions,
        settings.topic_replication_factor,
    )
    node = NodeProcess(settings, settings.data_dir / "node-a.log")
    node.start()
    worker_log = settings.data_dir / "worker-b.log"
    worker_settings = settings.model_copy(
        update={"clickhouse_url": f"chdb://{tmp_path / 'chdb-b'}"}
    )
    worker = spawn(
        [sys.executable, "-m", "stack.cli", "worker"], worker_log, env=worker_settings.to_env()
    )
    try:
        assert wait_until(
            lambda: "[^NodeWorker]: Ready" in worker_log.read_text(errors="replace"),
            timeout=120,
            alive=lambda: worker.poll() is None,
        ), worker_log.read_text(errors="replace")[-3000:]
        admin = {"Authorization": f"Bearer {settings.admin_key}"}
        created = httpx.post(
            f"{node.base}/v1/outreach/webhooks", json={"url": url}, headers=admin, timeout=30
        )
        assert created.status_code == 201
        # Wait until the group settled with both members (B got partitions).
        time.sleep(8)
        for customer in CUSTOMERS:
            status = node.track(customer, "Product Added", f"{customer}-add", product_id="p")
            assert status == 200
        assert wait_until(
            lambda: (
                len(
                    httpx.get(f"{node.base}/v1/outreach/timers", headers=admin, timeout=30).json()[
                        "timers"
                    ]
                )
                == len(CUSTOMERS)
            ),
            timeout=DELAY_S - 4,
            alive=lambda: True,
            interval=0.2,
        ), "the flows' waits were not persisted before they were due"
        node.kill()
        assert seen == [], "fired before the kill: the test proves nothing"
        assert wait_until(
            lambda: {t["customer_id"] for t in seen} == set(CUSTOMERS),
            timeout=120,
            alive=lambda: worker.poll() is None,
            interval=0.5,
        ), worker_log.read_text(errors="replace")[-3000:]
        time.sleep(3)  # room for a double, were there one
        per_customer = {c: [t for t in seen if t["customer_id"] == c] for c in CUSTOMERS}
        assert {c: len(found) for c, found in per_customer.items()} == dict.fromkeys(CUSTOMERS, 1)
        # A was killed before anything was due and never came back: B sent them all.
        assert {t["rule"] for t in seen} == {"flow:abandoned_cart"}
    finally:
        if node.process is not None:
            node.stop()
        stop(worker, 90)
