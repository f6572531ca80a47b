"""The seven minimal cases of issue 15: a journey is a function of its facts in event time.

On the journey application (POPO store), partitions simulated as in
test_journey_identity.py: each customer key's events are one partition's batch,
and the identity messages (``update.forwards``) are delivered by the test.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from eventsourcing.persistence import Tracking

from events import TrackedEvent, event_type_for
from journeys.application import JourneyApplication, JourneyUpdate
from journeys.stages import Stage
from projections.profiles import profile_of

T0 = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)
_ids = itertools.count()
_positions = itertools.count(1)


def event(
    name: str,
    at: timedelta,
    *,
    user: str | None = None,
    anon: str | None = None,
    call_type: str = "track",
    event_id: str | None = None,
    **properties: object,
) -> TrackedEvent:
    when = T0 + at
    return TrackedEvent(
        event_id=event_id or f"e-{next(_ids)}",
        customer_key=user if user is not None else f"anon:{anon}",
        call_type=call_type,
        event_type=event_type_for(call_type, name),
        event_name=name,
        timestamp=when,
        received_at=datetime(2024, 6, 1, tzinfo=UTC),  # one batch, sent later
        user_id=user,
        anonymous_id=anon,
        properties=dict(properties),
    )


@pytest.fixture
def app() -> Iterator[JourneyApplication]:
    application = JourneyApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield application
    application.close()


def deliver(app: JourneyApplication, *events: TrackedEvent) -> JourneyUpdate:
    update = app.record(list(events), Tracking("p", next(_positions)))
    app.commit(update)
    return update


def one_batch(app: JourneyApplication, *events: TrackedEvent) -> list[JourneyUpdate]:
    """One /v1/batch: each key's events on its partition, then the identity messages."""
    updates = []
    keys = dict.fromkeys(e.customer_key for e in events)
    pending = [[e for e in events if e.customer_key == key] for key in keys]
    while pending:
        batch = pending.pop(0)
        update = deliver(app, *batch)
        updates.append(update)
        pending.extend([message] for message in update.forwards)
    return updates


def stages_of(app: JourneyApplication, key: str) -> list[tuple[str, datetime]]:
    journey = app.journey(key)
    assert journey is not None
    return [(stage, at) for stage, at in journey.stage_history]


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def test_case_1_anonymous_ticket_before_the_order_is_no_service(app: JourneyApplication) -> None:
    one_batch(
        app,
        event("Ticket Created", minutes(0), anon="a1"),
        event("Identify", minutes(1), user="u1", anon="a1", call_type="identify"),
        event("Order Completed", minutes(2), user="u1", order_id="o1", revenue=10),
    )
    journey = app.journey("u1")
    assert journey is not None
    assert journey.stage is Stage.PURCHASE
    assert stages_of(app, "u1") == [("awareness", T0), ("purchase", T0 + minutes(2))]


def test_case_2_anonymous_order_then_own_ticket_is_service(app: JourneyApplication) -> None:
    one_batch(
        app,
        event("Order Completed", minutes(0), anon="a2", order_id="o2", revenue=10),
        event("Identify", minutes(1), user="u2", anon="a2", call_type="identify"),
        event("Ticket Created", minutes(2), user="u2"),
    )
    journey = app.journey("u2")
    assert journey is not None
    assert journey.stage is Stage.SERVICE
    assert stages_of(app, "u2") == [
        ("awareness", T0),
        ("purchase", T0),
        ("service", T0 + minutes(2)),
    ]


@pytest.mark.parametrize("order_first", [True, False])
def test_case_3_arrival_order_does_not_decide(app: JourneyApplication, order_first: bool) -> None:
    order = event("Order Completed", timedelta(hours=1), user="u3", order_id="o3")
    ticket = event("Ticket Created", timedelta(0), user="u3")
    deliver(app, *([order, ticket] if order_first else [ticket, order]))
    assert stages_of(app, "u3") == [("awareness", T0), ("purchase", T0 + timedelta(hours=1))]


def test_case_4_an_earlier_view_sent_second_moves_awareness_back(
    app: JourneyApplication,
) -> None:
    update = deliver(
        app,
        event("Order Completed", timedelta(days=5), user="u4", order_id="o4"),
        event("Product Viewed", timedelta(0), user="u4"),
    )
    journey = app.journey("u4")
    assert journey is not None
    assert journey.stage_as_of(T0 + timedelta(days=1), app.rules) is Stage.AWARENESS
    assert stages_of(app, "u4") == [("awareness", T0), ("purchase", T0 + timedelta(days=5))]
    # Within one batch the facts are decided once, in event time: no revision needed.
    assert [(c.stage, c.at) for c in update.stage_changes] == [
        (Stage.AWARENESS, T0),
        (Stage.PURCHASE, T0 + timedelta(days=5)),
    ]


def test_case_5_anonymous_loyalty_counts_before_the_identify(app: JourneyApplication) -> None:
    one_batch(
        app,
        event("Order Completed", timedelta(0), anon="a5", order_id="o5a", revenue=5),
        event("Order Completed", timedelta(hours=1), anon="a5", order_id="o5b", revenue=5),
        event("Identify", timedelta(days=1), user="u5", anon="a5", call_type="identify"),
        event("Products Searched", timedelta(days=3), user="u5"),
    )
    journey = app.journey("u5")
    assert journey is not None
    assert journey.stage_as_of(T0 + timedelta(days=2), app.rules) is Stage.LOYALTY
    past = app.journey_as_of(journey, T0 + timedelta(days=2))
    assert past is not None
    assert past.stage_as_of(T0 + timedelta(days=2), app.rules) is Stage.LOYALTY
    assert ("loyalty", T0 + timedelta(hours=1)) in stages_of(app, "u5")


def test_case_6_one_order_id_under_two_message_ids_is_one_order(
    app: JourneyApplication,
) -> None:
    deliver(
        app,
        event("Order Completed", timedelta(0), user="u6", order_id="o6", revenue=10),
        event("Order Completed", minutes(5), user="u6", order_id="o6", revenue=10),
    )
    journey = app.journey("u6")
    assert journey is not None
    profile = profile_of(journey)
    assert (profile["orders"], profile["revenue"]) == (1, 10.0)
    assert journey.stage is Stage.PURCHASE


def test_case_7_as_of_cuts_the_counters_too(app: JourneyApplication) -> None:
    deliver(
        app,
        event("Product Viewed", timedelta(0), user="u7"),
        event("Order Completed", timedelta(days=2), user="u7", order_id="o7", revenue=10),
    )
    journey = app.journey("u7")
    assert journey is not None
    before_anything = app.journey_as_of(journey, T0 - timedelta(days=1))
    assert before_anything is None
    before_order = app.journey_as_of(journey, T0 + timedelta(days=1))
    assert before_order is not None
    assert (before_order.touchpoints, before_order.orders) == (1, 0)
    assert profile_of(before_order)["revenue"] == 0.0
    assert before_order.stage_as_of(T0 + timedelta(days=1), app.rules) is Stage.AWARENESS
    now = app.journey_as_of(journey, T0 + timedelta(days=3))
    assert now is not None
    assert (now.touchpoints, now.orders, profile_of(now)["revenue"]) == (2, 1, 10.0)


def test_a_revision_is_marked_and_never_rewrites_stored_events(app: JourneyApplication) -> None:
    first = deliver(app, event("Order Completed", timedelta(hours=1), user="u8", order_id="o8"))
    stored = [type(e).__name__ for e in app.history(app.journey("u8"))]  # type: ignore[arg-type]
    view = event("Product Viewed", timedelta(0), user="u8")
    late = deliver(app, view)
    journey = app.journey("u8")
    assert journey is not None
    history = app.history(journey)
    assert [type(e).__name__ for e in history][: len(stored)] == stored
    assert type(history[-1]).__name__ == "StagesRevised"
    assert journey.stage_revision == 1
    assert [c.stage for c in first.stage_changes] == [Stage.AWARENESS, Stage.PURCHASE]
    # The awareness moved back an hour (revised); purchase is as it was (restated).
    assert [(c.stage, c.at, c.revised, c.restated, c.revision) for c in late.stage_changes] == [
        (Stage.AWARENESS, T0, True, False, 1),
        (Stage.PURCHASE, T0 + timedelta(hours=1), False, True, 1),
    ]
    # Sent again: counted once, nothing changes again.
    assert deliver(app, view).stage_changes == []
