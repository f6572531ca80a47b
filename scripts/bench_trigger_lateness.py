"""Measure how late abandoned-cart sends go out: a real broker, a real node, N carts.

    .venv/bin/python scripts/bench_trigger_lateness.py --carts 300 --delay 5

Starts Tansu and `journeys node` in a temporary folder, registers a local
webhook receiver, adds N carts within about a second, and reports the
lateness of each send (sent minus due time, wall clock; as recorded by the
worker) and the receiver-side delay (received minus due time). The cart rule
written here becomes a flow at the node's start (the rules file is migrated:
stack/flows_switch.py), a single reminder ``--delay`` after the last cart activity.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stack.broker import EmbeddedBroker
from stack.processes import free_port, spawn, stop, wait_until
from stack.settings import Settings
from streams.topics import ensure_topics


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--carts", type=int, default=300)
    parser.add_argument("--delay", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64, help="deliveries in flight")
    args = parser.parse_args()
    received: dict[str, float] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            received.setdefault(body["trigger_id"], time.time())
            received[body["trigger_id"] + ":due"] = datetime.fromisoformat(
                body["due_at"]
            ).timestamp()
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    folder = Path(tempfile.mkdtemp(prefix="bench-triggers-"))
    (folder / "rules.toml").write_text(
        f'[[rule]]\nid = "abandoned_cart"\ntrigger = "abandoned_cart"\n'
        f'delay = "{args.delay}s"\nchannels = ["webhook"]\n'
    )
    broker = EmbeddedBroker(folder / "broker.log")
    broker.start()
    settings = Settings(
        data_dir=folder / "data",
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_epoch="bench",
        topic_prefix="bench",
        api_port=free_port(),
        write_key="wk_bench",
        read_key="rk_bench",
        admin_key="ak_bench",
        trigger_rules_file=str(folder / "rules.toml"),
        log_level="warning",
        outreach_concurrency=args.concurrency,
    )
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 4, 1)
    base = f"http://127.0.0.1:{settings.api_port}"
    node = spawn(
        [sys.executable, "-m", "stack.cli", "node"], folder / "node.log", env=settings.to_env()
    )
    admin = {"Authorization": "Bearer ak_bench"}
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_until(healthy, 120, alive=lambda: node.poll() is None):
            print("node did not start; see", folder / "node.log")
            return 1
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        httpx.post(
            f"{base}/v1/outreach/webhooks", json={"url": url}, headers=admin
        ).raise_for_status()
        with httpx.Client(auth=("wk_bench", "")) as client:
            started = time.time()
            for n in range(args.carts):
                client.post(
                    f"{base}/v1/track",
                    json={
                        "userId": f"bench-{n}",
                        "event": "Product Added",
                        "messageId": f"bench-{n}",
                        "properties": {"product_id": "p", "price": 10},
                    },
                ).raise_for_status()
            sending = time.time() - started
        wait_until(
            lambda: sum(1 for k in received if not k.endswith(":due")) >= args.carts,
            args.delay + 120,
            alive=lambda: True,
        )
        triggers = httpx.get(
            f"{base}/v1/outreach/triggers", params={"limit": 1000}, headers=admin
        ).json()["triggers"]
        lateness = [t["lateness_ms"] for t in triggers]
        at_receiver = [
            (received[k] - received[k + ":due"]) * 1000 for k in received if not k.endswith(":due")
        ]
        report = {
            "carts": args.carts,
            "sent_in_s": round(sending, 2),
            "triggers": len(triggers),
            "delivered": len(at_receiver),
            "fired_lateness_ms": {
                "p50": statistics.median(lateness),
                "p95": percentile(lateness, 0.95),
                "max": max(lateness),
            },
            "received_after_due_ms": {
                "p50": round(statistics.median(at_receiver), 1),
                "p95": round(percentile(at_receiver, 0.95), 1),
                "max": round(max(at_receiver), 1),
            },
        }
        print(json.dumps(report, indent=2))
        return 0
    finally:
        stop(node, 60)
        broker.stop()
        receiver.shutdown()


if __name__ == "__main__":
    sys.exit(main())
