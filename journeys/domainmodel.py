"""The ``CustomerJourney`` aggregate: what one customer's events mean, and their stages.

Pure domain: no Kafka, no SQL, no HTTP. Persisted by the eventsourcing library;
every projection can be rebuilt by replaying these events.

Every recorded customer event becomes exactly one *fact* event named for what
it means (``OrderPlaced``, ``CartOpened``, ``Browsed`` …), each carrying the
:class:`~journeys.touches.Touch`; stage decisions follow as ``StageReached``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import pairwise
from statistics import median
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from events import EventType, TrackedEvent
from events.ecommerce import MAX_MONEY
from events.envelope import scoped_dedup_keys
from journeys.stages import Stage, StageRules
from journeys.touches import Action, Touch, touch_from

_JOURNEY_NAMESPACE = uuid5(NAMESPACE_URL, "urn:customer-journeys:journey")
ANONYMOUS_PREFIX = "anon:"

# Names of the fact events: one per recorded customer event.
FACT_EVENTS = (
    "Browsed",
    "Interacted",
    "CartOpened",
    "CartChanged",
    "CartEmptied",
    "CheckoutStarted",
    "OrderPlaced",
    "OrderRefunded",
    "TicketOpened",
    "TicketResolved",
    "FeedbackGiven",
)


# The actions _apply tells apart, as the plain text a stored touch holds.
_PRODUCT_VIEW = Action.PRODUCT_VIEW.value
_CART_ADD = Action.CART_ADD.value
_CART_REMOVE = Action.CART_REMOVE.value
_TICKET_OPEN = Action.TICKET_OPEN.value
_TICKET_RESOLVE = Action.TICKET_RESOLVE.value
_FEEDBACK = Action.FEEDBACK.value
_REFUND = Action.REFUND.value
_ORDER = Action.ORDER.value


def is_anonymous(customer_key: str) -> bool:
    """True for the key of a customer known only by an anonymousId."""
    return customer_key.startswith(ANONYMOUS_PREFIX)


def stored_money(value: Any) -> float:
    """A stored touch's amount as the journey sums it: finite, within the ingest bound.

    Touches made now are bounded already (``touches.touch_from``); this keeps a
    journey stored before the bounds (a 1e308 order) from summing to inf, which
    its JSON state and snapshots cannot hold.
    """
    if not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(min(max(0.0, value), MAX_MONEY))


def fact_order(touch: Touch) -> tuple[datetime, str, str]:
    """The order in which a journey's facts are decided: event time, then source, then id.

    Ties of event time are broken by the id scope (the source) and the messageId, so
    the same facts give the same stages whatever order they arrived in.
    """
    return (touch.at, touch.id_scope, touch.event_id)


class CustomerJourney(Aggregate):
    """A customer's journey from first touch to loyalty."""

    # How many times the stage history was revised (StagesRevised); an instance
    # attribute only once revised, so journeys stored before read unchanged.
    stage_revision = 0

    @staticmethod
    def create_id(customer_key: str) -> UUID:
        """Journeys are found by customer key: the id is derived from it."""
        return uuid5(_JOURNEY_NAMESPACE, customer_key)

    @event("JourneyStarted")
    def __init__(self, customer_key: str, started_at: datetime) -> None:
        self.customer_key = customer_key
        self.started_at = started_at
        # Plain JSON-friendly state (str, not Stage; dict, not set) so snapshots transcode.
        self.stage_name: str | None = None
        self.stage_since: datetime | None = None
        self.stage_reason = ""
        # [stage, at] in the order reached: answers "which stage as of".
        self.stage_history: list[list[Any]] = []
        self.touchpoints = 0
        self.first_seen: datetime = started_at
        self.last_seen: datetime = started_at
        self.product_views = 0
        self.order_times: list[datetime] = []
        self.order_ids: dict[str, None] = {}
        self.revenue = 0.0
        self.refunded = 0.0
        self.cart_items = 0
        self.open_tickets = 0
        self.ratings: list[float] = []
        self.channels: dict[str, int] = {}
        self.categories: dict[str, int] = {}
        # Ids of recently recorded events ("<source>/<messageId>"; bare messageIds
        # before ids were kept per source) and their arrival: a re-sent event is
        # recognised and ignored, however old the event itself is (a re-imported
        # history, a replayed backfill). Past the dedup window (StageRules.
        # dedup_window_hours, in arrival time) an id moves to ``earlier_ids``, without
        # its arrival: it is still recognised, so a re-send a week later (a new receive
        # time, so a new row in the event log) is not a second event either.
        self.recorded_ids: dict[str, datetime] = {}
        self.earlier_ids: dict[str, None] = {}
        self.last_arrival: datetime = started_at
        # Identity: anonymous keys linked to this (known) customer, and those whose
        # history was absorbed; for an anonymous journey, the customer it merged into.
        self.linked_keys: list[str] = []
        self.absorbed_keys: list[str] = []
        # The stage histories ([stage, at]) of the absorbed anonymous journeys.
        self.absorbed_stages: dict[str, list[list[Any]]] = {}
        self.merged_into: str | None = None

    # --- commands ----------------------------------------------------------------------

    def record(self, event: TrackedEvent, rules: StageRules) -> list[StageChange]:
        """Record a tracked event once; returns the stage changes it caused, in order."""
        return self.record_touch(touch_from(event), rules)

    def in_order(self, touch: Touch, ties: bool = False) -> bool:
        """Whether ``touch`` comes after every fact recorded so far (in event time).

        Only then can its stage be decided from the current state; an earlier
        fact needs the history re-derived (:meth:`revise`). A fact at the same
        time as the latest counts as in order only with ``ties``: the state does
        not keep the tie-break key of the latest fact, so the application
        re-derives ties (:func:`fact_order`).
        """
        if self.touchpoints == 0:
            return True
        return touch.at >= self.last_seen if ties else touch.at > self.last_seen

    def record_touch(
        self, touch: Touch, rules: StageRules, decide: bool | None = None
    ) -> list[StageChange]:
        """Record a touch once; returns the stage changes it caused, in order.

        Every journey begins at awareness, so a first touch that already shows
        more (a cart, an order) reaches awareness and then the further stage.
        With ``decide`` false, or (``decide`` None) for a touch out of event-time
        order, only the fact is recorded: the caller re-derives the stages
        (:meth:`revise`). True decides regardless (facts given in order).
        """
        horizon = max(self.last_arrival, touch.arrived) - timedelta(hours=rules.dedup_window_hours)
        if self.merged_into is not None or self._seen(touch):
            return []
        if decide is False or (decide is None and not self.in_order(touch, ties=True)):
            self._record_fact(self._fact_name(touch), touch, horizon)
            self._link_if_new(touch)
            return []
        changes = self._lapse_if_due(touch.at, touch.event_id, rules)
        fact = self._fact_name(touch)
        self._record_fact(fact, touch, horizon)
        if self.stage is None:
            reason = f"first touch: {touch.event_name}"
            changes.append(self._change_to(Stage.AWARENESS, reason, touch.event_id, touch.at))
        decision = self._next_stage(touch, fact, rules)
        if decision is not None:
            changes.append(self._change_to(*decision, touch.event_id, touch.at))
        self._link_if_new(touch)
        return changes

    def _link_if_new(self, touch: Touch) -> None:
        anonymous_key = ANONYMOUS_PREFIX + touch.links_anonymous_id
        if (
            touch.links_anonymous_id
            and not is_anonymous(self.customer_key)
            and anonymous_key not in self.linked_keys
        ):
            self._link_identity(anonymous_key=anonymous_key, at=touch.at, event_id=touch.event_id)

    def revise(self, touches: Iterable[Touch], rules: StageRules) -> list[StageChange]:
        """Make the stage history the one ``touches`` (all recorded facts) give in event time.

        The facts are decided in :func:`fact_order`, as if they had arrived in
        that order. A history that only grows gets ``StageReached`` events; one
        whose past changes (a late fact, a merged identity) gets one
        ``StagesRevised`` with the whole new history: stored events are never
        rewritten. The changes returned for a revision are the whole new history:
        entries the old one lacked marked ``revised``, the others ``restated``.
        """
        if self.merged_into is not None:
            return []
        scratch = decided_in_event_time(self.customer_key, touches, rules)
        if scratch is None:
            return []
        self._revise_counts(scratch)
        derived = [
            (e.stage, e.reason, e.at, e.event_id)
            for e in scratch.pending_events
            if isinstance(e, CustomerJourney.StageReached)
        ]
        old = self.stage_history
        new = [[stage, at] for stage, _, at, _ in derived]
        if new == old:
            return []
        common = 0
        while common < min(len(old), len(new)) and old[common] == new[common]:
            common += 1
        if common == len(old):
            return [
                self._change_to(Stage(stage), reason, event_id, at)
                for stage, reason, at, event_id in derived[common:]
            ]
        revision = self.stage_revision + 1
        self.trigger_event(
            CustomerJourney.StagesRevised,
            history=[list(entry) for entry in derived],
            revised_from=common,
            revision=revision,
        )
        changes = []
        previous: Stage | None = None
        held = {(stage, at) for stage, at in old}
        for stage, reason, at, event_id in derived:
            kept = (stage, at) in held
            changes.append(
                StageChange(
                    customer_key=self.customer_key,
                    stage=Stage(stage),
                    previous=previous,
                    reason=reason,
                    at_event_id=event_id,
                    at=at,
                    revision=revision,
                    revised=not kept,
                    restated=kept,
                )
            )
            previous = Stage(stage)
        return changes

    def _revise_counts(self, scratch: CustomerJourney) -> None:
        """Make the counts that depend on order those of the facts in event time (``scratch``).

        An order id counts once, at its first occurrence by event time: a copy
        (another messageId) that arrives later but is stamped earlier is the
        order, with its time and revenue. Open tickets and cart items clamp at
        zero, so a resolve or removal that arrives before its cause counts too.
        """
        if (
            sorted(scratch.order_times) == sorted(self.order_times)
            and math.isclose(scratch.revenue, self.revenue, rel_tol=1e-12, abs_tol=1e-9)
            and (scratch.open_tickets, scratch.cart_items) == (self.open_tickets, self.cart_items)
        ):
            return
        moved = set(scratch.order_times) ^ set(self.order_times)
        self.trigger_event(
            CustomerJourney.CountsRevised,
            at=min(moved) if moved else self.last_seen,
            orders=_order_book(scratch),
            open_tickets=scratch.open_tickets,
            cart_items=scratch.cart_items,
        )

    def _seen(self, touch: Touch) -> bool:
        """Whether this event (its id within its source) was recorded, whenever it arrived."""
        earlier = self.ids_past_window
        return any(key in self.recorded_ids or key in earlier for key in touch.dedup_keys)

    @property
    def ids_past_window(self) -> dict[str, None]:
        """:attr:`earlier_ids`, also on a journey restored from a snapshot taken before
        ids were kept past the window (a snapshot restores ``__dict__`` as it was)."""
        earlier: dict[str, None] = self.__dict__.setdefault("earlier_ids", {})
        return earlier

    def merge_into(
        self, customer_key: str, at: datetime, event_id: str
    ) -> tuple[str, list[StageChange]]:
        """Merge this anonymous journey into ``customer_key``'s: "merged", "duplicate" or "refused".

        A journey of a known customer is never merged into another (two
        identified customers stay apart), nor is an anonymous journey merged
        into a second customer: both are refused and recorded.
        """
        if (
            event_id in self.recorded_ids
            or event_id in self.ids_past_window
            or self.merged_into == customer_key
        ):
            return "duplicate", []
        if not is_anonymous(self.customer_key):
            reason = f"{self.customer_key} is an identified customer"
        elif self.merged_into is not None:
            reason = f"already merged into {self.merged_into}"
        else:
            reason = ""
        if reason:
            self._refuse_merge(requested_by=customer_key, reason=reason, at=at, event_id=event_id)
            return "refused", []
        self._merge_into(customer_key=customer_key, at=at, event_id=event_id)
        change = self._change_to(Stage.MERGED, f"merged into {customer_key}", event_id, at)
        return "merged", [change]

    def absorb(
        self,
        anonymous_key: str,
        touches: Iterable[Touch],
        at: datetime,
        rules: StageRules,
        stages: Iterable[tuple[str, datetime]] = (),
    ) -> list[StageChange]:
        """Take in the history of an anonymous journey merged into this one.

        The touches become facts of this journey (an id seen before counts
        once); their stages are not decided here: the caller re-derives the
        whole history from all facts in event time (:meth:`revise`), so the
        merged identities' facts are decided as one person's. The anonymous
        journey's own stage history (``stages``) is kept beside it.
        """
        if anonymous_key in self.absorbed_keys or self.merged_into is not None:
            return []
        ordered = sorted(touches, key=lambda t: (t.at, t.event_id))
        self._merge_identity(
            anonymous_key=anonymous_key,
            at=at,
            touches=len(ordered),
            stages=[[stage, when] for stage, when in stages if stage != Stage.MERGED],
            derived=True,
        )
        for touch in ordered:
            self.record_touch(touch.merged(anonymous_key), rules, decide=False)
        return []

    # --- events ------------------------------------------------------------------------

    def _record_fact(self, fact: str, touch: Touch, forget_before: datetime) -> None:
        fields: dict[str, Any] = {"touch": touch.to_dict(), "forget_before": forget_before}
        if fact in ("OrderPlaced", "OrderRefunded"):
            fields |= _order(touch)
        elif fact == "FeedbackGiven":
            fields["rating"] = touch.rating
        self.trigger_event(getattr(CustomerJourney, fact), **fields)

    # The fact events and StageReached, one or two per recorded event, are classes
    # with their own apply: the @event methods' argument matching on every apply
    # cost a sixth of recording. Same names, fields and topics as the @event methods
    # made: events stored before read as these (tests/integration/test_journey_stores.py).

    class Fact(Aggregate.Event):
        """A recorded customer event: its touch, and when recorded ids are forgotten."""

        touch: dict[str, Any]
        forget_before: datetime

        def apply(self, aggregate: Aggregate) -> None:
            """The state change common to every fact event."""
            assert isinstance(aggregate, CustomerJourney)
            aggregate._apply(self.touch, self.forget_before)

    class Browsed(Fact):
        """The customer browsed (a product view, a search, a page)."""

    class Interacted(Fact):
        """Any other recorded event (custom events, identify, an order seen before)."""

    class CartOpened(Fact):
        """The first item went into an empty cart."""

    class CartChanged(Fact):
        """Items were added to or removed from a cart that stays non-empty."""

    class CartEmptied(Fact):
        """The last items left the cart."""

    class CheckoutStarted(Fact):
        """The customer started checking out."""

    class OrderPlaced(Fact):
        """A new order (an order id not seen before)."""

        order_id: str
        revenue: float

    class OrderRefunded(Fact):
        """An order was refunded."""

        order_id: str
        revenue: float

    class TicketOpened(Fact):
        """A support ticket was opened."""

    class TicketResolved(Fact):
        """A support ticket was resolved."""

    class FeedbackGiven(Fact):
        """The customer gave feedback, perhaps a rating."""

        rating: float | None

    class StageReached(Aggregate.Event):
        """The journey moved to ``stage`` at ``at``, because of ``event_id``."""

        stage: str
        reason: str
        at: datetime
        event_id: str

        def apply(self, aggregate: Aggregate) -> None:
            """The journey's stage, and its history."""
            assert isinstance(aggregate, CustomerJourney)
            aggregate.stage_name = self.stage
            aggregate.stage_reason = self.reason
            aggregate.stage_since = self.at
            aggregate.stage_history.append([self.stage, self.at])

    class StagesRevised(Aggregate.Event):
        """The stage history derived from the facts in event time changed in its past.

        ``history`` is the whole new history (``[stage, reason, at, event_id]``),
        ``revised_from`` the index of its first entry that differs from the old
        one, ``revision`` the count of revisions so far (the projections keep
        the rows of the newest revision).
        """

        history: list[list[Any]]
        revised_from: int
        revision: int

        def apply(self, aggregate: Aggregate) -> None:
            """The journey's stage and history become the revised ones."""
            assert isinstance(aggregate, CustomerJourney)
            aggregate.stage_history = [[stage, at] for stage, _, at, _ in self.history]
            last = self.history[-1] if self.history else None
            aggregate.stage_name = last[0] if last else None
            aggregate.stage_reason = last[1] if last else ""
            aggregate.stage_since = last[2] if last else None
            aggregate.stage_revision = self.revision

    class CountsRevised(Aggregate.Event):
        """The counts that depend on order, re-decided from the facts in event time.

        ``orders`` is the whole order book: each order id once, at its first
        occurrence by event time (the touches, as ``OrderPlaced`` carries them).
        ``at`` places it in the timeline: the earliest order time it moved.
        """

        at: datetime
        orders: list[dict[str, Any]]
        open_tickets: int
        cart_items: int

        def apply(self, aggregate: Aggregate) -> None:
            """Order times, ids, revenue, open tickets and cart items become the revised ones."""
            assert isinstance(aggregate, CustomerJourney)
            book = [Touch.from_dict(touch) for touch in self.orders]
            aggregate.order_times = [touch.at for touch in book]
            aggregate.order_ids = {touch.order_id: None for touch in book if touch.order_id}
            aggregate.revenue = sum(stored_money(touch.revenue) for touch in book)
            aggregate.open_tickets = self.open_tickets
            aggregate.cart_items = self.cart_items

    @event("IdentityLinked")
    def _link_identity(self, anonymous_key: str, at: datetime, event_id: str) -> None:
        self.linked_keys.append(anonymous_key)

    @event("IdentityMerged")
    def _merge_identity(
        self,
        anonymous_key: str,
        at: datetime,
        touches: int,
        stages: list[list[Any]],
        derived: bool = False,
    ) -> None:
        # ``derived``: the merged facts are decided with this journey's own in
        # event time (revise), so its history already holds the person's stages.
        # Merges stored before that (no such field) stamped the merged stages at
        # the merge: for those the anonymous history still answers "as of".
        self.absorbed_keys.append(anonymous_key)
        if not derived:
            self.absorbed_stages[anonymous_key] = stages

    @event("MergedInto")
    def _merge_into(self, customer_key: str, at: datetime, event_id: str) -> None:
        self.merged_into = customer_key
        self.recorded_ids[event_id] = at

    @event("MergeRefused")
    def _refuse_merge(self, requested_by: str, reason: str, at: datetime, event_id: str) -> None:
        self.recorded_ids[event_id] = at

    def _apply(self, data: dict[str, Any], forget_before: datetime) -> None:
        """The state change common to every fact event (deterministic: replays agree).

        Reads the stored touch dict as it is (the defaults of :class:`Touch` for
        keys that touches recorded earlier lack): rebuilding a ``Touch`` for every
        applied event was a fifth of recording.
        """
        at = datetime.fromisoformat(data["at"])
        received = data.get("received_at")
        arrived = datetime.fromisoformat(received) if received else at
        recorded_ids = self.recorded_ids
        recorded_ids[scoped_dedup_keys(data.get("id_scope", ""), data["event_id"])[0]] = arrived
        if arrived > self.last_arrival:
            self.last_arrival = arrived
        # Move ids past the window only when one has expired: min() is one C loop,
        # the moves rare.
        if min(recorded_ids.values()) < forget_before:
            earlier = self.ids_past_window
            for event_id, seen_at in list(recorded_ids.items()):
                if seen_at < forget_before:
                    del recorded_ids[event_id]
                    earlier[event_id] = None
        self.touchpoints += 1
        if at < self.first_seen:
            self.first_seen = at
        if at > self.last_seen:
            self.last_seen = at
        channel = data.get("channel", "unknown")
        self.channels[channel] = self.channels.get(channel, 0) + 1
        action = data["action"]
        if action == _PRODUCT_VIEW:
            self.product_views += 1
            category = data.get("category")
            if category:
                self.categories[category] = self.categories.get(category, 0) + 1
        elif action == _CART_ADD:
            self.cart_items += data.get("quantity", 1)
        elif action == _CART_REMOVE:
            self.cart_items = max(0, self.cart_items - data.get("quantity", 1))
        elif action == _TICKET_OPEN:
            self.open_tickets += 1
        elif action == _TICKET_RESOLVE:
            self.open_tickets = max(0, self.open_tickets - 1)
        elif action == _FEEDBACK:
            rating = data.get("rating")
            if rating is not None:
                self.ratings.append(rating)
        elif action == _REFUND:
            self.refunded += stored_money(data.get("revenue"))
        elif action == _ORDER:
            order_id = data.get("order_id", "")
            if not (order_id and order_id in self.order_ids):
                self.order_times.append(at)
                if order_id:
                    self.order_ids[order_id] = None
                self.revenue += stored_money(data.get("revenue"))
                self.cart_items = 0

    # --- decisions ---------------------------------------------------------------------

    def _is_new_order(self, touch: Touch) -> bool:
        # The same order id sent again (a new messageId) is not a second order.
        return not (touch.order_id and touch.order_id in self.order_ids)

    def _fact_name(self, touch: Touch) -> str:
        action = touch.action
        if action is Action.ORDER:
            return "OrderPlaced" if self._is_new_order(touch) else "Interacted"
        if action is Action.CART_ADD:
            return "CartOpened" if self.cart_items == 0 else "CartChanged"
        if action is Action.CART_REMOVE:
            return "CartEmptied" if 0 < self.cart_items <= touch.quantity else "CartChanged"
        fixed = _FIXED_FACTS.get(action)
        if fixed is not None:
            return fixed
        return "Browsed" if touch.event_type == EventType.BROWSE else "Interacted"

    def _lapse_if_due(self, now: datetime, event_id: str, rules: StageRules) -> list[StageChange]:
        """Loyalty lapses once more than ``loyalty_lapse_days`` pass without an order."""
        due = self.lapse_due(rules)
        if due is None or now <= due:
            return []
        reason = f"no order for {rules.loyalty_lapse_days} days"
        return [self._change_to(Stage.LAPSED, reason, event_id, due)]

    def lapse_due(self, rules: StageRules) -> datetime | None:
        """When a loyal customer lapses unless they order first; None if not loyal."""
        if self.stage is not Stage.LOYALTY or not self.order_times:
            return None
        return max(self.order_times) + timedelta(days=rules.loyalty_lapse_days)

    def _change_to(self, stage: Stage, reason: str, event_id: str, at: datetime) -> StageChange:
        previous = self.stage
        # Stages are reached in time order: a late (or merged) event cannot place a
        # stage before the one the customer is already in.
        at = max(at, self.stage_since) if self.stage_since is not None else at
        self.trigger_event(
            CustomerJourney.StageReached,
            stage=stage.value,
            reason=reason,
            at=at,
            event_id=event_id,
        )
        return StageChange(
            customer_key=self.customer_key,
            stage=stage,
            previous=previous,
            reason=reason,
            at_event_id=event_id,
            at=at,
            revision=self.stage_revision,
        )

    def _next_stage(self, touch: Touch, fact: str, rules: StageRules) -> tuple[Stage, str] | None:
        """The stage this touch moves the customer to, with the reason."""
        current = self.stage
        if fact == "OrderPlaced":
            if current is Stage.LAPSED:
                return Stage.LOYALTY, "won back: order after lapse"
            if self.orders == 1 and _below(current, Stage.PURCHASE):
                return Stage.PURCHASE, "first order"
            window = timedelta(days=rules.loyalty_repeat_window_days)
            others = list(self.order_times)
            others.remove(touch.at)
            if (
                others
                and _below(current, Stage.LOYALTY)
                and min(abs(touch.at - other) for other in others) <= window
            ):
                return Stage.LOYALTY, "repeat order"
        support = touch.event_type == EventType.SUPPORT
        if support and self.orders >= 1 and _below(current, Stage.SERVICE):
            return Stage.SERVICE, f"support after purchase: {touch.event_name}"
        if _below(current, Stage.CONSIDERATION):
            if touch.event_type in (EventType.CART, EventType.CHECKOUT):
                return Stage.CONSIDERATION, f"{touch.event_type}: {touch.event_name}"
            if touch.action is Action.SEARCH:
                return Stage.CONSIDERATION, "product search"
            if self.product_views >= rules.consideration_product_views:
                return Stage.CONSIDERATION, f"{self.product_views} product views"
        return None

    # --- queries -----------------------------------------------------------------------

    @property
    def stage(self) -> Stage | None:
        """The stage the customer is in after the last recorded event, if any."""
        # A table, not Stage(name): the decisions ask for the stage several times per event.
        return _STAGES[self.stage_name] if self.stage_name else None

    @property
    def orders(self) -> int:
        """Completed orders recorded so far."""
        return len(self.order_times)

    def stage_as_of(self, moment: datetime, rules: StageRules) -> Stage | None:
        """The person's stage at ``moment``, lapse included; None before any stage.

        The stage history holds the facts of every merged identity decided in
        event time; only merges stored before that (``absorbed_stages``) add the
        furthest stage their anonymous journey had reached by then.
        """
        stage = _last_stage(self.stage_history, moment)
        if stage is Stage.LOYALTY:
            orders = [t for t in self.order_times if t <= moment]
            if orders and moment > max(orders) + timedelta(days=rules.loyalty_lapse_days):
                stage = Stage.LAPSED
        for history in self.absorbed_stages.values():
            other = _last_stage(history, moment)
            if other is not None and (stage is None or other.rank > stage.rank):
                stage = other
        return stage

    def person_stage_history(self) -> list[tuple[Stage, datetime]]:
        """Stages the person reached, in time order, across merged identities.

        Every stage change of this journey and of the absorbed ones, keeping
        those that take the person further (or lapse / win back loyalty).
        """
        entries = [(Stage(name), at) for name, at in self.stage_history]
        if not self.absorbed_stages:
            return entries  # the history is already the person's, decided in event time
        for history in self.absorbed_stages.values():
            entries.extend((Stage(name), at) for name, at in history)
        entries.sort(key=lambda entry: (entry[1], entry[0].rank))
        kept: list[tuple[Stage, datetime]] = []
        for stage, at in entries:
            current = kept[-1][0] if kept else None
            cycle = (current, stage) in {
                (Stage.LOYALTY, Stage.LAPSED),
                (Stage.LAPSED, Stage.LOYALTY),
            }
            if (
                current is None
                or cycle
                or (stage.rank > current.rank and stage is not Stage.LAPSED)
            ):
                kept.append((stage, at))
        return kept

    def summary(self) -> dict[str, Any]:
        """The journey's state as plain data, for read models."""
        return {
            "customer_key": self.customer_key,
            "stage": self.stage_name,
            "stage_since": self.stage_since,
            "event_count": self.touchpoints,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "orders": self.orders,
            "last_order_at": max(self.order_times) if self.order_times else None,
            "merged_into": self.merged_into or "",
            "absorbed_keys": list(self.absorbed_keys),
            "version": self.version,
        }

    def purchase_cycle_days(self) -> float | None:
        """Median days between consecutive orders; None with fewer than two orders."""
        times = sorted(self.order_times)
        gaps = [(b - a).total_seconds() / 86400 for a, b in pairwise(times)]
        return float(median(gaps)) if gaps else None


@dataclass(frozen=True, slots=True)
class StageChange:
    """A customer reached a stage: what the stage projection and topic receive."""

    customer_key: str
    stage: Stage
    previous: Stage | None
    reason: str
    at_event_id: str
    at: datetime
    # Which revision of the journey's stage history this change belongs to, and
    # whether a revision moved it (into the past): triggers do not fire for those.
    revision: int = 0
    revised: bool = False
    # An entry of a revision that was already true: rewritten under the new
    # revision in the projections, not published again.
    restated: bool = False


def decided_in_event_time(
    customer_key: str, touches: Iterable[Touch], rules: StageRules
) -> CustomerJourney | None:
    """A scratch journey (in memory) of ``touches`` recorded in event time; None without any.

    A pure function of the facts, whatever order they arrived in: the same
    decisions as a live journey's, the facts taken in :func:`fact_order`.
    """
    ordered = sorted(touches, key=fact_order)
    if not ordered:
        return None
    scratch = CustomerJourney(customer_key=customer_key, started_at=ordered[0].at)
    for touch in ordered:
        scratch.record_touch(replace(touch, links_anonymous_id=""), rules, decide=True)
    return scratch


def derive_stages(
    customer_key: str, touches: Iterable[Touch], rules: StageRules
) -> list[tuple[str, str, datetime, str]]:
    """The stage history ``touches`` give in event time: ``(stage, reason, at, event_id)``."""
    scratch = decided_in_event_time(customer_key, touches, rules)
    return [
        (e.stage, e.reason, e.at, e.event_id)
        for e in (scratch.pending_events if scratch is not None else [])
        if isinstance(e, CustomerJourney.StageReached)
    ]


def _order_book(journey: CustomerJourney) -> list[dict[str, Any]]:
    """The touches of the orders ``journey`` counts (an order id once), as stored."""
    return [e.touch for e in journey.pending_events if isinstance(e, CustomerJourney.OrderPlaced)]


_STAGES = {stage.value: stage for stage in Stage}

# Actions whose fact event does not depend on the journey's state.
_FIXED_FACTS = {
    Action.CHECKOUT_START: "CheckoutStarted",
    Action.REFUND: "OrderRefunded",
    Action.TICKET_OPEN: "TicketOpened",
    Action.TICKET_RESOLVE: "TicketResolved",
    Action.FEEDBACK: "FeedbackGiven",
}


def _order(touch: Touch) -> dict[str, Any]:
    return {"order_id": touch.order_id, "revenue": touch.revenue}


def _last_stage(history: Iterable[list[Any]], moment: datetime) -> Stage | None:
    stage: Stage | None = None
    for name, at in history:
        if at > moment:
            break
        stage = Stage(name)
    return stage


def _below(current: Stage | None, stage: Stage) -> bool:
    return current is None or current.rank < stage.rank
