"""The journey application: records touchpoints on ``CustomerJourney`` aggregates.

Persistence is chosen by the eventsourcing environment (POPO in unit tests,
SQLite by default, PostgreSQL in scale-out); this module knows none of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import ProcessRecorder, Tracking

from events import TrackedEvent
from journeys.domainmodel import CustomerJourney, StageChange
from journeys.stages import StageRules


@dataclass
class JourneyUpdate:
    """The outcome of recording one batch, not yet committed.

    Effects outside the event store (ClickHouse, read models) are written from
    it first; :meth:`JourneyApplication.commit` then saves the aggregates and
    the consumed position in one transaction. A crash in between replays the
    batch, which those idempotent effects absorb.
    """

    processing: ProcessingEvent[UUID]
    journeys: dict[str, CustomerJourney] = field(default_factory=dict)
    recorded: list[TrackedEvent] = field(default_factory=list)
    stage_changes: list[StageChange] = field(default_factory=list)


class JourneyApplication(Application[UUID]):
    """Event-sourced customer journeys."""

    name = "CustomerJourneys"
    is_snapshotting_enabled = True
    snapshotting_intervals = {CustomerJourney: 200}

    def __init__(self, rules: StageRules | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.rules = rules or StageRules()

    def construct_recorder(self) -> ProcessRecorder:
        """A recorder that also keeps consumed positions (tracking records)."""
        return self.factory.process_recorder()

    def consumed_position(self, source: str) -> int:
        """The committed position of ``source``: the offset of the next record to process.

        0 when nothing was committed. Kafka's convention: after offset 41, it is 42.
        """
        recorder = self.recorder
        assert isinstance(recorder, ProcessRecorder)
        return recorder.max_tracking_id(source) or 0

    def journey(self, customer_key: str) -> CustomerJourney | None:
        """The customer's journey, or None when the customer was never seen."""
        try:
            found: object = self.repository.get(CustomerJourney.create_id(customer_key))
        except AggregateNotFoundError:
            return None
        assert isinstance(found, CustomerJourney)
        return found

    def record(
        self, touches: Iterable[TrackedEvent], position: Tracking | None = None
    ) -> JourneyUpdate:
        """Apply touchpoints in order to their journeys; nothing is saved yet."""
        update = JourneyUpdate(processing=ProcessingEvent(tracking=position))
        for touch in touches:
            journey = update.journeys.get(touch.customer_key)
            if journey is None:
                journey = self.journey(touch.customer_key) or CustomerJourney(
                    customer_key=touch.customer_key, started_at=touch.timestamp
                )
                update.journeys[touch.customer_key] = journey
            before = journey.touchpoints
            update.stage_changes.extend(journey.record(touch, self.rules))
            if journey.touchpoints != before:
                update.recorded.append(touch)
        return update

    def commit(self, update: JourneyUpdate) -> None:
        """Save every changed journey and the consumed position atomically."""
        update.processing.collect_events(*update.journeys.values())
        # The public save() cannot carry a tracking record; this is the path the
        # library's own ProcessApplication takes for the same reason.
        recordings = self._record(update.processing)
        self._take_snapshots(update.processing)
        self._notify(recordings)
