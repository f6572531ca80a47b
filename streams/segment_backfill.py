"""Backfilling a new or changed segment from the event log, then live (issue 17).

When the worker takes definitions in which a segment is new or changed (its
fingerprint: its tree and the traits and segments it refers to), it starts
that segment's backfill (the traits no segment compares have one of their
own, ``TRAITS_BACKFILL``, which rebuilds states and records no change): the
segment's recorded changes are deleted, and one part per partition of the
events topic walks that partition's customers in key order from ClickHouse
(projections/segment_history.py). A chunk is the key range from the part's
cursor through the last of its next ``chunk`` keys, taken from a listing of
many chunks' keys read once (a key listed may since be gone, one since come:
the chunk folds the keys listed and those the range read finds, so a stale
listing only moves the range's end; the last chunk's range is open). For
each chunk, under the journey batch lock and only for partitions owned here
and caught up:

1. each customer's history (their events in the event log, which then holds
   exactly what the segment states folded) is folded afresh by the pure
   evaluator and ticked to now, so their state and membership are what a
   from-scratch evaluation gives;
2. the segment's changes through that history are written to
   ``segment_changes`` and published on ``journey.segments``; those caused by
   what arrived before the backfill started (an event received before it, a
   window that slid before it) are flagged ``backfill`` (outreach never treats
   them as live entries); one caused by an event received since is live, as
   the worker would have recorded it had the customer been covered;
3. the states, their due instants and the part's cursor are saved in one
   transaction.

Until a customer is covered (their key at or before their partition's
cursor, or the part finished), their live changes of the segment are not
recorded (the backfill records them from history); from then on the worker
continues incrementally. A crash before 3 redoes the chunk from the same
cursor: the same changes at the same instants, which ``segment_changes``'s
key collapses.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from dataclasses import dataclass, field

from journeys.segment_state import MembershipChange, SegmentState
from projections.segment_store import Backfill, BackfillPart, Due
from streams.segments import SegmentMaintainer

log = logging.getLogger(__name__)

# Customers of one partition folded per chunk (under the batch lock).
BACKFILL_CHUNK = 200
# Chunks' worth of a partition's keys listed per listing query.
LISTED_CHUNKS = 50


@dataclass
class BackfillChunk:
    """Customers of one partition backfilled for one segment, to record and save."""

    segment: str
    fingerprint: str
    partition: int
    part: BackfillPart
    states: dict[str, SegmentState] = field(default_factory=dict)
    due: dict[str, Due] = field(default_factory=dict)
    # (customer, change, found in history: arrived before the backfill started).
    changes: list[tuple[str, MembershipChange, bool]] = field(default_factory=list)


class SegmentBackfill:
    """Starts backfills of new or changed segments and computes them a chunk at a time."""

    def __init__(self, maintainer: SegmentMaintainer, chunk: int = BACKFILL_CHUNK) -> None:
        assert maintainer.history is not None
        self.maintainer = maintainer
        self.history = maintainer.history
        self.chunk = chunk
        # Per partition: the cursor listed after, the keys listed, whether they run to the end.
        self._listed: dict[int, tuple[str, list[str], bool]] = {}

    def start(self, started_ms: int = 0) -> list[str]:
        """Start the backfill of every segment whose definition it was not started for.

        ``started_ms``: when the worker took the definitions (what arrives from then on
        is live). The segments started here (another worker may have started some first).
        """
        maintainer = self.maintainer
        maintainer.store.forget_backfills(maintainer.fingerprints)
        known = maintainer.store.backfills()
        started = []
        for sid, fingerprint in maintainer.fingerprints.items():
            found = known.get(sid)
            if found is not None and found.fingerprint == fingerprint:
                continue
            # History of the older definition goes first: the backfill writes it anew.
            if sid in maintainer.definitions.segments:
                maintainer.log.forget_segment(sid)
            total = self.history.customer_count()
            if maintainer.store.start_backfill(
                sid, fingerprint, maintainer.partitions, total, started_ms
            ):
                started.append(sid)
                log.info("segment %s: backfill started over %d customers", sid, total)
        maintainer.backfills = maintainer.store.backfills()
        return started

    def next_chunk(self, ready: list[int], now_ms: int) -> BackfillChunk | None:
        """The next chunk of an unfinished backfill of a ready partition (None: nothing to do)."""
        maintainer = self.maintainer
        for sid, fingerprint in maintainer.fingerprints.items():
            found = maintainer.backfills.get(sid)
            if found is None or found.fingerprint != fingerprint:
                continue
            for partition in ready:
                part = found.parts.get(partition)
                if part is None or part.finished:
                    continue
                return self._chunk(sid, found, partition, part, now_ms)
        return None

    def _chunk(
        self, sid: str, found: Backfill, partition: int, part: BackfillPart, now_ms: int
    ) -> BackfillChunk:
        fingerprint = found.fingerprint
        maintainer = self.maintainer
        listed, last = self._next_keys(partition, part.cursor)
        # Read under the batch lock, the open range of the last chunk takes every key
        # there now: a customer not read now gets their first event after the part
        # finishes, live.
        through = None if last else listed[-1]
        histories, received = self.history.partition_histories(
            partition,
            maintainer.partitions,
            part.cursor,
            through,
            maintainer.evaluator.read_properties,
        )
        own = sorted(set(listed).union(histories))
        cursor = through if through is not None else own[-1] if own else part.cursor
        chunk = BackfillChunk(
            sid,
            fingerprint,
            partition,
            BackfillPart(cursor, part.done + len(own), last),
        )
        live = maintainer.store.states(own)
        evaluator = maintainer.evaluator
        for key in own:
            old = live.get(key)
            stage = old.stage if old is not None else ""
            # Not in the events: the RFM scan's last answer and the static lists carry over.
            state = SegmentState(
                stage=stage,
                rfm=old.rfm if old is not None else "",
                listed=set(old.listed) if old is not None else set(),
            )
            changes = evaluator.advance(state, histories.get(key, ()), stage=stage)
            changes += evaluator.tick(state, max(now_ms, old.clock or 0) if old else now_ms)
            # The other segments keep their recorded membership (their own backfill or
            # their live changes say when it changed).
            state.members = (state.members & {sid}) | ((old.members if old else set()) - {sid})
            state.evaluated_by = ""  # not what the definitions give: the next evaluation is full
            chunk.states[key] = state
            chunk.due[key] = maintainer.due(state, partition)
            chunk.changes.extend(
                (key, c, received.get(c.event_id, c.at_ms) < found.started_ms)
                for c in changes
                if c.segment == sid
            )
        return chunk

    def _next_keys(self, partition: int, cursor: str) -> tuple[list[str], bool]:
        """Up to ``chunk`` keys of ``partition`` after ``cursor``; True: the listing's last."""
        listed = self._listed.get(partition)
        if listed is not None and listed[0] <= cursor:
            _, keys, complete = listed
            start = bisect_right(keys, cursor)
            if complete or len(keys) - start >= self.chunk:
                end = start + self.chunk
                return keys[start:end], complete and end >= len(keys)
        limit = self.chunk * LISTED_CHUNKS
        keys = self.history.partition_keys(partition, self.maintainer.partitions, cursor, limit)
        complete = len(keys) < limit
        self._listed[partition] = (cursor, keys, complete)
        return keys[: self.chunk], complete and len(keys) <= self.chunk

    def write(self, chunk: BackfillChunk) -> None:
        """The chunk's changes into ``segment_changes``, those found in history flagged."""
        self.maintainer.log.append_flagged(chunk.changes)

    def commit(self, chunk: BackfillChunk) -> bool:
        """Save the chunk's states, due instants and cursor, atomically; False if restarted."""
        maintainer = self.maintainer
        saved = maintainer.store.save_backfilled(
            chunk.segment, chunk.fingerprint, chunk.partition, chunk.part, chunk.states, chunk.due
        )
        maintainer.backfills = maintainer.store.backfills()
        if chunk.part.finished:
            log.info("segment %s: backfill of partition %d done", chunk.segment, chunk.partition)
        return saved
