"""Hypothesis strategies for random storefront timelines and random analysis questions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client
from hypothesis import strategies as st

from events import EventType, TrackedEvent, event_type_for
from journeys.funnels import FilterOp, FunnelStep, PropertyFilter
from projections.analytics import reference
from projections.event_log import EventLog
from projections.migrations import migrate

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NAMES = [
    "Product Viewed",
    "Product Added",
    "Checkout Started",
    "Order Completed",
    "Ticket Created",
    "Newsletter Signed Up",
]
CUSTOMERS = ["alice", "bob", "carol"]
VISITORS = ["anon:v1", "anon:v2"]
# How many events are logged before the identity merges first apply.
CUTS = st.integers(0, 30)


def identify(event_id: str, user: str, anonymous_id: str, moment: datetime) -> TrackedEvent:
    """An identify call: keyed by the user, carrying the visitor's anonymousId."""
    return TrackedEvent(
        event_id=event_id,
        customer_key=user,
        call_type="identify",
        event_type=EventType.IDENTIFY,
        event_name="Identify",
        timestamp=moment,
        received_at=moment,
        user_id=user,
        anonymous_id=anonymous_id,
    )


@st.composite
def event_lists(
    draw: st.DrawFn, max_size: int = 30, days: int = 0, names: tuple[str, ...] = tuple(NAMES)
) -> list[TrackedEvent]:
    """Events of a few customers over an hour: ties in time, properties, some missing.

    Some customers are anonymous visitors (``anon:…``); identify events link
    them to known customers, sometimes a second customer claiming the same
    visitor (refused), sometimes before the visitor's own events.
    """
    count = draw(st.integers(0, max_size))
    customers = CUSTOMERS[: draw(st.integers(1, len(CUSTOMERS)))]
    customers += VISITORS[: draw(st.integers(0, len(VISITORS)))]
    events = []
    for i in range(count):
        if draw(st.integers(0, 5)) == 0:
            events.append(
                identify(
                    f"e{i}",
                    draw(st.sampled_from(CUSTOMERS)),
                    draw(st.sampled_from(VISITORS)).removeprefix("anon:"),
                    T0
                    + timedelta(days=draw(st.integers(0, days)), minutes=draw(st.integers(0, 15))),
                )
            )
            continue
        name = draw(st.sampled_from(names))
        props: dict[str, Any] = {}
        if draw(st.booleans()):
            props["category"] = draw(st.sampled_from(["shoes", "bags"]))
        if draw(st.booleans()):
            props["price"] = draw(st.sampled_from([5, 20.5, 100]))
        if draw(st.booleans()):
            props["campaign"] = draw(st.sampled_from(["spring", "autumn", 7]))
        if name == "Order Completed" and draw(st.booleans()):
            props["revenue"] = draw(st.sampled_from([10, 25.5, 99]))
        # Minutes from a small range so that ties happen; days for cohort tests.
        minute = draw(st.integers(0, 15))
        day = draw(st.integers(0, days))
        moment = T0 + timedelta(days=day, minutes=minute)
        events.append(
            TrackedEvent(
                event_id=f"e{i}",
                customer_key=draw(st.sampled_from(customers)),
                call_type="track",
                event_type=event_type_for("track", name),
                event_name=name,
                timestamp=moment,
                received_at=moment,
                user_id=None,
                properties=props,
            )
        )
    return events


@st.composite
def steps(draw: st.DrawFn, filtered: bool = True) -> FunnelStep:
    """A step by type or by name, sometimes with a property filter."""
    filters: tuple[PropertyFilter, ...] = ()
    if filtered and draw(st.integers(0, 3)) == 0:
        filters = (
            draw(
                st.sampled_from(
                    [
                        PropertyFilter("category", FilterOp.EQ, "shoes"),
                        PropertyFilter("category", FilterOp.NEQ, "shoes"),
                        PropertyFilter("price", FilterOp.GT, 10),
                        PropertyFilter("price", FilterOp.IN, (5, 100)),
                        PropertyFilter("campaign", FilterOp.EQ, "spring"),
                        PropertyFilter("campaign", FilterOp.GTE, 7),
                        PropertyFilter("campaign", FilterOp.IN, ("autumn", 7)),
                    ]
                )
            ),
        )
    if draw(st.booleans()):
        kind = draw(st.sampled_from([t for t in EventType if t is not EventType.IDENTIFY]))
        return FunnelStep(event_type=kind, filters=filters)
    return FunnelStep(event_name=draw(st.sampled_from(NAMES)), filters=filters)


@contextmanager
def database(
    clickhouse: Client, events: list[TrackedEvent], copies: list[int], cut: int = 0
) -> Iterator[str]:
    """A fresh database logged as the pipeline logs ``events``, with identity merges.

    The first ``cut`` events are logged and their identifies' merges applied
    (the merges as :func:`reference.identity_merges` decides them); the rest
    arrive later, a merged visitor's events forwarded to the customer, and
    the merges they add are applied. Then the events at ``copies`` are
    re-sent as a block under their original keys and every merge is applied
    again, as a replayed batch does.
    """
    name = f"db_{uuid.uuid4().hex[:12]}"
    migrate(clickhouse, name)
    log = EventLog(clickhouse, name)
    try:
        cut = min(cut, len(events))
        early = reference.identity_merges(events[:cut])
        log.append(events[:cut])
        log.merge_identities(early)
        into = dict(early)
        log.append(
            [
                replace(e, customer_key=into.get(e.customer_key, e.customer_key))
                for e in events[cut:]
            ]
        )
        merges = reference.identity_merges(events)
        log.merge_identities([m for m in merges if m not in early])
        again = [events[i % len(events)] for i in copies] if events else []
        log.append(again)  # a re-sent block: duplicates of events already logged
        log.merge_identities(merges)
        yield name
    finally:
        clickhouse.command(f"DROP DATABASE IF EXISTS {name}")
