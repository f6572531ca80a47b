"""Segment membership read at any instant: stored states for now, recorded changes for the past.

A change caused by time alone is recorded by the worker's timer loop shortly
after it happens (docs/architecture.md, "Segments and computed traits"). So
membership at an instant at or after a customer's clock (their latest event
or timer tick) is computed from their state at read time, which is exact for
rolling windows between ticks; before it, every change up to the clock is in
``segment_changes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from journeys.segment_definitions import TRAITS_BACKFILL, Definitions, TraitCondition
from journeys.segment_state import SegmentEvaluator, SegmentState, compare, to_ms
from projections.segment_changes import SegmentChangeLog
from projections.segment_definition_store import SegmentDefinitions
from projections.segment_store import Backfill, SegmentStore


class SegmentReads:
    """The definitions in force and membership of their segments."""

    def __init__(
        self,
        definitions: Definitions | SegmentDefinitions,
        store: SegmentStore,
        log: SegmentChangeLog,
    ) -> None:
        # Stored definitions (the admin API changes them) are read at their version.
        self.stored = definitions if isinstance(definitions, SegmentDefinitions) else None
        fixed = definitions if isinstance(definitions, Definitions) else definitions.current()
        self._evaluator = SegmentEvaluator(fixed)
        self.store = store
        self.log = log

    @property
    def definitions(self) -> Definitions:
        """The definitions in force now."""
        return self.evaluator.definitions

    @property
    def evaluator(self) -> SegmentEvaluator:
        """An evaluator of the definitions in force now."""
        if self.stored is not None:
            current = self.stored.current()
            if current is not self._evaluator.definitions:
                self._evaluator = SegmentEvaluator(current)
        return self._evaluator

    def backfill(self, segment_id: str) -> Backfill | None:
        """The segment's backfill at its definition in force (None: not started yet)."""
        found = self.store.backfills().get(segment_id)
        definitions = self.definitions
        if found is None or segment_id not in definitions.segments:
            return None
        return found if found.fingerprint == definitions.segment_fingerprint(segment_id) else None

    def backfilled(self, segment_id: str) -> bool:
        """True once the segment's history was backfilled at its definition in force."""
        if self.definitions.is_static(segment_id):
            return True  # its members are its list, recorded as it changes
        found = self.backfill(segment_id)
        return found is not None and found.finished

    def trait_backfilled(self, trait_id: str) -> bool:
        """True once the trait's values count every event of the log: the backfills of the
        segments comparing it, or that of the traits no segment compares, are done."""
        definitions = self.definitions
        users = definitions.trait_users(trait_id)
        if users:
            return all(self.backfilled(sid) for sid in users)
        found = self.store.backfills().get(TRAITS_BACKFILL)
        expected = definitions.backfill_fingerprints().get(TRAITS_BACKFILL)
        return found is not None and found.fingerprint == expected and found.finished

    def all_backfilled(self) -> bool:
        """True once every segment's history was backfilled at its definition in force."""
        return all(self.backfilled(sid) for sid in self.definitions.segments)

    def customer(
        self, customer_key: str, as_of: datetime, held: bool = False
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """Computed traits (None before the latest event folded) and segments at ``as_of``;
        ``held``: from the state of a batch folded and not yet saved, if any (a reading of
        now; an as-of reading is of what is saved, as for the stage)."""
        at = to_ms(as_of)
        evaluator = self.evaluator
        read = self.store.current_states if held else self.store.states
        state = read([customer_key]).get(customer_key)
        if state is None or state.clock is None or at >= state.clock:
            state = state or SegmentState()
            traits = evaluator.trait_values(state, at)
            return traits, sorted(evaluator.members(state, at))
        # Before the latest event the state has folded: the recorded changes say.
        return None, self.log.segments_of(customer_key, as_of)

    def with_traits(self, conditions: Sequence[TraitCondition], now: datetime) -> list[str]:
        """The customers whose computed traits meet every condition now, sorted (reads every
        stored state, as :meth:`members`). A state whose clock is after ``now`` (an event
        stamped ahead of the reader's clock) answers at its clock; a merged key answers
        nothing (its events count as the customer's)."""
        at = to_ms(now)
        evaluator = self.evaluator
        traits = evaluator.definitions.traits
        found = []
        for customer, state in self.store.all_states():
            if state.merged_into:
                continue
            instant = at if state.clock is None else max(at, state.clock)
            if all(
                compare(evaluator.trait_value(state, traits[c.trait], instant), c.comparison)
                for c in conditions
            ):
                found.append(customer)
        return found

    def members(self, segment_id: str, as_of: datetime) -> list[str]:
        """The customers in ``segment_id`` at ``as_of``, sorted (reads every stored state)."""
        at = to_ms(as_of)
        evaluator = self.evaluator
        recorded = set(self.log.members_as_of(segment_id, as_of))
        found = []
        for customer, state in self.store.all_states():
            if state.clock is not None and at >= state.clock:
                inside = segment_id in evaluator.members(state, at)
            else:
                inside = customer in recorded
            if inside:
                found.append(customer)
        return sorted(found)

    def sizes(self, segment_id: str, instants: list[datetime]) -> list[int]:
        """How many customers are in ``segment_id`` at each of ``instants`` (as :meth:`members`)."""
        return [len(self.members(segment_id, moment)) for moment in instants]
