"""Identity merging on the journey application (POPO store), partitions simulated.

Each customer key is processed separately, as on its own partition; the
messages the application asks to send (``update.forwards``) are delivered by
the test in the orders that concurrent partitions could produce.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from eventsourcing.persistence import Tracking

from events import TrackedEvent, event_type_for
from journeys.application import JourneyApplication, JourneyUpdate
from journeys.stages import Stage

T0 = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)
_ids = itertools.count()
_positions = itertools.count(1)


def event(
    name: str,
    minutes: float,
    *,
    user: str | None = None,
    anon: str | None = None,
    call_type: str = "track",
    **properties: object,
) -> TrackedEvent:
    when = T0 + timedelta(minutes=minutes)
    return TrackedEvent(
        event_id=f"i-{next(_ids)}",
        customer_key=user if user is not None else f"anon:{anon}",
        call_type=call_type,
        event_type=event_type_for(call_type, name),
        event_name=name,
        timestamp=when,
        received_at=when,
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


def test_anonymous_history_merges_into_the_known_customer(app: JourneyApplication) -> None:
    deliver(app, event("Product Viewed", 0, anon="a1"), event("Product Viewed", 1, anon="a1"))
    identified = deliver(app, event("Identify", 5, user="u", anon="a1", call_type="identify"))
    (link,) = identified.forwards
    assert (link.customer_key, link.user_id) == ("anon:a1", "u")

    merged = deliver(app, link)
    (bundle,) = merged.forwards
    assert bundle.customer_key == "u"
    assert [c.stage for c in merged.stage_changes] == [Stage.MERGED]
    absorbed = deliver(app, bundle)
    # The merged facts are decided with the customer's own in event time: a revision.
    # Awareness moves back from the identify (minute 5) to the first anonymous view.
    assert [(c.stage, c.at, c.revised) for c in absorbed.stage_changes] == [
        (Stage.AWARENESS, T0, True),
        (Stage.CONSIDERATION, T0 + timedelta(minutes=1), True),
    ]

    known = app.journey("u")
    assert known is not None
    assert known.touchpoints == 3
    assert known.absorbed_keys == ["anon:a1"]
    assert [t.event_name for t in app.touches_of(known)] == [
        "Identify",
        "Product Viewed",
        "Product Viewed",
    ]
    # The person, across devices, was considering since the second view.
    assert known.stage_history == [
        ["awareness", T0],
        ["consideration", T0 + timedelta(minutes=1)],
    ]
    assert known.person_stage_history() == [
        (Stage.AWARENESS, T0),
        (Stage.CONSIDERATION, T0 + timedelta(minutes=1)),
    ]
    assert known.stage_as_of(T0 + timedelta(minutes=2), app.rules) is Stage.CONSIDERATION
    assert known.stage_as_of(T0 - timedelta(minutes=1), app.rules) is None
    device = app.journey("anon:a1")
    assert device is not None
    assert device.stage_as_of(T0 + timedelta(minutes=4), app.rules) is Stage.CONSIDERATION
    assert device.stage_as_of(T0 + timedelta(minutes=5), app.rules) is Stage.MERGED

    # Re-delivered link and bundle (a crash before commit): nothing counts twice.
    assert deliver(app, link).forwards == []
    assert deliver(app, bundle).stage_changes == []
    assert app.journey("u").touchpoints == 3  # type: ignore[union-attr]


def test_later_anonymous_events_are_forwarded_and_counted_once(app: JourneyApplication) -> None:
    deliver(app, event("Product Viewed", 0, anon="a2"))
    (link,) = deliver(app, event("Identify", 1, user="v", anon="a2", call_type="identify")).forwards
    (bundle,) = deliver(app, link).forwards
    late = event("Product Added", 2, anon="a2")
    (forwarded,) = deliver(app, late).forwards
    assert (forwarded.customer_key, forwarded.event_id) == ("v", late.event_id)
    # The forward may overtake the history bundle: both orders give the same counts.
    deliver(app, forwarded)
    deliver(app, bundle)
    deliver(app, forwarded)
    known = app.journey("v")
    assert known is not None
    assert known.touchpoints == 3
    assert known.stage is Stage.CONSIDERATION
    assert app.journey("anon:a2").touchpoints == 1  # type: ignore[union-attr]


def test_a_messageid_reused_by_two_sources_survives_the_merge(app: JourneyApplication) -> None:
    web = replace(event("Product Viewed", 0, anon="a3"), event_id="m-1", source="web")
    deliver(app, web, replace(web, source="app"))
    (link,) = deliver(app, event("Identify", 1, user="w", anon="a3", call_type="identify")).forwards
    (bundle,) = deliver(app, link).forwards
    late = replace(event("Product Added", 2, anon="a3"), event_id="m-2", source="web")
    forwards = deliver(app, late, replace(late, source="app")).forwards
    # Ties of event time are taken in source order (journeys.domainmodel.fact_order).
    assert [(f.customer_key, f.source) for f in forwards] == [("w", "app"), ("w", "web")]
    for _ in range(2):  # every message delivered twice, as after a crash
        deliver(app, bundle, *forwards)
    known = app.journey("w")
    assert known is not None
    # identify + two views + two adds: per source, each once.
    assert known.touchpoints == 5


def test_two_devices_merge_into_one_journey(app: JourneyApplication) -> None:
    deliver(app, event("Product Viewed", 0, anon="d1"))
    deliver(app, event("Product Viewed", 1, anon="d2"))
    links = deliver(
        app,
        event("Identify", 2, user="w", anon="d1", call_type="identify"),
        event("Identify", 3, user="w", anon="d2", call_type="identify"),
    ).forwards
    bundles = [f for link in links for f in deliver(app, link).forwards]
    for bundle in reversed(bundles):
        deliver(app, bundle)
    known = app.journey("w")
    assert known is not None
    assert sorted(known.absorbed_keys) == ["anon:d1", "anon:d2"]
    assert known.touchpoints == 4
    assert known.product_views == 2
    assert known.stage is Stage.CONSIDERATION


def test_an_identify_before_any_anonymous_event_still_catches_later_ones(
    app: JourneyApplication,
) -> None:
    (link,) = deliver(
        app, event("Identify", 0, user="x", anon="new", call_type="identify")
    ).forwards
    (bundle,) = deliver(app, link).forwards
    assert bundle.properties["touches"] == []
    (forwarded,) = deliver(app, event("Product Added", 1, anon="new")).forwards
    deliver(app, bundle)
    deliver(app, forwarded)
    assert app.journey("x").stage is Stage.CONSIDERATION  # type: ignore[union-attr]


def test_merging_into_a_second_customer_is_refused(app: JourneyApplication) -> None:
    deliver(app, event("Product Viewed", 0, anon="shared"))
    (first,) = deliver(
        app, event("Identify", 1, user="y1", anon="shared", call_type="identify")
    ).forwards
    (second,) = deliver(
        app, event("Identify", 2, user="y2", anon="shared", call_type="identify")
    ).forwards
    deliver(app, first)
    refused = deliver(app, second)
    assert refused.forwards == []
    assert [(r.customer_key, r.requested_by) for r in refused.refusals] == [("anon:shared", "y2")]
    assert app.journey("anon:shared").merged_into == "y1"  # type: ignore[union-attr]


def test_two_identified_customers_are_never_merged(app: JourneyApplication) -> None:
    deliver(app, event("Order Completed", 0, user="k1"))
    alias = TrackedEvent(
        event_id="alias-1",
        customer_key="k1",
        call_type="journey.link",
        event_type=event_type_for("identify", "Identity Linked"),
        event_name="Identity Linked",
        timestamp=T0,
        received_at=T0,
        user_id="k2",
    )
    update = deliver(app, alias)
    assert [(r.customer_key, r.requested_by) for r in update.refusals] == [("k1", "k2")]
    assert update.forwards == []
    known = app.journey("k1")
    assert known is not None
    assert known.merged_into is None
    assert known.stage is Stage.PURCHASE


def alias(user: str, previous: str, minutes: float) -> TrackedEvent:
    """A Segment alias call: ``previous`` (an earlier id) is ``user``."""
    when = T0 + timedelta(minutes=minutes)
    return TrackedEvent(
        event_id=f"alias-{next(_ids)}",
        customer_key=user,
        call_type="alias",
        event_type=event_type_for("alias", "Alias"),
        event_name="Alias",
        timestamp=when,
        received_at=when,
        user_id=user,
        properties={"previous_id": previous},
    )


def test_alias_of_an_anonymous_id_merges_it(app: JourneyApplication) -> None:
    deliver(app, event("Product Added", 0, anon="old-device"))
    links = deliver(app, alias("zoe", "old-device", 1)).forwards
    assert sorted(link.customer_key for link in links) == ["anon:old-device", "old-device"]
    outcomes = [deliver(app, link) for link in links]
    assert [o.refusals for o in outcomes] == [[], []]  # "old-device" is no customer
    (bundle,) = [f for o in outcomes for f in o.forwards]
    deliver(app, bundle)
    zoe = app.journey("zoe")
    assert zoe is not None
    assert (zoe.touchpoints, zoe.stage) == (2, Stage.CONSIDERATION)
    assert app.journey("old-device") is None  # no journey is made up for the other reading


def test_alias_of_two_identified_customers_is_refused(app: JourneyApplication) -> None:
    deliver(app, event("Order Completed", 0, user="ann"))
    links = deliver(app, alias("bea", "ann", 1)).forwards
    outcomes = [deliver(app, link) for link in links]
    refusals = [r for o in outcomes for r in o.refusals]
    assert [(r.customer_key, r.requested_by) for r in refusals] == [("ann", "bea")]
    ann = app.journey("ann")
    assert ann is not None
    assert (ann.merged_into, ann.stage, ann.touchpoints) == (None, Stage.PURCHASE, 1)
    # The other reading (an anonymous id "ann") has nothing to merge: bea gains nothing.
    for bundle in [f for o in outcomes for f in o.forwards]:
        deliver(app, bundle)
    assert app.journey("bea").touchpoints == 1  # type: ignore[union-attr]
