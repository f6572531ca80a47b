"""The ingest journal: a write-ahead log of accepted events, for a broker that forgets.

The embedded broker keeps its log in memory (Tansu's ``memory://``; see
docs/architecture.md), so a broker that dies takes every event it acknowledged
but the worker had not yet processed. The journal keeps the promise of a 200
instead: every event's exact Kafka record (key and value bytes, the same bytes
produced) is appended to a segment file and fsynced before the request is
answered, and it stays there until the journey pipeline has processed it.

- **Group commit.** Concurrent requests share one fsync: each append takes a
  sequence number, and a request whose data a concurrent fsync already covered
  returns without one of its own (:meth:`Journal.sync`); the gateway's requests
  share one fsync per event-loop turn, asked for once the broker acked
  (:class:`GroupCommit`, :meth:`JournaledSink.publish`).
- **Segments** (``<index>.seg``) rotate by size and by age, and carry a
  header; each record is ``length, crc32, key length, key, value``. A torn
  tail (a crash mid-write) fails its length or checksum and the segment is read
  up to it; appends never continue a segment from an earlier run.
- **Offsets.** Delivery reports give each record's partition and offset; per
  segment the journal keeps the highest offset per partition, for the broker
  *epoch* it was produced to, in a side file (``<index>.offsets``) once every
  record of the closed segment is resolved.
- **Trimming** (:meth:`Journal.trim`): a segment is deleted once, in its
  epoch, the journey pipeline's tracked position of every partition is past the
  segment's highest offset there. Never by time: a replayed event older than
  the journey's dedup window (24 h of arrival time) would be counted twice.
- **Replay** (:meth:`JournaledSink.replay`): on start, every retained segment
  whose offsets are not known for the current epoch (a new broker, or a node
  that died before writing them) is produced again, in journal order, before
  the API takes traffic. Consumers dedupe by event id, so what was processed
  before is recognised; records of partitions an old epoch's position shows
  processed are skipped.
- **Bounded.** Past ``max_bytes`` of retained segments, appends are refused
  (:class:`JournalFull`, a 503 with Retry-After): a 200 is never given for an
  event that could not be kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from kafka.partitioner.default import murmur2

from events import TrackedEvent

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"JRNL\x01\n"
# Payload length, CRC-32 of the payload; the payload is key length, key, value.
_FRAME = struct.Struct("<II")
_KEY_LENGTH = struct.Struct("<H")
# Records produced per call during a replay.
REPLAY_CHUNK = 2000

# A Kafka record: key and value bytes.
Record = tuple[bytes, bytes]
# Where a record landed: (partition, offset), or None when it was not acknowledged.
Delivery = tuple[int, int] | None
# The journey pipeline's tracked position (next offset to process) of a partition in an epoch.
Position = Callable[[str, int], int]


class JournalFull(Exception):
    """The journal holds its maximum: the worker is too far behind to promise more."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """One append: which segment holds it, its sequence number, how many records."""

    segment: int
    seq: int
    count: int


@dataclass
class Segment:
    """What the journal knows of one segment file."""

    index: int
    path: Path
    size: int = 0
    records: int = 0
    # Records whose delivery is known (acknowledged with an offset, or failed).
    resolved: int = 0
    # The broker epoch the offsets belong to, and the highest offset per partition.
    epoch: str | None = None
    max_offsets: dict[int, int] = field(default_factory=dict)
    closed: bool = False
    opened_at: float = field(default_factory=time.monotonic)

    @property
    def offsets_path(self) -> Path:
        return self.path.with_suffix(".offsets")

    def known_in(self, epoch: str) -> bool:
        """True when every record's place in ``epoch`` is known."""
        return self.closed and self.resolved == self.records and self.epoch == epoch

    def processed(self, epoch: str, position: Position) -> bool:
        """True when the pipeline's positions in ``epoch`` are past every record of it."""
        return self.known_in(epoch) and all(
            position(epoch, partition) > offset for partition, offset in self.max_offsets.items()
        )


def frame(key: bytes, value: bytes) -> bytes:
    """One record as written to a segment."""
    payload = _KEY_LENGTH.pack(len(key)) + key + value
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def read_segment(path: Path) -> tuple[list[Record], int]:
    """The records of a segment up to the first torn or corrupt one; and the bytes ignored."""
    data = path.read_bytes()
    if not data.startswith(SEGMENT_MAGIC):
        return [], len(data)
    records: list[Record] = []
    at = len(SEGMENT_MAGIC)
    while at + _FRAME.size <= len(data):
        length, checksum = _FRAME.unpack_from(data, at)
        start, end = at + _FRAME.size, at + _FRAME.size + length
        if end > len(data) or length < _KEY_LENGTH.size:
            break
        payload = data[start:end]
        if zlib.crc32(payload) != checksum:
            break
        (key_length,) = _KEY_LENGTH.unpack_from(payload)
        if _KEY_LENGTH.size + key_length > length:
            break
        key_end = _KEY_LENGTH.size + key_length
        records.append((payload[_KEY_LENGTH.size : key_end], payload[key_end:]))
        at = end
    return records, len(data) - at


class Journal:
    """Segment files in ``directory``: append, fsync (group commit), resolve, trim.

    Thread-safe: the gateway appends from the event loop's threads, the worker
    from its batch thread.
    """

    def __init__(
        self,
        directory: Path,
        epoch: str,
        *,
        segment_bytes: int = 64 * 1024 * 1024,
        segment_age_s: float = 60.0,
        max_bytes: int = 4 * 1024 * 1024 * 1024,
    ) -> None:
        self.directory = directory
        self.epoch = epoch
        self.segment_bytes = segment_bytes
        self.segment_age_s = segment_age_s
        self.max_bytes = max_bytes
        self.segments: dict[int, Segment] = {}
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._fd = -1
        self._active: Segment | None = None
        self._seq = 0
        self._synced = 0
        self._retained_bytes = 0
        self.fsyncs = 0  # how many fsyncs the appends cost (group commit shares them)

    # --- opening ------------------------------------------------------------------

    def open(self) -> list[Segment]:
        """Read what an earlier run left; the segments to produce again, in journal order.

        Those are every segment whose records' offsets are not known for the
        current epoch. New appends go to a new segment.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.directory.glob("*.seg")):
            segment = Segment(index=int(path.stem), path=path, size=path.stat().st_size)
            if segment.size <= len(SEGMENT_MAGIC):
                path.unlink()  # holds no record (a run that wrote nothing)
                continue
            segment.closed = True
            self._load_offsets(segment)
            self.segments[segment.index] = segment
            self._retained_bytes += segment.size
        for stray in self.directory.glob("*.offsets"):
            if not stray.with_suffix(".seg").exists():
                stray.unlink()  # its segment was trimmed
        self._open_segment()
        return [s for s in self._sorted() if s.closed and not s.known_in(self.epoch)]

    def _load_offsets(self, segment: Segment) -> None:
        try:
            saved = orjson.loads(segment.offsets_path.read_bytes())
            segment.epoch = str(saved["epoch"])
            segment.max_offsets = {int(p): int(o) for p, o in saved["max_offsets"].items()}
            segment.records = segment.resolved = int(saved["records"])
        except (OSError, ValueError, KeyError, TypeError):
            # Not written (the process died first) or unreadable: offsets unknown.
            segment.epoch, segment.max_offsets = None, {}

    def _sorted(self) -> list[Segment]:
        return [self.segments[i] for i in sorted(self.segments)]

    def _open_segment(self) -> None:
        index = max(self.segments, default=0) + 1
        path = self.directory / f"{index:020d}.seg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        os.write(fd, SEGMENT_MAGIC)
        os.fsync(fd)
        self._fsync_directory()
        segment = Segment(index=index, path=path, size=len(SEGMENT_MAGIC), epoch=self.epoch)
        self.segments[index] = segment
        self._retained_bytes += segment.size
        self._active, self._fd = segment, fd

    def _fsync_directory(self) -> None:
        # A new file's name must survive a crash too, not only its bytes.
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- writing ------------------------------------------------------------------

    def append(self, records: Sequence[Record], *, bounded: bool = True) -> Ticket:
        """Write ``records`` (not yet fsynced: see :meth:`sync`); JournalFull past the bound."""
        data = b"".join(frame(key, value) for key, value in records)
        with self._write_lock:
            if bounded and self._retained_bytes + len(data) > self.max_bytes:
                raise JournalFull(
                    f"the journal holds {self._retained_bytes} bytes (JOURNEYS_JOURNAL_MAX_MIB); "
                    "the worker is behind"
                )
            active = self._active
            assert active is not None, "the journal is not open"
            if active.records and (
                active.size + len(data) > self.segment_bytes
                or time.monotonic() - active.opened_at > self.segment_age_s
            ):
                self._rotate()
                active = self._active
                assert active is not None
            os.write(self._fd, data)
            active.size += len(data)
            active.records += len(records)
            self._retained_bytes += len(data)
            self._seq += 1
            return Ticket(active.index, self._seq, len(records))

    def _rotate(self) -> None:
        # Under the write lock. The old segment is fsynced here: a sync that
        # follows looks at the new segment only.
        old = self._active
        assert old is not None
        os.fsync(self._fd)
        self.fsyncs += 1
        os.close(self._fd)
        self._synced = max(self._synced, self._seq)
        old.closed = True
        self._open_segment()
        self._save_offsets_if_known(old)

    def sync(self, ticket: Ticket) -> None:
        """Return once ``ticket``'s records are on disk; one fsync covers every append before it."""
        # Lock order: sync, then write (a rotation holds the write lock only).
        with self._sync_lock:
            with self._write_lock:
                if self._synced >= ticket.seq:
                    return  # a concurrent fsync (or a rotation) covered it
                target = self._seq
                fd = os.dup(self._fd)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            with self._write_lock:
                self.fsyncs += 1
                self._synced = max(self._synced, target)

    def write(self, records: Sequence[Record], *, bounded: bool = True) -> Ticket:
        """Append and fsync: ``records`` are durable when this returns."""
        ticket = self.append(records, bounded=bounded)
        self.sync(ticket)
        return ticket

    def resolve(self, ticket: Ticket, deliveries: Sequence[Delivery]) -> None:
        """Where ``ticket``'s records landed (None: not acknowledged, nothing was promised)."""
        with self._write_lock:
            segment = self.segments.get(ticket.segment)
            if segment is None:
                return
            self._resolve(segment, deliveries)
            self._save_offsets_if_known(segment)

    def _resolve(self, segment: Segment, deliveries: Sequence[Delivery]) -> None:
        highest = segment.max_offsets
        for delivery in deliveries:
            if delivery is not None:
                partition, offset = delivery
                if offset > highest.get(partition, -1):
                    highest[partition] = offset
        segment.resolved += len(deliveries)

    def _save_offsets_if_known(self, segment: Segment) -> None:
        if not segment.known_in(self.epoch):
            return
        saved = {
            "epoch": segment.epoch,
            "records": segment.records,
            "max_offsets": {str(p): o for p, o in segment.max_offsets.items()},
        }
        # Not fsynced: if lost, the segment is produced again at the next start.
        temporary = segment.offsets_path.with_suffix(".offsets.tmp")
        temporary.write_bytes(orjson.dumps(saved))
        temporary.replace(segment.offsets_path)

    # --- replay and trimming ------------------------------------------------------

    def replayed(self, segment: Segment, deliveries: Sequence[Delivery]) -> None:
        """Record where a replayed segment's records landed in the current epoch."""
        with self._write_lock:
            self._resolve(segment, deliveries)
            self._save_offsets_if_known(segment)

    def start_replay(self, segment: Segment) -> None:
        """Forget ``segment``'s old offsets: it is about to be produced into this epoch."""
        with self._write_lock:
            segment.epoch, segment.max_offsets, segment.resolved = self.epoch, {}, 0

    def trim(self, position: Position) -> list[int]:
        """Delete every segment the pipeline has processed; the indexes deleted.

        Also closes an active segment older than ``segment_age_s``, so a quiet
        stack's last events become trimmable too.
        """
        with self._write_lock:
            active = self._active
            if (
                active is not None
                and active.records
                and time.monotonic() - active.opened_at > self.segment_age_s
            ):
                self._rotate()
            candidates = self._sorted()
        # Outside the lock: the positions are event-store reads, and appends wait on it.
        done = [s for s in candidates if s.processed(self.epoch, position)]
        with self._write_lock:
            for segment in done:
                del self.segments[segment.index]
                self._retained_bytes -= segment.size
        for segment in done:
            segment.path.unlink(missing_ok=True)
            segment.offsets_path.unlink(missing_ok=True)
        return [segment.index for segment in done]

    @property
    def appended(self) -> int:
        """The sequence number of the last append."""
        with self._write_lock:
            return self._seq

    @property
    def synced(self) -> int:
        """The sequence number of the last append known to be on disk."""
        with self._write_lock:
            return self._synced

    @property
    def retained_bytes(self) -> int:
        """Bytes of the segments kept (the bound applies to this)."""
        return self._retained_bytes

    def close(self) -> None:
        """Close the active segment (fsynced); its offsets are saved once all are known."""
        with self._write_lock:
            if self._fd < 0:
                return
            active = self._active
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            if active is not None:
                active.closed = True
                self._save_offsets_if_known(active)
                if not active.records:
                    # Nothing in it: no need to keep an empty file around.
                    del self.segments[active.index]
                    self._retained_bytes -= active.size
                    active.path.unlink(missing_ok=True)
            self._active = None


class GroupCommit:
    """The gateway's fsyncs: one per event-loop turn, shared by every request waiting in it.

    Requests append on the loop (a write to the page cache, microseconds) and,
    once the broker acknowledged them, wait here: the first to wait schedules
    one fsync at the end of the loop's turn, which covers every append before
    it. The fsync blocks the loop for its duration (fdatasync: 0.23 ms median,
    1.1 ms p99 on this machine's disk), which cost less than waking a thread
    for it, since a thread has to take the GIL back from a busy loop (up to the
    interpreter's 5 ms switch interval). bench/ingest.py, each against the
    plain gateway in the same run, a single /v1/track's p99 on 16 connections:
    7.8 -> 14.3 ms with an fsync thread, 9.1 -> 11.1 ms with an fsync per loop
    turn started alongside the produce, 12.6 -> 13.8 ms with it after the ack
    (which also kept /v1/batch within 1 % of the plain gateway's rate).
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._pending: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Nothing to start (kept for the sink's life cycle)."""

    async def stop(self) -> None:
        """Nothing to stop: every waiter's fsync ran in its loop turn."""

    async def durable(self, ticket: Ticket) -> None:
        """Return once ``ticket``'s records are fsynced."""
        if self.journal.synced >= ticket.seq:
            return
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.create_future()
            loop.call_soon(self._fsync)
        # Shielded: one request going away must not cancel the others' fsync.
        await asyncio.shield(self._pending)

    def _fsync(self) -> None:
        pending, self._pending = self._pending, None
        assert pending is not None
        journal = self.journal
        try:
            # Every append so far: sync reads the latest sequence number itself.
            journal.sync(Ticket(0, journal.appended, 0))
        except Exception as error:
            pending.set_exception(error)
        else:
            pending.set_result(None)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the producers' partitioner (murmur2, as Java's) gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class RecordProducer(Protocol):
    """The gateway's Kafka sink, producing raw records and reporting where they landed."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def produce_events(self, records: Sequence[Record]) -> list[Delivery]:
        """Produce keyed records to the events topic; raise unless all are acknowledged."""

    async def dead_letter(
        self, payload: bytes, reasons: Sequence[dict[str, Any]], source: str = ""
    ) -> None: ...

    async def connected(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a start-up replay produced."""

    segments: int
    produced: int
    skipped: int
    torn_bytes: int
    seconds: float


class JournaledSink:
    """The gateway's event sink: journal (fsync) and broker (acks=all), both before a 200.

    Dead letters are not journaled: they are kept for inspection, and a
    rejected call was answered with its 4xx whatever becomes of its copy.
    """

    def __init__(self, producer: RecordProducer, journal: Journal, partitions: int) -> None:
        self.producer = producer
        self.journal = journal
        self.partitions = partitions
        self.group_commit = GroupCommit(journal)
        # Told where each published event landed (the node's backlog, streams/backlog.py).
        self.on_delivered: Callable[[Sequence[Delivery]], None] | None = None

    async def start(self) -> None:
        """Connect the producer and start the fsync thread (the journal's owner opens it)."""
        await self.producer.start()
        self.group_commit.start()

    async def stop(self) -> None:
        """Flush the producer, stop the fsync thread."""
        await self.producer.stop()
        await self.group_commit.stop()

    async def publish(self, events: Sequence[TrackedEvent]) -> None:
        """Journal and produce; return once the broker acknowledged and the journal is fsynced.

        The fsync is asked for once the broker's ack is in: by then the appends
        of every request that arrived during the round trip are in the page
        cache too, and one fsync covers them all (far fewer fsyncs under load
        than one per loop turn, each of which blocks the loop).
        """
        if not events:
            return
        records = [(event.customer_key.encode(), event.to_json()) for event in events]
        journal = self.journal
        # Appended on the loop (into the page cache), before producing: a full
        # journal refuses before anything is sent.
        ticket = journal.append(records)
        try:
            deliveries = await self.producer.produce_events(records)
        except BaseException:
            journal.resolve(ticket, [None] * len(records))
            raise
        journal.resolve(ticket, deliveries)
        if self.on_delivered is not None:
            self.on_delivered(deliveries)
        await self.group_commit.durable(ticket)

    async def dead_letter(
        self, payload: bytes, reasons: Sequence[dict[str, Any]], source: str = ""
    ) -> None:
        """Keep the rejected payload (broker only)."""
        await self.producer.dead_letter(payload, reasons, source)

    async def connected(self) -> bool:
        """True when the broker answers."""
        return await self.producer.connected()

    async def replay(
        self, segments: Sequence[Segment], old_position: Position | None = None
    ) -> ReplayReport:
        """Produce ``segments`` (from :meth:`Journal.open`) again, in journal order.

        ``old_position`` gives the pipeline's positions in the epoch a segment
        was last produced to: records of a partition processed there are skipped.
        """
        return await replay_segments(
            self.journal, segments, self.producer.produce_events, self.partitions, old_position
        )


async def replay_segments(
    journal: Journal,
    segments: Sequence[Segment],
    produce: Callable[[Sequence[Record]], Awaitable[list[Delivery]]],
    partitions: int,
    old_position: Position | None = None,
) -> ReplayReport:
    """Produce every record of ``segments`` again (see :meth:`JournaledSink.replay`)."""
    started = time.monotonic()
    produced = skipped = torn = 0
    for segment in segments:
        records, ignored = await asyncio.to_thread(read_segment, segment.path)
        if ignored:
            log.warning("journal %s: %d bytes of a torn tail ignored", segment.path.name, ignored)
        torn += ignored
        done = _processed_partitions(segment, old_position)
        fresh = [r for r in records if partition_of(r[0], partitions) not in done]
        skipped += len(records) - len(fresh)
        journal.start_replay(segment)
        segment.records = len(records)
        journal.replayed(segment, [None] * (len(records) - len(fresh)))
        for start in range(0, len(fresh), REPLAY_CHUNK):
            chunk = fresh[start : start + REPLAY_CHUNK]
            deliveries = await produce(chunk)
            if any(delivery is None for delivery in deliveries):
                raise RuntimeError(f"journal {segment.path.name}: a replayed record was not acked")
            journal.replayed(segment, deliveries)
        produced += len(fresh)
    seconds = time.monotonic() - started
    if segments:
        log.info(
            "journal: produced %d records of %d segments again (%d already processed) in %.1f s",
            produced,
            len(segments),
            skipped,
            seconds,
        )
    return ReplayReport(len(segments), produced, skipped, torn, seconds)


def _processed_partitions(segment: Segment, old_position: Position | None) -> set[int]:
    """Partitions whose records of ``segment`` the old epoch's pipeline processed."""
    epoch = segment.epoch
    if old_position is None or epoch is None or segment.resolved != segment.records:
        return set()
    return {
        partition
        for partition, offset in segment.max_offsets.items()
        if old_position(epoch, partition) > offset
    }


async def trim_periodically(
    trim: Callable[[], object], every_s: float, what: str = "trim the ingest journal"
) -> None:
    """Run ``trim`` (in a thread: it reads positions) every ``every_s`` until cancelled;
    a failed round is logged (``what`` it did) and the next one tries again."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(trim)
        except Exception:
            log.exception("could not %s", what)


def retained_on_disk(folder: Path) -> tuple[int, int]:
    """Segments and bytes a journal folder holds, from the files alone (another process's
    journal: the node reporting its gateways')."""
    segments = size = 0
    for path in folder.glob("*.seg"):
        try:
            size += path.stat().st_size
        except FileNotFoundError:
            continue  # trimmed meanwhile
        segments += 1
    return segments, size


def journal_records(journal: Journal) -> Iterator[Record]:
    """Every record retained, in journal order (tests, tools)."""
    for segment in journal._sorted():
        records, _ = read_segment(segment.path)
        yield from records
