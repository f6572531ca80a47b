"""Trigger and delivery state in the event store's database (SQLite or PostgreSQL).

Why plain tables next to the eventsourcing ones rather than aggregates: the
timer loop asks "which flow states are due now?" many times a second, and
deliveries are claimed by "pending and due" — both are index range queries an
aggregate repository cannot answer. Every write that goes with a consumed
Kafka position saves that position in the same transaction (table
``trigger_positions``), as the journey pipeline does with tracking records.
"""

from __future__ import annotations

import contextlib
import heapq
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from journeys.triggers import CustomerFacts

# Keys bound in one IN (...) query: below SQLite's oldest limit of 999 variables.
_KEYS_PER_QUERY = 500
# Flow state rows kept in memory per customer kept (a few flows each, on average).
_FLOW_ROWS_PER_CUSTOMER = 4
# Customers' facts kept in memory as this store last committed them (a few KB each).
KEPT_FACTS = 10_000
# The flow_states row of a customer's memory shared by the flows that keep facts
# (journeys/flows/engine.py CustomerMemory): no flow has this id.
SHARED_MEMORY = ""

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS trigger_positions (
        source TEXT PRIMARY KEY, position BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS trigger_customers (
        customer_key TEXT PRIMARY KEY, partition_no INTEGER NOT NULL, facts TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS triggers (
        trigger_id TEXT PRIMARY KEY, customer_key TEXT NOT NULL, rule_id TEXT NOT NULL,
        trigger_kind TEXT NOT NULL, due_at TEXT NOT NULL, fire_at TEXT NOT NULL,
        fired_at TEXT NOT NULL, fired_ts DOUBLE PRECISION NOT NULL,
        lateness_ms DOUBLE PRECISION NOT NULL, body TEXT NOT NULL,
        published INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS triggers_recent ON triggers (fired_ts)",
    # The outbox query runs every tick: it must not scan every trigger ever fired.
    "CREATE INDEX IF NOT EXISTS triggers_unpublished ON triggers (published, fired_ts)",
    """CREATE TABLE IF NOT EXISTS trigger_deliveries (
        trigger_id TEXT NOT NULL, endpoint_id TEXT NOT NULL, channel TEXT NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
        created_ts DOUBLE PRECISION NOT NULL, next_attempt_ts DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0, updated_ts DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (trigger_id, endpoint_id))""",
    "CREATE INDEX IF NOT EXISTS trigger_deliveries_due "
    "ON trigger_deliveries (state, next_attempt_ts)",
    """CREATE TABLE IF NOT EXISTS outreach_endpoints (
        endpoint_id TEXT PRIMARY KEY, url TEXT NOT NULL, secret TEXT NOT NULL,
        rules TEXT NOT NULL, created_at TEXT NOT NULL)""",
    # Journey flows (issue 18): each customer's state per flow, with when to advance it;
    # every decision (fact) the flows took; every version of a flow runs were started on.
    """CREATE TABLE IF NOT EXISTS flow_states (
        customer_key TEXT NOT NULL, flow_id TEXT NOT NULL, partition_no INTEGER NOT NULL,
        state TEXT NOT NULL, wake_ts DOUBLE PRECISION,
        PRIMARY KEY (customer_key, flow_id))""",
    "CREATE INDEX IF NOT EXISTS flow_states_wake ON flow_states (partition_no, wake_ts)",
    """CREATE TABLE IF NOT EXISTS flow_facts (
        fact_id TEXT PRIMARY KEY, customer_key TEXT NOT NULL, flow_id TEXT NOT NULL,
        run_id TEXT NOT NULL, fact_type TEXT NOT NULL, at_ms BIGINT NOT NULL,
        recorded_ts DOUBLE PRECISION NOT NULL, body TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS flow_facts_customer ON flow_facts (customer_key, at_ms)",
    # A flow's results read its facts, customer by customer.
    "CREATE INDEX IF NOT EXISTS flow_facts_flow ON flow_facts (flow_id, customer_key)",
    """CREATE TABLE IF NOT EXISTS flow_versions (
        flow_id TEXT NOT NULL, version INTEGER NOT NULL, fingerprint TEXT NOT NULL,
        source TEXT NOT NULL, recorded_ts DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (flow_id, version))""",
    # Lifecycle flows whose states were seeded from the rules' facts (the switch to flows).
    """CREATE TABLE IF NOT EXISTS flow_seeds (
        flow_id TEXT PRIMARY KEY, customers INTEGER NOT NULL,
        seeded_ts DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS outreach_rule_overrides (
        rule_id TEXT PRIMARY KEY, body TEXT NOT NULL, updated_ts DOUBLE PRECISION NOT NULL)""",
]


@dataclass
class FlowWrite:
    """What flows decided in one unit of work, saved in the transaction that goes with it.

    ``states``: (customer key, flow id, partition, state as a dict, wake time or None);
    ``facts``: facts as ``FlowFact.to_dict``; ``sends``: a message as the triggers topic
    carries it, with its deliveries (endpoint id, channel, initial state).
    """

    states: list[tuple[str, str, int, dict[str, Any], float | None]] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)
    sends: list[tuple[dict[str, Any], list[tuple[str, str, str]]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.states or self.facts or self.sends)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A subscribed webhook: where to POST, the signing secret, which rules (empty: all)."""

    endpoint_id: str
    url: str
    secret: str
    rules: tuple[str, ...]
    created_at: str

    def wants(self, rule_id: str) -> bool:
        """True when this endpoint subscribes to the rule."""
        return not self.rules or rule_id in self.rules


@dataclass(frozen=True, slots=True)
class Delivery:
    """One trigger to one endpoint (or the e-mail channel)."""

    trigger_id: str
    endpoint_id: str
    channel: str
    state: str
    attempts: int
    last_error: str | None
    created_ts: float
    # The trigger as JSON, when the claim loaded it (saves a read per attempt).
    body: str | None = None


class OutreachStore:
    """Customer facts, flow states, sent messages (triggers), deliveries, endpoints and the
    rule overrides a store kept from the rules' API (read once, by the switch to flows)."""

    def __init__(
        self, sqlite_path: Path | None = None, postgres_dsn: str = "", kept_facts: int = KEPT_FACTS
    ) -> None:
        self._lock = threading.RLock()
        # Facts as this store committed them last, so the next batch of the same
        # customers need not read and decode them again. An entry is handed over
        # (removed) when read, and put back only by a committed save: whatever a
        # reader changes and does not save, or a rolled-back transaction, is never
        # seen here. Other processes' writes are not: see forget_kept_facts.
        self._kept: OrderedDict[str, CustomerFacts] = OrderedDict()
        self._kept_max = kept_facts
        # Saved in the open transaction, by customer: kept once it commits.
        self._saving: dict[str, CustomerFacts] = {}
        # Flow state rows as committed last ((customer, flow) → (partition, JSON text, wake),
        # None: known absent), so a batch reads no row it wrote and an unchanged row is
        # not written again; valid while this process owns the partitions (dropped with
        # the facts, forget_kept_facts). The open transaction's rows wait in _saving_flows.
        self._kept_flows: OrderedDict[tuple[str, str], tuple[int, str, float | None] | None] = (
            OrderedDict()
        )
        self._saving_flows: dict[tuple[str, str], tuple[int, str, float | None]] = {}
        self._postgres = bool(postgres_dsn)
        if postgres_dsn:
            import psycopg

            self._conn: Any = psycopg.connect(postgres_dsn, autocommit=True)
        else:
            assert sqlite_path is not None
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(sqlite_path), timeout=30, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
        with self.transaction():
            for statement in _SCHEMA:
                self._exec(statement)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    # --- plumbing -----------------------------------------------------------------

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._postgres:
            sql = sql.replace("?", "%s")
        return self._conn.execute(sql, tuple(params))

    def _exec_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        # One prepared statement for all rows (psycopg pipelines them).
        if not rows:
            return
        if self._postgres:
            with self._conn.cursor() as cursor:
                cursor.executemany(sql.replace("?", "%s"), rows)
        else:
            self._conn.executemany(sql, rows)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._exec(sql, params).fetchall())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit of work (SQLite: taking the write lock at once)."""
        with self._lock:
            self._exec("BEGIN" if self._postgres else "BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._saving.clear()
                self._saving_flows.clear()
                self._exec("ROLLBACK")
                raise
            try:
                self._exec("COMMIT")
            finally:
                saved, self._saving = self._saving, {}
                flows, self._saving_flows = self._saving_flows, {}
            self._keep(saved.values())
            self._keep_flows(flows)

    def _keep(self, saved: Iterable[CustomerFacts]) -> None:
        if not self._kept_max:
            return
        kept = self._kept
        for facts in saved:
            key = facts.customer_key
            kept[key] = facts
            kept.move_to_end(key)
        while len(kept) > self._kept_max:
            kept.popitem(last=False)

    def _keep_flows(self, rows: Mapping[tuple[str, str], tuple[int, str, float | None]]) -> None:
        if not self._kept_max:
            return
        kept = self._kept_flows
        for key, row in rows.items():
            kept[key] = row
            kept.move_to_end(key)
        while len(kept) > self._kept_max * _FLOW_ROWS_PER_CUSTOMER:
            kept.popitem(last=False)

    def forget_kept_facts(self) -> None:
        """Drop the facts (and flow states) kept in memory: another process may have
        written them since (a rebalance gave their partitions to another worker)."""
        with self._lock:
            self._kept.clear()
            self._kept_flows.clear()

    def forget_customers(self, customer_keys: Sequence[str]) -> dict[str, int]:
        """Delete everything held about ``customer_keys`` (an erasure): their facts,
        flow states and facts, sent messages and their deliveries. Rows deleted, by table."""
        deleted = dict.fromkeys(
            ("trigger_deliveries", "triggers", "trigger_customers", "flow_states", "flow_facts"),
            0,
        )
        keys = list(dict.fromkeys(customer_keys))
        with self.transaction():
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                deleted["trigger_deliveries"] += self._exec(
                    "DELETE FROM trigger_deliveries WHERE trigger_id IN "
                    f"(SELECT trigger_id FROM triggers WHERE customer_key IN ({marks}))",
                    chunk,
                ).rowcount
                tables = ("triggers", "trigger_customers", "flow_states", "flow_facts")
                for table in tables:
                    deleted[table] += self._exec(
                        f"DELETE FROM {table} WHERE customer_key IN ({marks})", chunk
                    ).rowcount
            # The caches only: this transaction saved nothing, so none is pending.
            for key in keys:
                self._kept.pop(key, None)
            gone = set(keys)
            for row_key in [k for k in self._kept_flows if k[0] in gone]:
                del self._kept_flows[row_key]
        return deleted

    # --- consumed positions ------------------------------------------------------

    def position(self, source: str) -> int:
        """The next offset to process for ``source`` (0 when none was committed)."""
        rows = self._rows("SELECT position FROM trigger_positions WHERE source = ?", (source,))
        return int(rows[0][0]) if rows else 0

    def _save_position(self, source: str, position: int) -> None:
        self._exec(
            "INSERT INTO trigger_positions (source, position) VALUES (?, ?) "
            "ON CONFLICT (source) DO UPDATE SET position = excluded.position",
            (source, position),
        )

    # --- customers' facts --------------------------------------------------------

    def facts(self, customer_key: str) -> CustomerFacts | None:
        """A customer's facts, if any were recorded."""
        with self._lock:
            kept = self._kept.pop(customer_key, None)
            if kept is not None:
                return kept
            rows = self._rows(
                "SELECT facts FROM trigger_customers WHERE customer_key = ?", (customer_key,)
            )
        return CustomerFacts.from_dict(orjson.loads(rows[0][0])) if rows else None

    def partition_of(self, customer_key: str) -> int | None:
        """The partition a customer's events arrive on (where its flow states belong)."""
        rows = self._rows(
            "SELECT partition_no FROM trigger_customers WHERE customer_key = ?", (customer_key,)
        )
        return int(rows[0][0]) if rows else None

    def facts_of(self, customer_keys: Iterable[str]) -> dict[str, CustomerFacts]:
        """The recorded facts of those of ``customer_keys`` that have any (one query per
        ``_KEYS_PER_QUERY`` keys, not one per customer)."""
        found: dict[str, CustomerFacts] = {}
        with self._lock:
            keys = []
            for key in customer_keys:
                kept = self._kept.pop(key, None)
                if kept is None:
                    keys.append(key)
                else:
                    found[key] = kept
            for first in range(0, len(keys), _KEYS_PER_QUERY):
                chunk = keys[first : first + _KEYS_PER_QUERY]
                marks = ", ".join("?" for _ in chunk)
                rows = self._rows(
                    f"SELECT facts FROM trigger_customers WHERE customer_key IN ({marks})", chunk
                )
                for (text,) in rows:
                    facts = CustomerFacts.from_dict(orjson.loads(text))
                    found[facts.customer_key] = facts
        return found

    def _save_customers(self, customers: Sequence[tuple[CustomerFacts, int]]) -> None:
        # A customer listed twice: the last entry is the truth, as if saved one by one.
        latest = {facts.customer_key: (facts, partition) for facts, partition in customers}
        self._exec_many(
            "INSERT INTO trigger_customers (customer_key, partition_no, facts) VALUES (?, ?, ?) "
            "ON CONFLICT (customer_key) DO UPDATE SET partition_no = excluded.partition_no, "
            "facts = excluded.facts",
            [
                (key, partition, orjson.dumps(facts.to_dict()).decode())
                for key, (facts, partition) in latest.items()
            ],
        )
        self._saving.update((key, facts) for key, (facts, _) in latest.items())

    def save_batch(
        self,
        customers: Sequence[tuple[CustomerFacts, int]],
        source: str,
        position: int,
        flows: FlowWrite | None = None,
    ) -> None:
        """Customers' facts (and flow states), with the consumed position, atomically."""
        with self.transaction():
            self._save_customers(customers)
            if flows:
                self._save_flows(flows)
            self._save_position(source, position)

    # --- flows ---------------------------------------------------------------------

    def save_flows(self, flows: FlowWrite) -> None:
        """Flow states advanced by the clock, their facts and sends, atomically."""
        with self.transaction():
            self._save_flows(flows)

    def _save_flows(self, flows: FlowWrite) -> None:
        now = time.time()
        changed = []
        for key, flow_id, partition, state, wake in flows.states:
            row = (partition, orjson.dumps(state).decode(), wake)
            if self._kept_flows.get((key, flow_id)) == row:
                continue  # as committed already: nothing to write
            self._saving_flows[(key, flow_id)] = row
            changed.append((key, flow_id, *row))
        self._exec_many(
            "INSERT INTO flow_states (customer_key, flow_id, partition_no, state, wake_ts) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (customer_key, flow_id) DO UPDATE SET "
            "partition_no = excluded.partition_no, state = excluded.state, "
            "wake_ts = excluded.wake_ts",
            changed,
        )
        self._exec_many(
            "INSERT INTO flow_facts (fact_id, customer_key, flow_id, run_id, fact_type, at_ms, "
            "recorded_ts, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fact_id) DO NOTHING",
            [
                (
                    f["fact_id"],
                    f["customer_key"],
                    f["flow_id"],
                    f["run_id"],
                    f["type"],
                    f["at_ms"],
                    now,
                    orjson.dumps(f).decode(),
                )
                for f in flows.facts
            ],
        )
        for message, targets in flows.sends:
            # A flow's message is a trigger like a rule's: the same outbox, topic and
            # deliveries keyed (message id, endpoint), so it is sent once across crashes.
            cursor = self._exec(
                "INSERT INTO triggers (trigger_id, customer_key, rule_id, trigger_kind, due_at, "
                "fire_at, fired_at, fired_ts, lateness_ms, body, published) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (trigger_id) DO NOTHING",
                (
                    message["trigger_id"],
                    message["customer_id"],
                    message["rule"],
                    message["trigger"],
                    message["due_at"],
                    message["fire_at"],
                    message["fired_at"],
                    now,
                    max(0.0, (now - message["due_ts"]) * 1000),
                    orjson.dumps(message).decode(),
                ),
            )
            if cursor.rowcount:
                self._insert_deliveries(message["trigger_id"], targets, now)

    # --- the switch from the rules to flows (stack/flows_switch.py) -------------------

    def flow_seeded(self, flow_id: str) -> bool:
        """Whether the flow's states were seeded from the rules' facts already."""
        return bool(self._rows("SELECT 1 FROM flow_seeds WHERE flow_id = ?", (flow_id,)))

    def customers_without_flow_state(
        self, flow_id: str, after_key: str, limit: int
    ) -> list[tuple[str, int, CustomerFacts]]:
        """Customers with rule facts and no state in ``flow_id``, by key after ``after_key``."""
        rows = self._rows(
            "SELECT c.customer_key, c.partition_no, c.facts FROM trigger_customers c "
            "LEFT JOIN flow_states s ON s.customer_key = c.customer_key AND s.flow_id = ? "
            "WHERE s.customer_key IS NULL AND c.customer_key > ? "
            "ORDER BY c.customer_key LIMIT ?",
            (flow_id, after_key, limit),
        )
        return [
            (key, int(partition), CustomerFacts.from_dict(orjson.loads(text)))
            for key, partition, text in rows
        ]

    def seed_flow_states(
        self,
        rows: Sequence[tuple[str, str, int, dict[str, Any], float | None]],
        done: tuple[str, int] | None = None,
    ) -> None:
        """First states of customers in a flow; one a worker wrote meanwhile is kept.
        ``done``: (flow id, customers seeded) marks the flow seeded in the same transaction.
        """
        with self.transaction():
            self._exec_many(
                "INSERT INTO flow_states (customer_key, flow_id, partition_no, state, wake_ts) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (customer_key, flow_id) DO NOTHING",
                [
                    (key, flow_id, partition, orjson.dumps(state).decode(), wake)
                    for key, flow_id, partition, state, wake in rows
                ],
            )
            if done is not None:
                self._exec(
                    "INSERT INTO flow_seeds (flow_id, customers, seeded_ts) VALUES (?, ?, ?) "
                    "ON CONFLICT (flow_id) DO NOTHING",
                    (done[0], done[1], time.time()),
                )

    def flow_waits(self, customer_key: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The flows' states waiting to be advanced (a wait, a send deferred, a date anchor
        planned), soonest first, in the timers' shape (``GET /v1/outreach/timers``)."""
        where, params = ("AND customer_key = ?", [customer_key]) if customer_key else ("", [])
        rows = self._rows(
            "SELECT customer_key, flow_id, wake_ts FROM flow_states "
            f"WHERE wake_ts IS NOT NULL {where} ORDER BY wake_ts LIMIT ?",
            (*params, limit),
        )
        waits = []
        for key, flow_id, wake in rows:
            at = datetime.fromtimestamp(float(wake), UTC).isoformat()
            waits.append(
                {
                    "timer_id": f"flow:{flow_id}:{key}",
                    "customer_id": key,
                    "rule": f"flow:{flow_id}",
                    "due_at": at,
                    "fire_at": at,
                }
            )
        return waits

    def drop_timers(self) -> int:
        """Drop the rules' timer table (the rules engine was removed; the switch to flows
        seeded the clocks from the facts); how many timers it held."""
        with self.transaction():
            if self._postgres:
                exists = self._exec("SELECT to_regclass('trigger_timers')").fetchone()[0]
            else:
                exists = self._exec(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
                    ("trigger_timers",),
                ).fetchone()
            if not exists:
                return 0
            count = self._exec("SELECT COUNT(*) FROM trigger_timers").fetchone()[0]
            self._exec("DROP TABLE trigger_timers")
        return int(count)

    def flow_states_of(
        self, customer_keys: Iterable[str], flow_ids: Sequence[str]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Stored flow states of these customers in these flows (``SHARED_MEMORY``: their
        shared memory), by (customer, flow); from memory when this store wrote them."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        if not flow_ids:
            return found
        keys = []
        with self._lock:
            kept = self._kept_flows
            for key in dict.fromkeys(customer_keys):
                if any((key, flow_id) not in kept for flow_id in flow_ids):
                    keys.append(key)  # not all known here: read from the store
                    continue
                for flow_id in flow_ids:
                    known = kept[(key, flow_id)]
                    if known is not None:
                        found[(key, flow_id)] = orjson.loads(known[1])
            flow_marks = ", ".join("?" for _ in flow_ids)
            for first in range(0, len(keys), _KEYS_PER_QUERY):
                chunk = keys[first : first + _KEYS_PER_QUERY]
                marks = ", ".join("?" for _ in chunk)
                stored_rows = self._rows(
                    "SELECT customer_key, flow_id, partition_no, state, wake_ts FROM flow_states "
                    f"WHERE customer_key IN ({marks}) AND flow_id IN ({flow_marks})",
                    (*chunk, *flow_ids),
                )
                read = {
                    (key, flow_id): (int(part), text, wake)
                    for key, flow_id, part, text, wake in stored_rows
                }
                for key in chunk:
                    for flow_id in flow_ids:
                        row = read.get((key, flow_id))
                        if row is not None:
                            found[(key, flow_id)] = orjson.loads(row[1])
                        if self._kept_max and not self._saving_flows:
                            kept[(key, flow_id)] = row  # as stored (None: absent)
        return found

    def due_flow_states(
        self,
        partitions: Sequence[int],
        now_ts: float,
        limit: int = 200,
        held: Sequence[str] = (),
    ) -> list[tuple[str, str, int, dict[str, Any]]]:
        """(customer, flow, partition, state) of states due to be advanced, soonest first;
        none of the ``held`` flows (paused)."""
        # One index range per partition, each stopping at ``limit``: over all partitions
        # at once the database sorted every due row to return the first ``limit``,
        # a cost growing with the backlog (bench/flows_live.py timers).
        unheld = f"AND flow_id NOT IN ({', '.join('?' for _ in held)}) " if held else ""
        rows = heapq.nsmallest(
            limit,
            (
                row
                for partition in partitions
                for row in self._rows(
                    "SELECT wake_ts, customer_key, flow_id, partition_no, state FROM flow_states "
                    "WHERE partition_no = ? AND wake_ts IS NOT NULL AND wake_ts <= ? "
                    f"{unheld}ORDER BY wake_ts LIMIT ?",
                    (partition, now_ts, *held, limit),
                )
            ),
            key=lambda row: row[0],
        )
        return [(key, flow, int(part), orjson.loads(text)) for _, key, flow, part, text in rows]

    def flow_facts(self, customer_key: str, limit: int | None = 500) -> list[dict[str, Any]]:
        """A customer's flow facts, in event time (then as recorded); None: all of them."""
        sql = (
            "SELECT body FROM flow_facts WHERE customer_key = ? "
            "ORDER BY at_ms, recorded_ts, fact_id"
        )
        rows = (
            self._rows(sql, (customer_key,))
            if limit is None
            else self._rows(f"{sql} LIMIT ?", (customer_key, limit))
        )
        return [orjson.loads(body) for (body,) in rows]

    def flow_states(self, customer_key: str) -> list[dict[str, Any]]:
        """A customer's stored flow states."""
        rows = self._rows(
            "SELECT flow_id, state, wake_ts FROM flow_states WHERE customer_key = ? "
            "AND flow_id <> ? ORDER BY flow_id",
            (customer_key, SHARED_MEMORY),
        )
        return [
            {"flow_id": flow_id, "state": orjson.loads(text), "wake_ts": wake}
            for flow_id, text, wake in rows
        ]

    def flow_runs(self, flow_id: str) -> Iterator[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
        """(customer, facts in event time, state) of every customer with a state in the flow."""
        states = dict(
            self._rows("SELECT customer_key, state FROM flow_states WHERE flow_id = ?", (flow_id,))
        )
        facts: dict[str, list[dict[str, Any]]] = {}
        for key, body in self._rows(
            "SELECT customer_key, body FROM flow_facts WHERE flow_id = ? "
            "ORDER BY customer_key, at_ms, recorded_ts, fact_id",
            (flow_id,),
        ):
            facts.setdefault(key, []).append(orjson.loads(body))
        for key in sorted(states):
            yield key, facts.get(key, []), orjson.loads(states[key])

    def flow_node_rows(
        self, flow_id: str
    ) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
        """The flow's (customer, state) rows, and its arrivals at nodes (entries and nodes
        reached: (customer, fact)) newest first, for the customers at one node."""
        states = [
            (key, orjson.loads(text))
            for key, text in self._rows(
                "SELECT customer_key, state FROM flow_states WHERE flow_id = ? "
                "ORDER BY customer_key",
                (flow_id,),
            )
        ]
        arrivals = [
            (key, orjson.loads(body))
            for key, body in self._rows(
                "SELECT customer_key, body FROM flow_facts WHERE flow_id = ? "
                "AND fact_type IN ('Entered', 'NodeReached') "
                "ORDER BY at_ms DESC, recorded_ts DESC, fact_id",
                (flow_id,),
            )
        ]
        return states, arrivals

    def flow_deliveries(
        self, flow_id: str, message_ids: Set[str] | None = None
    ) -> list[tuple[str, str, int]]:
        """(send node, delivery state, count) of the flow's messages (only those of
        ``message_ids`` when given)."""
        counts: dict[tuple[str, str], int] = {}
        for trigger_id, body, state in self._rows(
            "SELECT t.trigger_id, t.body, d.state FROM triggers t JOIN trigger_deliveries d "
            "ON d.trigger_id = t.trigger_id WHERE t.rule_id = ?",
            (f"flow:{flow_id}",),
        ):
            if message_ids is not None and trigger_id not in message_ids:
                continue
            node = str(orjson.loads(body).get("node", ""))
            counts[(node, state)] = counts.get((node, state), 0) + 1
        return [(node, state, n) for (node, state), n in sorted(counts.items())]

    def record_flow_versions(self, versions: Sequence[tuple[str, int, str, str]]) -> None:
        """(flow id, version, fingerprint, source JSON) of flows in force; kept forever, so
        runs started on a version finish on it after the file moved on."""
        with self.transaction():
            self._exec_many(
                "INSERT INTO flow_versions (flow_id, version, fingerprint, source, recorded_ts) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (flow_id, version) DO NOTHING",
                [(*version, time.time()) for version in versions],
            )

    def flow_versions(self) -> list[tuple[str, int, str, str]]:
        """Every recorded (flow id, version, fingerprint, source JSON)."""
        rows = self._rows(
            "SELECT flow_id, version, fingerprint, source FROM flow_versions "
            "ORDER BY flow_id, version"
        )
        return [(f, int(v), fp, src) for f, v, fp, src in rows]

    def has_flow_facts(self, flow_id: str) -> bool:
        """Whether any customer's run of the flow left a fact (one index probe)."""
        return bool(self._rows("SELECT 1 FROM flow_facts WHERE flow_id = ? LIMIT 1", [flow_id]))

    def save_customers(self, customers: Sequence[tuple[CustomerFacts, int]]) -> None:
        """Customers' facts, atomically (facts that come from no topic position)."""
        with self.transaction():
            self._save_customers(customers)

    # --- fired triggers ------------------------------------------------------------

    def unpublished(self, limit: int = 100) -> list[dict[str, Any]]:
        """Fired triggers not yet acknowledged by the broker (a crash in between)."""
        rows = self._rows(
            "SELECT body FROM triggers WHERE published = 0 ORDER BY fired_ts LIMIT ?", (limit,)
        )
        return [orjson.loads(body) for (body,) in rows]

    def mark_published(self, trigger_ids: Sequence[str]) -> None:
        """The broker has these triggers."""
        with self.transaction():
            for trigger_id in trigger_ids:
                self._exec("UPDATE triggers SET published = 1 WHERE trigger_id = ?", (trigger_id,))

    def trigger(self, trigger_id: str) -> dict[str, Any] | None:
        """A fired trigger's body, if it fired."""
        rows = self._rows("SELECT body FROM triggers WHERE trigger_id = ?", (trigger_id,))
        return orjson.loads(rows[0][0]) if rows else None

    def recent_triggers(
        self, limit: int = 50, customer_key: str | None = None
    ) -> list[dict[str, Any]]:
        """Recently fired triggers, newest first, each with its deliveries' state."""
        where, params = ("WHERE customer_key = ?", [customer_key]) if customer_key else ("", [])
        rows = self._rows(
            f"SELECT body, lateness_ms FROM triggers {where} ORDER BY fired_ts DESC LIMIT ?",
            (*params, limit),
        )
        found = []
        for body, lateness_ms in rows:
            trigger = orjson.loads(body)
            trigger["lateness_ms"] = round(float(lateness_ms), 1)
            trigger["deliveries"] = [
                {
                    "endpoint_id": d.endpoint_id,
                    "channel": d.channel,
                    "state": d.state,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                }
                for d in self.deliveries(trigger["trigger_id"])
            ]
            found.append(trigger)
        return found

    def lateness_ms(self) -> list[float]:
        """Lateness (fired minus fire time) of every recorded trigger, for measurement."""
        return [float(v) for (v,) in self._rows("SELECT lateness_ms FROM triggers")]

    # --- deliveries ------------------------------------------------------------------

    def add_deliveries(
        self,
        planned: Sequence[tuple[str, Sequence[tuple[str, str, str]]]],
        source: str,
        position: int,
    ) -> None:
        """Deliveries of consumed triggers — per trigger id, its (endpoint id, channel,
        initial state) — with the consumed position, atomically. A trigger seen twice
        adds nothing: the key is (trigger, endpoint).
        """
        now = time.time()
        with self.transaction():
            for trigger_id, targets in planned:
                self._insert_deliveries(trigger_id, targets, now)
            self._save_position(source, position)

    def _insert_deliveries(
        self, trigger_id: str, targets: Sequence[tuple[str, str, str]], now: float
    ) -> None:
        for endpoint_id, channel, state in targets:
            self._exec(
                "INSERT INTO trigger_deliveries (trigger_id, endpoint_id, channel, "
                "state, created_ts, next_attempt_ts, updated_ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (trigger_id, endpoint_id) DO NOTHING",
                (trigger_id, endpoint_id, channel, state, now, now, now),
            )

    def claim_due_deliveries(self, now_ts: float, lease_s: float, limit: int) -> list[Delivery]:
        """Take pending deliveries whose next attempt is due, each leased for ``lease_s``."""
        # Read first: this runs every tick, and a write transaction for nothing would
        # wait on the event store's write lock, holding this store's lock meanwhile.
        if not self._rows(
            "SELECT 1 FROM trigger_deliveries WHERE state = 'pending' "
            "AND next_attempt_ts <= ? AND lease_until <= ? LIMIT 1",
            (now_ts, now_ts),
        ):
            return []
        claimed = []
        with self.transaction():
            rows = self._exec(
                "SELECT d.trigger_id, d.endpoint_id, d.channel, d.state, d.attempts, "
                "d.last_error, d.created_ts, t.body FROM trigger_deliveries d "
                "LEFT JOIN triggers t ON t.trigger_id = d.trigger_id "
                "WHERE d.state = 'pending' AND d.next_attempt_ts <= ? "
                "AND d.lease_until <= ? ORDER BY d.next_attempt_ts LIMIT ?",
                (now_ts, now_ts, limit),
            ).fetchall()
            for row in rows:
                # Conditional on the lease: with several workers on PostgreSQL (read
                # committed), only the one whose update still sees it free gets it.
                cursor = self._exec(
                    "UPDATE trigger_deliveries SET lease_until = ? "
                    "WHERE trigger_id = ? AND endpoint_id = ? AND lease_until <= ?",
                    (now_ts + lease_s, row[0], row[1], now_ts),
                )
                if cursor.rowcount:
                    claimed.append(Delivery(*row))
        return claimed

    def record_attempt(
        self,
        delivery: Delivery,
        state: str,
        error: str | None,
        next_attempt_ts: float = 0.0,
    ) -> None:
        """The outcome of one attempt: delivered, pending (retry at ``next_attempt_ts``) or dead."""
        with self.transaction():
            self._exec(
                "UPDATE trigger_deliveries SET state = ?, attempts = attempts + 1, last_error = ?, "
                "next_attempt_ts = ?, lease_until = 0, updated_ts = ? "
                "WHERE trigger_id = ? AND endpoint_id = ? AND state = 'pending'",
                (
                    state,
                    error,
                    next_attempt_ts,
                    time.time(),
                    delivery.trigger_id,
                    delivery.endpoint_id,
                ),
            )

    def deliveries(self, trigger_id: str) -> list[Delivery]:
        """Every delivery of a trigger."""
        rows = self._rows(
            "SELECT trigger_id, endpoint_id, channel, state, attempts, last_error, created_ts "
            "FROM trigger_deliveries WHERE trigger_id = ? ORDER BY endpoint_id",
            (trigger_id,),
        )
        return [Delivery(*row) for row in rows]

    def redeliver(self, trigger_id: str) -> int:
        """Dead deliveries of a trigger back to pending, with a fresh retry horizon."""
        now = time.time()
        with self.transaction():
            cursor = self._exec(
                "UPDATE trigger_deliveries SET state = 'pending', created_ts = ?, "
                "next_attempt_ts = ?, lease_until = 0, updated_ts = ? "
                "WHERE trigger_id = ? AND state = 'dead'",
                (now, now, now, trigger_id),
            )
            return int(cursor.rowcount)

    # --- endpoints and rule overrides --------------------------------------------------

    def add_endpoint(self, endpoint: Endpoint) -> None:
        """Subscribe a webhook endpoint."""
        with self.transaction():
            self._exec(
                "INSERT INTO outreach_endpoints (endpoint_id, url, secret, rules, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    endpoint.endpoint_id,
                    endpoint.url,
                    endpoint.secret,
                    orjson.dumps(list(endpoint.rules)).decode(),
                    endpoint.created_at,
                ),
            )

    def remove_endpoint(self, endpoint_id: str) -> bool:
        """Unsubscribe; False when there was no such endpoint."""
        with self.transaction():
            cursor = self._exec(
                "DELETE FROM outreach_endpoints WHERE endpoint_id = ?", (endpoint_id,)
            )
            return bool(cursor.rowcount)

    def endpoints(self) -> list[Endpoint]:
        """Every subscribed endpoint."""
        rows = self._rows(
            "SELECT endpoint_id, url, secret, rules, created_at FROM outreach_endpoints "
            "ORDER BY created_at"
        )
        return [
            Endpoint(eid, url, secret, tuple(orjson.loads(rules)), created)
            for eid, url, secret, rules, created in rows
        ]

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        """One endpoint by id."""
        return next((e for e in self.endpoints() if e.endpoint_id == endpoint_id), None)

    def rule_overrides(self) -> list[dict[str, Any]]:
        """Rules a store kept from the rules' API (``PUT /v1/outreach/rules``, before the
        rules engine was removed): the switch to flows migrates them."""
        rows = self._rows("SELECT body FROM outreach_rule_overrides ORDER BY rule_id")
        return [orjson.loads(body) for (body,) in rows]
