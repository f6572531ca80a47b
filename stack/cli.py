"""``journeys``: start the local stack or one of its processes.

journeys up       broker + node (worker and API), until Ctrl-C (--demo: with traffic)
journeys node     worker and API in one process (the embedded shape)
journeys worker   the journey worker alone (scale-out)
journeys api      the API alone (scale-out, needs a ClickHouse server)
journeys topics   create the platform's topics
journeys demo     stream synthetic storefront traffic to a running platform
journeys keys create NAME | list | revoke KEY_ID   write keys (admin key, over HTTP)
journeys dead-letters                            rejected events, newest first
journeys import customers.csv orders.csv         history import through /v1/batch
journeys replay   rebuild the projections from the event store (node stopped);
                  --rules FILE: re-run history under other stage rules and compare
journeys outreach webhooks, rules and triggers, over the API (admin key)
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
from pathlib import Path
from types import FrameType

import httpx

from stack import analysis_cli, demo, http_commands, outreach_cli
from stack.broker import EmbeddedBroker
from stack.processes import port_open, spawn, stop, wait_until
from stack.settings import Settings
from streams.topics import ensure_topics

STARTUP_TIMEOUT_S = 180.0
NODE_STOP_TIMEOUT_S = 90.0


def dev_keys(settings: Settings) -> Settings:
    """Settings with write, read and admin keys: given ones, or kept in ``data_dir``."""
    stored = _stored_keys(settings)
    path = settings.data_dir / "dev-keys.json"
    keys = {
        "write_key": settings.write_key or stored.get("write_key") or f"wk_{secrets.token_hex(12)}",
        "read_key": settings.read_key or stored.get("read_key") or f"rk_{secrets.token_hex(12)}",
        "admin_key": settings.admin_key or stored.get("admin_key") or f"ak_{secrets.token_hex(12)}",
    }
    if keys != stored:
        path.write_text(json.dumps(keys, indent=2))
        path.chmod(0o600)
    return settings.model_copy(update=keys)


def _stored_keys(settings: Settings) -> dict[str, str]:
    path = settings.data_dir / "dev-keys.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def up(settings: Settings, demo_rate: float = 0) -> int:
    """Start the broker (unless one is configured), the topics and the node; stop on a signal.

    With ``demo_rate`` > 0, synthetic storefront traffic flows in at that many calls/s.
    """
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

        if demo_rate > 0:
            settings = demo.demo_settings(settings)
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
        demo_run = demo.DemoRun(base, settings, demo_rate) if demo_rate > 0 else None
        while not stopping and node.poll() is None:
            time.sleep(0.2)
        if node.poll() is not None and not stopping:
            print(f"the node stopped unexpectedly; see {logs / 'node.log'}", file=sys.stderr)
            return 1
        if demo_run is not None:
            demo_run.stop()
        print("stopping: API, then the worker once it has caught up, then the broker …", flush=True)
        return 0
    finally:
        if node is not None:
            stop(node, NODE_STOP_TIMEOUT_S)
        if broker is not None:
            broker.stop()
        print("stopped.", flush=True)


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    base = args.url or f"http://{settings.api_host}:{settings.api_port}"
    write_key = args.write_key or settings.write_key or _stored_keys(settings).get("write_key")
    if not write_key:
        print(
            "no write key: pass --write-key, or run in the folder where `journeys up` "
            "keeps data/dev-keys.json",
            file=sys.stderr,
        )
        return 2
    print(
        f"sending storefront traffic to {base} at {args.rate:g} calls/s; Ctrl-C stops", flush=True
    )
    try:
        accepted, rejected = demo.send(
            base,
            write_key,
            args.rate,
            demo.live_calls(args.seed, args.shoppers),
            limit=args.limit,
            on_progress=lambda ok, bad: print(
                f"\r{ok} accepted, {bad} rejected", end="", flush=True
            ),
        )
    except KeyboardInterrupt:
        return 0
    print(f"\n{accepted} accepted, {rejected} rejected")
    return 0 if rejected == 0 else 1


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
  dashboard   {base}/dashboard
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


def run_replay(settings: Settings, rules_file: Path | None) -> int:
    """``journeys replay``: rebuild projections, or compare stage counts under other rules."""
    from journeys.stages import StageRules
    from stack.bootstrap import build_platform
    from stack.replay import format_what_if, rebuild, what_if

    other = None
    if rules_file is not None:
        try:
            other = StageRules.from_toml(rules_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            print(f"--rules {rules_file}: {error}", file=sys.stderr)
            return 2
    try:
        platform = build_platform(settings)
    except Exception as error:
        print(
            f"cannot open the stores ({type(error).__name__}: {error}); with the embedded "
            "ClickHouse, stop the node first: its data folder takes one process only",
            file=sys.stderr,
        )
        return 1
    try:
        if other is None:
            report = rebuild(platform)
            print(
                f"rebuilt projections of {report.journeys} journeys from {report.events} events "
                f"in {report.seconds:.2f} s ({report.events_per_second:,.0f} events/s)"
            )
        else:
            table, report, database = what_if(platform, other)
            print(format_what_if(table))
            print(
                f"re-ran {report.events} events of {report.journeys} journeys under "
                f"{rules_file} in {report.seconds:.2f} s ({report.events_per_second:,.0f} "
                f"events/s); projection in database {database}"
            )
        return 0
    finally:
        platform.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``journeys`` command."""
    parser = argparse.ArgumentParser(
        prog="journeys", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up_command = commands.add_parser(
        "up", help="start the local stack (broker, worker, API) until Ctrl-C"
    )
    up_command.add_argument(
        "--demo",
        type=float,
        nargs="?",
        const=20.0,
        default=0.0,
        metavar="CALLS_PER_S",
        help="also stream synthetic storefront traffic (default 20 calls/s)",
    )
    demo_command = commands.add_parser(
        "demo", help="stream synthetic storefront traffic to a running platform"
    )
    demo_command.add_argument("--url", default="", help="the API (default: from settings)")
    demo_command.add_argument("--write-key", default="", help="default: JOURNEYS_WRITE_KEY")
    demo_command.add_argument("--rate", type=float, default=20.0, help="calls per second")
    demo_command.add_argument("--shoppers", type=int, default=200)
    demo_command.add_argument("--seed", type=int, default=7)
    demo_command.add_argument("--limit", type=int, default=None, help="stop after N calls")
    commands.add_parser("node", help="worker and API in one process")
    commands.add_parser("worker", help="the journey worker alone")
    commands.add_parser("api", help="the API alone (needs a ClickHouse server)")
    commands.add_parser("topics", help="create the platform's topics")
    http_commands.add_commands(commands)
    replay = commands.add_parser(
        "replay", help="rebuild every projection from the event store (with the node stopped)"
    )
    replay.add_argument(
        "--rules", type=Path, help="a stage rules file (TOML) to compare against, into *_whatif"
    )
    outreach_cli.add_parser(commands)
    analysis_cli.add_commands(commands)
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command in http_commands.COMMANDS:
        return http_commands.run(args, settings)

    if args.command in ("funnel", "retention"):
        return analysis_cli.run(args, settings)
    if args.command == "up":
        return up(settings, demo_rate=args.demo)
    if args.command == "demo":
        return _demo(settings, args)
    if args.command == "replay":
        return run_replay(settings, args.rules)
    if args.command == "outreach":
        return outreach_cli.run(args, settings)
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
