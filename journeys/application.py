"""The journey application: records customer events on ``CustomerJourney`` aggregates.

Persistence is chosen by the eventsourcing environment (POPO in unit tests,
SQLite by default, PostgreSQL in scale-out); this module knows none of them.

Identity merging works by re-keying (see docs/architecture.md): an identify
call linking anonymousId A to user U is recorded on U's journey, which asks,
through the events topic, for ``anon:A``'s journey to merge. That journey sits
on its own partition, so every event it received before the request has been
applied; it ends with ``MergedInto`` and its history travels to U in one
message with a deterministic id. Events arriving for ``anon:A`` later are
forwarded to U as they come. The messages this module asks to be sent are in
:attr:`JourneyUpdate.forwards`; ``streams/`` sends them before committing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import ProcessRecorder, Tracking, Transcoder

from events import EventType, TrackedEvent
from journeys.domainmodel import (
    ANONYMOUS_PREFIX,
    FACT_EVENTS,
    CustomerJourney,
    StageChange,
    decided_in_event_time,
    is_anonymous,
)
from journeys.stages import Stage, StageRules
from journeys.touches import Touch, touch_from
from journeys.transcoding import OrjsonTranscoder

# Which of these journey ids the event store holds (one query for a batch); given
# by the composition root, which knows the store (stack/journey_lookup.py).
StoredJourneys = Callable[[Sequence[UUID]], set[UUID]]

# Call types of the messages the worker itself puts on the events topic.
LINK_CALL = "journey.link"
MERGE_CALL = "journey.merge"


@dataclass(frozen=True, slots=True)
class MergeRefusal:
    """A merge that was refused (two identified customers, or a second owner)."""

    customer_key: str
    requested_by: str
    event_id: str


@dataclass
class JourneyUpdate:
    """The outcome of recording one batch, not yet committed.

    Effects outside the event store (ClickHouse, messages) are written from it
    first; :meth:`JourneyApplication.commit` then saves the aggregates and the
    consumed position in one transaction. A crash in between replays the
    batch, which those idempotent effects absorb.
    """

    processing: ProcessingEvent[UUID]
    journeys: dict[str, CustomerJourney] = field(default_factory=dict)
    recorded: list[TrackedEvent] = field(default_factory=list)
    stage_changes: list[StageChange] = field(default_factory=list)
    # Messages for the events topic, keyed by their customer_key.
    forwards: list[TrackedEvent] = field(default_factory=list)
    refusals: list[MergeRefusal] = field(default_factory=list)
    # (anonymous key, customer key) of each merge this batch made: the event log
    # moves the anonymous rows to the customer (projections.event_log).
    merges: list[tuple[str, str]] = field(default_factory=list)
    # The link requests that made those merges (the anonymous key, the customer as
    # user_id, the instant and id): the anonymous key's segments end there.
    merge_requests: list[TrackedEvent] = field(default_factory=list)
    # The merge messages a customer absorbed an anonymous history from in this
    # batch: their segment state is re-derived from their whole history
    # (streams/segments.py).
    absorbed: list[TrackedEvent] = field(default_factory=list)
    # New orders and their customer, for the orders projection.
    orders: list[tuple[str, Touch]] = field(default_factory=list)
    # Journeys of earlier, uncommitted updates of the same batch (see record()).
    in_flight: Mapping[str, CustomerJourney] = field(default_factory=dict)
    # Journeys as last committed, held by the caller (see record()).
    live: Mapping[str, CustomerJourney] = field(default_factory=dict)
    # Customers the event store was asked about for this batch and holds no journey of.
    unstored: frozenset[str] = frozenset()
    # Journeys given a fact out of event-time order (or a merged history) in this
    # batch: their stages are re-derived from all their facts once, at its end.
    unsettled: dict[str, None] = field(default_factory=dict)


class JourneyApplication(Application[UUID]):
    """Event-sourced customer journeys."""

    name = "CustomerJourneys"
    is_snapshotting_enabled = True
    snapshotting_intervals = {CustomerJourney: 200}

    def __init__(self, rules: StageRules | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.rules = rules or StageRules()
        # Asks the store about a batch's customers at once (None: one by one, as needed).
        self.stored_journeys: StoredJourneys | None = None

    def construct_transcoder(self) -> Transcoder:
        """The library's JSON format, written by orjson (journeys/transcoding.py)."""
        transcoder = OrjsonTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

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
        self,
        touches: Iterable[TrackedEvent],
        position: Tracking | None = None,
        in_flight: Mapping[str, CustomerJourney] | None = None,
        live: Mapping[str, CustomerJourney] | None = None,
    ) -> JourneyUpdate:
        """Apply events in order to their journeys; nothing is saved yet.

        ``in_flight``: journeys recorded but not yet committed by an earlier update
        of the same batch; a customer found there continues from that state, so two
        updates never both write the journey's next version.

        ``live``: journeys exactly as the event store holds them (committed by the
        caller, nothing pending), used instead of reading them again; the caller
        must drop any it no longer knows to be current.
        """
        update = JourneyUpdate(processing=ProcessingEvent(tracking=position))
        update.in_flight = in_flight or {}
        update.live = live or {}
        touches = _in_event_time(list(touches))
        update.unstored = self._unstored(touches, update)
        for touch in touches:
            if touch.call_type == LINK_CALL:
                self._merge_request(touch, update)
            elif touch.call_type == MERGE_CALL:
                self._absorb(touch, update)
            else:
                self._record_one(touch, update)
        for key in update.unsettled:
            journey = update.journeys[key]
            update.stage_changes.extend(journey.revise(self.touches_of(journey), self.rules))
        for journey in update.journeys.values():
            update.orders.extend(
                (journey.customer_key, order)
                for e in journey.pending_events
                for order in orders_of(e)
            )
        return update

    def _unstored(self, touches: list[TrackedEvent], update: JourneyUpdate) -> frozenset[str]:
        """The batch's customers the store holds no journey of (asked at once, if it can)."""
        if self.stored_journeys is None:
            return frozenset()
        keys = {t.customer_key for t in touches}
        ids = {
            CustomerJourney.create_id(key): key
            for key in keys
            if key not in update.in_flight and key not in update.live
        }
        if not ids:
            return frozenset()
        stored = self.stored_journeys(list(ids))
        return frozenset(key for journey_id, key in ids.items() if journey_id not in stored)

    def _stored_journey(self, update: JourneyUpdate, key: str) -> CustomerJourney | None:
        return None if key in update.unstored else self.journey(key)

    def _journey_for(self, update: JourneyUpdate, key: str, at: datetime) -> CustomerJourney:
        journey = update.journeys.get(key) or update.in_flight.get(key)
        if journey is None:
            journey = (
                update.live.get(key)
                or self._stored_journey(update, key)
                or CustomerJourney(customer_key=key, started_at=at)
            )
            update.journeys[key] = journey
        return journey

    def _record_one(self, touch: TrackedEvent, update: JourneyUpdate) -> None:
        journey = self._journey_for(update, touch.customer_key, touch.timestamp)
        if journey.merged_into is not None:
            # Re-keyed: the known customer's journey records it (and drops a repeat).
            update.forwards.append(
                replace(
                    touch,
                    customer_key=journey.merged_into,
                    context={**touch.context, "merged_from": journey.customer_key},
                )
            )
            return
        before, links = journey.touchpoints, len(journey.linked_keys)
        fact = touch_from(touch)
        unsettled = journey.customer_key in update.unsettled
        decide = False if unsettled else journey.in_order(fact)
        update.stage_changes.extend(journey.record_touch(fact, self.rules, decide=decide))
        if journey.touchpoints != before:
            update.recorded.append(touch)
            if not decide:
                update.unsettled[journey.customer_key] = None
        targets = list(journey.linked_keys[links:])
        if targets and touch.call_type == "alias":
            # An alias's previousId may be an earlier userId rather than an anonymousId:
            # ask that customer too; if they exist, the merge is refused and logged.
            targets.append(targets[-1].removeprefix(ANONYMOUS_PREFIX))
        for key in targets:
            update.forwards.append(
                _identity_message(
                    LINK_CALL,
                    f"link:{key}:{journey.customer_key}",
                    touch,
                    to=key,
                    user_id=journey.customer_key,
                    anonymous_key=key,
                )
            )

    def _merge_request(self, request: TrackedEvent, update: JourneyUpdate) -> None:
        key = request.customer_key
        known = key in update.journeys or key in update.live
        if not is_anonymous(key) and not known and self._stored_journey(update, key) is None:
            return  # an alias's previousId that is no known customer: nothing to refuse
        journey = self._journey_for(update, key, request.timestamp)
        into = request.user_id or ""
        outcome, changes = journey.merge_into(into, request.timestamp, request.event_id)
        if outcome == "refused":
            update.refusals.append(MergeRefusal(journey.customer_key, into, request.event_id))
            return
        if outcome != "merged":
            return
        update.stage_changes.extend(changes)
        update.merges.append((journey.customer_key, into))
        update.merge_requests.append(request)
        facts = [t.to_dict() for t in self.touches_of(journey)]
        update.forwards.append(
            _identity_message(
                MERGE_CALL,
                # Deterministic: a re-sent merge (after a crash) is recognised by its id.
                f"merge:{journey.customer_key}:{into}",
                request,
                to=into,
                user_id=into,
                anonymous_key=journey.customer_key,
                properties={
                    "from": journey.customer_key,
                    "touches": facts,
                    # The anonymous journey's stages, for "as of" before the merge.
                    "stages": [
                        [stage, at.isoformat()]
                        for stage, at in journey.stage_history
                        if stage != Stage.MERGED
                    ],
                },
            )
        )

    def _absorb(self, message: TrackedEvent, update: JourneyUpdate) -> None:
        anonymous_key = str(message.properties.get("from", ""))
        if not is_anonymous(anonymous_key):
            return
        touches = [Touch.from_dict(t) for t in message.properties.get("touches", [])]
        stages = [
            (str(stage), datetime.fromisoformat(at))
            for stage, at in message.properties.get("stages", [])
        ]
        journey = self._journey_for(update, message.customer_key, message.timestamp)
        before = journey.touchpoints
        update.stage_changes.extend(
            journey.absorb(anonymous_key, touches, message.timestamp, self.rules, stages)
        )
        if journey.touchpoints != before:
            update.unsettled[journey.customer_key] = None
            update.absorbed.append(message)

    def commit(self, update: JourneyUpdate) -> None:
        """Save every changed journey and the consumed position atomically."""
        # What ProcessingEvent.collect_events does for aggregates, without its two
        # runtime-checkable Protocol isinstance checks per journey (slow in Python 3.11).
        processing = update.processing
        for journey in update.journeys.values():
            processing.events.extend(journey.collect_events())
            processing.aggregates[journey.id] = journey
        # The public save() cannot carry a tracking record; this is the path the
        # library's own ProcessApplication takes for the same reason.
        recordings = self._record(update.processing)
        self._take_snapshots(update.processing)
        self._notify(recordings)

    # --- reading history ---------------------------------------------------------------

    def history(self, journey: CustomerJourney) -> list[Any]:
        """Every domain event of ``journey``: stored ones, then those not yet saved."""
        stored = list(self.events.get(journey.id))
        saved = stored[-1].originator_version if stored else 0
        pending = [e for e in journey.pending_events if e.originator_version > saved]
        return stored + pending

    def journey_as_of(self, journey: CustomerJourney, moment: datetime) -> CustomerJourney | None:
        """``journey`` as its facts up to ``moment`` make it (in memory); None before any.

        Every figure (stage, counters, orders, revenue, the profile's inputs) is cut
        at ``moment`` alike: the facts of event time up to it, decided in event time.
        """
        facts = [t for t in self.touches_of(journey) if t.at <= moment]
        return decided_in_event_time(journey.customer_key, facts, self.rules)

    def timeline(self, journey: CustomerJourney, moment: datetime) -> list[dict[str, Any]]:
        """``journey``'s timeline up to ``moment``, in event time, whatever the arrival order.

        Its facts and stage changes as the facts decided in event time give them
        (:meth:`journey_as_of`), with the identity events the store recorded. The
        revisions themselves (``StagesRevised``, ``CountsRevised``) are how the
        store got there, not the customer's history: they stay in the store.
        """
        past = self.journey_as_of(journey, moment)
        derived = list(past.pending_events) if past is not None else []
        recorded = [timeline_entry(e) for e in self.history(journey) if _is_identity_entry(e)]
        # Identity events in the order of their time and cause, not of their arrival.
        recorded.sort(key=lambda e: (e["at"], e.get("event_id", ""), e.get("anonymous_key", "")))
        entries = [*map(timeline_entry, derived), *recorded]
        order = sorted(range(len(entries)), key=lambda i: (entries[i]["at"], i))
        return [entries[i] for i in order if entries[i]["at"] <= moment]

    def touches_of(self, journey: CustomerJourney) -> list[Touch]:
        """The touches ``journey`` recorded, in recording order."""
        history = self.history(journey)
        return [Touch.from_dict(e.touch) for e in history if type(e).__name__ in FACT_EVENTS]

    def all_journey_ids(self, page: int = 1000) -> Iterator[tuple[UUID, int]]:
        """(journey id, its stored events so far) for every stored event, in storage order."""
        recorder = self.recorder
        start = 1
        while True:
            notifications = recorder.select_notifications(start=start, limit=page)
            if not notifications:
                return
            for notification in notifications:
                yield UUID(str(notification.originator_id)), notification.originator_version
            start = notifications[-1].id + 1


def _in_event_time(touches: list[TrackedEvent]) -> list[TrackedEvent]:
    """The batch with each customer's own events in event-time order (fact_order).

    Identity messages keep their places; a customer's events are permuted among
    the places they held. So the facts of one batch are decided in event time as
    they come, and a revision is needed only for what an earlier batch decided.
    """
    slots: dict[str, list[int]] = {}
    for index, touch in enumerate(touches):
        if touch.call_type not in (LINK_CALL, MERGE_CALL):
            slots.setdefault(touch.customer_key, []).append(index)
    ordered = list(touches)
    for indexes in slots.values():
        if len(indexes) > 1:
            events = sorted(
                (touches[i] for i in indexes),
                key=lambda t: (t.timestamp, t.id_scope, t.event_id),
            )
            for index, event in zip(indexes, events, strict=True):
                ordered[index] = event
    return ordered


def _is_identity_entry(domain_event: Any) -> bool:
    """Identity events, and the end of a merged journey: the timeline takes them as stored."""
    if isinstance(domain_event, CustomerJourney.StageReached):
        return bool(domain_event.stage == Stage.MERGED)
    return type(domain_event).__name__ in ("IdentityLinked", "IdentityMerged", "MergedInto")


def orders_of(domain_event: Any) -> list[Touch]:
    """The orders a domain event records for the orders projection (a revision: its book)."""
    if isinstance(domain_event, CustomerJourney.OrderPlaced):
        return [Touch.from_dict(domain_event.touch)]
    if isinstance(domain_event, CustomerJourney.CountsRevised):
        return [Touch.from_dict(touch) for touch in domain_event.orders]
    return []


def timeline_entry(domain_event: Any) -> dict[str, Any]:
    """One domain event of a journey as a timeline entry (plain data, with its time)."""
    kind = type(domain_event).__name__
    entry: dict[str, Any] = {"type": kind}
    if kind in FACT_EVENTS:
        touch = Touch.from_dict(domain_event.touch)
        entry |= {
            "at": touch.at,
            "event_id": touch.event_id,
            "event_name": touch.event_name,
            "channel": touch.channel,
        }
        for name in ("category", "order_id", "ticket_id", "merged_from"):
            if getattr(touch, name):
                entry[name] = getattr(touch, name)
        if kind in ("OrderPlaced", "OrderRefunded"):
            entry["revenue"] = touch.revenue
        if kind == "FeedbackGiven":
            entry["rating"] = touch.rating
    elif kind == "IdentityMerged":
        entry |= {
            "at": domain_event.at,
            "anonymous_key": domain_event.anonymous_key,
        }
    elif kind == "StagesRevised":
        history = domain_event.history
        # Placed at the first entry it changed (a revision never empties a history).
        first = history[min(domain_event.revised_from, len(history) - 1)]
        entry |= {
            "at": first[2],
            "revision": domain_event.revision,
            "revised_from": domain_event.revised_from,
            "stages": [{"stage": stage, "at": at} for stage, _, at, _ in history],
        }
    elif kind == "JourneyStarted":
        entry |= {"at": domain_event.started_at, "customer_key": domain_event.customer_key}
    else:
        entry |= {
            name: value
            for name, value in vars(domain_event).items()
            if name not in ("originator_id", "originator_version", "timestamp")
        }
    return entry


def timeline_of(history: Iterable[Any]) -> list[dict[str, Any]]:
    """A journey's domain events in time order (recording order among equal times)."""
    entries = [timeline_entry(e) for e in history]
    order = sorted(range(len(entries)), key=lambda i: (entries[i]["at"], i))
    return [entries[i] for i in order]


_IDENTITY_NAMES = {LINK_CALL: "Identity Linked", MERGE_CALL: "Identity Merged"}


def _identity_message(
    call_type: str,
    event_id: str,
    cause: TrackedEvent,
    *,
    to: str,
    user_id: str,
    anonymous_key: str,
    properties: dict[str, Any] | None = None,
) -> TrackedEvent:
    """An identity message (link or merge) for ``to``'s journey, stamped like its cause."""
    return TrackedEvent(
        event_id=event_id,
        customer_key=to,
        call_type=call_type,
        event_type=EventType.IDENTIFY,
        event_name=_IDENTITY_NAMES[call_type],
        timestamp=cause.timestamp,
        received_at=cause.received_at,
        user_id=user_id,
        anonymous_id=anonymous_key.removeprefix(ANONYMOUS_PREFIX),
        properties=properties or {},
    )
