"""One person in the analyses: an anonymous browse, then identify and purchase.

Through the real pipeline (SQLite event store, chdb): the identity messages the
journeys ask to send are fed back as the worker would consume them, on their
own partitions, including a replay of the merge after a crash.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from clickhouse_connect.driver.client import Client

from events import EventType, TrackedEvent
from journeys.funnels import Funnel, FunnelStep
from projections.analytics.funnels import FunnelQueries
from projections.analytics.reports import Period, Reports, RetentionMode
from stack.settings import Settings
from streams.pipeline import JourneyPipeline, PartitionBatch
from tests.conftest import T0, make_event
from tests.integration.analytics_data import identify as identify_call
from tests.integration.test_journey_pipeline import pipeline_for

BY_TYPE = Funnel(
    steps=(
        FunnelStep(event_type=EventType.BROWSE),
        FunnelStep(event_type=EventType.CART),
        FunnelStep(event_type=EventType.PURCHASE),
    ),
    window=timedelta(days=1),
)
# The same funnel by name: read from customer_timelines, not customer_type_times.
BY_NAME = Funnel(
    steps=(
        FunnelStep(event_name="Product Viewed"),
        FunnelStep(event_name="Product Added"),
        FunnelStep(event_name="Order Completed"),
    ),
    window=timedelta(days=1),
)
# With a property filter: read from events, grouped by customer.
FILTERED = Funnel(
    steps=(
        FunnelStep(event_type=EventType.BROWSE),
        FunnelStep(event_type=EventType.PURCHASE),
    ),
    window=timedelta(days=1),
    breakdown="category",
)


def anonymous(event: TrackedEvent, anonymous_id: str) -> TrackedEvent:
    """The event as the gateway keys a visitor without a userId."""
    return replace(
        event, customer_key=f"anon:{anonymous_id}", user_id=None, anonymous_id=anonymous_id
    )


def identify(event_id: str, user: str, anonymous_id: str, minutes: float) -> TrackedEvent:
    """An identify call ``minutes`` after T0."""
    return identify_call(event_id, user, anonymous_id, T0 + timedelta(minutes=minutes))


def feed(
    pipeline: JourneyPipeline, partition: int, events: list[TrackedEvent]
) -> list[TrackedEvent]:
    """Process ``events`` as the next records of ``partition``; the messages it sends."""
    source = f"journey.events#{partition}"
    start = pipeline.journeys.consumed_position(source)
    records = [(start + i, e.to_json()) for i, e in enumerate(events)]
    prepared = pipeline.process(PartitionBatch(source=source, records=records))
    assert prepared is not None
    return list(prepared.update.forwards)


def test_an_anonymous_browse_then_identify_and_purchase_is_one_customer(
    settings: Settings, clickhouse: Client
) -> None:
    db = settings.clickhouse_database
    pipeline = pipeline_for(settings, clickhouse)
    # Partition 0 holds the anonymous visitor, partition 1 the known customer.
    feed(
        pipeline,
        0,
        [
            anonymous(make_event("v1", "-", "Product Viewed", 0, category="boots"), "dev-1"),
            anonymous(make_event("v2", "-", "Product Added", 1, product_id="p1"), "dev-1"),
        ],
    )
    # A second visitor who never identifies stays a customer of their own.
    feed(pipeline, 0, [anonymous(make_event("w1", "-", "Product Viewed", 2), "dev-2")])
    links = feed(pipeline, 1, [identify("i1", "uma", "dev-1", 3)])
    assert [m.customer_key for m in links] == ["anon:dev-1"]

    # The link reaches the anonymous partition; the worker crashes after the effects.
    crashed = pipeline.prepare(PartitionBatch("journey.events#0", [(3, links[0].to_json())]))
    assert crashed is not None and crashed.update.merges == [("anon:dev-1", "uma")]
    pipeline.journeys.close()
    pipeline = pipeline_for(settings, clickhouse)
    merges = feed(pipeline, 0, links)  # the replay
    assert [m.customer_key for m in merges] == ["uma"]
    feed(pipeline, 1, merges)
    # A late anonymous event, re-sent after the merge: forwarded to uma, once.
    late = feed(pipeline, 0, [anonymous(make_event("v2", "-", "Product Added", 1), "dev-1")])
    feed(pipeline, 1, [*late, make_event("o1", "uma", "Order Completed", 5, order_id="o1")])

    queries = FunnelQueries(clickhouse, db)
    for funnel, source in (
        (BY_TYPE, "customer_type_times"),
        (BY_NAME, "customer_timelines"),
    ):
        report = queries.run(funnel)
        assert report.source == source
        assert [s.customers for s in report.steps] == [2, 1, 1], source
        assert report.steps[2].median_seconds == 300.0  # from the anonymous browse
        assert queries.dropped(funnel, 2, 10, 0) == (1, ["anon:dev-2"])
    filtered = queries.run(FILTERED)
    assert filtered.source == "events"
    assert filtered.breakdown is not None
    assert [s.customers for s in filtered.breakdown["boots"]] == [1, 1]

    keys = clickhouse.query(
        f"SELECT customer_key, count() FROM {db}.events FINAL GROUP BY customer_key "
        "ORDER BY customer_key"
    ).result_rows
    assert keys == [("anon:dev-2", 1), ("uma", 4)]
    for table in ("customer_timelines", "customer_type_times"):
        rows = clickhouse.query(
            f"SELECT customer_key, merged FROM {db}.{table} FINAL ORDER BY customer_key"
        ).result_rows
        assert rows == [("anon:dev-1", 1), ("anon:dev-2", 0), ("uma", 0)], table

    reports = Reports(clickhouse, db)
    cohorts = reports.retention(
        FunnelStep(event_type=EventType.BROWSE),
        FunnelStep(event_type=EventType.PURCHASE),
        Period.DAY,
        RetentionMode.FIRST_TIME,
        1,
    )
    assert [c.size for c in cohorts] == [2]
