"""Who may call which route: one table of every guarded route's least role.

Every route the API serves is either public (tracking calls, docs, health) or
listed in :data:`ROUTE_ACCESS`; a route in neither is refused to all but
admins, and a test checks the table and the app agree. Keys are machines with
a role (a read key is an analyst, an admin key an admin); people sign in with
a user name and password and carry their own role in a session cookie.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from projections.access import AccessStore, AuditEntry, Role

log = logging.getLogger(__name__)

SESSION_COOKIE = "journeys_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Rule:
    """A route's least role, and whether each call is written to the audit log."""

    role: Role
    audited: bool = False


_VIEW = Rule(Role.viewer)
_PERSONAL = Rule(Role.analyst, audited=True)  # one customer's data: who read whom is kept
_ANALYST = Rule(Role.analyst)
_MARKETER = Rule(Role.marketer)
_MARKETER_CHANGE = Rule(Role.marketer, audited=True)
_ADMIN = Rule(Role.admin)
_ADMIN_CHANGE = Rule(Role.admin, audited=True)

# (method, path template) → rule. Aggregates for viewers; anything naming customers
# for analysts; outreach for marketers; keys, users, erasure and the audit for admins.
ROUTE_ACCESS: dict[tuple[str, str], Rule] = {
    ("GET", "/v1/stages"): _VIEW,
    ("POST", "/v1/funnels"): _VIEW,
    ("GET", "/v1/funnels/stages"): _VIEW,
    ("POST", "/v1/retention"): _VIEW,
    ("POST", "/v1/paths"): _VIEW,
    ("GET", "/v1/stage-flow"): _VIEW,
    ("GET", "/v1/trends"): _VIEW,
    ("GET", "/v1/stats"): _VIEW,
    ("GET", "/v1/session"): _VIEW,
    ("DELETE", "/v1/session"): _VIEW,
    ("POST", "/v1/funnels/dropped"): _ANALYST,
    ("GET", "/v1/rfm"): _ANALYST,
    ("GET", "/v1/triggers"): _ANALYST,
    ("GET", "/v1/customers/{customer_id}"): _PERSONAL,
    ("GET", "/v1/customers/{customer_id}/journey"): _PERSONAL,
    ("GET", "/v1/rfm/{customer_id}"): _PERSONAL,
    ("GET", "/v1/segments"): _ANALYST,
    ("GET", "/v1/segments/{segment_id}"): _ANALYST,
    ("GET", "/v1/segments/{segment_id}/members"): _PERSONAL,  # names customers
    ("GET", "/v1/segments/{segment_id}/sizes"): _ANALYST,
    ("PUT", "/v1/segments/{segment_id}"): _ADMIN_CHANGE,
    ("DELETE", "/v1/segments/{segment_id}"): _ADMIN_CHANGE,
    ("POST", "/v1/segments/{segment_id}/members"): _ADMIN_CHANGE,
    ("GET", "/v1/segments/{segment_id}/list"): _PERSONAL,  # names customers
    ("POST", "/v1/funnels/dropoffs"): _ADMIN_CHANGE,
    ("GET", "/v1/traits"): _ANALYST,
    ("GET", "/v1/traits/{trait_id}"): _ANALYST,
    ("PUT", "/v1/traits/{trait_id}"): _ADMIN_CHANGE,
    ("DELETE", "/v1/traits/{trait_id}"): _ADMIN_CHANGE,
    ("GET", "/v1/outreach/webhooks"): _MARKETER,
    ("POST", "/v1/outreach/webhooks"): _MARKETER_CHANGE,
    ("DELETE", "/v1/outreach/webhooks/{endpoint_id}"): _MARKETER_CHANGE,
    ("GET", "/v1/outreach/rules"): _MARKETER,
    ("PUT", "/v1/outreach/rules/{rule_id}"): _MARKETER_CHANGE,
    ("GET", "/v1/outreach/triggers"): _MARKETER,
    ("GET", "/v1/outreach/timers"): _MARKETER,
    ("POST", "/v1/outreach/triggers/{trigger_id}/redeliver"): _MARKETER_CHANGE,
    ("GET", "/v1/flows"): _MARKETER,
    ("POST", "/v1/flows/validate"): _MARKETER,
    ("GET", "/v1/flows/{flow_id}"): _MARKETER,
    ("POST", "/v1/flows/{flow_id}/backtest"): _MARKETER,
    ("GET", "/v1/flows/{flow_id}/results"): _MARKETER,
    ("GET", "/v1/flows/{flow_id}/nodes/{node_id}/customers"): _MARKETER_CHANGE,  # names customers
    ("PUT", "/v1/flows/{flow_id}"): _ADMIN_CHANGE,
    ("DELETE", "/v1/flows/{flow_id}"): _ADMIN_CHANGE,
    ("POST", "/v1/flows/{flow_id}/pause"): _ADMIN_CHANGE,
    ("POST", "/v1/flows/{flow_id}/resume"): _ADMIN_CHANGE,
    ("GET", "/v1/customers/{customer_id}/flows"): _PERSONAL,
    ("GET", "/v1/write-keys"): _ADMIN,
    ("GET", "/v1/write-keys/active"): _ADMIN,  # polled by every ingest gateway: not audited
    ("POST", "/v1/write-keys"): _ADMIN_CHANGE,
    ("PUT", "/v1/write-keys/{key_id}/origins"): _ADMIN_CHANGE,
    ("DELETE", "/v1/write-keys/{key_id}"): _ADMIN_CHANGE,
    ("GET", "/v1/dead-letters"): Rule(Role.admin, audited=True),  # raw payloads
    ("GET", "/v1/users"): _ADMIN,
    ("POST", "/v1/users"): _ADMIN_CHANGE,
    ("PATCH", "/v1/users/{name}"): _ADMIN_CHANGE,
    ("GET", "/v1/audit"): Rule(Role.admin, audited=True),
    ("POST", "/v1/admin/backups"): _ADMIN_CHANGE,
    # GDPR: erasure and the subject access export.
    ("DELETE", "/v1/customers/{customer_id}"): _ADMIN_CHANGE,
    ("GET", "/v1/customers/{customer_id}/export"): Rule(Role.admin, audited=True),
}
# Fail closed: a guarded route missing from the table is for admins only.
UNLISTED = Rule(Role.admin, audited=True)

# Served to anyone: the tracking API (its own write keys), the docs, health, sign-in,
# and the signed unsubscribe links (the token is the credential).
PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        *(
            ("POST", f"/v1/{call}")
            for call in ("batch", "track", "page", "screen", "identify", "group", "alias")
        ),
        ("GET", "/v1/schemas"),
        ("GET", "/v1/schemas/{name}"),
        ("GET", "/v1/projects/{write_key}/settings"),
        ("GET", "/sourceConfig"),
        ("GET", "/metrics"),
        ("GET", "/health"),
        ("POST", "/v1/session"),
        ("GET", "/v1/unsubscribe/{token}"),
        ("POST", "/v1/unsubscribe/{token}"),
    }
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who calls: a key (``key:read``, ``key:admin``) or a signed-in user, with a role."""

    actor: str
    role: Role
    # A signed-in user's session: its id and the CSRF token unsafe calls must echo.
    session_id: str | None = None
    csrf: str | None = None

    @property
    def by_session(self) -> bool:
        """True for a person signed in with the session cookie (CSRF applies)."""
        return self.session_id is not None


# Where an alert goes besides the audit log (a signed webhook, wired by the bootstrap).
AlertSink = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class AccessAlerts:
    """Unusual access, counted in this process: reads of many customers, failed sign-ins."""

    customers_per_min: int = 200
    sign_in_failures: int = 5
    sign_in_window_s: float = 300.0
    _reads: dict[str, deque[tuple[float, str]]] = field(default_factory=lambda: defaultdict(deque))
    _failures: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    # Alerts already raised, by (kind, who), until their window passes: one alert per burst.
    _raised: dict[tuple[str, str], float] = field(default_factory=dict)

    def customer_read(self, actor: str, customer_id: str, now: float | None = None) -> int | None:
        """Count a read of a customer's personal data; the distinct count when it is unusual."""
        now = time.monotonic() if now is None else now
        reads = self._reads[actor]
        reads.append((now, customer_id))
        while reads and reads[0][0] < now - 60:
            reads.popleft()
        distinct = len({customer for _, customer in reads})
        if self.customers_per_min and distinct > self.customers_per_min:
            return distinct if self._first(("customer_reads", actor), now, 60) else None
        return None

    def sign_in_failed(self, who: str, now: float | None = None) -> int | None:
        """Count a failed sign-in (by name and address); the count when it reaches the limit."""
        now = time.monotonic() if now is None else now
        failures = self._recent_failures(who, now)
        failures.append(now)
        if len(failures) >= self.sign_in_failures:
            window = self.sign_in_window_s
            return len(failures) if self._first(("sign_in", who), now, window) else None
        return None

    def sign_in_locked(self, who: str, now: float | None = None) -> float:
        """Seconds until ``who`` may try again; 0 while under the limit."""
        now = time.monotonic() if now is None else now
        failures = self._recent_failures(who, now)
        if len(failures) < self.sign_in_failures:
            return 0.0
        return max(1.0, failures[0] + self.sign_in_window_s - now)

    def sign_in_succeeded(self, who: str) -> None:
        """A good sign-in clears its failures."""
        self._failures.pop(who, None)

    def _recent_failures(self, who: str, now: float) -> deque[float]:
        failures = self._failures[who]
        while failures and failures[0] < now - self.sign_in_window_s:
            failures.popleft()
        return failures

    def _first(self, key: tuple[str, str], now: float, window: float) -> bool:
        if self._raised.get(key, -1e18) > now - window:
            return False
        self._raised[key] = now
        return True


@dataclass
class AccessControl:
    """Users, sessions, the audit log and the alerts, for the API's guards and routes."""

    store: AccessStore
    alerts: AccessAlerts = field(default_factory=AccessAlerts)
    session_hours: float = 12.0
    # Sessions' cookies carry Secure when the API is served over https.
    secure_cookies: bool = False
    alert_sink: AlertSink | None = None

    async def raise_alert(self, kind: str, actor: str, source: str, detail: dict[str, Any]) -> None:
        """Record an alert in the audit log and send it to the configured webhook."""
        entry = AuditEntry(
            actor=actor,
            role="",
            action=f"alert.{kind}",
            target=actor,
            source=source,
            outcome="alert",
            detail=detail,
        )
        await asyncio.to_thread(self.store.record, entry)
        log.warning("access alert %s for %s: %s", kind, actor, detail)
        if self.alert_sink is not None:
            try:
                await self.alert_sink({"alert": kind, "actor": actor, "source": source, **detail})
            except Exception as error:  # the audit log has it; a dead receiver must not 500
                log.warning("access alert webhook failed: %s", error)
