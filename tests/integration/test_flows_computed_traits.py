"""Computed traits reach the flows: the worker's fold → TraitsChanged → the flow runner.

The real parts without a broker: the journey worker's segment maintainer folds
orders into segment states (SQLite, the event store's tables; chdb for the
change log), each ``TraitsChanged`` record it would publish on
``journey.segments`` is read back as the outreach worker reads it, and the
flow runner (streams/outreach/flows.py) takes the events and the records over
a real outreach store, with the timer loop's tick after a day's wait. The
branch on ``lifetime_revenue`` decides with the value the worker reported at
or before the decision's instant, and the message renders it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from clickhouse_connect.driver.client import Client

from journeys.flows.definitions import parse_flow
from journeys.flows.inputs import to_ms, tracked_input
from journeys.segment_definitions import parse_definitions
from projections.migrations import migrate
from projections.segment_changes import SegmentChangeLog
from projections.segment_store import SegmentStore
from streams.outreach.flows import FlowRunner
from streams.outreach.store import OutreachStore
from streams.outreach.worker import traits_input
from streams.segments import SegmentMaintainer, traits_record
from tests.conftest import T0, make_event
from tests.unit.test_flows import BIG_SPENDER

pytestmark = pytest.mark.integration
DEFINITIONS = parse_definitions(
    {
        "traits": {
            "lifetime_revenue": {"op": "sum", "event": "Order Completed", "property": "revenue"},
            "orders": {"op": "count", "event": "Order Completed"},
        }
    }
)


@pytest.fixture
def change_log(clickhouse: Client) -> Iterator[SegmentChangeLog]:
    db = f"db_{uuid.uuid4().hex[:12]}"
    migrate(clickhouse, db)
    yield SegmentChangeLog(clickhouse, db)
    clickhouse.command(f"DROP DATABASE {db}")


def _targets(
    rule: str, channels: list[str], message: dict[str, object]
) -> list[tuple[str, str, str]]:
    return [("ep1", "webhook", "pending")]


def test_a_branch_and_a_template_read_the_computed_traits_the_worker_reported(
    tmp_path: Path, change_log: SegmentChangeLog
) -> None:
    segments = SegmentStore(sqlite_path=tmp_path / "events.sqlite")
    maintainer = SegmentMaintainer(DEFINITIONS, segments, change_log)
    outreach = OutreachStore(sqlite_path=tmp_path / "outreach.sqlite")
    flow = parse_flow("big_spender", BIG_SPENDER)
    assert flow is not None
    runner = FlowRunner(outreach, [flow], _targets, None)
    events = [
        make_event("a1", "ada", "Order Completed", 0, order_id="a1", revenue=300),
        make_event("b1", "bob", "Order Completed", 5, order_id="b1", revenue=100),
        make_event("v1", "bob", "Product Viewed", 6),  # feeds no trait: no record
        make_event("a2", "ada", "Order Completed", 120, order_id="a2", revenue=250),
        # after ada's decision (a day after her first order): not seen by it
        make_event("a3", "ada", "Order Completed", 25 * 60, order_id="a3", revenue=1000),
    ]
    published: list[bytes] = []
    for offset, event in enumerate(events):
        now = to_ms(event.timestamp) + 1_000
        # The journey worker: fold, save, publish the TraitsChanged records.
        folded = maintainer.fold("events#0", offset + 1, [(offset, event)], {})
        assert folded is not None
        maintainer.commit([folded])
        records = [orjson.dumps(traits_record(*item)) for item in folded.traits]
        published += records
        # The outreach worker: the event from the events topic, then the records.
        write = runner.observe(0, [(event.customer_key, tracked_input(event))], now)
        outreach.save_batch([], "events#0", offset + 1, write)
        parsed = [traits_input(value) for value in records]
        inputs = [item for item in parsed if item is not None]
        assert len(inputs) == len(records)
        write = runner.observe(0, inputs, now)
        outreach.save_batch([], "journey.segments#0", offset + 1, write)
        if event.event_id == "a2":  # the timer loop's tick, past ada's and bob's waits
            tick = to_ms(T0 + timedelta(days=1, minutes=10))
            outreach.save_flows(runner.advance_due([0], tick))
    # One record per order (the view moved no trait), each with every trait's value.
    assert [orjson.loads(v)["traits"] for v in published] == [
        {"lifetime_revenue": 300.0, "orders": 1},
        {"lifetime_revenue": 100.0, "orders": 1},
        {"lifetime_revenue": 550.0, "orders": 2},
        {"lifetime_revenue": 1550.0, "orders": 3},
    ]
    sent = {c: [f for f in outreach.flow_facts(c) if f["type"] == "Sent"] for c in ("ada", "bob")}
    (ada,) = sent["ada"]
    assert ada["node"] == "thanks" and ada["at_ms"] == to_ms(T0 + timedelta(days=1))
    assert ada["variables"]["computed_traits"] == {"lifetime_revenue": 550.0, "orders": 2}
    (bob,) = sent["bob"]
    assert bob["node"] == "nudge"
    triggers = outreach.recent_triggers(limit=10)
    assert sorted(t["customer_id"] for t in triggers) == ["ada", "bob"]
    # Not a branch input alone: an unrelated record (a membership change) is no TraitsInput.
    assert traits_input(b'{"type": "SegmentEntered", "segment": "x"}') is None
    assert traits_input(b"not json") is None
    segments.close()
    outreach.close()


def test_traits_are_published_only_while_a_flow_reads_them(
    tmp_path: Path, change_log: SegmentChangeLog
) -> None:
    wanted = [False]
    store = SegmentStore(sqlite_path=tmp_path / "events.sqlite")
    maintainer = SegmentMaintainer(DEFINITIONS, store, change_log, traits_wanted=lambda: wanted[0])
    order = make_event("a1", "ada", "Order Completed", 0, order_id="a1", revenue=300)
    folded = maintainer.fold("events#0", 1, [(0, order)], {})
    assert folded is not None and folded.traits == []
    wanted[0] = True  # a flow reading them was put; the timer loop's reload asks again
    maintainer.reload()
    again = make_event("a2", "ada", "Order Completed", 5, order_id="a2", revenue=50)
    folded = maintainer.fold("events#0", 2, [(1, again)], {}, folded.states)
    assert folded is not None
    assert [values for *_, values in folded.traits] == [{"lifetime_revenue": 350.0, "orders": 2}]
    store.close()
