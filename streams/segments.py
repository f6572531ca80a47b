"""Keeping segment membership as the journey pipeline records events (issue 17, first slice).

The pipeline hands over each partition batch's newly recorded events (after the
journey's dedup) with their offsets; :class:`SegmentMaintainer` folds them into
the customers' states (journeys/segment_state.py), and the pipeline writes the
membership changes to ClickHouse and the ``journey.segments`` topic before it
commits. The states are saved with their own consumed position, in one
transaction, just before the journeys' commit: after a crash between the two,
the replayed batch finds the segment position past it and folds nothing twice.

No timers yet: an exit caused by a rolling window sliding is recorded (at the
instant it happened) when the customer's next event arrives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from events import TrackedEvent
from journeys.segment_definitions import Definitions
from journeys.segment_state import (
    MembershipChange,
    SegmentEvaluator,
    SegmentState,
    segment_event_from,
)
from projections.segment_changes import SegmentChangeLog
from projections.segment_store import SegmentStore


@dataclass
class SegmentBatch:
    """One partition batch folded in: states to save with ``position``, changes to write."""

    source: str
    position: int
    states: dict[str, SegmentState] = field(default_factory=dict)
    changes: list[tuple[str, MembershipChange]] = field(default_factory=list)


class SegmentMaintainer:
    """Folds recorded events into segment states under one set of definitions."""

    def __init__(self, definitions: Definitions, store: SegmentStore, log: SegmentChangeLog):
        self.definitions = definitions
        self.evaluator = SegmentEvaluator(definitions)
        self.store = store
        self.log = log

    def fold(
        self,
        source: str,
        position: int,
        recorded: Sequence[tuple[int, TrackedEvent]],
        stages: Mapping[str, str],
        in_flight: Mapping[str, SegmentState] | None = None,
    ) -> SegmentBatch | None:
        """Fold the (offset, event) pairs not yet folded; None if the batch was folded already.

        ``position``: the offset after the batch; ``stages``: each customer's stage
        after it; ``in_flight``: states of earlier, uncommitted batches of the same call.
        """
        start = self.store.position(source)
        if position <= start:
            return None
        fresh: dict[str, list[TrackedEvent]] = {}
        for offset, event in recorded:
            if offset >= start:
                fresh.setdefault(event.customer_key, []).append(event)
        held = dict(in_flight or {})
        stored = self.store.states(key for key in fresh if key not in held)
        folded = SegmentBatch(source, position)
        for key, events in fresh.items():
            state = held.get(key) or stored.get(key) or SegmentState()
            self.evaluator.forget_stale(state)
            changes = self.evaluator.advance(
                state, [segment_event_from(e) for e in events], stage=stages.get(key)
            )
            folded.states[key] = state
            folded.changes.extend((key, change) for change in changes)
        return folded

    def write(self, batches: Sequence[SegmentBatch]) -> None:
        """Insert the batches' changes into ``segment_changes`` (idempotent)."""
        self.log.append([change for batch in batches for change in batch.changes])

    def commit(self, batches: Sequence[SegmentBatch]) -> None:
        """Save the batches' states and positions, atomically."""
        if batches:
            self.store.save([(b.source, b.position, b.states) for b in batches])


def segment_record(customer_key: str, change: MembershipChange) -> dict[str, object]:
    """The ``journey.segments`` record of a change (SegmentEntered / SegmentExited)."""
    return {
        "type": "SegmentEntered" if change.entered else "SegmentExited",
        "segment": change.segment,
        "customer_key": customer_key,
        "at_ms": change.at_ms,
        "event_id": change.event_id,
    }
