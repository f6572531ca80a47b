"""``journeys``: start the local stack or one of its processes.

journeys up       broker + node (worker and API), until Ctrl-C
journeys node     worker and API in one process (the embedded shape)
journeys worker   the journey worker alone (scale-out)
journeys api      the API alone (scale-out, needs a ClickHouse server)
journeys topics   create the platform's topics
journeys funnel   run a funnel through the API and print it (--csv to export)
journeys retention  print a retention table from the API (--csv to export)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
from datetime import UTC, datetime
from types import FrameType

import httpx

from stack import analysis_cli
from stack.broker import EmbeddedBroker
from stack.processes import port_open, spawn, stop, wait_until
from stack.settings import Settings
from streams.topics import ensure_topics

STARTUP_TIMEOUT_S = 180.0
NODE_STOP_TIMEOUT_S = 90.0


def dev_keys(settings: Settings) -> Settings:
    """Settings with write, read and admin keys: given ones, or kept in ``data_dir``."""
    path = settings.data_dir / "dev-keys.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    keys = {
        "write_key": settings.write_key or stored.get("write_key") or f"wk_{secrets.token_hex(12)}",
        "read_key": settings.read_key or stored.get("read_key") or f"rk_{secrets.token_hex(12)}",
        "admin_key": settings.admin_key or stored.get("admin_key") or f"ak_{secrets.token_hex(12)}",
    }
    if keys != stored:
        path.write_text(json.dumps(keys, indent=2))
        path.chmod(0o600)
    return settings.model_copy(update=keys)


def up(settings: Settings) -> int:
    """Start the broker (unless one is configured), the topics and the node; stop on a signal."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logs = settings.data_dir / "logs"
    settings = dev_keys(settings)
    if port_open(settings.api_host, settings.api_port):
        print(
            f"port {settings.api_port} on {settings.api_host} is in use; "
            "set JOURNEYS_API_PORT to another port",
            file=sys.stderr,
        )
        return 2

    stopping = False

    def request_stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    broker: EmbeddedBroker | None = None
    node = None
    try:
        if not settings.kafka_bootstrap_servers:
            broker = EmbeddedBroker(logs / "broker.log")
            print(
                f"starting the embedded broker (Tansu) on {broker.bootstrap_servers} …", flush=True
            )
            broker.start()
            epoch = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + secrets.token_hex(2)
            settings = settings.model_copy(
                update={
                    "kafka_bootstrap_servers": broker.bootstrap_servers,
                    "kafka_epoch": epoch,
                }
            )
        created = ensure_topics(
            settings.kafka_bootstrap_servers,
            settings.all_topics,
            settings.topic_partitions,
            settings.topic_replication_factor,
        )
        print(f"topics ready ({', '.join(created) or 'all existed'})", flush=True)

        print("starting the node (journey worker + API) …", flush=True)
        node = spawn(
            [sys.executable, "-m", "stack.cli", "node"], logs / "node.log", env=settings.to_env()
        )
        base = f"http://{settings.api_host}:{settings.api_port}"
        process = node
        healthy = wait_until(
            lambda: _healthy(base),
            STARTUP_TIMEOUT_S,
            alive=lambda: process.poll() is None and not stopping,
        )
        if not healthy:
            if not stopping:
                print(f"the node did not become healthy; see {logs / 'node.log'}:", file=sys.stderr)
                print(_tail(logs / "node.log"), file=sys.stderr)
            return 1
        _banner(settings, base, broker)
        while not stopping and node.poll() is None:
            time.sleep(0.2)
        if node.poll() is not None and not stopping:
            print(f"the node stopped unexpectedly; see {logs / 'node.log'}", file=sys.stderr)
            return 1
        print("stopping: API, then the worker once it has caught up, then the broker …", flush=True)
        return 0
    finally:
        if node is not None:
            stop(node, NODE_STOP_TIMEOUT_S)
        if broker is not None:
            broker.stop()
        print("stopped.", flush=True)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _tail(path: os.PathLike[str], lines: int = 30) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def _banner(settings: Settings, base: str, broker: EmbeddedBroker | None) -> None:
    where = "embedded Tansu, in memory" if broker else "external"
    print(
        f"""
Customer Journeys is up.
  API         {base}
  API docs    {base}/docs
  write key   {settings.write_key}   (HTTP Basic user, empty password)
  read key    {settings.read_key}   (Authorization: Bearer <read key>)
  admin key   {settings.admin_key}   (Authorization: Bearer <admin key>)
  broker      {settings.kafka_bootstrap_servers} ({where})
  data, logs  {settings.data_dir}/, {settings.data_dir / "logs"}/

Try it:
  curl -u {settings.write_key}: -H 'content-type: application/json' \\
       -d '{{"userId": "u1", "event": "Product Viewed", "messageId": "m1"}}' {base}/v1/track
  curl -H 'Authorization: Bearer {settings.read_key}' {base}/v1/customers/u1

Ctrl-C stops everything.""",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``journeys`` command."""
    parser = argparse.ArgumentParser(
        prog="journeys", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the local stack (broker, worker, API) until Ctrl-C")
    commands.add_parser("node", help="worker and API in one process")
    commands.add_parser("worker", help="the journey worker alone")
    commands.add_parser("api", help="the API alone (needs a ClickHouse server)")
    commands.add_parser("topics", help="create the platform's topics")
    analysis_cli.add_commands(commands)
    args = parser.parse_args(argv)
    settings = Settings()

    if args.command in ("funnel", "retention"):
        return analysis_cli.run(args, settings)
    if args.command == "up":
        return up(settings)
    if not settings.kafka_bootstrap_servers:
        parser.error(
            f"`journeys {args.command}` needs JOURNEYS_KAFKA_BOOTSTRAP_SERVERS "
            "(only `journeys up` starts a broker of its own)"
        )
    if args.command == "topics":
        created = ensure_topics(
            settings.kafka_bootstrap_servers,
            settings.all_topics,
            settings.topic_partitions,
            settings.topic_replication_factor,
        )
        print("created: " + (", ".join(created) or "nothing, all existed"))
        return 0
    # Imported here: `up` and `topics` need none of the worker's packages.
    from stack import node

    runners = {"node": node.run_node, "worker": node.run_worker, "api": node.run_api}
    runners[args.command](settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
