"""The ``CustomerJourney`` aggregate: one customer's touchpoints and stages.

Pure domain: no Kafka, no SQL, no HTTP. Persisted by the eventsourcing library;
every projection can be rebuilt by replaying these events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from events import EventType, TrackedEvent, normalized_name
from journeys.stages import Stage, StageRules

_JOURNEY_NAMESPACE = uuid5(NAMESPACE_URL, "urn:customer-journeys:journey")


class CustomerJourney(Aggregate):
    """A customer's journey from first touch to loyalty."""

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
        self.touchpoints = 0
        self.first_seen: datetime = started_at
        self.last_seen: datetime = started_at
        self.product_views = 0
        self.order_times: list[datetime] = []
        # Ids of recorded events: a re-delivered event is recognised and ignored.
        self.recorded_ids: dict[str, None] = {}

    def record(self, touch: TrackedEvent, rules: StageRules) -> list[StageChange]:
        """Record a touchpoint once; returns the stage changes it caused, in order.

        Every journey begins at awareness, so a first touch that already shows
        more (a cart, an order) reaches awareness and then the further stage.
        """
        if touch.event_id in self.recorded_ids:
            return []
        self._record_touchpoint(
            event_id=touch.event_id,
            event_type=touch.event_type.value,
            event_name=touch.event_name,
            at=touch.timestamp,
        )
        changes = []
        if self.stage is None:
            changes.append(
                self._change_to(Stage.AWARENESS, f"first touch: {touch.event_name}", touch)
            )
        decision = self._next_stage(touch, rules)
        if decision is not None:
            changes.append(self._change_to(*decision, touch))
        return changes

    def _change_to(self, stage: Stage, reason: str, touch: TrackedEvent) -> StageChange:
        previous = self.stage
        self._reach_stage(stage=stage.value, reason=reason, at=touch.timestamp)
        return StageChange(
            customer_key=self.customer_key,
            stage=stage,
            previous=previous,
            reason=reason,
            at_event_id=touch.event_id,
            at=touch.timestamp,
        )

    @event("TouchpointRecorded")
    def _record_touchpoint(
        self, event_id: str, event_type: str, event_name: str, at: datetime
    ) -> None:
        self.recorded_ids[event_id] = None
        self.touchpoints += 1
        self.first_seen = min(self.first_seen, at)
        self.last_seen = max(self.last_seen, at)
        name = normalized_name(event_name)
        if name == "product viewed":
            self.product_views += 1
        if _is_order(event_type, name):
            self.order_times.append(at)

    @event("StageReached")
    def _reach_stage(self, stage: str, reason: str, at: datetime) -> None:
        self.stage_name = stage
        self.stage_reason = reason
        self.stage_since = at

    def _next_stage(self, touch: TrackedEvent, rules: StageRules) -> tuple[Stage, str] | None:
        """The stage this touch moves the customer to, with the reason."""
        name = normalized_name(touch.event_name)
        current = self.stage
        if _is_order(touch.event_type, name):
            if self.orders == 1 and _below(current, Stage.PURCHASE):
                return Stage.PURCHASE, "first order"
            window = timedelta(days=rules.loyalty_repeat_window_days)
            others = self.order_times[:-1]
            if (
                others
                and _below(current, Stage.LOYALTY)
                and min(abs(touch.timestamp - other) for other in others) <= window
            ):
                return Stage.LOYALTY, "repeat order"
        if (
            touch.event_type is EventType.SUPPORT
            and self.orders >= 1
            and _below(current, Stage.SERVICE)
        ):
            return Stage.SERVICE, f"support after purchase: {touch.event_name}"
        if _below(current, Stage.CONSIDERATION):
            if touch.event_type in (EventType.CART, EventType.CHECKOUT):
                return Stage.CONSIDERATION, f"{touch.event_type.value}: {touch.event_name}"
            if name == "products searched":
                return Stage.CONSIDERATION, "product search"
            if self.product_views >= rules.consideration_product_views:
                return Stage.CONSIDERATION, f"{self.product_views} product views"
        return None

    @property
    def stage(self) -> Stage | None:
        """The stage the customer is in now, if any touch was recorded."""
        return Stage(self.stage_name) if self.stage_name else None

    @property
    def orders(self) -> int:
        """Completed orders recorded so far."""
        return len(self.order_times)

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
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class StageChange:
    """A customer reached a stage: what the stage projection and topic receive."""

    customer_key: str
    stage: Stage
    previous: Stage | None
    reason: str
    at_event_id: str
    at: datetime


def _is_order(event_type: str, name: str) -> bool:
    # A page named "Order Completed" is a page view, not an order.
    return event_type == EventType.PURCHASE and name == "order completed"


def _below(current: Stage | None, stage: Stage) -> bool:
    return current is None or current.rank < stage.rank
