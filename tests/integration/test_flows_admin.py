"""Flows changed over the admin API while the live flow runner runs (no restart).

The API (FastAPI's test client over the real app) and the worker's flow runner
(streams/outreach/flows.py) each open the stored flows in the same SQLite file,
as the node's API and worker do; the runner's clock is simulated (its ticks are
called with the instant), its store is the real outreach store. PUT a new
version: the run inside finishes on version 1, a newcomer enters version 2.
Pause: nobody enters, nothing is sent, what happens meanwhile is kept; resume:
the held steps are taken in event time (a send due within the grace goes out,
one due longer ago is skipped ``expired``, a customer who bought is converted).
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from api.app import create_api
from api.dependencies import AccessKeys, Gateway
from journeys.flows.inputs import iso, to_ms, tracked_input
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.flow_definition_store import FlowDefinitions
from projections.migrations import migrate
from stack.cli import main
from stack.flows import FlowsAdmin, build_flow_definitions, load_flows
from stack.settings import Settings
from streams.outreach import flows as live_flows
from streams.outreach.flows import FlowRunner
from streams.outreach.store import OutreachStore
from tests.conftest import T0
from tests.integration.test_analytics_api import NoSink
from tests.integration.test_flows_backtest import CART, HOLDOUT, LATER, NEVER, QUICK, _key, _track

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": "Bearer ak_test"}
GRACE_MS = 15 * 60_000
MINUTE = 60_000
AT = to_ms(T0)
LATE = _key(False, "late")
EARLY, DURING = _key(False, "early"), _key(False, "during")


def _targets(
    rule: str, channels: list[str], message: dict[str, object]
) -> list[tuple[str, str, str]]:
    return (
        [("ep1", "webhook", "pending")]
        if "webhook" in channels
        else [("email", "email", "pending")]
    )


@dataclass
class Live:
    api: TestClient
    runner: FlowRunner
    store: OutreachStore
    now: float = -1.0  # minutes after T0

    def arrive(
        self,
        event_id: str,
        customer: str,
        event_name: str,
        minutes: float,
        /,
        arrived: float | None = None,
        **props: Any,
    ) -> None:
        """An event stamped T0 + minutes, consumed 2 s later (or at T0 + ``arrived``)."""
        event = _track(event_id, customer, event_name, minutes, **props)
        now = to_ms(event.timestamp) + 2_000 if arrived is None else AT + int(arrived * MINUTE)
        self.store.save_flows(self.runner.observe(0, [(customer, tracked_input(event))], now))

    def tick(self, minutes: float) -> None:
        """The worker's timer loop every 5 minutes up to T0 + minutes: the stored flows
        polled, due states advanced."""
        while self.now < minutes:
            self.now = min(minutes, self.now + 5)
            self.runner.reload()
            self.store.save_flows(self.runner.advance_due([0], AT + int(self.now * MINUTE)))

    def facts(self, customer: str, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.store.flow_facts(customer) if f["type"] == kind]


@pytest.fixture
def live(tmp_path: Path, clickhouse: Client, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    monkeypatch.setattr(live_flows, "DEFINITIONS_RELOAD_S", 0.0)  # every tick polls
    db = f"db_{uuid.uuid4().hex[:12]}"
    migrate(clickhouse, db)
    settings = Settings(data_dir=tmp_path / "data")
    store = OutreachStore(sqlite_path=settings.sqlite_path)
    # Each process opens the stored flows; the first seeds them from the flows file.
    worker_flows = build_flow_definitions(settings)
    api_flows = build_flow_definitions(settings)
    runner = FlowRunner(store, worker_flows, _targets, GRACE_MS)
    made: list[Live] = []  # its simulated wall clock stamps a pause or a resume
    gateway = Gateway(
        sink=NoSink(),
        keys=AccessKeys(
            write_keys=frozenset({"wk"}),
            read_keys=frozenset({"rk_test"}),
            admin_keys=frozenset({"ak_test"}),
        ),
        event_log=EventLog(clickhouse, db),
        stages=CustomerStageView(clickhouse, db),
        flows=FlowsAdmin(
            settings, clickhouse, db, store, api_flows, lambda: (AT + made[0].now * MINUTE) / 1000
        ),
    )
    with TestClient(create_api(gateway)) as client:
        made.append(Live(client, runner, store))
        yield made[0]
    for opened in (worker_flows, api_flows, store):
        opened.close()
    clickhouse.command(f"DROP DATABASE {db}")


def _cart(**changes: Any) -> dict[str, Any]:
    (flow,) = [f for f in load_flows(Settings()) if f.id == "abandoned_cart"]
    table = copy.deepcopy(dict(flow.source))
    table.update(changes)
    return table


def test_a_put_reaches_the_running_flows_and_runs_inside_keep_their_version(live: Live) -> None:
    api = live.api
    live.arrive("q1", QUICK, "Product Added", 0, **CART)  # enters version 1 (1 h wait)
    live.tick(1)
    changed = _cart()
    changed["nodes"]["wait_for_order"]["timeout"] = "2h"

    refused = api.put("/v1/flows/abandoned_cart", json=changed, headers=ADMIN)
    assert refused.status_code == 409, refused.text
    assert refused.json()["errors"][0]["field"] == "flows.abandoned_cart.version"
    assert "give the change version 2" in refused.json()["errors"][0]["message"]
    broken = copy.deepcopy(changed)
    broken["nodes"]["reminder"]["body"] = "{{ cart.total }}"
    invalid = api.put("/v1/flows/abandoned_cart", json={**broken, "version": 2}, headers=ADMIN)
    assert invalid.status_code == 422, invalid.text
    assert invalid.json()["errors"][0]["field"] == "flows.abandoned_cart.nodes.reminder.body"
    unreadable = api.put(
        "/v1/flows/abandoned_cart",
        content=b"{not json",
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert unreadable.status_code == 400, unreadable.text
    assert api.put("/v1/flows/abandoned_cart", json=changed).status_code == 401

    replaced = api.put("/v1/flows/abandoned_cart", json={**changed, "version": 2}, headers=ADMIN)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["version"] == 2
    assert replaced.json()["definition"]["nodes"]["wait_for_order"]["timeout"] == "2h"
    welcome = {
        "name": "Welcome",
        "version": 1,
        "nodes": {
            "signed_up": {"kind": "entry", "event": "Signed Up", "next": "hello"},
            "hello": {"kind": "send", "channel": "webhook", "body": "Welcome!"},
        },
    }
    created = api.put("/v1/flows/welcome", json=welcome, headers=ADMIN)
    assert created.status_code == 201, created.text
    listed = api.get("/v1/flows", headers=ADMIN).json()["flows"]
    mine = {"abandoned_cart", "welcome"}  # beside the shipped lifecycle flows (switched off)
    assert [(f["id"], f["version"], f["paused"]) for f in listed if f["id"] in mine] == [
        ("abandoned_cart", 2, False),
        ("welcome", 1, False),
    ]

    live.tick(2)  # the runner takes the change here, without a restart
    live.arrive("l1", LATER, "Product Added", 5, **CART)  # enters version 2 (2 h wait)
    live.arrive("w1", NEVER, "Signed Up", 6)
    live.tick(3 * 60)
    assert [(f["version"], f["at_ms"] - AT) for f in live.facts(QUICK, "Sent")] == [
        (1, 60 * MINUTE)
    ]
    assert [(f["version"], f["at_ms"] - AT) for f in live.facts(LATER, "Sent")] == [
        (2, 125 * MINUTE)
    ]
    assert [f["flow_id"] for f in live.facts(NEVER, "Sent")] == ["welcome"]

    assert api.delete("/v1/flows/welcome", headers=ADMIN).status_code == 200
    assert api.delete("/v1/flows/welcome", headers=ADMIN).status_code == 404
    assert api.get("/v1/flows/welcome", headers=ADMIN).status_code == 404
    live.tick(3 * 60 + 1)
    live.arrive("w2", LATE, "Signed Up", 3 * 60 + 2)  # deleted: no new runs
    live.tick(3 * 60 + 3)
    assert live.facts(LATE, "Entered") == []
    # Out of the list in force; listed as deleted on asking, its runs' results kept.
    assert "welcome" not in [f["id"] for f in api.get("/v1/flows", headers=ADMIN).json()["flows"]]
    everything = api.get("/v1/flows", params={"include_deleted": "true"}, headers=ADMIN)
    deleted = [f for f in everything.json()["flows"] if f["deleted"]]
    assert [(f["id"], f["name"], f["version"], f["versions"]) for f in deleted] == [
        ("welcome", "Welcome", 1, [1])
    ]
    # A flow deleted before anyone entered it leaves nothing to show: not listed.
    api.put("/v1/flows/unused", json={**welcome, "name": "Unused"}, headers=ADMIN)
    live.tick(3 * 60 + 4)  # the runner records its version
    assert api.delete("/v1/flows/unused", headers=ADMIN).status_code == 200
    everything = api.get("/v1/flows", params={"include_deleted": "true"}, headers=ADMIN)
    assert [f["id"] for f in everything.json()["flows"] if f["deleted"]] == ["welcome"]


def test_a_paused_flow_holds_its_runs_and_resumes_in_event_time(live: Live) -> None:
    api = live.api
    live.arrive("q1", QUICK, "Product Added", 0, **CART)  # due a reminder at 60 min
    live.arrive("n1", NEVER, "Product Added", 0, **CART)  # will buy during the pause
    live.tick(1)
    paused = api.post("/v1/flows/abandoned_cart/pause", headers=ADMIN)
    assert paused.status_code == 200 and paused.json()["paused"], paused.text
    assert api.post("/v1/flows/nope/pause", headers=ADMIN).status_code == 404
    live.tick(10)
    live.arrive("l1", LATER, "Product Added", 20, **CART)  # paused: does not enter
    # Judged by its stamp: from before the pause, it comes late, and enters on resume.
    live.arrive("e1", EARLY, "Product Added", 0.5, arrived=10, **CART)
    live.arrive("n2", NEVER, "Order Completed", 30, cart_id="k1", revenue=12.0)
    live.tick(65)  # QUICK's reminder came due at 60: held, not sent
    assert live.facts(QUICK, "Sent") == []
    assert live.facts(NEVER, "Left") == []
    assert live.store.recent_triggers(limit=10) == []

    resumed = api.post("/v1/flows/abandoned_cart/resume", headers=ADMIN)
    assert resumed.status_code == 200 and not resumed.json()["paused"]
    assert resumed.json()["pauses"] == [{"from": iso(AT + MINUTE), "to": iso(AT + 65 * MINUTE)}]
    # Stamped inside the pause and consumed after it: refused all the same.
    live.arrive("d1", DURING, "Product Added", 40, arrived=66, **CART)
    live.tick(70)  # 10 min after it was due: within the 15 min grace, sent
    assert [f["at_ms"] - AT for f in live.facts(QUICK, "Sent")] == [60 * MINUTE]
    assert [f["at_ms"] - AT for f in live.facts(EARLY, "Entered")] == [MINUTE // 2]
    assert [f["at_ms"] - AT for f in live.facts(EARLY, "Sent")] == [60 * MINUTE + MINUTE // 2]
    assert live.facts(DURING, "Entered") == []
    assert [(f["reason"], f["at_ms"] - AT) for f in live.facts(DURING, "Skipped")] == [
        ("paused", 40 * MINUTE)
    ]
    assert [f["reason"] for f in live.facts(NEVER, "Left")] == ["converted"]
    assert live.facts(NEVER, "Sent") == []
    assert live.facts(LATER, "Entered") == []
    # Why LATER got nothing: the refused entry is a decision, said once.
    (refused,) = live.facts(LATER, "Skipped")
    assert (refused["node"], refused["reason"]) == ("cart_started", "paused")
    why = api.get(f"/v1/customers/{LATER}/flows", headers=ADMIN).json()
    assert "the flow was paused" in why["flows"][0]["facts"][-1]["why"]

    # A pause longer than the grace: the send due during it is skipped, not sent late.
    live.arrive("x1", LATE, "Product Added", 75, **CART)  # due at 135 min
    live.tick(76)
    api.post("/v1/flows/abandoned_cart/pause", headers=ADMIN)
    live.tick(155)
    api.post("/v1/flows/abandoned_cart/resume", headers=ADMIN)
    live.tick(160)
    assert live.facts(LATE, "Sent") == []
    assert [(f["reason"], f["node"]) for f in live.facts(LATE, "Skipped")] == [
        ("expired", "reminder")
    ]
    sent_to = sorted(t["customer_id"] for t in live.store.recent_triggers(limit=10))
    assert sent_to == sorted([QUICK, EARLY])


def test_the_flows_file_seeds_the_store_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = build_flow_definitions(settings)
    shipped = [flow.id for flow in first.current().flows]
    assert "abandoned_cart" in shipped
    first.delete("abandoned_cart")
    first.close()
    again: FlowDefinitions = build_flow_definitions(settings)  # a restart: not re-seeded
    assert [flow.id for flow in again.current().flows] == [
        flow_id for flow_id in shipped if flow_id != "abandoned_cart"
    ]
    again.close()


def test_results_count_the_live_decisions_and_their_deliveries(live: Live) -> None:
    """Four customers through the canonical flow, live; two deliveries made, one failed."""
    live.arrive("q1", QUICK, "Product Added", 0, **CART)
    live.arrive("n1", NEVER, "Product Added", 0, **CART)
    live.arrive("l1", LATER, "Product Added", 5, **CART)
    live.arrive("h1", HOLDOUT, "Product Added", 10, **CART)
    live.arrive("q2", QUICK, "Order Completed", 30, cart_id="k1", revenue=12.0)
    live.tick(300)
    live.arrive("l2", LATER, "Order Completed", 300, cart_id="k1", revenue=12.0)
    live.tick(1600)  # NEVER's coupon (an e-mail) at 1500; HOLDOUT's skipped at 1510
    live.arrive("h2", HOLDOUT, "Order Completed", 2000, cart_id="k1", revenue=12.0)
    live.tick(2010)
    for delivery in live.store.claim_due_deliveries(time.time() + 1, 30, 10):
        message = orjson.loads(delivery.body or "{}")
        failed = (message["customer_id"], message["node"]) == (NEVER, "reminder")
        state = "dead" if failed else "delivered"
        live.store.record_attempt(delivery, state, "HTTP 500" if failed else None)

    answer = live.api.get("/v1/flows/abandoned_cart/results", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    results = answer.json()
    assert results["entered"] == {"customers": 4, "runs": 4}
    assert results["inside_now"] == 1  # NEVER: the path ended, the goal's 3 days not over
    assert results["messages"] == {"webhook": 2, "email": 1}
    assert results["skipped"] == {"holdout": 2}
    assert results["left"] == {"converted": 3}
    assert results["deliveries"] == {"delivered": 2, "failed": 1, "pending": 0, "skipped": 0}
    nodes = results["nodes"]
    assert list(nodes) == [
        "cart_started",
        "holdout_split",
        "wait_for_order",
        "reminder",
        "wait_a_day",
        "coupon",
    ]
    assert nodes["cart_started"]["reached"] == 4
    assert nodes["wait_for_order"]["converted"] == 1  # QUICK bought within the hour
    assert nodes["reminder"]["reached"] == 3  # LATER, NEVER, HOLDOUT
    reminder = nodes["reminder"]
    assert (reminder["sent"], reminder["skipped"]) == (2, {"holdout": 1})
    assert reminder["deliveries"] == {"delivered": 1, "failed": 1, "pending": 0, "skipped": 0}
    assert nodes["wait_a_day"]["converted"] == 1  # LATER after the reminder
    assert nodes["coupon"]["sent"] == 1
    assert nodes["coupon"]["deliveries"]["delivered"] == 1
    assert nodes["coupon"]["skipped"] == {"holdout": 1}
    assert results["waiting_at_the_end"] == 1  # NEVER
    # HOLDOUT bought after its path (both sends skipped) ended, inside the goal's window.
    assert (results["converted"], results["converted_at_the_end"]) == (3, 1)
    conversions = results["conversions"]
    # Treatment: QUICK and LATER converted, NEVER inside (counted, not converted).
    assert conversions["treatment"] == {"runs": 3, "converted": 2, "rate": 2 / 3}
    assert conversions["holdout"] == {"runs": 1, "converted": 1, "rate": 1.0}
    assert conversions["difference"] == pytest.approx(2 / 3 - 1)
    low, high = conversions["ci95"]
    assert low < conversions["difference"] < high
    assert live.api.get("/v1/flows/nope/results", headers=ADMIN).status_code == 404


@pytest.fixture
def served(live: Live) -> Iterator[str]:
    """The live fixture's API behind a real HTTP server, for the CLI."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(live.api.app, host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_results_by_version_and_window_a_deleted_flows_results_and_the_cli_reads_the_store(
    live: Live, served: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """QUICK enters version 1, LATER version 2 (after a PUT); results of all runs, of each
    version and of a window of entries; the CLI's list and show read the stored flows;
    a deleted flow's results stay while its runs finish."""
    api = live.api
    live.arrive("q1", QUICK, "Product Added", 0, **CART)
    live.tick(1)
    changed = _cart(version=2)
    changed["nodes"]["wait_for_order"]["timeout"] = "2h"
    assert api.put("/v1/flows/abandoned_cart", json=changed, headers=ADMIN).status_code == 200
    live.tick(2)
    live.arrive("l1", LATER, "Product Added", 5, **CART)
    live.tick(3 * 60)  # QUICK's reminder at 60 min (v1), LATER's at 125 min (v2)

    def results(**params: Any) -> dict[str, Any]:
        answer = api.get("/v1/flows/abandoned_cart/results", params=params, headers=ADMIN)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    every = results()
    assert every["entered"] == {"customers": 2, "runs": 2}
    assert (every["version"], every["deleted"]) == (2, False)
    assert every["deliveries"]["pending"] == 2
    first, second = results(version=1), results(version=2)
    assert (first["version"], first["entered"]["runs"], first["runs_of"]["version"]) == (1, 1, 1)
    assert second["entered"]["runs"] == 1
    # Each version's counts are its runs' alone, deliveries too.
    assert first["nodes"]["reminder"]["sent"] == second["nodes"]["reminder"]["sent"] == 1
    assert first["deliveries"]["pending"] == second["deliveries"]["pending"] == 1
    assert first["nodes"]["wait_for_order"]["waiting"] == 0
    assert first["inside_now"] == 1 and second["inside_now"] == 1
    # A window of entries: LATER entered at 5 min, QUICK at 0.
    since = (T0 + timedelta(minutes=3)).isoformat()
    windowed = results(**{"from": since})
    assert windowed["entered"] == {"customers": 1, "runs": 1}
    assert windowed["runs_of"]["from"] is not None
    before = results(to=since)
    assert before["entered"] == {"customers": 1, "runs": 1}
    assert before["nodes"]["reminder"]["deliveries"]["pending"] == 1
    unknown = api.get("/v1/flows/abandoned_cart/results?version=9", headers=ADMIN)
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["field"] == "version"
    backwards = api.get(
        "/v1/flows/abandoned_cart/results", params={"from": since, "to": since}, headers=ADMIN
    )
    assert backwards.status_code == 400 and backwards.json()["errors"][0]["field"] == "to"

    # The CLI reads the stored flows (version 2, put over the API), not the file (version 1).
    connection = ["--url", served, "--admin-key", "ak_test"]
    assert main(["flows", "list", *connection]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("abandoned_cart v2: Abandoned cart, reentry cooldown:")
    assert "holdout_split (split)" in listing[0] and "coupon (send)" in listing[0]
    assert any(line.endswith("[disabled]") or "[disabled]," in line for line in listing[1:])
    assert main(["flows", "show", "abandoned_cart", *connection]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 2
    assert shown["definition"]["nodes"]["wait_for_order"]["timeout"] == "2h"
    assert main(["flows", "show", "nope", *connection]) == 1
    assert "no flow 'nope'" in capsys.readouterr().err
    assert main(["flows", "results", "abandoned_cart", "--version", "1", *connection]) == 0
    assert json.loads(capsys.readouterr().out)["entered"]["runs"] == 1

    # Deleted: no new runs, but the runs inside finish, and their results are still shown.
    assert api.delete("/v1/flows/abandoned_cart", headers=ADMIN).status_code == 200
    live.tick(3 * 60 + 5)
    gone = results()
    assert gone["deleted"] is True and gone["version"] == 2
    assert gone["entered"] == {"customers": 2, "runs": 2}
    assert results(version=1)["entered"]["runs"] == 1
    assert api.get("/v1/flows/nope/results", headers=ADMIN).status_code == 404
    assert main(["flows", "list", *connection]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if "abandoned_cart" in line]
    assert main(["flows", "list", "--deleted", *connection]) == 0
    (listed,) = [line for line in capsys.readouterr().out.splitlines() if "abandoned_cart" in line]
    assert listed.startswith("abandoned_cart v2: Abandoned cart [deleted], reentry cooldown:")


def test_a_nodes_customers_are_those_waiting_there_then_those_who_passed(live: Live) -> None:
    """Who is at a node (the dashboard's drill-down): QUICK and NEVER wait for an order;
    after the hour QUICK has bought (passed, converted) and NEVER waits a day after the
    reminder. One page at a time; an unknown node or flow, or a bad page, is a 4xx."""
    api = live.api

    def at(node: str, **params: Any) -> dict[str, Any]:
        path = f"/v1/flows/abandoned_cart/nodes/{node}/customers"
        answer = api.get(path, params=params, headers=ADMIN)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    live.arrive("q1", QUICK, "Product Added", 0, **CART)
    live.arrive("n1", NEVER, "Product Added", 1, **CART)
    live.tick(10)
    waiting = at("wait_for_order")
    assert (waiting["now"], waiting["passed"]) == (2, 0)
    # Newest arrival first: NEVER came a minute after QUICK.
    assert [c["customer_id"] for c in waiting["customers"]] == [NEVER, QUICK]
    assert {c["at_node"] for c in waiting["customers"]} == {"now"}
    assert all(c["waiting_until"] is not None for c in waiting["customers"])
    assert at("cart_started")["passed"] == 2
    page = at("wait_for_order", limit=1, offset=1)
    assert [c["customer_id"] for c in page["customers"]] == [QUICK]
    assert (page["limit"], page["offset"], page["now"]) == (1, 1, 2)

    live.arrive("q2", QUICK, "Order Completed", 30, cart_id="k1", revenue=12.0)
    live.tick(70)  # NEVER's reminder at 61 min, then a day's wait
    left = at("wait_for_order")
    assert (left["now"], left["passed"]) == (0, 2)
    assert [(c["customer_id"], c["at_node"]) for c in left["customers"]] == [
        (NEVER, "passed"),
        (QUICK, "passed"),
    ]
    later = at("wait_a_day")
    assert [(c["customer_id"], c["at_node"]) for c in later["customers"]] == [(NEVER, "now")]
    assert at("coupon")["customers"] == []

    unknown = api.get("/v1/flows/abandoned_cart/nodes/nope/customers", headers=ADMIN)
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["field"] == "node_id"
    no_flow = api.get("/v1/flows/nope/nodes/reminder/customers", headers=ADMIN)
    assert no_flow.status_code == 404 and no_flow.json()["errors"][0]["field"] == "flow_id"
    too_many = api.get(
        "/v1/flows/abandoned_cart/nodes/reminder/customers?limit=100000", headers=ADMIN
    )
    assert too_many.status_code == 400 and too_many.json()["errors"][0]["field"] == "query.limit"
    # The flow's versions: the one in force (runs were started on it).
    assert api.get("/v1/flows/abandoned_cart", headers=ADMIN).json()["versions"] == [1]
