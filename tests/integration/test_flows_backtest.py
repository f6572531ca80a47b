"""Backtest of the canonical abandoned cart through the API, on the real ClickHouse engine.

Events are logged as the pipeline logs them (EventLog.append, chdb); the
backtest route reads them back and runs the same engine the worker runs. The
report is checked against hand-counted expectations and against the engine fed
the same events directly as the live worker sees them (``tracked_input``): the
event log loses nothing the flow decides on.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from api.app import create_api
from api.dependencies import AccessKeys, Gateway
from events import EventType, TrackedEvent
from journeys.flows.backtest import BacktestTally, run_history
from journeys.flows.definitions import FlowCatalog
from journeys.flows.engine import FlowEngine, sticky_bucket
from journeys.flows.inputs import to_ms, tracked_input
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.migrations import migrate
from stack.flows import FlowsAdmin, load_flows
from stack.settings import Settings
from tests.conftest import T0, make_event
from tests.integration.test_analytics_api import NoSink

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": "Bearer ak_test"}
WINDOW = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-10T00:00:00Z"}


def _key(holdout: bool, tag: str) -> str:
    for i in range(1000):
        key = f"{tag}-{i}"
        if (sticky_bucket("abandoned_cart", "holdout_split", "", key) < 10) is holdout:
            return key
    raise AssertionError("no key")


def _identify(event_id: str, customer: str, minutes: float, **traits: Any) -> TrackedEvent:
    at = T0 + timedelta(minutes=minutes)
    return TrackedEvent(
        event_id=event_id,
        customer_key=customer,
        call_type="identify",
        event_type=EventType.IDENTIFY,
        event_name="Identify",
        timestamp=at,
        received_at=at,
        user_id=customer,
        properties=traits,
        source="wk_shop",
    )


def _track(
    event_id: str, customer: str, event: str, minutes: float, /, **properties: Any
) -> TrackedEvent:
    """``make_event`` from the storefront's write key (and ``name`` may be a property)."""
    historical = properties.pop("_historical", False)
    made = make_event(event_id, customer, event, minutes)
    context = {"historical": True} if historical else {}
    return replace(made, source="wk_shop", properties=properties, context=context)


QUICK, LATER, NEVER = _key(False, "quick"), _key(False, "later"), _key(False, "never")
HOLDOUT = _key(True, "holdout")
CART = {"cart_id": "k1", "product_id": "p1", "name": "Mug", "price": 12.0}
EVENTS = [
    # Before the window: an identify (traits and a zone), and a cart that is history.
    _identify("n0", NEVER, -3 * 24 * 60, first_name="Ada", timezone="Europe/Berlin"),
    _track("n1", NEVER, "Product Added", -2 * 24 * 60, **CART),
    _track("q1", QUICK, "Product Added", 0, **CART),
    _track("q2", QUICK, "Order Completed", 30, cart_id="k1", revenue=12.0),
    _track("l1", LATER, "Product Added", 5, **CART),
    _track("l2", LATER, "Order Completed", 300, cart_id="k1", revenue=12.0),
    # 12:00 UTC on 1 March is 13:00 in Berlin: the reminder is due at 14:00 local.
    _track("n2", NEVER, "Product Added", 0, **CART),
    _track("h1", HOLDOUT, "Product Added", 10, **CART),
    _track("h2", HOLDOUT, "Order Completed", 2000, cart_id="k1", revenue=12.0),
    # An imported cart inside the window: history never enters a flow.
    _track("i1", "imported", "Product Added", 60, _historical=True, **CART),
]


@pytest.fixture
def api(clickhouse: Client) -> Iterator[TestClient]:
    db = f"db_{uuid.uuid4().hex[:12]}"
    migrate(clickhouse, db)
    log = EventLog(clickhouse, db)
    log.append(EVENTS)
    log.append(EVENTS[:3])  # a re-sent block collapses in the log, and so in the backtest
    gateway = Gateway(
        sink=NoSink(),
        keys=AccessKeys(
            write_keys=frozenset({"wk"}),
            read_keys=frozenset({"rk_test"}),
            admin_keys=frozenset({"ak_test"}),
        ),
        event_log=log,
        stages=CustomerStageView(clickhouse, db),
        flows=FlowsAdmin(Settings(), clickhouse, db),
    )
    with TestClient(create_api(gateway)) as client:
        yield client
    clickhouse.command(f"DROP DATABASE {db}")


def test_backtest_of_the_abandoned_cart_over_the_event_log(api: TestClient) -> None:
    answer = api.post("/v1/flows/abandoned_cart/backtest", json=WINDOW, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["entered"] == {"customers": 4, "runs": 4}  # not the imported cart
    assert report["messages"] == {"webhook": 2, "email": 1}  # later + never; never's coupon
    assert report["skipped"] == {"holdout": 2}
    assert report["skipped_customers"] == {"holdout": [HOLDOUT]}
    assert report["conversions"]["treatment"] == {"runs": 3, "converted": 2, "rate": 2 / 3}
    assert report["conversions"]["holdout"] == {"runs": 1, "converted": 1, "rate": 1.0}
    assert report["left"] == {"converted": 3, "completed": 1}
    assert report["nodes"]["reminder"]["reached"] == 3
    assert report["nodes"]["cart_started"]["reached"] == report["entered"]["runs"]
    assert report["nodes"]["reminder"]["skipped"] == {"holdout": 1}
    assert report["messages_per_day"] == [
        {"day": "2026-03-01", "channel": "webhook", "count": 2},
        {"day": "2026-03-02", "channel": "email", "count": 1},
    ]
    paths = {tuple(p["path"]): p["runs"] for p in report["paths"]}
    assert paths[("cart_started", "holdout_split", "wait_for_order")] == 1  # bought in the hour

    # The same engine fed the events as the live worker sees them: the same report.
    flow = load_flows(Settings())[0]  # the canonical abandoned cart
    engine = FlowEngine(FlowCatalog.of([flow]))
    start, end = (
        to_ms(T0 - timedelta(hours=12)),
        to_ms(T0 + timedelta(days=9) - timedelta(hours=12)),
    )
    tally = BacktestTally(flow, start, end)
    for customer in sorted({e.customer_key for e in EVENTS if e.event_name == "Product Added"}):
        mine = [e for e in EVENTS if e.customer_key == customer]
        inputs = [
            tracked_input(e)
            if e.timestamp >= T0 - timedelta(hours=12) or e.historical
            else _as_history(tracked_input(e))
            for e in mine
        ]
        facts, state = run_history(engine, "abandoned_cart", customer, inputs, end)
        tally.add(customer, facts, state)
    direct = tally.report()
    assert {k: v for k, v in direct.items() if k != "customers_considered"} == {
        k: v for k, v in report.items() if k != "customers_considered"
    }


def _as_history(item: Any) -> Any:
    return replace(item, historical=True)


def test_a_draft_is_backtested_and_bad_input_is_a_400_naming_the_field(api: TestClient) -> None:
    listed = api.get("/v1/flows", headers=ADMIN).json()["flows"]
    assert listed[0]["id"] == "abandoned_cart" and len(listed) == 8  # then the rules as flows
    draft = api.get("/v1/flows/abandoned_cart", headers=ADMIN).json()["definition"]
    draft["nodes"]["holdout_split"]["branches"][0]["percent"] = 0
    draft["nodes"]["holdout_split"]["branches"][1]["percent"] = 100
    body = {**WINDOW, "definition": draft}
    report = api.post("/v1/flows/abandoned_cart/backtest", json=body, headers=ADMIN).json()
    assert report["conversions"]["holdout"]["runs"] == 0 and report["skipped"] == {}
    draft["nodes"]["reminder"]["body"] = "{{ cart.total }}"
    bad = api.post("/v1/flows/abandoned_cart/backtest", json=body, headers=ADMIN)
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "flows.abandoned_cart.nodes.reminder.body"
    assert api.post("/v1/flows/nope/backtest", json=WINDOW, headers=ADMIN).status_code == 404
    backwards = {"from": WINDOW["to"], "to": WINDOW["from"]}
    answer = api.post("/v1/flows/abandoned_cart/backtest", json=backwards, headers=ADMIN)
    assert answer.status_code == 400 and answer.json()["errors"][0]["field"] == "to"
    read_key = {"Authorization": "Bearer rk_test"}  # an analyst: below the marketers' role
    assert (
        api.post("/v1/flows/abandoned_cart/backtest", json=WINDOW, headers=read_key).status_code
        == 403
    )
    valid = api.post("/v1/flows/validate", json={"flows": {"x": draft}}, headers=ADMIN)
    assert valid.status_code == 400
    assert valid.json()["errors"][0]["field"] == "flows.x.nodes.reminder.body"
    # A flows file's TOML, parsed as the CLI parses it: each flow's definition as JSON.
    toml = {**ADMIN, "Content-Type": "application/toml"}
    shipped = (Path(__file__).parents[2] / "journeys" / "flows.toml").read_text()
    parsed = api.post("/v1/flows/validate", content=shipped, headers=toml)
    assert parsed.status_code == 200, parsed.text
    (cart,) = [f for f in parsed.json()["flows"] if f["id"] == "abandoned_cart"]
    assert cart["definition"]["nodes"]["wait_for_order"]["timeout"] == "1h"
    one = 'version = 1\n[nodes.start]\nkind = "entry"\nevent = "Signed Up"\n'
    alone = api.post("/v1/flows/validate?flow_id=solo", content=one, headers=toml)
    assert alone.status_code == 200 and alone.json()["flows"][0]["id"] == "solo", alone.text
    broken = api.post("/v1/flows/validate", content="[flows\n", headers=toml)
    assert broken.status_code == 400 and "not valid TOML" in broken.json()["message"]
    assert broken.json()["errors"][0]["field"] == "body"
