"""One partition's batch of raw events → journeys, event log, stage and profile projections.

The order is what makes a replay harmless: effects outside the event store are
idempotent and written first; the aggregates and the consumed position are
committed last, in one transaction. A crash anywhere before the commit replays
the batch; after it, the batch is skipped. Messages the journeys ask to send
(identity links, merged histories, events re-keyed to a merged customer) are
sent before the commit too; their receivers recognise a repeat by its id.

The pipeline is the only writer of a partition's journeys, so it keeps the
journeys it committed in memory (:class:`LiveJourneys`) rather than reading
them back from the event store for every batch, which cost most of its time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import Tracking

from events import TrackedEvent
from journeys.application import JourneyApplication, JourneyUpdate
from journeys.domainmodel import CustomerJourney
from journeys.segment_state import SegmentState, to_ms
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.profiles import ProfileView
from streams.segments import SegmentBatch, SegmentMaintainer


@dataclass(frozen=True, slots=True)
class PartitionBatch:
    """Consecutive records of one topic partition: (offset, value) pairs in order."""

    source: str
    records: Sequence[tuple[int, bytes]]


@dataclass
class PreparedBatch:
    """A batch whose effects are written and whose commit is still to come."""

    update: JourneyUpdate
    rejected: list[tuple[bytes, list[dict[str, Any]]]] = field(default_factory=list)
    # Segment states and membership changes of the batch (None: no segments, or folded).
    segments: SegmentBatch | None = None


class LiveJourneys:
    """The journeys this worker committed last, as committed, per partition (LRU).

    Valid only while nothing else wrote them: a partition's entries are kept
    while its committed position is the one this worker committed, and dropped
    when it differs (another worker had the partition meanwhile). Everything is
    dropped when a batch was prepared but not committed (its journeys hold
    uncommitted events) or a commit failed. Reconstructing a journey from the
    event store costs more than recording an event on it (see docs/performance.md).
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.journeys: OrderedDict[str, CustomerJourney] = OrderedDict()
        self._source_of: dict[str, str] = {}
        self._positions: dict[str, int] = {}

    def current(self, source: str, position: int) -> Mapping[str, CustomerJourney]:
        """The live journeys, after dropping ``source``'s unless it is at ``position``."""
        if self._positions.get(source) != position:
            self._positions.pop(source, None)
            stale = [key for key, owner in self._source_of.items() if owner == source]
            for key in stale:
                del self.journeys[key]
                del self._source_of[key]
        return self.journeys

    def keep(self, source: str, position: int, journeys: Iterable[CustomerJourney]) -> None:
        """Remember ``journeys``, just committed with ``source`` at ``position``."""
        if not self.maxsize:
            return
        self._positions[source] = position
        for journey in journeys:
            key = journey.customer_key
            self.journeys[key] = journey
            self.journeys.move_to_end(key)
            self._source_of[key] = source
        while len(self.journeys) > self.maxsize:
            key, _ = self.journeys.popitem(last=False)
            del self._source_of[key]

    def clear(self) -> None:
        """Forget everything (a batch failed or was never committed)."""
        self.journeys.clear()
        self._source_of.clear()
        self._positions.clear()


class JourneyPipeline:
    """Applies batches of tracked events to journeys and their read models."""

    def __init__(
        self,
        journeys: JourneyApplication,
        event_log: EventLog,
        stages: CustomerStageView,
        profiles: ProfileView | None = None,
        live_journeys: int = 0,
        segments: SegmentMaintainer | None = None,
    ) -> None:
        self.journeys = journeys
        self.segments = segments
        self.event_log = event_log
        self.stages = stages
        self.profiles = profiles
        # ``live_journeys``: how many committed journeys to keep in memory (0: none).
        self.live = LiveJourneys(live_journeys)
        # Sources of batches prepared and not yet committed.
        self._uncommitted: set[str] = set()
        # Told how long each batch's ClickHouse inserts took (a metric), when set.
        self.on_inserted: Callable[[float], None] | None = None

    def prepare_many(
        self,
        batches: Sequence[PartitionBatch],
        decided: Callable[[Sequence[PreparedBatch]], None] | None = None,
    ) -> list[PreparedBatch]:
        """Record each partition's new events, then write all their effects at once.

        One insert per table for the whole batch, not per partition: a chdb
        insert costs 10-20 ms whatever its size (measured), so per-partition
        inserts cost the worker most of its time. Once every partition is
        recorded, the journeys' rows are held for the stage view's readers and
        ``decided`` is told (both before the inserts: what a replay decides again).
        """
        if self._uncommitted:
            # The last batch was never committed: its journeys hold its events.
            self.live.clear()
            self._uncommitted.clear()
        prepared: list[PreparedBatch] = []
        # One customer's events belong on one partition, but a producer that breaks
        # the keying contract must not make two updates race for one journey.
        in_flight: dict[str, CustomerJourney] = {}
        in_flight_segments: dict[str, SegmentState] = {}
        try:
            for batch in batches:
                found = self._record(batch, in_flight, in_flight_segments)
                if found is not None:
                    prepared.append(found)
                    self._uncommitted.add(batch.source)
                    in_flight.update(found.update.journeys)
                    if found.segments is not None:
                        in_flight_segments.update(found.segments.states)
            summaries = [
                journey.summary() for p in prepared for journey in p.update.journeys.values()
            ]
            self.stages.hold(summaries)
            if self.segments is not None:
                self.segments.hold([p.segments for p in prepared if p.segments is not None])
            if decided is not None and prepared:
                decided(prepared)
            started = time.perf_counter()
            self._write_effects(
                [p.update for p in prepared], [p.segments for p in prepared], summaries
            )
            if prepared and self.on_inserted is not None:
                self.on_inserted(time.perf_counter() - started)
        except BaseException:
            self.live.clear()
            raise
        return prepared

    def prepare(self, batch: PartitionBatch) -> PreparedBatch | None:
        """Record one partition's new events and write their idempotent effects."""
        found = self.prepare_many([batch])
        return found[0] if found else None

    def _record(
        self,
        batch: PartitionBatch,
        in_flight: dict[str, CustomerJourney],
        in_flight_segments: dict[str, SegmentState],
    ) -> PreparedBatch | None:
        start = self.journeys.consumed_position(batch.source)
        fresh = [(offset, value) for offset, value in batch.records if offset >= start]
        if not fresh:
            return None
        live = self.live.current(batch.source, start)
        touches: list[TrackedEvent] = []
        offsets: dict[int, int] = {}  # id(event) -> its offset, for the segment position
        rejected: list[tuple[bytes, list[dict[str, Any]]]] = []
        for offset, value in fresh:
            try:
                touches.append(TrackedEvent.from_json(value))
                offsets[id(touches[-1])] = offset
            except (ValueError, TypeError, KeyError) as error:
                # Not produced by our gateway: keep it aside rather than stall the partition.
                reason = {"field": "payload", "rule": "envelope", "message": str(error)}
                rejected.append((value, [reason]))
        position = fresh[-1][0] + 1
        update = self.journeys.record(
            touches, Tracking(batch.source, position), in_flight=in_flight, live=live
        )
        segments = None
        if self.segments is not None:
            recorded = [(offsets[id(e)], e) for e in update.recorded if id(e) in offsets]
            stages = {
                key: journey.stage.value
                for key, journey in update.journeys.items()
                if journey.stage is not None
            }
            identity = [
                (offsets[id(e)], e)
                for e in [*update.merge_requests, *update.absorbed]
                if id(e) in offsets
            ]
            # The stage at each instant of the batch, not only after it: decided in event
            # time (a change a revision moved into the past is left to the stage after).
            stage_times: dict[str, list[tuple[int, str]]] = {}
            for change in update.stage_changes:
                if not (change.revised or change.restated):
                    stage_times.setdefault(change.customer_key, []).append(
                        (to_ms(change.at), change.stage.value)
                    )
            segments = self.segments.fold(
                batch.source,
                position,
                recorded,
                stages,
                in_flight_segments,
                identity,
                stage_times,
            )
        return PreparedBatch(update=update, rejected=rejected, segments=segments)

    def _write_effects(
        self,
        updates: Sequence[JourneyUpdate],
        segment_batches: Sequence[SegmentBatch | None],
        summaries: Sequence[dict[str, Any]],
    ) -> None:
        if not updates:
            return
        journeys = [journey for update in updates for journey in update.journeys.values()]
        self.event_log.append([event for update in updates for event in update.recorded])
        # After the append: a merged anonymous key's events of this batch move too.
        self.event_log.merge_identities([m for update in updates for m in update.merges])
        self.event_log.append_stage_changes(
            [change for update in updates for change in update.stage_changes]
        )
        self.stages.append_orders([order for update in updates for order in update.orders])
        self.stages.upsert(summaries)
        if self.profiles is not None:
            self.profiles.upsert(journeys)
        if self.segments is not None:
            self.segments.write([u for u in segment_batches if u is not None])

    def commit(self, prepared: PreparedBatch, segments_saved: bool = False) -> None:
        """Save journeys and the consumed position atomically."""
        update = prepared.update
        try:
            if not segments_saved:
                self._commit_segments([prepared])
            self.journeys.commit(update)
        except BaseException:
            self.live.clear()
            raise
        tracking = update.processing.tracking
        if tracking is not None:
            self._uncommitted.discard(tracking.application_name)
            self.live.keep(
                tracking.application_name, tracking.notification_id, update.journeys.values()
            )

    def commit_many(self, prepared: Sequence[PreparedBatch]) -> None:
        """Commit each partition's batch (one transaction each: one position each).

        The segment states of all of them go first, in one transaction (one
        fsync rather than one per partition; each source keeps its own position).
        """
        self._commit_segments(prepared)
        for one in prepared:
            self.commit(one, segments_saved=True)

    def _commit_segments(self, prepared: Sequence[PreparedBatch]) -> None:
        # Before the journeys' commits: a crash in between replays the batches, whose
        # events the segment positions then show as folded already.
        if self.segments is None:
            return
        try:
            self.segments.commit([p.segments for p in prepared if p.segments is not None])
        except BaseException:
            self.live.clear()
            raise

    def process(self, batch: PartitionBatch) -> PreparedBatch | None:
        """Prepare and commit in one go (replays, tests, tools)."""
        prepared = self.prepare(batch)
        if prepared is not None:
            self.commit(prepared)
        return prepared


def source_name(topic: str, partition: int, epoch: str = "") -> str:
    """Name under which a partition's consumed position is tracked.

    ``epoch`` distinguishes incarnations of a broker whose log does not survive
    a restart (the embedded, memory-only broker): its offsets start again at 0.
    """
    name = f"{topic}#{partition}"
    return f"{name}@{epoch}" if epoch else name
