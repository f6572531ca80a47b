"""What the gateway needs from the rest of the platform, handed in by the bootstrap."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from api.access import AccessControl
from api.cors import CorsPolicy
from api.metrics import IngestMetrics
from api.rate_limit import TokenBuckets
from api.write_keys import WriteKeyRegistry
from events.sink import EventSink
from journeys.application import JourneyApplication
from journeys.unsubscribe_links import UnsubscribeLinks
from projections.customer_stages import CustomerStageView
from projections.dead_letters import DeadLetterLog
from projections.event_log import EventLog
from projections.profiles import ProfileView
from projections.segment_reads import SegmentReads

# A component's health: {"ok": bool, ...details}.
HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class AccessKeys:
    """Keys that may write events and read results."""

    write_keys: frozenset[str]
    read_keys: frozenset[str]
    admin_keys: frozenset[str] = frozenset()

    def can_write(self, key: str | None) -> bool:
        """True for a known write key (constant-time comparison)."""
        return _known(key, self.write_keys)

    def can_read(self, key: str | None) -> bool:
        """True for a known read key or admin key (constant-time comparison)."""
        return _known(key, self.read_keys) or _known(key, self.admin_keys)

    def can_administer(self, key: str | None) -> bool:
        """True for a known admin key (constant-time comparison)."""
        return _known(key, self.admin_keys)


class OutreachControl(Protocol):
    """What the outreach admin API needs: endpoints, triggers, waits (wired in stack/)."""

    def endpoints(self) -> list[dict[str, Any]]:
        """Subscribed webhook endpoints (secrets not shown)."""
        ...

    def add_endpoint(self, url: str, rules: list[str], secret: str | None) -> dict[str, Any]:
        """Subscribe an endpoint; the answer carries its signing secret, once."""
        ...

    def remove_endpoint(self, endpoint_id: str) -> bool:
        """Unsubscribe; False when unknown."""
        ...

    def retired(self) -> str:
        """Where the rules' routes went (the rules became the lifecycle flows)."""
        ...

    def triggers(self, limit: int, customer_id: str | None) -> list[dict[str, Any]]:
        """Recent triggers with their delivery state."""
        ...

    def timers(self, customer_id: str | None, limit: int) -> list[dict[str, Any]]:
        """Running timers."""
        ...

    def redeliver(self, trigger_id: str) -> int | None:
        """Dead deliveries back to pending; None when the trigger is unknown."""
        ...


class FlowControl(Protocol):
    """What the flows routes need (api/flows.py; wired in stack/flows.py FlowsAdmin)."""

    def flows(self, include_deleted: bool = False) -> list[dict[str, Any]]:
        """The newest version of each flow, summarised (``include_deleted``: then each
        deleted flow whose runs left facts, its newest recorded version)."""
        ...

    def flow(self, flow_id: str) -> dict[str, Any] | None:
        """One flow with its definition as written; None when unknown."""
        ...

    def customer_flows(self, customer_key: str) -> dict[str, Any] | None:
        """The customer's flow states and decisions; None when flows do not run here."""
        ...

    def put(self, flow_id: str, body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Define or replace a flow: (existed, shown); FlowError, FlowConflict, LookupError."""
        ...

    def delete(self, flow_id: str) -> dict[str, Any] | None:
        """Take a flow out of force; None when unknown."""
        ...

    def pause(self, flow_id: str) -> dict[str, Any] | None:
        """Hold a flow; None when unknown."""
        ...

    def resume(self, flow_id: str) -> dict[str, Any] | None:
        """Let a paused flow go on; None when unknown."""
        ...

    def results(
        self,
        flow_id: str,
        version: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> dict[str, Any] | None:
        """Live counts per node and the holdout comparison (of the runs entered on
        ``version`` and in ``[start, end)`` when given); None when unknown."""
        ...

    def node_customers(
        self, flow_id: str, node: str, limit: int, offset: int
    ) -> dict[str, Any] | None:
        """The customers at a node now and those who passed it, one page; None for an
        unknown flow, ValueError for a node it never had."""
        ...

    def backtest(
        self, flow_id: str, draft: dict[str, Any] | None, start: datetime, end: datetime
    ) -> dict[str, Any] | None:
        """The report of the flow (or ``draft``) over history; raises FlowError for a bad draft."""
        ...


class PrivacyControl(Protocol):
    """Personal data: opening sealed fields, erasure and export (wired in stack/privacy.py)."""

    def is_erased(self, customer_id: str) -> bool:
        """True for an erased customer id (the API answers 404 for it)."""
        ...

    def open_tree(self, value: Any) -> Any:
        """``value`` with every sealed personal field in it opened."""
        ...

    def identities(self, customer_id: str) -> list[str]:
        """The id and the ids merged with it; [] when unknown."""
        ...

    def traits(self, customer_ids: Sequence[str]) -> dict[str, Any]:
        """The customer's identify traits, opened."""
        ...

    def erase(self, customer_id: str, actor: str) -> dict[str, Any] | None:
        """Erase the customer everywhere; a summary, or None when unknown."""
        ...

    def export(self, customer_id: str) -> dict[str, Any] | None:
        """Everything held about the customer, opened; None when unknown."""
        ...


class BackupInProgress(Exception):
    """Another backup is being taken by this process: one at a time."""


class BackupControl(Protocol):
    """What the backup route needs: the node takes a consistent backup (wired in stack/)."""

    def take(self, destinations: list[str], keep: int | None = None) -> dict[str, Any]:
        """Back the stores up into each destination (blocking).

        ValueError names what is wrong with a destination; BackupInProgress when busy.
        """
        ...


class BacklogGauge(Protocol):
    """How far the journey worker is behind what was accepted (streams/backlog.py), in memory."""

    def events(self) -> int:
        """Accepted events not yet processed."""
        ...

    def seconds(self) -> float:
        """Age of the oldest accepted event not yet processed."""
        ...

    def partitions(self) -> dict[int, int]:
        """Events behind, per partition."""
        ...


@dataclass(frozen=True)
class BacklogLimit:
    """Ingest answers 503 while the worker is further behind than this (0: no limit)."""

    gauge: BacklogGauge
    max_events: int = 0
    max_seconds: float = 0.0

    def exceeded(self) -> str | None:
        """Which limit the backlog is past, as a sentence; None within both."""
        if self.max_events:
            events = self.gauge.events()
            if events > self.max_events:
                return f"{events} events not yet processed (limit {self.max_events})"
        if self.max_seconds:
            seconds = self.gauge.seconds()
            if seconds > self.max_seconds:
                limit = f"limit {self.max_seconds:g} s"
                return f"oldest unprocessed event {seconds:.1f} s old ({limit})"
        return None

    def state(self) -> dict[str, Any]:
        """The backlog and its limits, for /health and the dashboard.

        Always ok: a node catching up works as it should (and `journeys up` waits
        for a healthy node at start, which a restart onto a backlog must not fail);
        ``accepting`` says whether ingest is open.
        """
        partitions = self.gauge.partitions()
        return {
            "ok": True,
            "accepting": self.exceeded() is None,
            "lag_events": sum(partitions.values()),
            "lag_seconds": round(self.gauge.seconds(), 3),
            "partitions": {str(p): lag for p, lag in partitions.items()},
            "max_lag_events": self.max_events,
            "max_lag_s": self.max_seconds,
        }


@dataclass(frozen=True)
class Gateway:
    """The gateway's collaborators."""

    sink: EventSink
    keys: AccessKeys
    event_log: EventLog
    stages: CustomerStageView
    health_checks: Mapping[str, HealthCheck] = field(default_factory=dict)
    # Tracking API (issue 3): write keys per source, dead letters, rate limit.
    # Without a registry only the keys in ``keys.write_keys`` may write.
    write_keys: WriteKeyRegistry | None = None
    dead_letters: DeadLetterLog | None = None
    rate_limit: TokenBuckets = field(default_factory=lambda: TokenBuckets(rate=0, burst=1))
    # Which browser origins may send events, and read (api/cors.py).
    cors: CorsPolicy = field(default_factory=CorsPolicy)
    # Customer read side: profiles (ClickHouse) and journeys' history (event store).
    profiles: ProfileView | None = None
    journeys: JourneyApplication | None = None
    outreach: OutreachControl | None = None
    # Where the API shares a process with the journey worker (the node): its backlog.
    backlog: BacklogLimit | None = None
    # Counters of /metrics, in the registry the composition root fills with the rest.
    metrics: IngestMetrics = field(default_factory=IngestMetrics)
    # Users, sessions, the audit log and access alerts; None: keys only, nothing audited.
    access: AccessControl | None = None
    # Opening, erasing and exporting personal data; None: fields are shown as stored.
    privacy: PrivacyControl | None = None
    # Where the process holds the stores and the worker (the embedded node): backups.
    backups: BackupControl | None = None
    # Segment definitions and membership reads; None: no segments in this process.
    segments: SegmentReads | None = None
    # Journey flows: the flows file and backtests; None: no flows in this process.
    flows: FlowControl | None = None
    # Checks the signed unsubscribe links messages carry; None: the route answers 503.
    unsubscribe: UnsubscribeLinks | None = None


def _known(key: str | None, keys: frozenset[str]) -> bool:
    if not key:
        return False
    return any(hmac.compare_digest(key.encode(), known.encode()) for known in keys)
