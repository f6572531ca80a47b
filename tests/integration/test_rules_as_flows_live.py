"""The rules as flows, live: the shipped lifecycle flows (switched on) run by the
worker's flow runner over a real outreach store (SQLite), events arriving a few
seconds after their time and the timer loop ticking every ten simulated minutes.

Their date anchors wake the stored states at the anchors' instants (the
``flow_states`` wake time), the facts recorded live are the pure engine's over the
same history, fact for fact, and each message is one trigger with its deliveries
(webhook and e-mail as the rule's channels were), once, also after a replayed batch.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from events import TrackedEvent, event_type_for
from journeys.flows.backtest import run_history
from journeys.flows.definitions import FlowCatalog, FlowDefinition, parse_flow
from journeys.flows.engine import FlowEngine
from journeys.flows.inputs import to_ms, tracked_input
from stack.flows import load_flows
from stack.settings import Settings
from streams.outreach.flows import FlowRunner
from streams.outreach.store import OutreachStore
from tests.conftest import T0, make_event

pytestmark = pytest.mark.integration
TICK_MS = 10 * 60_000
GRACE_MS = 15 * 60_000
DAY = 24 * 60


def _identify(event_id: str, customer: str, minutes: float, **traits: object) -> TrackedEvent:
    event = make_event(event_id, customer, "Identify", minutes, **traits)
    return replace(event, call_type="identify", event_type=event_type_for("identify", "Identify"))


EVENTS = [
    _identify("i1", "reviewer", 0, email="r@example.com", first_name="Rita"),
    make_event("o1", "reviewer", "Order Completed", 60, order_id="A", revenue=40),
    make_event("o2", "regular", "Order Completed", 0, order_id="B", revenue=10),
    make_event("o3", "regular", "Order Completed", 5 * DAY, order_id="C", revenue=10),
    make_event("t1", "waiting", "Ticket Created", DAY, ticket_id="T1"),
    make_event("t2", "helped", "Ticket Created", DAY, ticket_id="T2"),
    make_event("t3", "helped", "Ticket Resolved", DAY + 30, ticket_id="T2"),
]


def _targets(
    rule: str, channels: list[str], message: dict[str, object]
) -> list[tuple[str, str, str]]:
    return [("ep1", "webhook", "pending")] if "webhook" in channels else [("email", "email", "x")]


def _switched_on() -> list[FlowDefinition]:
    flows = [parse_flow(f.id, {**f.source, "enabled": True}) for f in load_flows(Settings())]
    return [flow for flow in flows if flow is not None]


def test_the_lifecycle_flows_live_decide_as_the_engine(tmp_path: Path) -> None:
    flows = _switched_on()
    store = OutreachStore(sqlite_path=tmp_path / "events.sqlite")
    runner = FlowRunner(store, flows, _targets, GRACE_MS)
    arrivals = sorted(EVENTS, key=lambda e: (e.timestamp, e.event_id))
    now, position = to_ms(T0) - 60_000, 0
    end = to_ms(T0 + timedelta(days=14))
    for event in arrivals:
        arrives = to_ms(event.timestamp) + 2_000
        while now + TICK_MS < arrives:
            now += TICK_MS
            store.save_flows(runner.advance_due([0], now))
        now = arrives
        position += 1
        write = runner.observe(0, [(event.customer_key, tracked_input(event))], now)
        store.save_batch([], "events#0", position, write)
    while now < end:
        now += TICK_MS
        store.save_flows(runner.advance_due([0], now))

    engine = FlowEngine(FlowCatalog.of(flows))
    customers = sorted({e.customer_key for e in EVENTS})
    sent: dict[str, list[tuple[str, str, int]]] = {}
    for customer in customers:
        inputs = [tracked_input(e) for e in EVENTS if e.customer_key == customer]
        expected = []
        for flow in flows:
            found, _ = run_history(engine, flow.id, customer, inputs, end)
            expected += [fact.to_dict() for fact in found]
        live = store.flow_facts(customer)
        assert sorted(live, key=lambda f: f["fact_id"]) == sorted(
            expected, key=lambda f: f["fact_id"]
        ), customer
        sent[customer] = sorted(
            (f["flow_id"], f["channel"], f["at_ms"]) for f in live if f["type"] == "Sent"
        )
    at = lambda minutes: to_ms(T0 + timedelta(minutes=minutes))  # noqa: E731
    assert sent["reviewer"] == [
        ("review_request", "email", at(7 * DAY + 60)),
        ("review_request", "webhook", at(7 * DAY + 60)),
    ]
    # One review, 7 days after the later order; the purchase cycle (5 days) on from it.
    assert sent["regular"] == [
        ("repurchase_reminder", "email", at(10 * DAY)),
        ("repurchase_reminder", "webhook", at(10 * DAY)),
        ("review_request", "email", at(12 * DAY)),
        ("review_request", "webhook", at(12 * DAY)),
    ]
    assert sent["waiting"] == [("ticket_escalation", "webhook", at(3 * DAY))]
    assert sent["helped"] == [
        ("satisfaction_survey", "email", at(DAY + 90)),
        ("satisfaction_survey", "webhook", at(DAY + 90)),
    ]
    triggers = store.recent_triggers(limit=50)
    assert len(triggers) == sum(len(found) for found in sent.values()) == 9
    assert {t["rule"] for t in triggers} == {
        "flow:review_request",
        "flow:repurchase_reminder",
        "flow:ticket_escalation",
        "flow:satisfaction_survey",
    }
    review = next(t for t in triggers if t["customer_id"] == "reviewer")
    assert review["email"] == "r@example.com"
    # A crash before the commit replays the batch: the same facts and messages, once.
    replay = runner.observe(0, [(e.customer_key, tracked_input(e)) for e in arrivals], now)
    store.save_batch([], "events#0", position, replay)
    assert len(store.recent_triggers(limit=50)) == 9
    store.close()
