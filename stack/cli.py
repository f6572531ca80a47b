"""``journeys``: start the local stack or one of its processes.

journeys up       broker + node + ingest gateways, until Ctrl-C (--demo: with traffic)
journeys node     worker and API in one process (the embedded shape)
journeys gateway  an ingest gateway (run by `journeys up`: forwards all but ingest to the node)
journeys journey-worker  one of `journeys up`'s journey workers (JOURNEYS_JOURNEY_WORKERS)
journeys worker   the journey worker alone (scale-out)
journeys api      the API alone (scale-out, needs a ClickHouse server)
journeys topics   create the platform's topics
journeys demo     stream synthetic storefront traffic to a running platform
journeys keys create NAME | list | revoke KEY_ID   write keys (admin key, over HTTP)
journeys dead-letters                            rejected events, newest first
journeys customers erase ID | export ID          GDPR erasure and export (admin key, over HTTP)
journeys master-key rotate                       re-wrap every data key under a new master key
journeys import customers.csv orders.csv         history import through /v1/batch
journeys verify   compare the event store, event log and counters (node stopped);
                  --backup SRC: check a backup's files against its manifest
journeys backup DEST [--also DEST2]   a consistent backup of the running node's stores
journeys restore SRC                  a backup into an empty data folder (node stopped)
journeys replay   rebuild the projections from the event store (node stopped);
                  --rules FILE: re-run history under other stage rules and compare
journeys outreach webhooks and triggers, over the API (admin key)
journeys flows    validate|list|show the flows file; backtest FLOW --from --to (admin key);
                  migrate-rules [RULES_FILE] [--out FILE]
journeys funnel   run a funnel through the API and print it (--csv to export)
journeys retention  print a retention table from the API (--csv to export)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import httpx

from stack import access, analysis_cli, backup_cli, demo, http_commands, outreach_cli
from stack.broker import EmbeddedBrokers, ensure_platform_topics
from stack.flows_cli import FLOWS_COMMAND, add_flows_parser, run_flows
from stack.privacy import MasterKeyMissing, ensure_master_key, rotate_master_key
from stack.processes import API_BACKLOG, rss_mib, spawn
from stack.segments_cli import (
    SEGMENTS_COMMAND,
    TRAITS_COMMAND,
    add_segments_parser,
    run_segments,
)
from stack.settings import Settings
from stack.supervisor import CrashLoop, RestartPolicy, Standby, Supervised, sleep_unless

STARTUP_TIMEOUT_S = 180.0
NODE_STOP_TIMEOUT_S = 90.0
# A journey worker stops once it has caught up with the topic (its drain).
JOURNEY_WORKER_STOP_TIMEOUT_S = 90.0
# A gateway stops in its requests' time (uvicorn's graceful shutdown) and a flush.
GATEWAY_STOP_TIMEOUT_S = 30.0
# How often `journeys up` reads the embedded broker's resident size.
BROKER_RSS_CHECK_S = 2.0


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
    """Start the broker (unless one is configured), the topics and the node, and supervise them.

    A child that dies is restarted with backoff while the others keep running; a
    crash loop stops the stack (exit 1). Only SIGINT/SIGTERM stop it cleanly:
    node first (drained), then the broker. With ``demo_rate`` > 0, synthetic
    storefront traffic flows in at that many calls/s.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)  # a folder made before (by hand, or an older version)
    logs = settings.data_dir / "logs"
    settings = dev_keys(settings)
    try:
        ensure_master_key(settings)
    except MasterKeyMissing as missing:
        print(str(missing), file=sys.stderr)
        return 2
    try:
        # Ours for the stack's life; the node serves on it. A node that restarts
        # leaves connections waiting here, not refused.
        listener = socket.create_server((settings.api_host, settings.api_port), backlog=API_BACKLOG)
    except OSError as error:
        print(
            f"cannot listen on {settings.api_host}:{settings.api_port} ({error.strerror}); "
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

    policy = RestartPolicy(
        max_restarts=settings.supervisor_max_restarts, window_s=settings.supervisor_window_s
    )
    if demo_rate > 0:
        settings = demo.demo_settings(settings)
    gateway_count = _gateway_count(settings)
    # With gateways the node serves a private Unix socket, also ours: forwarded calls
    # wait in it while the node restarts, as public ones do in the public socket.
    node_socket_path = _node_socket_path(settings.data_dir) if gateway_count else ""
    node_listener = _unix_listener(node_socket_path) if node_socket_path else listener
    settings = settings.model_copy(update={"api_socket_fd": node_listener.fileno()})
    if gateway_count:
        settings = settings.model_copy(update={"gateway_metrics_dir": _metrics_dir(settings)})
    # The journey workers' metrics files (the node's /metrics reads them): this stack's only.
    shutil.rmtree(settings.journey_worker_metrics_dir, ignore_errors=True)
    brokers = (
        EmbeddedBrokers(settings, logs / "broker.log")
        if not settings.kafka_bootstrap_servers
        else None
    )

    def node_settings() -> Settings:
        return settings if brokers is None or brokers.current is None else brokers.current.settings

    def start_node() -> subprocess.Popen[bytes]:
        waiting = standby.adopt(node_settings().to_env())
        if waiting is not None:
            print("starting the node (journey worker + API) from its standby …", flush=True)
            return waiting
        print("starting the node (journey worker + API) …", flush=True)
        return spawn(
            [sys.executable, "-m", "stack.cli", "node"],
            logs / "node.log",
            env=node_settings().to_env(),
            pass_fds=[node_listener.fileno()],
        )

    def start_gateway(index: int) -> subprocess.Popen[bytes]:
        gateway_settings = node_settings().model_copy(
            update={
                "api_socket_fd": listener.fileno(),
                "node_socket": node_socket_path,
                "journal_dir": settings.gateway_journal_path(index),
            }
        )
        # Counters in files the node's /metrics sums (prometheus_client's multiprocess mode).
        counters = {"PROMETHEUS_MULTIPROC_DIR": str(settings.gateway_metrics_dir)}
        return spawn(
            [sys.executable, "-m", "stack.cli", "gateway", "--index", str(index)],
            logs / f"gateway-{index}.log",
            env={**gateway_settings.to_env(), **counters},
            pass_fds=[listener.fileno()],
        )

    def start_journey_worker(index: int) -> subprocess.Popen[bytes]:
        worker_settings = node_settings().model_copy(
            update={
                "journal_dir": settings.journey_worker_journal_path(index),
                "journey_worker_index": index,
            }
        )
        return spawn(
            [sys.executable, "-m", "stack.cli", "journey-worker", "--index", str(index)],
            logs / f"journey-worker-{index}.log",
            env=worker_settings.to_env(),
        )

    standby = Standby(
        lambda: spawn(
            [sys.executable, "-m", "stack.cli", "node", "--standby"],
            logs / "node.log",
            pass_fds=[node_listener.fileno()],
            stdin_pipe=True,
        )
    )
    depends = "broker" if brokers is not None else None
    node = Supervised(
        "node", logs / "node.log", start_node, NODE_STOP_TIMEOUT_S, depends_on=depends
    )
    gateways = [
        Supervised(
            f"gateway {index}",
            logs / f"gateway-{index}.log",
            functools.partial(start_gateway, index),
            GATEWAY_STOP_TIMEOUT_S,
            depends_on=depends,
        )
        for index in range(gateway_count)
    ]
    journey_workers = [
        Supervised(
            f"journey worker {index}",
            logs / f"journey-worker-{index}.log",
            functools.partial(start_journey_worker, index),
            JOURNEY_WORKER_STOP_TIMEOUT_S,
            depends_on=depends,
        )
        for index in range(settings.journey_workers)
    ]
    if journey_workers:
        print(
            f"{len(journey_workers)} journey workers; the node applies their ClickHouse "
            "writes and serves reads",
            flush=True,
        )
    if gateway_count:
        print(
            f"{gateway_count} ingest gateways on {settings.api_host}:{settings.api_port}; "
            f"the node on {node_socket_path}",
            flush=True,
        )
    # Stopped in reverse: gateways, journey workers (drained), the node (drained), broker.
    children = [node, *journey_workers, *gateways]
    if brokers is not None:
        children.insert(0, Supervised("broker", brokers.log_path, brokers.start, 10.0))
    base = f"http://{settings.api_host}:{settings.api_port}"
    demo_run: demo.DemoRun | None = None
    try:
        for child in children:
            _start(child, policy, lambda: stopping)
        started_at = time.monotonic()
        announced = False
        checked_rss = time.monotonic()
        while not stopping:
            _restart_dead(children, policy, lambda: stopping)
            if brokers is not None and time.monotonic() - checked_rss > BROKER_RSS_CHECK_S:
                checked_rss = time.monotonic()
                if brokers.carried_mib is None and _serving(base):
                    # The node serves once its journal's replay is in: what the broker
                    # holds now was carried over, not grown.
                    held = rss_mib(brokers.pid())
                    assert brokers.current is not None
                    brokers.carried_mib = max(0.0, held - brokers.current.idle_mib)
                    print(
                        f"the node serves on the broker, which holds {held:,.0f} MiB after "
                        f"the replay ({brokers.carried_mib:,.0f} MiB above idle)",
                        flush=True,
                    )
                _roll_if_full(
                    brokers,
                    standby,
                    children[0],
                    node,
                    [*journey_workers, *gateways],
                    settings,
                    policy,
                    lambda: stopping,
                )
            if not announced:
                if _healthy(base):
                    _banner(node_settings(), base, brokers is not None)
                    announced = True
                    if demo_rate > 0:
                        demo_run = demo.DemoRun(base, node_settings(), demo_rate)
                elif time.monotonic() - started_at > STARTUP_TIMEOUT_S:
                    print(f"the node did not become healthy; see {node.log_path}:", file=sys.stderr)
                    print(_tail(node.log_path), file=sys.stderr)
                    return 1
            time.sleep(0.2)
        print("stopping: API, then the worker once it has caught up, then the broker …", flush=True)
        return 0
    except CrashLoop as loop:
        print(str(loop), file=sys.stderr)
        print(_tail(loop.child.log_path), file=sys.stderr)
        return 1
    finally:
        if demo_run is not None:
            demo_run.stop()
        # Node before broker: the node drains into the event store while the broker lives.
        for child in reversed(children):
            child.stop()
        if brokers is not None:
            brokers.discard_standby()
        standby.discard()
        listener.close()
        if node_listener is not listener:
            node_listener.close()
            with contextlib.suppress(OSError):
                os.unlink(node_socket_path)
        print("stopped.", flush=True)


def _gateway_count(settings: Settings) -> int:
    """How many ingest gateways to run: the setting (default one per core), and at
    least as many as there are gateway journals still holding events, which only
    their own gateway replays."""
    wanted = settings.gateways if settings.gateways is not None else (os.cpu_count() or 1)
    retained = [
        index
        for index, journal in settings.gateway_journal_paths().items()
        if any(journal.glob("*.seg"))
    ]
    needed = max(retained) + 1 if retained else 0
    if needed > wanted:
        print(
            f"starting {needed} ingest gateways, not {wanted}: gateway {needed - 1}'s journal "
            "still holds events only it replays",
            flush=True,
        )
    count = max(wanted, needed)
    if count:
        settings.gateways_path.mkdir(exist_ok=True)
    return count


def _metrics_dir(settings: Settings) -> Path:
    """The gateways' counter files, emptied at each start (a new stack counts from 0)."""
    folder = settings.data_dir / "gateway-metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def _node_socket_path(data_dir: Path) -> str:
    """The node's private socket: in the data folder (0700), or a private temporary
    folder when that path is longer than a Unix socket's address allows."""
    path = data_dir / "node.sock"
    if len(str(path)) < 100:
        return str(path)
    return str(Path(tempfile.mkdtemp(prefix="journeys-")) / "node.sock")


def _unix_listener(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a stack that was killed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(API_BACKLOG)
    return listener


def _start(child: Supervised, policy: RestartPolicy, stopping: Callable[[], bool]) -> None:
    """Start ``child``; a start that fails counts as a death (backoff, or CrashLoop)."""
    while not stopping():
        try:
            child.start()
            return
        except RuntimeError as error:
            delay = child.record_death(time.monotonic(), policy)
            print(f"{error}; trying again in {delay:.1f} s", file=sys.stderr, flush=True)
            sleep_unless(stopping, delay)


def _roll_if_full(
    brokers: EmbeddedBrokers,
    standby: Standby,
    broker: Supervised,
    node: Supervised,
    beside: list[Supervised],
    settings: Settings,
    policy: RestartPolicy,
    stopping: Callable[[], bool],
) -> bool:
    """Roll the embedded broker once its memory passes ``broker_max_rss_mib``; True if it did.

    Tansu's memory storage never frees a record (retention is not applied, DeleteRecords
    is not implemented), so the only bound is a new broker. The next broker and a standby
    node (imports done) are started first, while the node still serves; then the node is
    stopped as on Ctrl-C, drained
    into the event store for up to ``broker_roll_drain_s`` (a node still behind then is
    killed and replays its journal into the new broker, as after a crash), and started
    on the new broker. Meanwhile calls wait in the supervisor's listening socket.
    """
    max_rss_mib = settings.broker_max_rss_mib
    if not max_rss_mib or broker.process is None or broker.exit_code() is not None:
        return False
    rss = rss_mib(broker.process.pid)
    carried = brokers.carried_mib
    if rss <= max_rss_mib or carried is None:
        return False
    # A backlog the replay carried into this broker would be carried into the next one
    # too: when it is over half the bound, roll only once the broker grew by half the
    # bound since, else rolls would follow each other with nothing gained (memory: at
    # most the backlog plus half the bound, above the idle size).
    assert brokers.current is not None
    grown = rss - brokers.current.idle_mib - carried
    if carried > max_rss_mib / 2 and grown <= max_rss_mib / 2:
        return False
    print(
        f"the broker holds {rss:,.0f} MiB (JOURNEYS_BROKER_MAX_RSS_MIB={max_rss_mib}): rolling "
        "it: a new broker starts, the node drains and stops, then starts on the new broker",
        flush=True,
    )
    began = time.monotonic()
    standby.prepare()
    try:
        brokers.prepare()
    except RuntimeError as error:
        print(f"could not start the next broker ({error}); not rolling now", file=sys.stderr)
        return False
    prepared = time.monotonic()
    # ``beside``: the journey workers, then the gateways; stopped gateways first: what
    # they acknowledged is in the old broker, which the workers and the node drain.
    for child in reversed(beside):
        child.stop(settings.broker_roll_drain_s if child.name.startswith("journey") else None)
    node.stop(settings.broker_roll_drain_s)
    drained = time.monotonic()
    broker.stop()
    _start(broker, policy, stopping)
    _start(node, policy, stopping)
    for child in beside:
        _start(child, policy, stopping)
    print(
        f"broker rolled (next broker ready in {prepared - began:.1f} s, node stopped in "
        f"{drained - prepared:.1f} s); the node is starting",
        flush=True,
    )
    return True


def _restart_dead(
    children: list[Supervised], policy: RestartPolicy, stopping: Callable[[], bool]
) -> None:
    """Restart every child that died. The node and the gateways depend on the broker:
    with a new broker comes a new epoch, so they are restarted after it, whatever
    their state; a dead node or gateway is restarted alone."""
    for child in children:
        code = child.exit_code()
        if code is None or stopping():
            continue
        delay = child.record_death(time.monotonic(), policy)
        print(
            f"the {child.name} exited (code {code}); restarting it in {delay:.1f} s "
            f"(see {child.log_path})",
            file=sys.stderr,
            flush=True,
        )
        dependants = [c for c in children if c.depends_on == child.name]
        for dependant in dependants:
            # Its broker is gone: there is nothing to drain into.
            dependant.kill()
        if not sleep_unless(stopping, delay):
            return
        _start(child, policy, stopping)
        for dependant in dependants:
            _start(dependant, policy, stopping)
        return


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


def _serving(base: str) -> bool:
    """True when the node answers HTTP at all (healthy or not): its replay is done."""
    try:
        httpx.get(f"{base}/health", timeout=2)
    except httpx.HTTPError:
        return False
    return True


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


def _banner(settings: Settings, base: str, embedded_broker: bool) -> None:
    where = "embedded Tansu, in memory" if embedded_broker else "external"
    master = "JOURNEYS_MASTER_KEY" if settings.master_key else str(settings.master_key_path)
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
  master key  {master}
              (wraps every customer's data key: back it up apart from the data;
              lost, no personal field opens again; leaked, with a copy of the data, all do)

Try it:
  curl -u {settings.write_key}: -H 'content-type: application/json' \\
       -d '{{"userId": "u1", "event": "Product Viewed", "messageId": "m1"}}' {base}/v1/track
  curl -H 'Authorization: Bearer {settings.read_key}' {base}/v1/customers/u1

People sign in to the dashboard once added (roles: viewer, analyst, marketer, admin):
  journeys users add NAME --role admin

Ctrl-C stops everything.""",
        flush=True,
    )


def run_replay(settings: Settings, rules_file: Path | None) -> int:
    """``journeys replay``: rebuild projections, or compare stage counts under other rules."""
    from journeys.stages import StageRules
    from stack.bootstrap import StoresUnavailable, open_platform_offline
    from stack.replay import format_what_if, rebuild, what_if

    other = None
    if rules_file is not None:
        try:
            other = StageRules.from_toml(rules_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            print(f"--rules {rules_file}: {error}", file=sys.stderr)
            return 2
    try:
        platform = open_platform_offline(settings)
    except StoresUnavailable as error:
        print(error, file=sys.stderr)
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
    node_command = commands.add_parser("node", help="worker and API in one process")
    node_command.add_argument(
        "--standby",
        action="store_true",
        help="import everything, then wait for the settings (a JSON line of JOURNEYS_* "
        "variables) on standard input: `journeys up`'s next node at a broker roll",
    )
    gateway_command = commands.add_parser(
        "gateway", help="an ingest gateway (`journeys up` runs them; needs the node's socket)"
    )
    gateway_command.add_argument(
        "--index", type=int, default=0, help="which of `journeys up`'s gateways (logs only)"
    )
    journey_worker = commands.add_parser(
        "journey-worker", help="a journey worker of `journeys up` (ClickHouse via the node)"
    )
    journey_worker.add_argument(
        "--index", type=int, default=0, help="which of `journeys up`'s workers (logs only)"
    )
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
    access.add_parser(commands)
    analysis_cli.add_commands(commands)
    master = commands.add_parser("master-key", help="the master key wrapping customers' data keys")
    master.add_subparsers(dest="action", required=True).add_parser(
        "rotate", help="re-wrap every data key under a new master key (node stopped)"
    )
    verify = commands.add_parser(
        "verify", help="compare the event store, the event log and the counters (node stopped)"
    )
    verify.add_argument(
        "--backup", type=Path, metavar="SRC", help="check a backup's files against its manifest"
    )
    backup_cli.add_commands(commands)
    add_segments_parser(commands)
    add_flows_parser(commands)
    args = parser.parse_args(argv)
    # What the stores hold is about people: whatever this process and its children
    # create (data folder, event store, ClickHouse, journal, logs) is the owner's
    # alone, files 0600 and folders 0700.
    os.umask(0o077)
    if args.command == "node" and args.standby:
        from stack import node  # imported before it is needed: the point of a standby

        given = sys.stdin.readline()
        if not given:
            return 0  # discarded: never needed
        os.environ.update(json.loads(given))
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
    if args.command in (SEGMENTS_COMMAND, TRAITS_COMMAND):
        return run_segments(args, settings)
    if args.command == FLOWS_COMMAND:
        return run_flows(args, settings)
    if args.command == "users":
        return access.run(args, settings)
    if args.command == "master-key":
        try:
            count = rotate_master_key(settings)
        except (MasterKeyMissing, ValueError) as error:
            print(str(error), file=sys.stderr)
            return 2
        print(f"re-wrapped {count} data keys under a new master key ({settings.master_key_path})")
        return 0
    if args.command in backup_cli.COMMANDS:
        return backup_cli.run(args, settings)
    if args.command == "verify":
        if args.backup is not None:
            return backup_cli.run_verify_backup(args.backup)
        from stack.verify import run_verify

        return run_verify(settings)
    if not settings.kafka_bootstrap_servers:
        parser.error(
            f"`journeys {args.command}` needs JOURNEYS_KAFKA_BOOTSTRAP_SERVERS "
            "(only `journeys up` starts a broker of its own)"
        )
    if args.command == "topics":
        created = ensure_platform_topics(settings)
        print("created: " + (", ".join(created) or "nothing, all existed"))
        return 0
    if args.command == "gateway":
        # Not stack.node: a gateway needs neither Faust nor chdb.
        from stack.gateway import run_gateway

        run_gateway(settings)
        return 0
    # Imported here: `up` and `topics` need none of the worker's packages.
    from stack import node

    runners = {
        "node": node.run_node,
        "worker": node.run_worker,
        "journey-worker": node.run_journey_worker,
        "api": node.run_api,
    }
    runners[args.command](settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
