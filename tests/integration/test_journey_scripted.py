"""The scripted journey, through the real node over HTTP (Tansu, Faust worker, chdb, SQLite).

Anonymous browsing on two devices → identify on both → cart → purchase →
support ticket → second purchase: one merged timeline, the expected stage
sequence, and "as of" answers that match the timeline.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from stack.cli import main
from stack.processes import wait_until
from stack.settings import Settings
from tests.node_process import NodeProcess, started_node

pytestmark = pytest.mark.integration

# Near now, so that "now" is within the loyalty lapse period.
START = (datetime.now(UTC) - timedelta(days=3)).replace(microsecond=0)


def at(hours: float) -> str:
    return (START + timedelta(hours=hours)).isoformat()


def send(node: NodeProcess, path: str, body: dict[str, Any]) -> None:
    response = httpx.post(
        f"{node.base}{path}", json=body, auth=(node.settings.write_key, ""), timeout=30
    )
    assert response.status_code == 200, response.text


@pytest.fixture(params=["sqlite", "postgres"])
def node_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The node's settings on one event store: SQLite, or the session's real PostgreSQL."""
    if request.param == "sqlite":
        return settings
    dsn = request.getfixturevalue("postgres_dsn")
    return settings.model_copy(update={"event_store": "postgres", "postgres_dsn": dsn})


def test_scripted_journey_merges_devices_and_answers_as_of(
    node_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = node_settings
    node = started_node(settings)
    try:
        laptop, phone = {"anonymousId": "laptop-1"}, {"anonymousId": "phone-1"}
        web = {"context": {"page": {"path": "/"}}}
        app = {"context": {"app": {"name": "shop"}}}
        product = {"event": "Product Viewed", "properties": {"category": "boots"}}
        send(node, "/v1/track", {**laptop, **web, **product, "messageId": "m1", "timestamp": at(0)})
        send(node, "/v1/track", {**laptop, **web, **product, "messageId": "m2", "timestamp": at(1)})
        scarf = {"event": "Product Viewed", "properties": {"category": "scarves"}}
        send(node, "/v1/track", {**phone, **app, **scarf, "messageId": "m3", "timestamp": at(2)})
        send(
            node, "/v1/identify", {**laptop, "userId": "uma", "messageId": "m4", "timestamp": at(3)}
        )
        send(
            node, "/v1/identify", {**phone, "userId": "uma", "messageId": "m5", "timestamp": at(4)}
        )
        # The merge travels through the topic; let it land before the cart, so the
        # stage reasons below are the anonymous views' (the sequence would be the same).
        assert wait_until(
            lambda: _absorbed(node) == 2, timeout=60, alive=lambda: True, interval=0.3
        ), node.log_tail()
        user = {"userId": "uma", "anonymousId": "laptop-1"}
        added = {"event": "Product Added", "properties": {"product_id": "p1", "price": 50}}
        send(node, "/v1/track", {**user, **added, "messageId": "m6", "timestamp": at(5)})
        order = {"event": "Order Completed", "properties": {"order_id": "o1", "revenue": 50}}
        send(node, "/v1/track", {**user, **order, "messageId": "m7", "timestamp": at(6)})
        ticket = {"event": "Ticket Created", "properties": {"ticket_id": "t1"}}
        send(node, "/v1/track", {**user, **ticket, "messageId": "m8", "timestamp": at(7)})
        second = {"event": "Order Completed", "properties": {"order_id": "o2", "revenue": 70}}
        send(node, "/v1/track", {**user, **second, "messageId": "m9", "timestamp": at(30)})
        # A re-sent event (same messageId) counts once.
        send(node, "/v1/track", {**user, **second, "messageId": "m9", "timestamp": at(30)})

        def caught_up() -> bool:
            found = node.read("GET", "/v1/customers/uma")
            # The shipped segments' backfill runs a chunk per tick once a partition is
            # caught up, so it may finish a little after the orders are counted.
            return (
                found.is_success
                and found.json()["orders"] == 2
                and found.json()["segments"]["backfilled"] is True
            )

        assert wait_until(caught_up, timeout=60, alive=lambda: True, interval=0.3), node.log_tail()

        timeline = node.read("GET", "/v1/customers/uma/journey").json()
        entries = timeline["entries"]
        # The person's stages across both devices, in time order, from the first touch.
        stages = [(step["stage"], step["at"]) for step in timeline["stages"]]
        assert [(stage, datetime.fromisoformat(moment)) for stage, moment in stages] == [
            ("awareness", START),
            ("consideration", START + timedelta(hours=1)),  # the laptop's second view
            ("purchase", START + timedelta(hours=6)),
            ("service", START + timedelta(hours=7)),
            ("loyalty", START + timedelta(hours=30)),
        ]
        own = [e["stage"] for e in entries if e["type"] == "StageReached"]
        assert own == ["awareness", "consideration", "purchase", "service", "loyalty"]
        facts = [e for e in entries if "event_name" in e]  # the fact events
        assert [e["event_id"] for e in facts] == [f"m{i}" for i in range(1, 10)]
        assert [e["type"] for e in facts] == [
            "Browsed",
            "Browsed",
            "Browsed",
            "Interacted",
            "Interacted",
            "CartOpened",
            "OrderPlaced",
            "TicketOpened",
            "OrderPlaced",
        ]
        assert {e.get("merged_from") for e in facts[:3]} == {"anon:laptop-1", "anon:phone-1"}
        times = [e["at"] for e in entries]
        assert times == sorted(times), "one timeline, in time order"

        customer = node.read("GET", "/v1/customers/uma").json()
        assert (customer["stage"], customer["event_count"], customer["orders"]) == (
            "loyalty",
            9,
            2,
        )
        # Computed traits from the shipped segments file (uma's own events; the merged
        # anonymous views are not folded into segments yet).
        assert customer["segments"]["backfilled"] is True
        assert customer["segments"]["computed_traits"]["lifetime_revenue"] == 120.0
        members = ["segments", "members", "--url", node.base, "--read-key", settings.read_key]
        assert main([*members, "big_spenders"]) == 0  # 120 in a year is not over 500
        assert json.loads(capsys.readouterr().out)["members"] == []
        assert main([*members, "nobody"]) == 1
        assert "segment_id: no segment 'nobody'" in capsys.readouterr().err
        profile = customer["profile"]
        assert profile["channels"] == ["app", "unknown", "web"]
        assert profile["interest_tags"] == ["boots", "scarves"]
        assert (profile["revenue"], profile["average_order_value"]) == (120.0, 60.0)
        assert profile["frequency"] == 2
        assert profile["purchase_cycle_days"] == 1.0
        # RFM quintiles are ranked among all buyers in ClickHouse (the analysis reports).
        scores = node.read("GET", "/v1/rfm/uma").json()
        assert profile["rfm"] is not None
        assert {k: profile["rfm"][k] for k in ("r", "f", "m", "segment", "tier")} == {
            k: scores[k] for k in ("r", "f", "m", "segment", "tier")
        }
        assert all(1 <= profile["rfm"][k] <= 5 for k in ("r", "f", "m"))
        assert node.read("GET", "/v1/customers/anon:laptop-1").json()["merged_into"] == "uma"

        # "as of" each stage change answers that stage; just before the first, none.
        for stage, moment in stages:
            answer = node.read("GET", "/v1/customers/uma", params={"as_of": moment}).json()
            later = [s for s, t in stages if t == moment]
            assert answer["stage"] == later[-1], (stage, moment)
            journey = node.read("GET", "/v1/customers/uma/journey", params={"as_of": moment})
            assert journey.json()["stage"] == later[-1]
        # Before the identify, uma was the laptop's anonymous visitor, considering.
        pre = node.read("GET", "/v1/customers/uma", params={"as_of": at(2.5)}).json()
        assert pre["stage"] == "consideration"
        first = datetime.fromisoformat(stages[0][1]) - timedelta(seconds=1)
        before = node.read("GET", "/v1/customers/uma", params={"as_of": first.isoformat()})
        assert before.json()["stage"] is None

        now = node.read("GET", "/v1/stages").json()
        assert now["stages"]["loyalty"] == 1
        assert now["total"] == 1  # the two anonymous journeys are uma now
        # Before the identify too: both devices were uma then (their facts are hers
        # from their own times), considering since the laptop's second view.
        earlier = node.read("GET", "/v1/stages", params={"as_of": at(2.5)}).json()
        assert earlier["stages"]["consideration"] == 1
        assert earlier["stages"]["awareness"] == 0
        assert earlier["total"] == 1
        # The analyses count one person too: both devices' anonymous views are uma's.
        funnel = {"steps": [{"event_type": "browse"}, {"event_type": "purchase"}]}
        answer = node.read("POST", "/v1/funnels", json=funnel)
        assert answer.status_code == 200, answer.text
        assert [s["customers"] for s in answer.json()["steps"]] == [1, 1]

        health = node.read("GET", "/health").json()
        assert health["components"]["event_store"]["kind"] == settings.event_store

        missing = node.read("GET", "/v1/customers/nobody")
        assert missing.status_code == 404
        assert "nobody" in missing.json()["message"]
        assert node.read("GET", "/v1/customers/nobody/journey").status_code == 404
        bad = node.read("GET", "/v1/stages", params={"as_of": "last tuesday"})
        assert bad.status_code == 400
        assert bad.json()["errors"][0]["field"] == "query.as_of"
        bad = node.read("GET", "/v1/customers/uma", params={"as_of": "2026-13-45"})
        assert bad.status_code == 400
        assert bad.json()["errors"][0]["field"] == "query.as_of"
    finally:
        assert node.stop() == 0
    if settings.event_store == "postgres":
        import psycopg

        with psycopg.connect(settings.postgres_dsn) as connection:
            stored = connection.execute("SELECT count(*) FROM customerjourneys_events").fetchone()
        assert stored is not None and stored[0] >= len(entries)


def _absorbed(node: NodeProcess) -> int:
    response = node.read("GET", "/v1/customers/uma/journey")
    if not response.is_success:
        return 0
    return sum(1 for e in response.json()["entries"] if e["type"] == "IdentityMerged")
