"""A journey is a function of its events in event time, whatever their arrival (issue 15).

Hypothesis draws a small shop: people with a user id and devices, each device's
anonymous events, identify or alias calls that link them, ties of time, exact re-sends
and orders re-sent under a new messageId. The same events are delivered in two
arrival orders and batchings, through the real pipeline in-process (journey
application, event store, ClickHouse projections), into two fresh stores on the
same kind of event store (SQLite, or a real PostgreSQL). Both must give the same
stage histories, timelines, as-of answers at drawn moments, profiles and RFM
inputs; and both must equal a plain-Python reading of the README's stage table
over each person's events (every identity merged, deduplicated, in event time).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from events import TrackedEvent, event_type_for
from journeys.application import JourneyApplication
from journeys.stages import Stage
from projections.analytics.reports import Reports
from projections.customer_stages import current_stage_changes
from projections.profiles import rfm
from stack.bootstrap import Platform, platform_on
from stack.settings import Settings
from streams.pipeline import PartitionBatch, source_name

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ARRIVAL = datetime(2026, 6, 1, tzinfo=UTC)  # everything is sent later, as one backlog
FAR = T0 + timedelta(days=2000)
REPEAT_DAYS, LAPSE_DAYS, VIEWS = 365, 180, 2  # journeys/stage_rules.toml's defaults
_examples = itertools.count()

# Minutes after T0: a few shared ones (ties), and any time over 420 days (the
# loyalty window and the lapse lie inside that span).
MINUTES = st.one_of(st.sampled_from([0, 0, 1, 60, 1440]), st.integers(0, 420 * 1440))
KINDS = [
    "Product Viewed",
    "Product Viewed",
    "Products Searched",
    "Product Added",
    "Checkout Started",
    "Order Completed",
    "Order Completed",
    "Ticket Created",
    "Ticket Resolved",
]


@dataclass(frozen=True)
class Shop:
    """What was sent: every event once (``events``) and the re-sends of some."""

    events: list[TrackedEvent]
    resent: list[TrackedEvent]
    people: dict[str, list[str]]  # user key -> the anonymous keys identified as them
    strangers: list[str]  # anonymous keys never identified


@st.composite
def shops(draw: st.DrawFn, prefix: str) -> Shop:
    ids = itertools.count()
    events: list[TrackedEvent] = []
    people: dict[str, list[str]] = {}
    strangers: list[str] = []

    def sent(name: str, minutes: int, user: str | None, device: str | None, **props: Any) -> None:
        call = {"Identify": "identify", "Alias": "alias"}.get(name, "track")
        events.append(
            TrackedEvent(
                event_id=f"{prefix}m{next(ids)}",
                customer_key=user if user is not None else f"anon:{device}",
                call_type=call,
                event_type=event_type_for(call, name),
                event_name=name,
                timestamp=T0 + timedelta(minutes=minutes),
                received_at=ARRIVAL,
                user_id=user,
                anonymous_id=device,
                properties=props,
            )
        )

    for person in range(draw(st.integers(1, 3))):
        user = f"{prefix}u{person}"
        people[user] = []
        for device in range(draw(st.integers(0, 2))):
            name = f"{prefix}d{person}{device}"
            identified = draw(st.booleans())
            (people[user] if identified else strangers).append(f"anon:{name}")
            if identified and draw(st.booleans()):
                sent("Identify", draw(MINUTES), user, name)
            elif identified:  # Segment's alias: previousId is the anonymous id
                sent("Alias", draw(MINUTES), user, None, previous_id=name)
            for _ in range(draw(st.integers(0, 4))):
                _track(sent, draw, None, name, user)
        for _ in range(draw(st.integers(0, 6))):
            _track(sent, draw, user, None, user)
        if not any(e.customer_key == user for e in events):
            sent("Product Viewed", draw(MINUTES), user, None, category="hats")
    resent = draw(st.lists(st.sampled_from(events), max_size=3))
    return Shop(events, resent, people, strangers)


def _track(sent: Any, draw: st.DrawFn, user: str | None, device: str | None, owner: str) -> None:
    name = draw(st.sampled_from(KINDS))
    props: dict[str, Any] = {}
    if name == "Order Completed":
        # Few order ids per person: the same order re-sent under a new messageId.
        props = {
            "order_id": f"{owner}-o{draw(st.integers(0, 2))}",
            "revenue": draw(st.sampled_from([10.0, 25.5, 40.0])),
        }
    elif name == "Product Viewed":
        props = {"category": draw(st.sampled_from(["boots", "hats"]))}
    sent(name, draw(MINUTES), user, device, **props)


# --- delivery ------------------------------------------------------------------------


def deliver(platform: Platform, arrivals: list[TrackedEvent], cuts: list[int], name: str) -> None:
    """Send ``arrivals`` in batches cut at ``cuts``, each key on its partition (p0, p1);
    the identity messages the journeys send go round after the batch, as a worker's.
    The partitions are ``name``'s own: their consumed positions start at 0."""
    pipeline = platform.pipeline()
    offsets: dict[str, int] = {}
    clock = itertools.count()

    def process(source: str, events: list[TrackedEvent]) -> list[TrackedEvent]:
        start = offsets.get(source, 0)
        offsets[source] = start + len(events)
        records = [
            # Arrival times a second apart: re-sends fall within the dedup window.
            (start + i, replace(e, received_at=ARRIVAL + timedelta(seconds=next(clock))).to_json())
            for i, e in enumerate(events)
        ]
        prepared = pipeline.process(PartitionBatch(source, records))
        return list(prepared.update.forwards) if prepared is not None else []

    bounds = [0, *sorted(set(cuts)), len(arrivals)]
    for low, high in itertools.pairwise(bounds):
        forwards: list[TrackedEvent] = []
        for index, partition in enumerate(("p0", "p1")):
            batch = [e for e in arrivals[low:high] if _partition(e.customer_key) == partition]
            if batch:
                forwards.extend(process(source_name(f"{name}events", index), batch))
        while forwards:
            forwards = process(source_name(f"{name}forwards", 0), forwards)


def _partition(key: str) -> str:
    return f"p{zlib.crc32(key.encode()) % 2}"


# --- what the stores answer ----------------------------------------------------------


def answers(platform: Platform, shop: Shop, moments: list[datetime]) -> dict[str, Any]:
    """Everything compared, per customer key, as plain data."""
    app: JourneyApplication = platform.journeys
    reports = Reports(platform.clickhouse, platform.settings.clickhouse_database)
    found: dict[str, Any] = {}
    for user in shop.people:
        journey = app.journey(user)
        assert journey is not None, user
        as_of = {}
        for moment in moments:
            past = app.journey_as_of(journey, moment)
            stage = journey.stage_as_of(moment, app.rules)
            as_of[moment] = (
                None
                if past is None
                else (
                    _value(past.stage_as_of(moment, app.rules)),
                    past.touchpoints,
                    past.orders,
                    round(past.revenue, 2),
                    past.open_tickets,
                ),
                _value(stage),
                platform.stages.stage_as_of(user, moment, LAPSE_DAYS),
            )
        profile = platform.profiles.get(user)
        assert profile is not None, user
        score = reports.customer_rfm(user, FAR)
        found[user] = {
            "stages": [(stage, at) for stage, at in journey.stage_history],
            "person_stages": [(s.value, at) for s, at in journey.person_stage_history()],
            "projected_stages": _projected_stages(platform, user),
            "timeline": app.timeline(journey, FAR),
            "as_of": as_of,
            "profile": {k: v for k, v in profile.items() if k != "version"},
            "rfm": None if score is None else (score.frequency, score.monetary),
            "counts": (journey.touchpoints, journey.orders, round(journey.revenue, 2)),
        }
    for key in shop.strangers:
        journey = app.journey(key)
        found[key] = None if journey is None else [(s, at) for s, at in journey.stage_history]
    for anonymous in itertools.chain(*shop.people.values()):
        journey = app.journey(anonymous)
        # Identified: merged into the person, whatever it held before the merge.
        found[anonymous] = None if journey is None else journey.merged_into
    return found


def _projected_stages(platform: Platform, key: str) -> list[tuple[str, datetime]]:
    rows = platform.clickhouse.query(
        f"SELECT stage, at FROM {current_stage_changes(platform.settings.clickhouse_database)} "
        "WHERE customer_key = {key:String} ORDER BY at, indexOf({order:Array(String)}, stage)",
        parameters={"key": key, "order": [s.value for s in Stage]},
    ).result_rows
    return [(str(stage), at.replace(tzinfo=UTC)) for stage, at in rows]


def _value(stage: Stage | None) -> str | None:
    return stage.value if stage is not None else None


# --- the reference: the README's stage table, in plain Python -------------------------

RANK = {s: i for i, s in enumerate(["awareness", "consideration", "purchase", "service"])}
RANK |= {"loyalty": 4, "lapsed": 5}


@dataclass
class Person:
    """A person's stage history and counts from their events, read from the README."""

    history: list[tuple[str, datetime]]
    facts: list[TrackedEvent]
    orders: list[tuple[datetime, float]]  # each order id once, first by event time


def reference(events: list[TrackedEvent]) -> Person:
    facts = sorted(
        {e.event_id: e for e in events}.values(), key=lambda e: (e.timestamp, e.event_id)
    )
    history: list[tuple[str, datetime]] = []
    orders: list[tuple[datetime, float]] = []
    order_ids: set[str] = set()
    views = 0
    for e in facts:
        at, name = e.timestamp, e.event_name
        stage = history[-1][0] if history else None
        if stage == "loyalty" and at > max(t for t, _ in orders) + timedelta(days=LAPSE_DAYS):
            history.append(("lapsed", max(t for t, _ in orders) + timedelta(days=LAPSE_DAYS)))
            stage = "lapsed"
        if stage is None:  # awareness: the first touch of any kind
            history.append(("awareness", at))
            stage = "awareness"
        rank = RANK[stage]
        views += name == "Product Viewed"
        order_id = e.properties.get("order_id")
        new_order = name == "Order Completed" and order_id not in order_ids
        reached = None
        if new_order:
            order_ids.add(order_id)
            others = [t for t, _ in orders]
            orders.append((at, e.properties["revenue"]))
            if stage == "lapsed":  # the next order wins the customer back
                reached = "loyalty"
            elif len(orders) == 1 and rank < RANK["purchase"]:
                reached = "purchase"
            elif (
                others
                and rank < RANK["loyalty"]
                and min(abs(at - t) for t in others) <= timedelta(days=REPEAT_DAYS)
            ):
                reached = "loyalty"
        elif name.startswith("Ticket") and orders and rank < RANK["service"]:
            reached = "service"  # a support event after a purchase
        elif rank < RANK["consideration"] and (
            name in ("Product Added", "Checkout Started", "Products Searched") or views >= VIEWS
        ):
            reached = "consideration"
        if reached is not None:
            history.append((reached, at))
    return Person(history, facts, orders)


def reference_as_of(person: Person, moment: datetime) -> tuple[str | None, int, int, float]:
    reached = [stage for stage, at in person.history if at <= moment]
    stage = reached[-1] if reached else None
    orders = [(t, revenue) for t, revenue in person.orders if t <= moment]
    if stage == "loyalty" and moment > max(t for t, _ in orders) + timedelta(days=LAPSE_DAYS):
        stage = "lapsed"
    facts = [e for e in person.facts if e.timestamp <= moment]
    return stage, len(facts), len(orders), round(sum(r for _, r in orders), 2)


# --- the test ------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def two_stores(
    request: pytest.FixtureRequest, settings: Settings, clickhouse: Client, tmp_path: Path
) -> Iterator[tuple[Platform, Platform]]:
    """Two fresh, empty platforms on one kind of event store, sharing the ClickHouse engine."""
    built = []
    for name in ("a", "b"):
        update: dict[str, Any] = {
            "data_dir": tmp_path / name,
            "clickhouse_database": f"{settings.clickhouse_database}_{name}",
        }
        if request.param == "postgres":
            update |= {"event_store": "postgres", "postgres_dsn": _database(request, name)}
        (tmp_path / name).mkdir()
        built.append(platform_on(settings.model_copy(update=update), clickhouse))
    yield built[0], built[1]
    for platform in built:
        platform.journeys.close()


def _database(request: pytest.FixtureRequest, name: str) -> str:
    import psycopg

    server: str = request.getfixturevalue("postgres_server")
    database = f"order_{request.getfixturevalue('unique')}_{name}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    return server.replace("/postgres?", f"/{database}?")


@examples(
    max_examples=15,
    deadline=None,
    # Each example is two stores' worth of pipeline work: report the one found,
    # unshrunk (the draws it prints are small), rather than spend minutes shrinking.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_the_same_events_in_any_arrival_order_give_the_same_journeys(
    two_stores: tuple[Platform, Platform], data: st.DataObject
) -> None:
    # Each example's people have their own ids, so examples share the stores.
    prefix = f"x{next(_examples)}-"
    shop = data.draw(shops(prefix))
    sent = shop.events + shop.resent
    moments = data.draw(
        st.lists(MINUTES.map(lambda m: T0 + timedelta(minutes=m)), min_size=1, max_size=4)
    )
    results = []
    for platform in two_stores:
        arrivals = data.draw(st.permutations(sent))
        cuts = data.draw(st.lists(st.integers(0, len(sent)), max_size=4))
        deliver(platform, arrivals, cuts, prefix)
        results.append(answers(platform, shop, moments))
    first, second = results
    for key, found in first.items():
        if isinstance(found, dict):  # a person: each figure on its own, named
            for figure, value in found.items():
                assert value == second[key][figure], (key, figure)
        assert found == second[key], key

    for user, anonymous in shop.people.items():
        person = reference([e for e in shop.events if e.customer_key in (user, *anonymous)])
        got = first[user]
        assert got["stages"] == person.history, user
        assert got["projected_stages"] == person.history, user
        assert got["person_stages"] == person.history, user
        for moment in moments:
            stage, facts, orders, revenue = reference_as_of(person, moment)
            past, stored, projected = got["as_of"][moment]
            assert stored == projected == stage, (user, moment)
            if facts:
                assert past is not None
                assert past[:4] == (stage, facts, orders, revenue), (user, moment)
            else:
                assert past is None, (user, moment)
        total = round(sum(r for _, r in person.orders), 2)
        assert got["counts"] == (len(person.facts), len(person.orders), total), user
        profile = got["profile"]
        assert (profile["orders"], profile["revenue"]) == (len(person.orders), total), user
        last_order = max((t for t, _ in person.orders), default=None)
        assert profile["last_order_at"] == last_order, user
        expected_rfm = rfm(profile, FAR)
        assert expected_rfm["frequency"] == len(person.orders)
        if person.orders:
            assert got["rfm"] == (len(person.orders), total), user
        else:
            assert got["rfm"] is None, user
        timeline = [(e["type"], e.get("event_id")) for e in got["timeline"]]
        assert sorted(e.event_id for e in person.facts) == sorted(
            event_id for kind, event_id in timeline if kind not in _NOT_FACTS
        ), user
    for key in shop.strangers:
        person = reference([e for e in shop.events if e.customer_key == key])
        assert first[key] == (person.history or None), key
    for user, anonymous in shop.people.items():
        for key in anonymous:
            assert first[key] in (user, None), key


_NOT_FACTS = {"JourneyStarted", "StageReached", "IdentityLinked", "IdentityMerged", "MergedInto"}
