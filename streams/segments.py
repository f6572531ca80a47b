"""Keeping segment membership as the journey pipeline records events (issue 17, first slice).

The pipeline hands over each partition batch's newly recorded events (after the
journey's dedup) with their offsets; :class:`SegmentMaintainer` folds them into
the customers' states (journeys/segment_state.py), and the pipeline writes the
membership changes to ClickHouse and the ``journey.segments`` topic before it
commits. The states are saved with their own consumed position, in one
transaction, just before the journeys' commit: after a crash between the two,
the replayed batch finds the segment position past it and folds nothing twice.

Each saved state carries its next due instant (``segment_due``): the timer loop
(streams/segment_timers.py) advances due states to now with :meth:`tick`, so an
exit caused by a rolling window sliding is recorded at the instant it happened
without waiting for the customer's next event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from events import TrackedEvent
from journeys.application import LINK_CALL
from journeys.segment_definitions import Definitions
from journeys.segment_state import (
    MembershipChange,
    SegmentEvaluator,
    SegmentEvent,
    SegmentState,
    segment_event_from,
    to_ms,
)
from projections.segment_changes import SegmentChangeLog
from projections.segment_history import SegmentHistory
from projections.segment_store import Backfill, Due, SegmentStore
from streams.journal import partition_of

# Every buyer's RFM segment at an instant: (customer key, segment) pairs.
RfmReader = Callable[[datetime], Sequence[tuple[str, str]]]

log = logging.getLogger(__name__)


@dataclass
class SegmentBatch:
    """One partition batch folded in: states to save with ``position``, changes to write."""

    source: str
    position: int
    states: dict[str, SegmentState] = field(default_factory=dict)
    changes: list[tuple[str, MembershipChange]] = field(default_factory=list)
    # Each state's partition and next due instant, saved with it.
    due: dict[str, Due] = field(default_factory=dict)
    # A revision's (customer, change, found by a backfill) over the customer's whole
    # history, and the recorded changes it found untrue (deleted before the writes).
    revised: list[tuple[str, MembershipChange, bool]] = field(default_factory=list)
    untrue: list[tuple[str, MembershipChange]] = field(default_factory=list)
    # Computed traits that the batch moved: (customer, at_ms, event id, every trait's
    # value), at the customer's latest event of the batch (the flows' TraitsInput).
    traits: list[tuple[str, int, str, dict[str, Any]]] = field(default_factory=list)
    # The store's token for the states held for readers until saved (0: not held),
    # and their JSON as held (saved as it is).
    held: int = 0
    held_texts: dict[str, str] = field(default_factory=dict)


@dataclass
class SegmentTick:
    """Due states advanced to ``now_ms`` by the timer loop: changes to write, states to save."""

    now_ms: int
    states: dict[str, SegmentState] = field(default_factory=dict)
    # Each state's stored text when read: saved only if still the same (see save_ticked).
    read: dict[str, str] = field(default_factory=dict)
    changes: list[tuple[str, MembershipChange]] = field(default_factory=list)
    due: dict[str, Due] = field(default_factory=dict)


def partition_of_source(source: str) -> int:
    """The partition of a source named by streams.pipeline.source_name (``topic#N[@epoch]``)."""
    return int(source.rsplit("#", 1)[1].split("@", 1)[0])


class SegmentMaintainer:
    """Folds recorded events into segment states under one set of definitions."""

    def __init__(
        self,
        definitions: Definitions,
        store: SegmentStore,
        log: SegmentChangeLog,
        source: Callable[[], Definitions] | None = None,
        history: SegmentHistory | None = None,
        partitions: int = 1,
        rfm: RfmReader | None = None,
        traits_wanted: Callable[[], bool] | None = None,
        serves_readers: bool = False,
    ) -> None:
        self.store = store
        # The API reads the store in this process (the node): folded states are held
        # for it before the batch's inserts (:meth:`hold`).
        self._serves_readers = serves_readers
        # Whether some flow in force reads computed traits (None: always): only then are
        # TraitsChanged records published (measured: they cost the fold a sixth, and are
        # nearly one record per event with the bench's 10 traits). Asked on each reload.
        self._traits_wanted = traits_wanted
        self.publish_traits = traits_wanted() if traits_wanted is not None else True
        self.log = log
        # The definitions in force (the admin API changes them), for :meth:`reload`.
        self._source = source
        # With a history, new and changed segments are backfilled from the event log
        # (streams/segment_backfill.py): until a customer's history is, their live
        # changes of the segment are not recorded (the backfill records them).
        self.history = history
        self.partitions = partitions
        # The RFM segments (ranked over all buyers by ClickHouse), scanned by the timer
        # loop when some segment compares them; the last one saved per customer.
        self.rfm = rfm
        self.rfm_known: dict[str, str] = {}
        self.backfills: dict[str, Backfill] = store.backfills() if history is not None else {}
        self.use(definitions)

    def use(self, definitions: Definitions) -> None:
        """Fold with ``definitions`` from now on (between batches: the caller holds them)."""
        self.definitions = definitions
        self.evaluator = SegmentEvaluator(definitions)
        # Segments, and TRAITS_BACKFILL for the traits no segment compares.
        self.fingerprints = definitions.backfill_fingerprints()

    def covered(self, segment: str, partition: int, customer_key: str) -> bool:
        """True when the customer's changes of ``segment`` are recorded live."""
        if self.history is None or self.definitions.is_static(segment):
            return True  # a static segment's changes are its list's: never backfilled
        found = self.backfills.get(segment)
        return (
            found is not None
            and found.fingerprint == self.fingerprints.get(segment)
            and found.covers(partition, customer_key)
        )

    def _live(
        self, key: str, partition: int, changes: Sequence[MembershipChange]
    ) -> list[tuple[str, MembershipChange]]:
        return [(key, c) for c in changes if self.covered(c.segment, partition, key)]

    def reload(self) -> bool:
        """Take the definitions in force if they changed (between batches); True if so."""
        if self._traits_wanted is not None:
            try:
                self.publish_traits = self._traits_wanted()
            except ValueError:
                log.exception("flow definitions could not be read; traits published as before")
        if self._source is None:
            return False
        try:
            found = self._source()
        except ValueError:
            log.exception("segment definitions could not be loaded; keeping the previous ones")
            return False
        if found is self.definitions:
            return False
        self.use(found)
        return True

    def due(self, state: SegmentState, partition: int) -> Due:
        """The (partition, next due instant) to save with ``state``."""
        clock = state.clock
        return partition, None if clock is None else self.evaluator.next_change(state, clock)

    def fold(
        self,
        source: str,
        position: int,
        recorded: Sequence[tuple[int, TrackedEvent]],
        stages: Mapping[str, str],
        in_flight: Mapping[str, SegmentState] | None = None,
        identity: Sequence[tuple[int, TrackedEvent]] = (),
        stage_times: Mapping[str, Sequence[tuple[int, str]]] | None = None,
    ) -> SegmentBatch | None:
        """Fold the (offset, event) pairs not yet folded; None if the batch was folded already.

        ``position``: the offset after the batch; ``stages``: each customer's stage
        after it; ``stage_times``: each customer's stage changes of the batch, (at_ms,
        stage), taken at their instants (SegmentEvaluator.advance); ``in_flight``:
        states of earlier, uncommitted batches of the same call; ``identity``: the
        batch's (offset, message) link requests that merged an anonymous key (it
        leaves its segments) and merge messages a customer absorbed (their state is
        revised from their whole history).
        """
        if not self.definitions.segments and not self.definitions.traits:
            return None  # nothing defined: no segment work at all
        start = self.store.position(source)
        if position <= start:
            return None
        fresh: dict[str, list[SegmentEvent]] = {}
        for offset, event in recorded:
            if offset >= start:
                fresh.setdefault(event.customer_key, []).append(segment_event_from(event))
        merged_away: dict[str, TrackedEvent] = {}
        absorbed: set[str] = set()
        for offset, message in identity:
            if offset < start:
                continue
            if message.call_type == LINK_CALL:
                merged_away[message.customer_key] = message
            else:
                absorbed.add(message.customer_key)
        keys = list(dict.fromkeys([*fresh, *absorbed, *merged_away]))
        held = dict(in_flight or {})
        stored = self.store.states(key for key in keys if key not in held)
        folded = SegmentBatch(source, position)
        partition = partition_of_source(source)
        states: dict[str, SegmentState] = {}
        since: dict[str, int | None] = {}  # the customers to revise, from when
        for key in keys:
            found = held.get(key) or stored.get(key)
            if found is None and key not in fresh and key not in absorbed:
                continue  # an anonymous key merged with no segment state: nothing ends
            state = states[key] = found or SegmentState()
            self.evaluator.forget_stale(state)
            clock = state.clock
            late = [
                e.at_ms
                for e in fresh.get(key, [])
                if clock is not None and e.at_ms < clock and self.evaluator.feeds(e)
            ]
            if self.history is not None and (key in absorbed or late):
                # Out of event-time order: the customer's change history is re-derived
                # from all their events, as their stages are revised.
                since[key] = None if key in absorbed else min(late)
        # One read of the event log and one of the recorded changes for all of them.
        histories = self.history.events_of(list(since)) if self.history and since else {}
        changes_of = self.log.changes_of(list(since)) if since else {}
        for key, state in states.items():
            events = fresh.get(key, [])
            before = self._traits_moved(state, events)
            if key in since:
                state = self._revise(
                    key,
                    state,
                    histories.get(key, []),
                    changes_of.get(key, []),
                    events,
                    stages.get(key),
                    partition,
                    since[key],
                    folded,
                )
            else:
                changes = self.evaluator.advance(
                    state, events, stages.get(key), (stage_times or {}).get(key, ())
                )
                folded.changes.extend(self._live(key, partition, changes))
            if key in merged_away:
                link = merged_away[key]
                changes = self.evaluator.merge_into(
                    state, link.user_id or "", to_ms(link.timestamp), link.event_id
                )
                folded.changes.extend(self._live(key, partition, changes))
            if before is not None:
                self._traits_after(key, state, events, before, folded)
            folded.states[key] = state
            folded.due[key] = self.due(state, partition)
        return folded

    def _traits_moved(
        self, state: SegmentState, events: Sequence[SegmentEvent]
    ) -> dict[str, Any] | None:
        """The trait values before the batch when one of its events feeds a definition
        (None: the batch cannot move a trait, so no TraitsChanged is published)."""
        if not self.publish_traits or not self.definitions.traits:
            return None
        if not any(self.evaluator.feeds(e) for e in events):
            return None
        if state.clock is None:
            return {}
        return self.evaluator.trait_values(state, state.clock)

    def _traits_after(
        self,
        key: str,
        state: SegmentState,
        events: Sequence[SegmentEvent],
        before: Mapping[str, Any],
        folded: SegmentBatch,
    ) -> None:
        latest = max(events, key=lambda e: e.order)
        at_ms = max(latest.at_ms, state.clock or latest.at_ms)
        after = self.evaluator.trait_values(state, at_ms)
        if after != before:
            folded.traits.append((key, latest.at_ms, latest.event_id, after))

    def _revise(
        self,
        key: str,
        old: SegmentState,
        logged: Sequence[SegmentEvent],
        recorded_changes: Sequence[tuple[MembershipChange, bool]],
        events: Sequence[SegmentEvent],
        stage: str | None,
        partition: int,
        since: int | None,
        folded: SegmentBatch,
    ) -> SegmentState:
        """The customer's state folded afresh from their whole history, and its changes.

        The history is the event log's (which holds every event the state folded
        before this batch, and an absorbed anonymous key's, moved there by its
        merge) and the batch's new events. Every change derived is recorded (the
        table's key collapses those recorded already), those at or after
        ``since`` (None: all) published again, each keeping a backfill's flag;
        the recorded changes not derived are deleted. Segments a backfill has
        not covered for the customer yet are left to it.
        """
        known = {e.event_id for e in logged}
        history = [*logged, *(e for e in events if e.event_id not in known)]
        state = SegmentState(stage=old.stage, rfm=old.rfm)  # the RFM scan is not in the log
        changes = self.evaluator.advance(state, history, stage=stage)
        if old.clock is not None and (state.clock is None or old.clock > state.clock):
            changes += self.evaluator.tick(state, old.clock)  # the timers' instants, again
        recorded = {
            (c.segment, c.at_ms, c.entered, c.event_id): flag for c, flag in recorded_changes
        }
        derived = set()
        for change in changes:
            if not self.covered(change.segment, partition, key):
                continue
            row = (change.segment, change.at_ms, change.entered, change.event_id)
            derived.add(row)
            if row not in recorded or since is None or change.at_ms >= since:
                folded.revised.append((key, change, recorded.get(row, False)))
        folded.untrue.extend(
            (key, MembershipChange(segment, entered, at_ms, event_id))
            for (segment, at_ms, entered, event_id) in recorded
            if (segment, at_ms, entered, event_id) not in derived
            and segment in self.definitions.segments
            and self.covered(segment, partition, key)
        )
        return state

    def write(self, batches: Sequence[SegmentBatch | SegmentTick]) -> None:
        """Insert the batches' changes into ``segment_changes`` (idempotent).

        A revision's untrue rows are deleted first: a crash after it re-derives
        the same changes from the same history.
        """
        revisions = [b for b in batches if isinstance(b, SegmentBatch)]
        self.log.forget_changes([row for batch in revisions for row in batch.untrue])
        self.log.append([change for batch in batches for change in batch.changes])
        for flag in (False, True):
            self.log.append(
                [(k, c) for b in revisions for k, c, found in b.revised if found is flag],
                backfill=flag,
            )

    def hold(self, batches: Sequence[SegmentBatch]) -> None:
        """Serve the batches' folded states to the API's readers before their inserts and
        commit (SegmentStore.hold): a membership is visible once folded. Only where the
        API reads this store (the node); a worker alone holds nothing."""
        if not self._serves_readers:
            return
        for batch in batches:
            batch.held, batch.held_texts = self.store.hold(batch.states)

    def commit(self, batches: Sequence[SegmentBatch]) -> None:
        """Save the batches' states, due instants and positions, atomically."""
        if batches:
            due: dict[str, Due] = {}
            for batch in batches:
                due.update(batch.due)
            texts = {key: text for b in batches for key, text in b.held_texts.items()}
            self.store.save([(b.source, b.position, b.states) for b in batches], due, texts)
            for batch in batches:
                if batch.held:
                    self.store.landed(batch.states, batch.held)

    def tick(self, due: Sequence[tuple[str, int]], now_ms: int) -> SegmentTick:
        """Advance the states of the (customer, partition) pairs ``due`` to ``now_ms``.

        Each change is stamped at the instant its window slid (not at ``now_ms``),
        so a tick replayed after a crash writes the same rows.
        """
        ticked = SegmentTick(now_ms)
        partitions = dict(due)
        ticked.read = self.store.stored_texts(partitions)
        for key, text in ticked.read.items():
            state = SegmentState.from_dict(orjson.loads(text))
            self.evaluator.forget_stale(state)
            changes = self.evaluator.tick(state, now_ms)
            ticked.states[key] = state
            ticked.changes.extend(self._live(key, partitions[key], changes))
            ticked.due[key] = self.due(state, partitions[key])
        # A due row without a state (erased meanwhile) is dropped.
        for key, partition in partitions.items():
            ticked.due.setdefault(key, (partition, None))
        return ticked

    def observe_lists(
        self, pending: Sequence[tuple[str, str, bool, int]], ready: Sequence[int], now_ms: int
    ) -> ListedTick:
        """Apply the static lists' ``pending`` changes of customers of ``ready`` partitions.

        Each customer's state (a new one if they have none: an uploaded id never seen)
        is advanced to the change's instant, put on or off the list and re-evaluated;
        the entry or exit (and of the segments referring to the list) stamped then.
        """
        owned = set(ready)
        partitions = {p[1]: partition_of(p[1].encode(), self.partitions) for p in pending}
        static = self.definitions.is_static
        mine = [p for p in pending if partitions[p[1]] in owned and static(p[0])]
        ticked = ListedTick(now_ms)
        ticked.read = self.store.stored_texts(p[1] for p in mine)
        for segment, key, listed, at_ms in mine:
            state = ticked.states.get(key)
            if state is None:
                text = ticked.read.get(key)
                state = SegmentState.from_dict(orjson.loads(text)) if text else SegmentState()
                self.evaluator.forget_stale(state)
                ticked.states[key] = state
            partition = partitions[key]
            changes = self.evaluator.observe_listed(state, segment, listed, at_ms)
            ticked.changes.extend(self._live(key, partition, changes))
            ticked.due[key] = self.due(state, partition)
            ticked.applied.append((segment, key, listed, at_ms))
        return ticked

    def commit_listed(self, ticked: ListedTick) -> list[str]:
        """Save the states and drop the applied list changes, atomically; the customers saved."""
        return self.store.save_listed(ticked.states, ticked.read, ticked.due, ticked.applied)

    def commit_tick(self, ticked: SegmentTick) -> list[str]:
        """Save the ticked states and their due instants, atomically; the customers saved."""
        return self.store.save_ticked(ticked.states, ticked.read, ticked.due)

    def rfm_changed(
        self, scores: Sequence[tuple[str, str]], ready: Sequence[int]
    ) -> dict[str, str]:
        """The customers of ``ready`` partitions whose scanned RFM segment is not the one
        last saved: every buyer, and every customer saved with one who is none now."""
        owned = set(ready)
        now = dict(scores)
        for key, held in self.rfm_known.items():
            if held and key not in now:
                now[key] = ""
        return {
            key: rfm
            for key, rfm in now.items()
            if self.rfm_known.get(key) != rfm
            and partition_of(key.encode(), self.partitions) in owned
        }

    def observe_rfm(self, changed: Mapping[str, str], now_ms: int) -> SegmentTick:
        """The customers' RFM segments are now ``changed`` (a scan at ``now_ms``).

        States are advanced to the scan and re-evaluated; a change is stamped at the
        scan's instant. Saved as a tick (compare and set on the stored text); a
        customer without a stored state yet is left for the next scan.
        """
        ticked = SegmentTick(now_ms)
        ticked.read = self.store.stored_texts(changed)
        for key, text in ticked.read.items():
            state = SegmentState.from_dict(orjson.loads(text))
            self.evaluator.forget_stale(state)
            partition = partition_of(key.encode(), self.partitions)
            changes = self.evaluator.observe_rfm(state, changed[key], now_ms)
            ticked.states[key] = state
            ticked.changes.extend(self._live(key, partition, changes))
            ticked.due[key] = self.due(state, partition)
        return ticked


@dataclass
class ListedTick(SegmentTick):
    """Static segments' list changes applied to states: to write, then save with them."""

    applied: list[tuple[str, str, bool, int]] = field(default_factory=list)


def traits_record(
    customer_key: str, at_ms: int, event_id: str, values: Mapping[str, Any]
) -> dict[str, object]:
    """The ``journey.segments`` record of the computed traits an event moved
    (``TraitsChanged``: every trait's value after the customer's events up to it)."""
    return {
        "type": "TraitsChanged",
        "customer_key": customer_key,
        "at_ms": at_ms,
        "event_id": event_id,
        "traits": dict(values),
    }


def segment_record(
    customer_key: str, change: MembershipChange, backfill: bool = False, revised: bool = False
) -> dict[str, object]:
    """The ``journey.segments`` record of a change (SegmentEntered / SegmentExited).

    ``backfill``: found by a backfill over history, not as it happened; outreach
    never treats such an entry as live. ``revised``: derived again by a revision
    of the customer's history (an identity merge, a late event).
    """
    record: dict[str, object] = {
        "type": "SegmentEntered" if change.entered else "SegmentExited",
        "segment": change.segment,
        "customer_key": customer_key,
        "at_ms": change.at_ms,
        "event_id": change.event_id,
        "backfill": backfill,
    }
    if revised:
        record["revised"] = True
    return record
