"""The journey pipeline on a real SQLite event store and the real ClickHouse engine.

What is checked is the promise behind "never lost, never counted twice": a batch
replayed after a crash, whether before or after its commit, changes nothing.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from clickhouse_connect.driver.client import Client

from events import EventType, TrackedEvent
from journeys.application import JourneyApplication
from journeys.funnels import Funnel, FunnelStep
from projections.customer_stages import CustomerStage, CustomerStageView
from projections.event_log import EventLog
from projections.migrations import MIGRATIONS, migrate
from stack.bootstrap import event_store_env
from stack.settings import Settings
from streams.pipeline import JourneyPipeline, PartitionBatch
from tests.conftest import make_event

pytestmark = pytest.mark.integration

SOURCE = "journey.events#0"


def pipeline_for(settings: Settings, clickhouse: Client, live_journeys: int = 0) -> JourneyPipeline:
    """A pipeline as a (re)started worker builds it: fresh objects over the same stores."""
    migrate(clickhouse, settings.clickhouse_database)
    return JourneyPipeline(
        JourneyApplication(env=event_store_env(settings)),
        EventLog(clickhouse, settings.clickhouse_database),
        CustomerStageView(clickhouse, settings.clickhouse_database),
        live_journeys=live_journeys,
    )


def row(stages: CustomerStageView, customer: str) -> CustomerStage:
    """The customer's projection row, which must exist."""
    found = stages.get(customer)
    assert found is not None, f"{customer} missing from the stage projection"
    return found


def batch(events: list[TrackedEvent], first_offset: int = 0) -> PartitionBatch:
    return PartitionBatch(
        source=SOURCE,
        records=[(first_offset + i, e.to_json()) for i, e in enumerate(events)],
    )


def storefront() -> list[TrackedEvent]:
    """Three customers: one buys, one adds to cart, one only looks."""
    return [
        make_event("a1", "alice", "Product Viewed", 0),
        make_event("b1", "bob", "Product Viewed", 1),
        make_event("a2", "alice", "Product Added", 2, product_id="p1", price=20.0),
        make_event("c1", "carol", "Product Viewed", 3),
        make_event("b2", "bob", "Product Added", 4),
        make_event("a3", "alice", "Order Completed", 5, order_id="o1", revenue=20.0),
    ]


BROWSE_CART_PURCHASE = Funnel(
    steps=(
        FunnelStep(event_type=EventType.BROWSE),
        FunnelStep(event_type=EventType.CART),
        FunnelStep(event_type=EventType.PURCHASE),
    ),
    window=timedelta(days=1),
)


def test_a_batch_reaches_event_store_event_log_and_stage_projection(
    settings: Settings, clickhouse: Client
) -> None:
    pipeline = pipeline_for(settings, clickhouse)
    pipeline.process(batch(storefront()))

    stages = pipeline.stages
    assert row(stages, "alice").stage == "purchase"
    assert row(stages, "bob").stage == "consideration"
    assert row(stages, "carol").stage == "awareness"
    assert row(stages, "alice").event_count == 3
    assert stages.stage_counts() == {"purchase": 1, "consideration": 1, "awareness": 1}
    assert pipeline.event_log.event_count() == 6
    assert pipeline.event_log.funnel_counts(BROWSE_CART_PURCHASE) == [3, 2, 1]
    assert pipeline.journeys.consumed_position(SOURCE) == 6
    stage_rows = clickhouse.query(
        f"SELECT customer_key, stage FROM {settings.clickhouse_database}.stage_changes FINAL "
        "ORDER BY customer_key, at"
    ).result_rows
    assert stage_rows == [
        ("alice", "awareness"),
        ("alice", "consideration"),
        ("alice", "purchase"),
        ("bob", "awareness"),
        ("bob", "consideration"),
        ("carol", "awareness"),
    ]


def test_a_crash_between_effects_and_commit_replays_to_the_same_result(
    settings: Settings, clickhouse: Client
) -> None:
    events = storefront()
    crashed = pipeline_for(settings, clickhouse)
    crashed.prepare(batch(events))  # effects written, commit never happens
    crashed.journeys.close()

    restarted = pipeline_for(settings, clickhouse)
    assert restarted.journeys.consumed_position(SOURCE) == 0
    restarted.process(batch(events))

    assert restarted.event_log.event_count() == 6
    assert restarted.event_log.event_count("alice") == 3
    assert row(restarted.stages, "alice").event_count == 3
    assert restarted.event_log.funnel_counts(BROWSE_CART_PURCHASE) == [3, 2, 1]
    stage_changes = clickhouse.query(
        f"SELECT count() FROM {settings.clickhouse_database}.stage_changes FINAL"
    ).result_rows[0][0]
    assert stage_changes == 6


def test_a_redelivered_batch_after_commit_is_skipped(
    settings: Settings, clickhouse: Client
) -> None:
    events = storefront()
    pipeline = pipeline_for(settings, clickhouse)
    pipeline.process(batch(events[:4]))
    # Kafka redelivers from an older committed offset: offsets 2..5, of which 2 and 3 are done.
    again = pipeline_for(settings, clickhouse)
    outcome = again.process(batch(events[2:], first_offset=2))

    assert outcome is not None
    assert [e.event_id for e in outcome.update.recorded] == ["b2", "a3"]
    assert again.event_log.event_count() == 6
    assert row(again.stages, "alice").event_count == 3
    assert again.process(batch(events[2:], first_offset=2)) is None


def test_the_same_event_id_sent_twice_is_recorded_once(
    settings: Settings, clickhouse: Client
) -> None:
    pipeline = pipeline_for(settings, clickhouse)
    duplicate = make_event("same", "dave", "Product Viewed", 0)
    pipeline.process(batch([duplicate, make_event("d2", "dave", "Product Added", 1), duplicate]))

    assert row(pipeline.stages, "dave").event_count == 2
    assert pipeline.event_log.event_count("dave") == 2


def test_two_sources_reusing_a_messageid_are_two_events_in_every_projection(
    settings: Settings, clickhouse: Client
) -> None:
    # Orders without an order id: the event itself is the order.
    web = replace(make_event("m-1", "fay", "Order Completed", 0, revenue=5.0), source="web")
    app = replace(web, source="app")
    events = [web, app, web, app]
    pipeline_for(settings, clickhouse).prepare(batch(events))  # a crash before the commit
    pipeline = pipeline_for(settings, clickhouse)
    pipeline.process(batch(events))
    pipeline.process(batch([web, app], first_offset=4))  # each source re-sends later

    assert (row(pipeline.stages, "fay").event_count, row(pipeline.stages, "fay").orders) == (2, 2)
    assert pipeline.event_log.event_count("fay") == 2
    database = settings.clickhouse_database
    orders = clickhouse.query(
        f"SELECT order_id, revenue FROM {database}.customer_orders FINAL "
        "WHERE customer_key = 'fay' ORDER BY order_id"
    ).result_rows
    assert orders == [("app/m-1", 5.0), ("web/m-1", 5.0)]


def test_an_undecodable_record_is_set_aside_and_the_partition_moves_on(
    settings: Settings, clickhouse: Client
) -> None:
    pipeline = pipeline_for(settings, clickhouse)
    good = make_event("e1", "erin", "Product Viewed", 0)
    outcome = pipeline.process(PartitionBatch(SOURCE, [(0, b"{not json"), (1, good.to_json())]))

    assert outcome is not None
    assert len(outcome.rejected) == 1
    assert outcome.rejected[0][1][0]["rule"] == "envelope"
    assert row(pipeline.stages, "erin").stage == "awareness"
    assert pipeline.journeys.consumed_position(SOURCE) == 2


def test_migrations_are_recorded_and_not_applied_twice(
    settings: Settings, clickhouse: Client
) -> None:
    database = settings.clickhouse_database
    assert migrate(clickhouse, database) == MIGRATIONS[-1][0]
    assert migrate(clickhouse, database) == MIGRATIONS[-1][0]
    versions = clickhouse.query(
        f"SELECT version FROM {database}.schema_migrations FINAL ORDER BY version"
    ).result_rows
    assert [row[0] for row in versions] == [m[0] for m in MIGRATIONS]


def test_one_customer_on_two_partitions_of_a_batch_is_recorded_once_in_order(
    settings: Settings, clickhouse: Client
) -> None:
    # A producer that ignores the keying contract put fay's events on two partitions.
    first = PartitionBatch(
        "journey.events#0", [(0, make_event("f1", "fay", "Product Viewed", 0).to_json())]
    )
    second = PartitionBatch("journey.events#1", [
        (0, make_event("f2", "fay", "Product Added", 1).to_json()),
        (1, make_event("f3", "fay", "Order Completed", 2, order_id="o9", revenue=5.0).to_json()),
    ])  # fmt: skip
    pipeline = pipeline_for(settings, clickhouse)
    prepared = pipeline.prepare_many([first, second])
    pipeline.commit_many(prepared)

    restarted = pipeline_for(settings, clickhouse)
    assert row(restarted.stages, "fay").event_count == 3
    assert row(restarted.stages, "fay").stage == "purchase"
    assert restarted.journeys.consumed_position("journey.events#0") == 1
    assert restarted.journeys.consumed_position("journey.events#1") == 2
    assert restarted.event_log.event_count("fay") == 3


# --- the journeys a worker keeps in memory (LiveJourneys) -------------------------------


def stored_touchpoints(settings: Settings, customer: str) -> int:
    """What a freshly started process reads from the event store."""
    journey = JourneyApplication(env=event_store_env(settings)).journey(customer)
    assert journey is not None
    return journey.touchpoints


def test_live_journeys_of_a_partition_another_worker_wrote_meanwhile_are_read_again(
    settings: Settings, clickhouse: Client
) -> None:
    events = storefront()
    first = pipeline_for(settings, clickhouse, live_journeys=100)
    first.process(batch(events[:2]))
    assert set(first.live.journeys) == {"alice", "bob"}

    # A rebalance gave the partition to another worker, which went on with it...
    second = pipeline_for(settings, clickhouse, live_journeys=100)
    second.process(batch(events[2:4], first_offset=2))
    # ...and back: the first worker's alice misses a2 and must not be used.
    first.process(batch(events[4:], first_offset=4))

    assert stored_touchpoints(settings, "alice") == 3
    assert stored_touchpoints(settings, "bob") == 2
    assert first.live.journeys["alice"].touchpoints == 3


def test_live_journeys_of_a_batch_never_committed_are_recorded_afresh_when_it_comes_again(
    settings: Settings, clickhouse: Client
) -> None:
    events = storefront()
    pipeline = pipeline_for(settings, clickhouse, live_journeys=100)
    pipeline.process(batch(events[:2]))
    pipeline.prepare(batch(events[2:4], first_offset=2))  # never committed: the worker failed

    again = pipeline.process(batch(events[2:4], first_offset=2))

    assert again is not None
    assert [e.event_id for e in again.update.recorded] == ["a2", "c1"]
    assert stored_touchpoints(settings, "alice") == 2
