"""The scale-out deployment files, checked against the code they deploy.

Docker cannot run here, so docker-compose.yml and the Dockerfile are parsed and held
to what stack/settings.py, stack/cli.py, stack/bootstrap.py and pyproject.toml expect:
a renamed setting, a removed subcommand or a package missing from the image fails here
rather than in a container.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shlex
import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from journeys.stages import StageRules
from stack import bootstrap, broker, cli
from stack.bootstrap import event_store_env
from stack.settings import ENV_PREFIX, Settings
from streams.app import JourneyStreams
from streams.pipeline import JourneyPipeline

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"

KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
INFRASTRUCTURE = (*KAFKA_NODES, "clickhouse", "postgres")
# The platform's services and the `journeys` subcommand each must run.
PLATFORM_COMMANDS = {"topics": "topics", "worker": "worker", "api": "api"}
SCALED = ("worker", "api")

# ---------------------------------------------------------------------------------
# Compose variable interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
# ${VAR:?message}, ${VAR?message}, ${VAR:+replacement}, ${VAR+replacement}.
# ---------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class UnsetVariable(ValueError):
    """A variable with neither a value nor a default: Compose would splice in ''."""


def required_placeholder(name: str) -> str:
    """What a required (``${VAR:?message}``) variable stands for in these tests."""
    return f"required-{name.lower().replace('_', '-')}"


def interpolate(value: str, env: Mapping[str, str], *, strict: bool = True) -> str:
    """``value`` with Compose's variable syntax resolved against ``env``.

    Required variables that ``env`` lacks count as set by the operator (Compose would
    refuse to start otherwise) and become :func:`required_placeholder`; a variable
    with no value and no default raises :class:`UnsetVariable` (``strict``) or, as
    Compose does after a warning, becomes ''.
    """

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        is_set = name in env
        # The colon forms treat an empty value as unset; the others only a missing one.
        present = is_set and env[name] != "" if op and op.startswith(":") else is_set
        if op in (":+", "+"):
            return arg if present else ""
        if present:
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            return required_placeholder(name)
        if not strict:
            return ""
        raise UnsetVariable(f"${{{name}}} has no value and no default")

    return _VARIABLE.sub(substitute, value)


def resolve(node: Any, env: Mapping[str, str], *, strict: bool = True) -> Any:
    """Every string value in a parsed Compose document interpolated (keys are not)."""
    if isinstance(node, str):
        return interpolate(node, env, strict=strict)
    if isinstance(node, Mapping):
        return {key: resolve(value, env, strict=strict) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, env, strict=strict) for item in node]
    return node


# ---------------------------------------------------------------------------------
# The files.
# ---------------------------------------------------------------------------------


@cache
def compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@cache
def raw_compose() -> dict[str, Any]:
    document = yaml.safe_load(compose_text())
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    assert isinstance(document.get("services"), dict), "docker-compose.yml has no services"
    return document


@cache
def compose() -> dict[str, Any]:
    """The Compose document as an operator gets it: defaults in, required keys given.

    Lenient about unset variables, as Compose is: a test of their own reports them.
    """
    resolved: dict[str, Any] = resolve(raw_compose(), env={}, strict=False)
    return resolved


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def service(name: str) -> dict[str, Any]:
    assert name in services(), f"docker-compose.yml has no {name!r} service"
    return services()[name]


def environment(name: str, document: Mapping[str, Any] | None = None) -> dict[str, str]:
    """A service's environment as a mapping, in either of Compose's two forms."""
    entry = (document or compose())["services"][name]
    env = entry.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {key: value for key, value in pairs}
    return {key: "" if value is None else str(value) for key, value in env.items()}


def compose_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a service's process builds from its Compose environment alone."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in environment(name).items():
        monkeypatch.setenv(key, value)
    return Settings()


def command(name: str) -> list[str]:
    value = service(name).get("command")
    assert value, f"service {name!r} has no command (the image's default CMD is implicit)"
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def replicas(name: str) -> int:
    return int((service(name).get("deploy") or {}).get("replicas", 1))


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` as {NAME: (host, port)} (an empty host binds all)."""
    parsed: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        parsed[name] = (host, int(port))
    return parsed


def image_tag(image: str) -> str | None:
    """The tag (or digest) of an image reference, None when it has neither."""
    if "@" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


@cache
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [
        line
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_args(keyword: str) -> list[str]:
    return [args for key, args in dockerfile_instructions() if key == keyword]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"{arguments!r} is not the exec (JSON array) form"
    return [str(part) for part in value]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in dockerfile_args("ENV"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


# ---------------------------------------------------------------------------------
# The interpolation helper itself (so a wrong helper cannot make the checks pass).
# ---------------------------------------------------------------------------------


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "value", "EMPTY": ""}
    assert interpolate("${SET:-d}/${EMPTY:-d}/${EMPTY-d}/${NOPE-d}", env) == "value/d//d"
    assert interpolate("$SET and ${SET}", env) == "value and value"
    assert interpolate("$${SET} $$SET", env) == "${SET} $SET"
    assert interpolate("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}", env) == "alt||alt"
    assert interpolate("${KEY:?set a key}", env) == required_placeholder("KEY")
    assert interpolate("${SET:?set a key}", env) == "value"
    with pytest.raises(UnsetVariable):
        interpolate("postgresql://${NOPE}@host/db", env)
    assert interpolate("postgresql://${NOPE}@host/db", env, strict=False) == "postgresql://@host/db"


def test_every_variable_has_a_default_or_is_required() -> None:
    try:
        resolve(raw_compose(), env={})
    except UnsetVariable as error:
        pytest.fail(f"docker-compose.yml: {error}; give it a default (:-) or require it (:?)")


# ---------------------------------------------------------------------------------
# The shape.
# ---------------------------------------------------------------------------------


def test_the_scale_out_services_exist() -> None:
    missing = {*INFRASTRUCTURE, *PLATFORM_COMMANDS} - set(services())
    assert not missing, f"docker-compose.yml lacks the services {sorted(missing)}"


@pytest.mark.parametrize("name", KAFKA_NODES)
def test_kafka_runs_in_kraft_mode_without_zookeeper(name: str) -> None:
    env = environment(name)
    roles = {role.strip() for role in env.get("KAFKA_PROCESS_ROLES", "").split(",")}
    assert roles == {"broker", "controller"}, (
        f"{name}: KAFKA_PROCESS_ROLES is {env.get('KAFKA_PROCESS_ROLES')!r}; the nodes are "
        "combined broker and controller (as docs/architecture.md says)"
    )
    zookeeper = [
        other
        for other, entry in services().items()
        if "zookeeper" in other.lower() or "zookeeper" in str(entry.get("image", "")).lower()
    ]
    assert not zookeeper, f"KRaft needs no ZooKeeper, yet these services run it: {zookeeper}"
    assert not [key for key in env if "ZOOKEEPER" in key], f"{name} is configured for ZooKeeper"


def test_kafka_is_a_cluster_of_three_nodes() -> None:
    nodes = [name for name, entry in services().items() if "kafka" in str(entry.get("image", ""))]
    assert sorted(nodes) == sorted(KAFKA_NODES), f"the Kafka services are {nodes}"
    ids = [environment(name).get("KAFKA_NODE_ID") for name in KAFKA_NODES]
    assert len(set(ids)) == len(KAFKA_NODES) and all(ids), f"node ids are not distinct: {ids}"
    for name in KAFKA_NODES:
        assert service(name).get("hostname") == name, f"{name}: hostname is not the service name"
        assert replicas(name) == 1, f"{name}: a Kafka node is one container with its own id"
    images = {service(name)["image"] for name in KAFKA_NODES}
    assert len(images) == 1, f"the nodes run different images: {images}"
    clusters = {environment(name).get("CLUSTER_ID") for name in KAFKA_NODES}
    assert len(clusters) == 1, f"the nodes are formatted for different clusters: {clusters}"
    (cluster,) = clusters
    try:
        raw = base64.urlsafe_b64decode(str(cluster) + "==")
    except (binascii.Error, ValueError):
        raw = b""
    assert len(raw) == 16, f"CLUSTER_ID {cluster!r} is not a base64url UUID"


@pytest.mark.parametrize("name", KAFKA_NODES)
def test_kafka_listeners_are_consistent(name: str) -> None:
    env = environment(name)
    required = (
        "KAFKA_NODE_ID",
        "KAFKA_LISTENERS",
        "KAFKA_ADVERTISED_LISTENERS",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
        "KAFKA_CONTROLLER_LISTENER_NAMES",
        "KAFKA_CONTROLLER_QUORUM_VOTERS",
        "KAFKA_INTER_BROKER_LISTENER_NAME",
    )
    missing = [key for key in required if not env.get(key)]
    assert not missing, f"{name} lacks the KRaft settings {missing}"
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(
        pair.split(":", 1) for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in bound, f"{name}: controller listener {controller!r} is not bound"
    assert controller not in advertised, f"{name}: the controller listener must not be advertised"
    unmapped = (set(bound) | set(advertised)) - set(protocols)
    assert not unmapped, f"{name}: listeners without a security protocol: {sorted(unmapped)}"
    assert set(advertised) <= set(bound), f"{name}: an advertised listener is not bound"
    for listener, (_, port) in advertised.items():
        assert bound[listener][1] == port, (
            f"{name}: listener {listener} binds {bound[listener][1]} but advertises {port}"
        )
    inter = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert advertised.get(inter, ("", 0))[0] == name, (
        f"{name}: the other brokers reach it as {advertised.get(inter)}, not by its own name"
    )
    published = {_published(str(port)) for port in service(name).get("ports", [])}
    for listener, (host, port) in advertised.items():
        if host == "localhost":
            assert str(port) in published, (
                f"{name}: {listener} advertises localhost:{port}, which the host does not publish"
            )


def test_kafka_quorum_voters_are_the_three_nodes() -> None:
    voters = {environment(name)["KAFKA_CONTROLLER_QUORUM_VOTERS"] for name in KAFKA_NODES}
    assert len(voters) == 1, f"the nodes disagree on the quorum: {voters}"
    (quorum,) = voters
    parsed = {}
    for voter in quorum.split(","):
        node_id, _, address = voter.partition("@")
        host, _, port = address.rpartition(":")
        parsed[node_id] = (host, int(port))
    expected = {}
    for name in KAFKA_NODES:
        env = environment(name)
        controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        expected[env["KAFKA_NODE_ID"]] = (name, listeners(env["KAFKA_LISTENERS"])[controller][1])
    assert parsed == expected, (
        f"KAFKA_CONTROLLER_QUORUM_VOTERS {quorum!r} is not every node's id at its controller "
        f"listener: expected {expected}"
    )
    assert len(parsed) % 2 == 1, "an even quorum tolerates no more failures than one voter fewer"


@pytest.mark.parametrize("name", KAFKA_NODES)
def test_kafka_internal_topics_are_replicated(name: str) -> None:
    env = environment(name)
    brokers = len(KAFKA_NODES)
    expected = {
        "KAFKA_DEFAULT_REPLICATION_FACTOR": str(brokers),
        "KAFKA_MIN_INSYNC_REPLICAS": str(brokers - 1),
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": str(brokers),
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": str(brokers),
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": str(brokers - 1),
        "KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE": "false",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    }
    wrong = {key: (env.get(key), value) for key, value in expected.items() if env.get(key) != value}
    assert not wrong, f"{name}: (got, expected) {wrong}"


@pytest.mark.parametrize("name", KAFKA_NODES)
def test_kafka_keeps_its_log_in_a_volume_of_its_own(name: str) -> None:
    log_dir = environment(name).get("KAFKA_LOG_DIRS", "/tmp/kraft-combined-logs")
    mounts = {
        (volume["target"] if isinstance(volume, dict) else str(volume).split(":")[1]): (
            volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]
        )
        for volume in service(name).get("volumes", [])
    }
    assert log_dir in mounts, f"{name}: KAFKA_LOG_DIRS {log_dir} is not a volume: {mounts}"
    for other in KAFKA_NODES:
        if other != name:
            theirs = {
                volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]
                for volume in service(other).get("volumes", [])
            }
            assert mounts[log_dir] not in theirs, f"{name} and {other} share {mounts[log_dir]}"


def test_no_service_mounts_a_host_path() -> None:
    for name, entry in services().items():
        for volume in entry.get("volumes", []):
            kind = volume.get("type", "volume") if isinstance(volume, dict) else ""
            source = volume.get("source", "") if isinstance(volume, dict) else str(volume)
            source = source.split(":")[0] if isinstance(volume, str) else source
            assert kind == "volume" or not isinstance(volume, dict), f"{name}: {volume}"
            assert not source.startswith((".", "/", "~")), (
                f"{name} mounts the host path {source!r}: the file must run on any host"
            )


def test_every_named_volume_is_declared() -> None:
    declared = set(compose().get("volumes") or {})
    for name, entry in services().items():
        for volume in entry.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source!r} is not declared"


# ---------------------------------------------------------------------------------
# The platform's configuration against stack/settings.py.
# ---------------------------------------------------------------------------------


def test_every_journeys_variable_is_a_setting() -> None:
    valid = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields}
    text = compose_text() + DOCKERFILE.read_text(encoding="utf-8")
    used = set(re.findall(r"\b" + ENV_PREFIX + r"[A-Z0-9_]+", text))
    for name in services():
        used |= {key for key in environment(name) if key.startswith(ENV_PREFIX)}
    assert used, "docker-compose.yml configures no JOURNEYS_* variable"
    unknown = sorted(used - valid)
    assert not unknown, (
        f"docker-compose.yml or the Dockerfile uses {unknown}, which stack/settings.py lacks "
        f"(pydantic-settings ignores them silently); valid: {sorted(valid)}"
    )


def test_platform_services_share_one_environment() -> None:
    assert "x-journeys-env" in raw_compose(), "the shared x-journeys-env block is gone"
    shared = {key: str(value) for key, value in compose()["x-journeys-env"].items()}
    for name in PLATFORM_COMMANDS:
        assert environment(name) == shared, (
            f"{name!r} does not use the x-journeys-env block as is: topics, workers and API "
            "must agree on topics, partitions and stores"
        )


@pytest.mark.parametrize("name", SCALED)
def test_scaled_services_configure_the_external_stores(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = compose_settings(name, monkeypatch)
    assert settings.kafka_bootstrap_servers, f"{name}: no Kafka (would expect an embedded one)"
    assert urlsplit(settings.clickhouse_url).scheme in {"http", "https"}, (
        f"{name}: JOURNEYS_CLICKHOUSE_URL {settings.clickhouse_url!r} is not a server URL; "
        "chdb can be opened by one process only"
    )
    assert not settings.uses_embedded_clickhouse
    assert settings.event_store == "postgres", f"{name}: the event store is {settings.event_store}"
    assert settings.postgres_dsn, f"{name}: JOURNEYS_EVENT_STORE=postgres needs a DSN"
    assert settings.data_dir.is_absolute(), f"{name}: JOURNEYS_DATA_DIR should be absolute"
    assert settings.write_key and settings.read_key, f"{name}: the API keys are not set"


def test_api_keys_come_from_the_operator() -> None:
    raw = raw_compose()["x-journeys-env"]
    for key in ("JOURNEYS_WRITE_KEY", "JOURNEYS_READ_KEY", "JOURNEYS_ADMIN_KEY"):
        assert re.fullmatch(r"\$\{" + key + r":\?[^}]+\}", str(raw.get(key, ""))), (
            f"{key} must be required from the host (${{{key}:?message}}), never a fixed value"
        )


def test_api_listens_on_all_interfaces_of_its_container(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = compose_settings("api", monkeypatch)
    assert settings.api_host == "0.0.0.0", (
        f"JOURNEYS_API_HOST is {settings.api_host!r}; other containers cannot reach it"
    )


def test_topics_have_a_partition_for_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    partitions = compose_settings("worker", monkeypatch).topic_partitions
    assert partitions >= replicas("worker"), (
        f"{replicas('worker')} workers but {partitions} partitions: some workers would idle"
    )


def test_bootstrap_servers_are_every_nodes_advertised_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reachable = {}
    for name in KAFKA_NODES:
        advertised = listeners(environment(name)["KAFKA_ADVERTISED_LISTENERS"])
        reachable |= {address: name for address in advertised.values()}
    servers = compose_settings("worker", monkeypatch).kafka_bootstrap_servers
    named = set()
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        assert (host, int(port)) in reachable, (
            f"bootstrap server {server} is not advertised by a Kafka node ({sorted(reachable)}): "
            "clients would be redirected to an address they cannot reach"
        )
        named.add(reachable[(host, int(port))])
    assert named == set(KAFKA_NODES), (
        f"the bootstrap list names {sorted(named)}: a client starting while another node is "
        "down could not find the cluster"
    )


# ---------------------------------------------------------------------------------
# Durability: replication, acks and retention of what the platform creates and writes.
# ---------------------------------------------------------------------------------


def test_every_platform_topic_has_three_replicas_and_two_in_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = compose_settings("topics", monkeypatch)
    assert settings.topic_replication_factor == len(KAFKA_NODES), (
        f"JOURNEYS_TOPIC_REPLICATION_FACTOR is {settings.topic_replication_factor}"
    )
    configs = settings.topic_configs
    assert set(configs) == set(settings.all_topics), (
        f"topics created without a configuration: {set(settings.all_topics) - set(configs)}"
    )
    for topic in settings.all_topics:
        assert configs[topic].get("min.insync.replicas") == "2", (
            f"{topic}: min.insync.replicas is {configs[topic].get('min.insync.replicas')!r}"
        )


def test_the_topics_command_creates_them_with_those_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`journeys topics` (what the service runs) hands the settings' values to the admin call."""
    settings = compose_settings("topics", monkeypatch)
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(broker, "ensure_topics", lambda *args: calls.append(args) or [])
    assert cli.main(command("topics")) == 0
    assert calls == [
        (
            settings.kafka_bootstrap_servers,
            settings.all_topics,
            settings.topic_partitions,
            3,
            settings.topic_configs,
        )
    ]


def test_min_insync_replicas_beyond_the_replicas_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOURNEYS_TOPIC_REPLICATION_FACTOR", "1")
    monkeypatch.setenv("JOURNEYS_TOPIC_MIN_INSYNC_REPLICAS", "2")
    with pytest.raises(ValueError, match="min_insync_replicas"):
        Settings()


@pytest.mark.parametrize("producer", ["confluent", "aiokafka"])
def test_the_gateway_produces_with_acks_all_and_idempotence(
    producer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = compose_settings("api", monkeypatch).model_copy(
        update={"gateway_producer": producer}
    )
    config = bootstrap.event_sink(settings).config()
    if producer == "confluent":
        assert (config["acks"], config["enable.idempotence"]) == ("all", True), config
        assert config["max.in.flight.requests.per.connection"] <= 5, config
    else:
        assert (config["acks"], config["enable_idempotence"]) == ("all", True), config


def test_the_worker_produces_with_acks_all_and_idempotence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's outcome producer (stage changes, identity messages, dead letters)."""
    settings = compose_settings("worker", monkeypatch)
    streams = JourneyStreams(settings, pipeline=cast(JourneyPipeline, None))
    config = streams.outcomes.config
    assert (config["acks"], config["enable.idempotence"]) == ("all", True), config
    # The Faust producer (fired triggers) has no idempotence outside transactions;
    # acks=all it has, and the trigger consumers keep one delivery per trigger id.
    assert streams.app.conf.producer_acks == -1


def test_without_the_setting_producers_are_not_idempotent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checks above can fail: the embedded default is one request in flight instead."""
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9092")
    config = bootstrap.event_sink(settings).config()
    assert config["enable.idempotence"] is False
    assert config["max.in.flight.requests.per.connection"] == 1


def test_retention_fits_each_topics_role(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = compose_settings("topics", monkeypatch)
    configs = settings.topic_configs
    hour = 3_600_000
    dedup_window_ms = StageRules().dedup_window_hours * hour
    for topic, config in configs.items():
        assert config.get("cleanup.policy") == "delete", (
            f"{topic}: {config.get('cleanup.policy')!r}; no platform topic is a changelog, and "
            "compaction would drop a customer's earlier records that its readers need"
        )
        assert int(config["retention.bytes"]) > 0, f"{topic}: no size bound"
        assert int(config["retention.ms"]) > 0, f"{topic}: no time bound"
    events = int(configs[settings.events_topic]["retention.ms"])
    assert events > dedup_window_ms, (
        f"{settings.events_topic} keeps {events / hour} h, less than the journey's dedup window "
        f"({dedup_window_ms / hour} h): a worker down that long finds its backlog gone"
    )
    for topic in (settings.dead_letter_topic, settings.triggers_dead_letter_topic):
        days = int(configs[topic]["retention.ms"]) / (24 * hour)
        assert days >= 7, f"{topic}: dead letters kept {days} days, too short to look at them"


def test_clickhouse_url_is_the_clickhouse_service(monkeypatch: pytest.MonkeyPatch) -> None:
    url = urlsplit(compose_settings("api", monkeypatch).clickhouse_url)
    clickhouse = environment("clickhouse")
    assert url.scheme == "http", f"ClickHouse URL scheme is {url.scheme!r}, the server speaks http"
    assert url.hostname == "clickhouse", f"ClickHouse URL host is {url.hostname!r}"
    assert url.port == 8123, f"ClickHouse URL port is {url.port}, the HTTP interface is 8123"
    assert unquote(url.username or "default") == clickhouse.get("CLICKHOUSE_USER", "default"), (
        "the ClickHouse URL's user is not the server's CLICKHOUSE_USER"
    )
    assert unquote(url.password or "") == clickhouse.get("CLICKHOUSE_PASSWORD", ""), (
        "the ClickHouse URL's password is not the server's CLICKHOUSE_PASSWORD"
    )


def test_postgres_dsn_is_the_postgres_service(monkeypatch: pytest.MonkeyPatch) -> None:
    eventsourcing = event_store_env(compose_settings("worker", monkeypatch))
    postgres = environment("postgres")
    user = postgres.get("POSTGRES_USER", "postgres")
    expected = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_HOST": "postgres",
        "POSTGRES_PORT": "5432",
        "POSTGRES_USER": user,
        "POSTGRES_PASSWORD": postgres.get("POSTGRES_PASSWORD", ""),
        "POSTGRES_DBNAME": postgres.get("POSTGRES_DB", user),
    }
    wrong = {
        key: (eventsourcing.get(key), value)
        for key, value in expected.items()
        if eventsourcing.get(key) != value
    }
    assert not wrong, f"the event store's settings (got, expected) disagree with postgres: {wrong}"


def test_host_credentials_reach_both_sides() -> None:
    """An operator's credentials must change the server and the URLs together."""
    host = {
        "POSTGRES_USER": "pgu",
        "POSTGRES_PASSWORD": "pgp",
        "POSTGRES_DB": "pgdb",
        "CLICKHOUSE_USER": "chu",
        "CLICKHOUSE_PASSWORD": "chp",
    }
    document = resolve(raw_compose(), host)
    platform = environment("worker", document)
    assert platform["JOURNEYS_POSTGRES_DSN"] == "postgresql://pgu:pgp@postgres:5432/pgdb"
    assert platform["JOURNEYS_CLICKHOUSE_URL"] == "http://chu:chp@clickhouse:8123"
    postgres, clickhouse = environment("postgres", document), environment("clickhouse", document)
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]) == ("pgu", "pgp")
    assert postgres["POSTGRES_DB"] == "pgdb"
    assert (clickhouse["CLICKHOUSE_USER"], clickhouse["CLICKHOUSE_PASSWORD"]) == ("chu", "chp")


# ---------------------------------------------------------------------------------
# Scaling, ordering, images and commands.
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCALED)
def test_scaled_services_can_run_several_replicas(name: str) -> None:
    entry = service(name)
    assert "container_name" not in entry, f"{name}: a container_name allows one replica only"
    assert "hostname" not in entry, f"{name}: a fixed hostname would be shared by replicas"
    assert replicas(name) >= 2, f"{name}: deploy.replicas is {replicas(name)}, not scaled out"
    for port in entry.get("ports", []):
        published = (
            str(port.get("published", "")) if isinstance(port, dict) else _published(str(port))
        )
        if not published:
            continue  # an ephemeral host port: any number of replicas
        low, _, high = published.partition("-")
        count = int(high or low) - int(low) + 1
        assert count >= replicas(name), (
            f"{name}: {replicas(name)} replicas cannot share the host port(s) {published}"
        )


def _published(port: str) -> str:
    """The host side of a short-syntax port ('' when none is published)."""
    parts = port.split("/")[0].split(":")
    return parts[-2] if len(parts) >= 2 else ""


def test_api_is_served_and_probed_on_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    port = compose_settings("api", monkeypatch).api_port
    entry = service("api")
    container_ports = {str(p).split("/")[0].split(":")[-1] for p in entry.get("expose", [])}
    container_ports |= {
        str(p["target"]) if isinstance(p, dict) else str(p).split("/")[0].split(":")[-1]
        for p in entry.get("ports", [])
    }
    assert container_ports == {str(port)}, (
        f"api serves on JOURNEYS_API_PORT={port} but exposes/publishes {sorted(container_ports)}"
    )
    probe = entry.get("healthcheck", {}).get("test")
    probe_text = " ".join(probe) if isinstance(probe, list) else str(probe)
    assert f":{port}/health" in probe_text, f"api healthcheck does not probe /health: {probe}"


@pytest.mark.parametrize("name", SCALED)
def test_platform_waits_for_healthy_stores_and_topics(name: str) -> None:
    depends_on = service(name).get("depends_on")
    assert isinstance(depends_on, dict), f"{name}: depends_on must use conditions (long form)"
    for store in INFRASTRUCTURE:
        condition = (depends_on.get(store) or {}).get("condition")
        assert condition == "service_healthy", f"{name} waits for {store} with {condition!r}"
    topics = (depends_on.get("topics") or {}).get("condition")
    assert topics == "service_completed_successfully", f"{name} waits for topics with {topics!r}"


def test_topics_wait_for_every_healthy_broker() -> None:
    depends_on = service("topics").get("depends_on") or {}
    for node in KAFKA_NODES:
        condition = (depends_on.get(node) or {}).get("condition")
        assert condition == "service_healthy", f"topics waits for {node} with {condition!r}"
    restart = str(service("topics").get("restart", "no"))
    assert restart in {"no", "on-failure"}, f"topics is one-shot but restarts {restart!r}"


def test_awaited_services_have_a_healthcheck() -> None:
    for name, entry in services().items():
        for dependency, spec in (entry.get("depends_on") or {}).items():
            if isinstance(spec, dict) and spec.get("condition") == "service_healthy":
                check = service(dependency).get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {dependency} to be healthy, but it has no healthcheck"
                )


def test_images_are_pinned() -> None:
    for name, entry in services().items():
        image = entry.get("image")
        assert image or entry.get("build"), f"{name} has neither an image nor a build"
        if image:
            tag = image_tag(image)
            assert tag and tag != "latest", f"{name}: image {image!r} is not pinned to a version"


@pytest.mark.parametrize(("name", "subcommand"), sorted(PLATFORM_COMMANDS.items()))
def test_platform_services_run_journeys_subcommands(
    name: str, subcommand: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = command(name)
    assert argv[:1] == [subcommand], f"{name} runs `journeys {' '.join(argv)}`, not {subcommand}"
    assert "entrypoint" not in service(name), f"{name} overrides the image's `journeys` entrypoint"
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0, f"`journeys {' '.join(argv)}` is not accepted by stack/cli.py"


def test_an_unknown_subcommand_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    """The check above can fail: argparse rejects what stack/cli.py does not define."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["no-such-command", "--help"])
    assert exit_.value.code != 0


# ---------------------------------------------------------------------------------
# The Dockerfile.
# ---------------------------------------------------------------------------------


def test_dockerfile_copies_every_package() -> None:
    copied: set[str] = set()
    for arguments in dockerfile_args("COPY"):
        parts = [part for part in shlex.split(arguments) if not part.startswith("--")]
        if arguments.lstrip().startswith("["):
            parts = exec_form(arguments)
        copied |= {source.strip("/").removeprefix("./") or "." for source in parts[:-1]}
    project = pyproject()
    needed = {
        # A subpackage (streams.outreach, projections.analytics) comes with its parent folder.
        *(name.split(".")[0] for name in project["tool"]["setuptools"]["packages"]),
        "pyproject.toml",
        project["project"]["readme"],
    }
    missing = sorted(needed - copied) if "." not in copied else []
    assert not missing, f"the Dockerfile does not COPY {missing}; `pip install .` needs them"


def test_dockerfile_copy_sources_exist() -> None:
    for arguments in dockerfile_args("COPY"):
        if "--from" in arguments:
            continue
        parts = [part for part in shlex.split(arguments) if not part.startswith("--")]
        if arguments.lstrip().startswith("["):
            parts = exec_form(arguments)
        absent = [source for source in parts[:-1] if not (ROOT / source).exists()]
        assert not absent, f"the Dockerfile copies {absent}, which the repository lacks"


def test_dockerfile_installs_the_postgres_extra() -> None:
    assert "postgres" in pyproject()["project"]["optional-dependencies"]
    installs = [args for args in dockerfile_args("RUN") if "pip install" in args]
    assert any(re.search(r"\.\[[^\]]*\bpostgres\b", args) for args in installs), (
        f"the image must install the project with its postgres extra: {installs}"
    )


def test_dockerfile_runs_journeys_as_an_unprivileged_user() -> None:
    entrypoint = dockerfile_args("ENTRYPOINT")
    assert entrypoint and exec_form(entrypoint[-1]) == ["journeys"], f"ENTRYPOINT {entrypoint}"
    assert pyproject()["project"]["scripts"].get("journeys") == "stack.cli:main"
    default = dockerfile_args("CMD")
    assert default and exec_form(default[-1]) == ["api"], f"CMD is {default}, not ['api']"
    users = dockerfile_args("USER")
    assert users and users[-1].split(":")[0] not in {"root", "0"}, f"the image runs as {users}"


def test_data_dir_is_the_images_writable_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    image_env = dockerfile_env()
    data_dir = str(compose_settings("worker", monkeypatch).data_dir)
    assert image_env.get("JOURNEYS_DATA_DIR") == data_dir, (
        f"compose puts JOURNEYS_DATA_DIR at {data_dir}, the image prepares "
        f"{image_env.get('JOURNEYS_DATA_DIR')}"
    )
    user_setup = " ".join(dockerfile_args("RUN"))
    assert re.search(r"--home-dir\s+" + re.escape(data_dir) + r"\b", user_setup), (
        f"{data_dir} is not the unprivileged user's home, so it may not be writable"
    )
