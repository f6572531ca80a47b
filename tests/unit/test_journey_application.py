"""Unit tests for JourneyApplication on the in-memory (POPO) event store."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from events import EventType, TrackedEvent, event_type_for
from journeys.application import JourneyApplication, JourneyUpdate, StageChange
from journeys.domainmodel import CustomerJourney
from journeys.stages import Stage, StageRules

T0 = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)
SOURCE = "tracking-events"
_ids = itertools.count()


def touch(
    name: str = "Product Viewed",
    *,
    customer: str = "alice",
    at: timedelta = timedelta(0),
    event_id: str | None = None,
    call_type: str = "track",
) -> TrackedEvent:
    when = T0 + at
    return TrackedEvent(
        event_id=event_id or f"evt-{next(_ids)}",
        customer_key=customer,
        call_type=call_type,
        event_type=event_type_for(call_type, name),
        event_name=name,
        timestamp=when,
        received_at=when,
        user_id=customer,
    )


def new_app(rules: StageRules | None = None) -> JourneyApplication:
    return JourneyApplication(rules=rules, env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


@pytest.fixture
def app() -> Iterator[JourneyApplication]:
    application = new_app()
    yield application
    application.close()


def record_and_commit(
    app: JourneyApplication, touches: list[TrackedEvent], position: int
) -> JourneyUpdate:
    update = app.record(touches, Tracking(SOURCE, position))
    app.commit(update)
    return update


def state_of(journey: CustomerJourney) -> dict[str, Any]:
    """Everything the aggregate holds, except events not yet collected."""
    return {k: v for k, v in vars(journey).items() if k != "_pending_events"}


# --- reading an empty store ---------------------------------------------------------------


def test_unknown_customer_has_no_journey(app: JourneyApplication) -> None:
    assert app.journey("nobody") is None


def test_nothing_consumed_is_position_zero(app: JourneyApplication) -> None:
    assert app.consumed_position(SOURCE) == 0


def test_default_rules(app: JourneyApplication) -> None:
    assert app.rules == StageRules()


# --- record -------------------------------------------------------------------------------


def test_record_reports_recorded_events_stage_changes_and_journeys(
    app: JourneyApplication,
) -> None:
    batch = [
        touch("Home", call_type="page", customer="alice", event_id="a1"),
        touch("Product Added", customer="alice", event_id="a2", at=timedelta(minutes=1)),
        touch("Order Completed", customer="bob", event_id="b1", at=timedelta(minutes=2)),
        touch("Promotion Viewed", customer="alice", event_id="a3", at=timedelta(minutes=3)),
    ]
    update = app.record(batch, Tracking(SOURCE, 10))

    assert update.recorded == batch
    assert update.stage_changes == [
        StageChange("alice", Stage.AWARENESS, None, "first touch: Home", "a1", T0),
        StageChange(
            "alice",
            Stage.CONSIDERATION,
            Stage.AWARENESS,
            "cart: Product Added",
            "a2",
            T0 + timedelta(minutes=1),
        ),
        # Every journey begins at awareness, even one whose first touch is an order.
        StageChange(
            "bob",
            Stage.AWARENESS,
            None,
            "first touch: Order Completed",
            "b1",
            T0 + timedelta(minutes=2),
        ),
        StageChange(
            "bob", Stage.PURCHASE, Stage.AWARENESS, "first order", "b1", T0 + timedelta(minutes=2)
        ),
    ]
    assert set(update.journeys) == {"alice", "bob"}
    assert update.journeys["alice"].touchpoints == 3
    assert update.journeys["alice"].stage is Stage.CONSIDERATION
    assert update.journeys["bob"].stage is Stage.PURCHASE
    assert update.processing.tracking == Tracking(SOURCE, 10)


def test_record_saves_nothing_until_commit(app: JourneyApplication) -> None:
    update = app.record([touch(customer="alice")], Tracking(SOURCE, 1))
    assert update.journeys["alice"].touchpoints == 1
    assert app.journey("alice") is None
    assert app.consumed_position(SOURCE) == 0

    app.commit(update)
    stored = app.journey("alice")
    assert stored is not None
    assert stored.touchpoints == 1
    assert stored.stage is Stage.AWARENESS
    assert app.consumed_position(SOURCE) == 1


def test_record_without_commit_leaves_an_existing_journey_unchanged(
    app: JourneyApplication,
) -> None:
    record_and_commit(app, [touch("Product Viewed"), touch("Product Added")], position=1)
    before = app.journey("alice")
    assert before is not None

    update = app.record(
        [touch("Order Completed"), touch("Ticket Created"), touch(customer="bob")],
        Tracking(SOURCE, 2),
    )
    assert update.journeys["alice"].stage is Stage.SERVICE

    after = app.journey("alice")
    assert after is not None
    assert state_of(after) == state_of(before)
    assert after.stage is Stage.CONSIDERATION
    assert after.version == before.version
    assert app.journey("bob") is None
    assert app.consumed_position(SOURCE) == 1


def test_replaying_an_uncommitted_batch_gives_the_same_update(app: JourneyApplication) -> None:
    """A crash between effects and commit: the batch is consumed again from the old position."""
    record_and_commit(app, [touch("Product Viewed", event_id="x0")], position=1)
    batch = [
        touch("Product Viewed", event_id="x1"),
        touch("Order Completed", event_id="x2"),
        touch("Home", call_type="page", customer="bob", event_id="y1"),
    ]
    first = app.record(batch, Tracking(SOURCE, 2))  # crashed before commit
    second = app.record(batch, Tracking(SOURCE, 2))

    assert second.recorded == first.recorded == batch
    assert second.stage_changes == first.stage_changes
    # Alice's facts tie in time with her first: her stages are re-derived at the
    # batch's end (journeys.domainmodel.fact_order), after Bob's.
    assert [(c.customer_key, c.stage) for c in second.stage_changes] == [
        ("bob", Stage.AWARENESS),
        ("alice", Stage.CONSIDERATION),
        ("alice", Stage.PURCHASE),
    ]
    app.commit(second)
    alice = app.journey("alice")
    assert alice is not None
    assert alice.touchpoints == 3
    assert alice.stage is Stage.PURCHASE
    assert app.consumed_position(SOURCE) == 2


def test_redelivered_batch_after_commit_records_nothing(app: JourneyApplication) -> None:
    batch = [touch("Product Viewed"), touch("Order Completed"), touch(customer="bob")]
    record_and_commit(app, batch, position=5)
    version = app.journey("alice").version  # type: ignore[union-attr]

    again = app.record(batch, Tracking(SOURCE, 6))
    assert again.recorded == []
    assert again.stage_changes == []
    app.commit(again)

    alice = app.journey("alice")
    assert alice is not None
    assert alice.version == version
    assert alice.touchpoints == 2
    assert app.consumed_position(SOURCE) == 6  # the position moves even when nothing is new


def test_duplicates_within_a_batch_count_once(app: JourneyApplication) -> None:
    view = touch("Product Viewed", event_id="dup")
    update = app.record([view, view, view], Tracking(SOURCE, 1))
    assert update.recorded == [view]
    assert [c.stage for c in update.stage_changes] == [Stage.AWARENESS]
    app.commit(update)
    alice = app.journey("alice")
    assert alice is not None
    assert alice.touchpoints == 1
    assert alice.product_views == 1


def test_committing_the_same_position_twice_is_refused(app: JourneyApplication) -> None:
    record_and_commit(app, [touch("Product Viewed")], position=3)
    stale = app.record([touch("Product Added")], Tracking(SOURCE, 3))
    with pytest.raises(IntegrityError):
        app.commit(stale)
    alice = app.journey("alice")
    assert alice is not None
    assert alice.touchpoints == 1
    assert alice.stage is Stage.AWARENESS


def test_positions_are_tracked_per_source(app: JourneyApplication) -> None:
    app.commit(app.record([touch()], Tracking("topic-a", 7)))
    app.commit(app.record([touch()], Tracking("topic-b", 2)))
    assert app.consumed_position("topic-a") == 7
    assert app.consumed_position("topic-b") == 2
    assert app.consumed_position("topic-c") == 0


def test_record_without_position_commits_events_only(app: JourneyApplication) -> None:
    app.commit(app.record([touch()]))
    assert app.journey("alice") is not None
    assert app.consumed_position(SOURCE) == 0


def test_stage_changes_carry_the_previous_stage_across_batches(app: JourneyApplication) -> None:
    first = record_and_commit(app, [touch("Order Completed")], position=1)
    second = record_and_commit(
        app, [touch("Ticket Created"), touch("Order Completed", at=timedelta(days=3))], position=2
    )
    assert [(c.previous, c.stage) for c in first.stage_changes] == [
        (None, Stage.AWARENESS),
        (Stage.AWARENESS, Stage.PURCHASE),
    ]
    assert [(c.previous, c.stage) for c in second.stage_changes] == [
        (Stage.PURCHASE, Stage.SERVICE),
        (Stage.SERVICE, Stage.LOYALTY),
    ]
    assert second.stage_changes[-1].reason == "repeat order"


def test_application_rules_are_applied() -> None:
    app = new_app(StageRules(consideration_product_views=3))
    try:
        update = app.record([touch(), touch(), touch()], Tracking(SOURCE, 1))
        assert [c.stage for c in update.stage_changes] == [Stage.AWARENESS, Stage.CONSIDERATION]
        assert update.stage_changes[-1].at_event_id == update.recorded[2].event_id
    finally:
        app.close()


def test_journey_starts_at_the_first_touch(app: JourneyApplication) -> None:
    record_and_commit(app, [touch(at=timedelta(days=2)), touch(at=timedelta(days=1))], position=1)
    alice = app.journey("alice")
    assert alice is not None
    # A batch's facts are taken in event time: the journey starts at its earliest.
    assert alice.started_at == T0 + timedelta(days=1)
    assert alice.first_seen == T0 + timedelta(days=1)
    assert alice.id == CustomerJourney.create_id("alice")


def test_separate_applications_do_not_share_popo_stores() -> None:
    first, second = new_app(), new_app()
    try:
        record_and_commit(first, [touch()], position=1)
        assert first.journey("alice") is not None
        assert second.journey("alice") is None
    finally:
        first.close()
        second.close()


# --- snapshots ----------------------------------------------------------------------------


def test_long_journey_reloads_identically_from_a_snapshot(app: JourneyApplication) -> None:
    journey_id = CustomerJourney.create_id("alice")
    touches = [touch("Product Viewed", at=timedelta(minutes=i)) for i in range(240)]
    touches[50] = touch("Order Completed", at=timedelta(minutes=50))
    touches[120] = touch("Ticket Created", at=timedelta(minutes=120))
    # Batches of 37 so version 200 falls inside a batch, not at its end.
    for position, start in enumerate(range(0, len(touches), 37), start=1):
        update = record_and_commit(app, touches[start : start + 37], position)
    live = update.journeys["alice"]
    assert live.version > 200

    snapshots = list(app.snapshots.get(journey_id))  # type: ignore[union-attr]
    assert [s.originator_version for s in snapshots] == [200]

    reloaded = app.journey("alice")
    assert reloaded is not None
    assert state_of(reloaded) == state_of(live)
    assert reloaded.stage is Stage.SERVICE
    assert reloaded.touchpoints == 240
    assert reloaded.orders == 1
    assert all(t.tzinfo is not None for t in reloaded.order_times)

    # The state inside the snapshot itself must be the journey at version 200.
    at_200 = app.repository.get(journey_id, version=200)
    assert isinstance(at_200, CustomerJourney)
    assert at_200.version == 200
    assert at_200.touchpoints < reloaded.touchpoints
    assert at_200.recorded_ids.keys() <= reloaded.recorded_ids.keys()


def test_journey_from_a_snapshot_still_ignores_old_events_and_counts_orders(
    app: JourneyApplication,
) -> None:
    first_order = touch("Order Completed", event_id="order-1")
    touches = [first_order] + [touch("Product Viewed", at=timedelta(minutes=i)) for i in range(210)]
    record_and_commit(app, touches, position=1)
    assert list(app.snapshots.get(CustomerJourney.create_id("alice")))  # type: ignore[union-attr]

    second_order = touch("Order Completed", at=timedelta(days=10))
    update = app.record([first_order, second_order], Tracking(SOURCE, 2))
    assert update.recorded == [second_order]
    assert [(c.previous, c.stage) for c in update.stage_changes] == [
        (Stage.PURCHASE, Stage.LOYALTY)
    ]


def test_stored_events_are_typed_by_event_name(app: JourneyApplication) -> None:
    record_and_commit(app, [touch("Home", call_type="page")], position=1)
    journey_id = CustomerJourney.create_id("alice")
    stored = list(app.events.get(journey_id))
    assert [type(e).__name__ for e in stored] == [
        "JourneyStarted",
        "Browsed",
        "StageReached",
    ]
    assert stored[1].touch["event_type"] == EventType.BROWSE.value  # type: ignore[attr-defined]
    assert stored[2].stage == Stage.AWARENESS.value  # type: ignore[attr-defined]
