"""ClickHouse writes carried over Kafka, from journey workers to the process that owns chdb.

chdb admits one process per data folder. With journey workers in processes of
their own (``JOURNEYS_JOURNEY_WORKERS``), a worker writes its projections
(``events``, ``stage_changes``, ``customer_stages``, ``customer_orders``,
``customer_profiles``, ``segment_changes``) through a :class:`ProjectionRecorder`
instead of a ClickHouse client: each insert or command becomes one record on
the projections topic, produced and acknowledged before the call returns, so
before the worker's commit, as the inserts were. The node consumes the topic
with a :class:`ProjectionApplier`, which runs them on chdb in the topic's
order (one partition: the order the workers' calls were acknowledged in).

Why applying them again is harmless: they are the writes a replayed batch makes
today (the ReplacingMergeTree tables collapse identical rows, ``customer_stages``
and ``customer_profiles`` keep the newest version, the identity merge and the
segment deletes can be repeated), so a record applied twice (the node died
before it saved its position), or a batch recorded twice (a worker died before
its commit, and the partition's next owner did it again), leaves what one
application leaves.

Against a broker that forgets (the embedded ``memory://`` one), a recorder with a
:class:`~streams.journal.Journal` also appends every record to it, fsynced before
the call returns (so before the batch's commit), until the node's feed position
shows it applied; at the worker's next start, in a new broker, what was not
applied is produced again (:meth:`ProjectionRecorder.replay`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.journal import (
    Delivery,
    Journal,
    Position,
    ReplayReport,
    Segment,
    replay_segments,
)
from streams.outcomes import keyed_producer_config

# Bytes per record at most: under the broker's default message size (1 MB).
MAX_RECORD_BYTES = 900_000


class ProjectionsElsewhere(RuntimeError):
    """A journey worker without chdb was asked to read ClickHouse."""


@dataclass
class RecordedInsert:
    """What ``create_insert_context`` hands back: the table and columns of later inserts."""

    table: str
    column_names: list[str]
    data: Sequence[Sequence[Any]] | None = None


def _tagged(value: Any) -> Any:
    # JSON with the types ClickHouse parameters and rows need kept apart: every dict,
    # tuple, datetime and date is wrapped, so no value of a row can pass for a tag.
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is list:
        return [_tagged(item) for item in value]
    if kind is dict:
        return {"m": [[_tagged(k), _tagged(v)] for k, v in value.items()]}
    if kind is tuple:
        return {"u": [_tagged(item) for item in value]}
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, date):
        return {"d": value.isoformat()}
    if isinstance(value, list | tuple):
        return [_tagged(item) for item in value]
    raise TypeError(f"cannot carry a {kind.__name__} to ClickHouse: {value!r}")


def _untagged(value: Any) -> Any:
    if type(value) is list:
        return [_untagged(item) for item in value]
    if type(value) is not dict:
        return value
    if "m" in value:
        return {_untagged(k): _untagged(v) for k, v in value["m"]}
    if "u" in value:
        return tuple(_untagged(item) for item in value["u"])
    if "t" in value:
        return datetime.fromisoformat(value["t"])
    return date.fromisoformat(value["d"])


def encode_insert(table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[bytes]:
    """An insert as records of at most :data:`MAX_RECORD_BYTES` (split by rows)."""
    value = orjson.dumps(
        {"insert": table, "columns": list(columns), "rows": [_tagged(list(r)) for r in rows]}
    )
    if len(value) <= MAX_RECORD_BYTES or len(rows) < 2:
        return [value]
    half = len(rows) // 2
    return encode_insert(table, columns, rows[:half]) + encode_insert(table, columns, rows[half:])


def encode_command(sql: str, parameters: dict[str, Any] | None) -> bytes:
    """A command (DELETE, INSERT … SELECT) as one record."""
    return orjson.dumps({"command": sql, "parameters": _tagged(parameters or {})})


class ProjectionRecorder:
    """Stands in for a ClickHouse client in a journey worker: writes become records.

    Only what the projection writers call: ``create_insert_context``, ``insert`` and
    ``command``. Each call returns once the broker acknowledged its records (at
    least once, as an insert before the commit). A read raises
    :class:`ProjectionsElsewhere`: a worker without chdb has nothing to read.
    Blocking: called from the worker's batch thread.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        idempotence: bool = False,
        timeout_s: float = 30.0,
        journal: Journal | None = None,
    ) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        # Opened by the caller; trimmed against the node's feed positions (stack/node.py).
        self.journal = journal
        config = keyed_producer_config(bootstrap_servers, idempotence)
        config["message.max.bytes"] = 2 * MAX_RECORD_BYTES
        self._producer = Producer(config)
        # Told (records, bytes) for each call, when set: the feed's volume, for metrics.
        self.on_sent: Callable[[int, int], None] | None = None

    def create_insert_context(
        self, table: str, column_names: Sequence[str] | None = None, **_: Any
    ) -> RecordedInsert:
        return RecordedInsert(table, list(column_names or []))

    def insert(
        self,
        table: str | None = None,
        data: Sequence[Sequence[Any]] | None = None,
        column_names: Sequence[str] | None = None,
        context: RecordedInsert | None = None,
        **_: Any,
    ) -> None:
        if context is not None:
            table, data, column_names = context.table, context.data, context.column_names
        if not data:
            return
        assert table is not None and column_names is not None
        self._send(encode_insert(table, column_names, data))

    def command(self, cmd: str, parameters: dict[str, Any] | None = None, **_: Any) -> None:
        self._send([encode_command(cmd, parameters)])

    def query(self, *_: Any, **__: Any) -> Any:
        raise ProjectionsElsewhere(
            "this journey worker has no ClickHouse: its projections go to the node"
        )

    def close(self) -> None:
        self._producer.flush(self.timeout_s)

    def replay(
        self, segments: Sequence[Segment], old_position: Position | None = None
    ) -> ReplayReport:
        """Produce the journal's ``segments`` (from its ``open``) again, in journal order;
        records the node applied in their old epoch (``old_position``) are skipped."""
        assert self.journal is not None

        async def produce(records: Sequence[tuple[bytes, bytes]]) -> list[Delivery]:
            return self._produce([value for _, value in records])

        # One partition: every record's key is empty and lands in partition 0.
        return asyncio.run(replay_segments(self.journal, segments, produce, 1, old_position))

    def _send(self, values: Sequence[bytes]) -> None:
        ticket = None
        if self.journal is not None:
            # Not bounded: refusing would stall the worker, not ingest (as its identity
            # messages). The fsync runs while the broker acknowledges (_produce).
            ticket = self.journal.append([(b"", value) for value in values], bounded=False)
        deliveries = self._produce(values, ticket)
        if self.journal is not None and ticket is not None:
            self.journal.resolve(ticket, deliveries)
        if self.on_sent is not None:
            self.on_sent(len(values), sum(map(len, values)))

    def _produce(self, values: Sequence[bytes], ticket: Any = None) -> list[Delivery]:
        failures: list[KafkaError] = []
        landed: list[Delivery] = []

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(error)
                landed.append(None)
            else:
                landed.append((message.partition() or 0, message.offset() or 0))

        for value in values:
            while True:
                try:
                    # Partition 0 always: one order for every worker's writes.
                    self._producer.produce(
                        self.topic, value=value, partition=0, on_delivery=delivered
                    )
                    break
                except BufferError:
                    self._producer.poll(0.01)
        if ticket is not None and self.journal is not None:
            self.journal.sync(ticket)
        unacknowledged = self._producer.flush(self.timeout_s)
        if failures or unacknowledged:
            if ticket is not None and self.journal is not None:
                self.journal.resolve(ticket, landed + [None] * (len(values) - len(landed)))
            if failures:
                raise KafkaException(failures[0])
            raise TimeoutError(f"{unacknowledged} projection records unacknowledged")
        return landed


# Runs one decoded write on the real client: (table, columns, rows) or (sql, parameters).
InsertRows = Callable[[str, list[str], list[list[Any]]], None]
RunCommand = Callable[[str, dict[str, Any]], None]


class ProjectionApplier:
    """Applies the projection records of a fetched batch to ClickHouse, in order.

    Consecutive inserts into one table are joined into one (a chdb insert costs
    10-20 ms whatever its size); a command (an identity merge reads ``events``)
    first applies what came before it.
    """

    def __init__(self, insert: InsertRows, command: RunCommand) -> None:
        self._insert = insert
        self._command = command

    def apply(self, values: Sequence[bytes]) -> int:
        """Apply ``values`` (records, in topic order); how many rows were inserted."""
        pending: dict[tuple[str, tuple[str, ...]], list[list[Any]]] = {}
        inserted = 0

        def flush() -> None:
            nonlocal inserted
            for (table, columns), rows in pending.items():
                self._insert(table, list(columns), rows)
                inserted += len(rows)
            pending.clear()

        for value in values:
            write = orjson.loads(value)
            if "insert" in write:
                key = (write["insert"], tuple(write["columns"]))
                pending.setdefault(key, []).extend(_untagged(write["rows"]))
            else:
                flush()
                self._command(write["command"], _untagged(write["parameters"]))
        flush()
        return inserted


@dataclass
class ProjectionFeed:
    """The node's side of the feed: the applier, and where its positions are kept."""

    applier: ProjectionApplier
    position: Callable[[str], int]
    save: Callable[[str, int], None]
