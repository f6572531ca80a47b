"""One partition's batch of raw events → journeys, event log, stage and profile projections.

The order is what makes a replay harmless: effects outside the event store are
idempotent and written first; the aggregates and the consumed position are
committed last, in one transaction. A crash anywhere before the commit replays
the batch; after it, the batch is skipped. Messages the journeys ask to send
(identity links, merged histories, events re-keyed to a merged customer) are
sent before the commit too; their receivers recognise a repeat by its id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import Tracking

from events import TrackedEvent
from journeys.application import JourneyApplication, JourneyUpdate
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.profiles import ProfileView


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


class JourneyPipeline:
    """Applies batches of tracked events to journeys and their read models."""

    def __init__(
        self,
        journeys: JourneyApplication,
        event_log: EventLog,
        stages: CustomerStageView,
        profiles: ProfileView | None = None,
    ) -> None:
        self.journeys = journeys
        self.event_log = event_log
        self.stages = stages
        self.profiles = profiles

    def prepare(self, batch: PartitionBatch) -> PreparedBatch | None:
        """Record the batch's new events and write their idempotent effects."""
        start = self.journeys.consumed_position(batch.source)
        fresh = [(offset, value) for offset, value in batch.records if offset >= start]
        if not fresh:
            return None
        touches: list[TrackedEvent] = []
        rejected: list[tuple[bytes, list[dict[str, Any]]]] = []
        for _, value in fresh:
            try:
                touches.append(TrackedEvent.from_json(value))
            except (ValueError, TypeError, KeyError) as error:
                # Not produced by our gateway: keep it aside rather than stall the partition.
                reason = {"field": "payload", "rule": "envelope", "message": str(error)}
                rejected.append((value, [reason]))
        update = self.journeys.record(touches, Tracking(batch.source, fresh[-1][0] + 1))
        self.event_log.append(update.recorded)
        self.event_log.append_stage_changes(update.stage_changes)
        self.stages.append_orders(update.orders)
        self.stages.upsert(journey.summary() for journey in update.journeys.values())
        if self.profiles is not None:
            self.profiles.upsert(update.journeys.values())
        return PreparedBatch(update=update, rejected=rejected)

    def commit(self, prepared: PreparedBatch) -> None:
        """Save journeys and the consumed position atomically."""
        self.journeys.commit(prepared.update)

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
