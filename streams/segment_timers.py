"""The segment timer loop: time passing alone changes membership (issue 17).

A customer leaves "viewed in the last 7 days" when the window slides past
their last view, and enters "no order in 60 days" when the 60 days are up,
without any event of theirs. Every saved segment state carries the instant at
which that may next happen (``segment_due``, indexed by partition and time);
every ``segment_tick_s`` this loop, on the worker's Faust app:

1. takes the partitions this worker owns and has consumed up to the
   high-water mark (an event waiting in the backlog may keep a customer in);
2. under the journey batch lock (no batch is between its fold and its commit),
   reads the due customers of those partitions, advances their states to now
   (each change stamped at the instant its window slid),
3. writes the changes to ``segment_changes`` (ClickHouse) and publishes
   SegmentEntered / SegmentExited on ``journey.segments``, acknowledged,
4. saves the states and their next due instants in one transaction.

Static segments' list changes (an upload, saved drop-outs) are applied the
same way on every tick: queued by the API in ``segment_list_pending``, each
customer's state is put on or off the list, the changes stamped at the upload.

Every ``rfm_scan_s`` (when some segment compares RFM segments) it does the
same with the buyers' RFM segments, ranked over all buyers by ClickHouse: the
customers whose segment moved are re-evaluated, changes stamped at the scan.

A crash before 4 leaves the states and due rows as they were: the next tick
(or the customer's next event) derives the same changes at the same instants,
and ``segment_changes`` (a ReplacingMergeTree keyed by segment, customer,
time, entered, event id) keeps one row of each; the topic may carry a repeat,
keyed the same.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import faust
import orjson

from streams.outcomes import OutcomeRecord
from streams.segment_backfill import SegmentBackfill
from streams.segments import SegmentMaintainer, segment_record

log = logging.getLogger(__name__)

# Due customers advanced per lock hold, so the journey consumer waits little.
TICK_CHUNK = 500
# How often the definitions' version is read (a changed one is taken between batches).
DEFINITIONS_RELOAD_S = 2.0
# Backfill work per tick, at most (chunk by chunk, the batch lock released between).
BACKFILL_BUDGET_S = 0.5


class SegmentTimers:
    """Advances due segment states of owned, caught-up partitions to the wall clock."""

    def __init__(
        self,
        maintainer: SegmentMaintainer,
        ready_partitions: Callable[[], list[int]],
        batch_lock: threading.Lock,
        publish: Callable[[Sequence[OutcomeRecord]], None],
        segments_topic: str,
        clock: Callable[[], float] = time.time,
        rfm_scan_s: float = 60.0,
    ) -> None:
        self.maintainer = maintainer
        self._ready = ready_partitions
        self._lock = batch_lock
        self._publish = publish
        self._topic = segments_topic
        self._clock = clock
        # The first tick reads the definitions and starts the backfills they need.
        self._reloaded = -math.inf
        self.backfill = SegmentBackfill(maintainer) if maintainer.history is not None else None
        self._rfm_scan_s = rfm_scan_s
        self._rfm_scanned = -math.inf
        self._rfm_ready: list[int] = []
        # When the maintainer's definitions were taken (it was built just before the API
        # serves): a backfill of them counts what arrives from then on as live.
        self._taken_ms = int(clock() * 1000)

    def register(self, app: faust.App, tick_s: float) -> None:
        """Run :meth:`fire_due` every ``tick_s`` on ``app``."""
        app.timer(tick_s, name="segment-timers")(self._tick)

    async def _tick(self, *_: Any) -> None:
        try:
            await asyncio.to_thread(self.fire_due)
            await asyncio.to_thread(self.apply_lists)
            await asyncio.to_thread(self.backfill_due)
            if time.monotonic() - self._rfm_scanned >= self._rfm_scan_s:
                await asyncio.to_thread(self.scan_rfm)
        except Exception:
            log.exception("segment timer loop failed; retrying on the next tick")

    def reload_definitions(self) -> bool:
        """Take changed definitions (admin API) between two batches; True if they changed.

        Then start the backfill of each new or changed segment.
        """
        with self._lock:
            self._reloaded = time.monotonic()
            changed = self.maintainer.reload()
            if changed:
                self._taken_ms = int(self._clock() * 1000)
            if self.backfill is not None:
                self.backfill.start(self._taken_ms)
            return changed

    def backfill_due(self, budget_s: float = BACKFILL_BUDGET_S) -> int:
        """Backfill chunks of ready partitions for up to ``budget_s``; the changes recorded."""
        if self.backfill is None:
            return 0
        ready = self._ready()
        recorded = 0
        started = time.monotonic()
        while ready and time.monotonic() - started < budget_s:
            with self._lock:
                chunk = self.backfill.next_chunk(ready, int(self._clock() * 1000))
                if chunk is None:
                    break
                self.backfill.write(chunk)
                self._publish(
                    [
                        (
                            self._topic,
                            key.encode(),
                            orjson.dumps(segment_record(key, change, backfill=past)),
                        )
                        for key, change, past in chunk.changes
                    ]
                )
                self.backfill.commit(chunk)
            recorded += len(chunk.changes)
        return recorded

    def apply_lists(self) -> int:
        """Apply the static segments' list changes (uploads, saved drop-outs) of ready
        partitions to the states; the membership changes recorded."""
        ready = self._ready()
        if not ready:
            return 0
        maintainer = self.maintainer
        recorded = 0
        while True:
            with self._lock:
                pending = maintainer.store.pending_lists(TICK_CHUNK)
                ticked = maintainer.observe_lists(pending, ready, int(self._clock() * 1000))
                if not ticked.applied:
                    return recorded
                maintainer.write([ticked])
                self._publish(
                    [
                        (self._topic, key.encode(), orjson.dumps(segment_record(key, change)))
                        for key, change in ticked.changes
                    ]
                )
                saved = maintainer.commit_listed(ticked)
            recorded += len(ticked.changes)
            if len(pending) < TICK_CHUNK or not saved:
                return recorded

    def scan_rfm(self) -> int:
        """Bring the buyers' RFM segments into the states of ready partitions; the changes.

        Only when some segment compares them (ranking all buyers is a ClickHouse
        query): scored outside the lock, applied under it in chunks, each change
        written and published before its states are saved, as a tick.
        """
        self._rfm_scanned = time.monotonic()
        maintainer = self.maintainer
        if maintainer.rfm is None or not maintainer.definitions.uses_rfm():
            return 0
        ready = self._ready()
        if ready != self._rfm_ready:
            maintainer.rfm_known.clear()  # another worker may have saved them meanwhile
            self._rfm_ready = ready
        now_ms = int(self._clock() * 1000)
        scores = maintainer.rfm(datetime.fromtimestamp(now_ms / 1000, UTC))
        changed = maintainer.rfm_changed(scores, ready)
        keys = sorted(changed)
        recorded = 0
        for start in range(0, len(keys), TICK_CHUNK):
            part = {key: changed[key] for key in keys[start : start + TICK_CHUNK]}
            with self._lock:
                ticked = maintainer.observe_rfm(part, now_ms)
                maintainer.write([ticked])
                self._publish(
                    [
                        (self._topic, key.encode(), orjson.dumps(segment_record(key, change)))
                        for key, change in ticked.changes
                    ]
                )
                saved = maintainer.commit_tick(ticked)
            for key in saved:
                maintainer.rfm_known[key] = part[key]
            recorded += len(ticked.changes)
        return recorded

    def fire_due(self) -> int:
        """Advance every due state of the ready partitions to now; the changes recorded."""
        if time.monotonic() - self._reloaded >= DEFINITIONS_RELOAD_S:
            self.reload_definitions()
        ready = self._ready()
        if not ready:
            return 0
        recorded = 0
        while True:
            with self._lock:
                now_ms = int(self._clock() * 1000)
                due = self.maintainer.store.due(ready, now_ms, TICK_CHUNK)
                if not due:
                    return recorded
                ticked = self.maintainer.tick(due, now_ms)
                self.maintainer.write([ticked])
                self._publish(
                    [
                        (self._topic, key.encode(), orjson.dumps(segment_record(key, change)))
                        for key, change in ticked.changes
                    ]
                )
                saved = self.maintainer.commit_tick(ticked)
            recorded += len(ticked.changes)
            if len(due) < TICK_CHUNK or not saved:
                return recorded
