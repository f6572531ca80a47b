"""The analysis endpoints over HTTP on the real ClickHouse engine: answers and 400s."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from api.app import create_api
from api.dependencies import AccessKeys, Gateway
from events import TrackedEvent
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.migrations import migrate
from tests.conftest import make_event

pytestmark = pytest.mark.integration
READ = {"Authorization": "Bearer rk_test"}


class NoSink:
    """Ingest is not under test here; the analysis routes never publish."""

    async def publish(self, events: Sequence[TrackedEvent]) -> None:
        raise AssertionError("analysis must not publish")

    async def dead_letter(self, payload: bytes, reasons: Sequence[dict[str, Any]]) -> None:
        raise AssertionError("analysis must not dead-letter")


@pytest.fixture
def api(clickhouse: Client) -> Iterator[TestClient]:
    db = f"db_{uuid.uuid4().hex[:12]}"
    migrate(clickhouse, db)
    log = EventLog(clickhouse, db)
    log.append(
        [
            make_event("a1", "alice", "Product Viewed", 0, category="shoes"),
            make_event("a2", "alice", "Product Added", 5, price=20.0),
            make_event("a3", "alice", "Order Completed", 10, revenue=20.0),
            make_event("b1", "bob", "Product Viewed", 1, category="bags"),
            make_event("b2", "bob", "Product Added", 2),
            make_event("c1", "carol", "Product Viewed", 3, category="shoes"),
        ]
    )
    gateway = Gateway(
        sink=NoSink(),
        keys=AccessKeys(write_keys=frozenset({"wk"}), read_keys=frozenset({"rk_test"})),
        event_log=log,
        stages=CustomerStageView(clickhouse, db),
    )
    with TestClient(create_api(gateway)) as client:
        yield client
    clickhouse.command(f"DROP DATABASE {db}")


STEPS = [{"event_type": "browse"}, {"event_type": "cart"}, {"event_type": "purchase"}]


def test_funnel_counts_conversions_times_and_breakdown(api: TestClient) -> None:
    body = {"steps": STEPS, "window_seconds": 3600, "breakdown": "category"}
    answer = api.post("/v1/funnels", json=body, headers=READ)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert [s["customers"] for s in got["steps"]] == [3, 2, 1]
    assert got["steps"][1]["median_seconds"] == 60.0  # bob 60 s, alice 300 s: nearest rank
    assert got["steps"][2]["p90_seconds"] == 600.0
    assert [s["customers"] for s in got["breakdown"]["shoes"]] == [2, 1, 1]
    assert [s["customers"] for s in got["breakdown"]["bags"]] == [1, 1, 0]


def test_dropped_customers_are_paged(api: TestClient) -> None:
    body = {"steps": STEPS, "window_seconds": 3600, "dropped_at": 2, "limit": 1}
    answer = api.post("/v1/funnels/dropped", json=body, headers=READ).json()
    assert answer["total"] == 1 and answer["customers"] == ["carol"]


def test_other_reports_answer(api: TestClient) -> None:
    retention = {
        "start_event": {"event_type": "browse"},
        "return_event": {"event_type": "purchase"},
        "period": "day",
        "periods": 2,
    }
    got = api.post("/v1/retention", json=retention, headers=READ)
    assert got.status_code == 200, got.text
    assert got.json()["cohorts"][0]["size"] == 3
    paths = api.post("/v1/paths", json={"event": "Product Viewed", "steps": 2}, headers=READ)
    assert {"path": ["Product Added", "Order Completed"], "customers": 1} in paths.json()
    assert len(paths.json()) == 3  # alice's, bob's (one event) and carol's (none after)
    assert api.get("/v1/trends", headers=READ).json()["days"][0]["events"] >= 1
    assert api.get("/v1/stage-flow", headers=READ).status_code == 200
    assert len(api.get("/v1/funnels/stages", headers=READ).json()["stages"]) == 5
    rfm = api.get("/v1/rfm/alice", headers=READ)
    assert rfm.status_code == 200 and rfm.json()["frequency"] == 1
    assert api.get("/v1/rfm/bob", headers=READ).status_code == 404
    assert api.get("/v1/rfm", headers=READ).json()["customers"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"steps": [{"event": "Nope"}, {"event_type": "cart"}]}, "steps[0].event"),
        ({"steps": STEPS, "window_seconds": 0}, "window_seconds"),
        ({"steps": STEPS, "window_seconds": -5}, "window_seconds"),
        ({"steps": [{"event_type": "browse"}] * 11}, "steps"),
        ({"steps": STEPS, "breakdown": "no_such_property"}, "breakdown"),
        ({"steps": STEPS, "breakdown": "price"}, "breakdown"),
        ({"steps": STEPS, "breakdown": "bad'name;"}, "breakdown"),
        ({"steps": [{"event_type": "teleport"}, {"event_type": "cart"}]}, "steps.0.event_type"),
        (
            {
                "steps": [
                    {
                        "event_type": "cart",
                        "filters": [{"property": "price", "op": "gt", "value": "x"}],
                    },
                    STEPS[0],
                ]
            },
            "steps[0].filters[0]",
        ),
        ({"steps": STEPS, "mode": "strict", "exclusions": [STEPS[0]]}, "body"),
    ],
)
def test_bad_funnels_get_a_400_naming_the_field(
    api: TestClient, body: dict[str, Any], field: str
) -> None:
    answer = api.post("/v1/funnels", json=body, headers=READ)
    assert answer.status_code == 400, answer.text
    fields = [e["field"] for e in answer.json().get("errors", [])]
    assert any(f.startswith(field) for f in fields), answer.json()


def test_bad_dates_and_missing_key(api: TestClient) -> None:
    late = api.get("/v1/trends?start=2026-03-02T00:00:00&end=2026-03-01T00:00:00", headers=READ)
    assert late.status_code == 400 and "end" in late.json()["message"]
    assert api.post("/v1/funnels", json={"steps": STEPS}).status_code == 401


def test_bad_report_questions_get_a_400(api: TestClient) -> None:
    unknown = {
        "start_event": {"event": "Nope"},
        "return_event": {"event_type": "purchase"},
    }
    answer = api.post("/v1/retention", json=unknown, headers=READ)
    assert answer.status_code == 400 and answer.json()["errors"][0]["field"] == "start_event.event"
    zero = {**unknown, "start_event": {"event_type": "browse"}, "periods": 0}
    assert api.post("/v1/retention", json=zero, headers=READ).status_code == 400
    paths = api.post("/v1/paths", json={"event": "Nope"}, headers=READ)
    assert paths.status_code == 400 and paths.json()["errors"][0]["field"] == "event"
    far = api.post("/v1/paths", json={"event_type": "browse", "steps": 99}, headers=READ)
    assert far.status_code == 400


def test_trait_filters_are_refused_naming_the_field_and_rule(api: TestClient) -> None:
    base = {"steps": STEPS, "window_seconds": 3600}
    unknown = {**base, "trait_filters": [{"trait": "lifetime_revenue", "op": "gt", "value": 5}]}
    for path, body in (
        ("/v1/funnels", unknown),
        ("/v1/funnels/dropped", {**unknown, "dropped_at": 2}),
        (
            "/v1/retention",
            {
                "start_event": {"event_type": "browse"},
                "return_event": {"event_type": "purchase"},
                "trait_filters": unknown["trait_filters"],
            },
        ),
    ):
        answer = api.post(path, json=body, headers=READ)
        assert answer.status_code == 400, answer.text
        assert answer.json()["errors"] == [
            {
                "field": "trait_filters[0].trait",
                "rule": "exists",
                "message": "no computed trait 'lifetime_revenue'",
            }
        ]
    for bad, rule_text in (
        ({"trait": "x", "op": "gt", "value": "lots"}, "gt compares with a number"),
        ({"trait": "x", "op": "in", "value": []}, "in takes a non-empty list of values"),
        ({"trait": "x", "op": "exists", "value": 1}, "exists takes true or false"),
        ({"trait": "x", "op": "eq", "value": ["a"]}, "eq takes one value, not a list"),
    ):
        answer = api.post("/v1/funnels", json={**base, "trait_filters": [bad]}, headers=READ)
        assert answer.status_code == 400, answer.text
        (error,) = answer.json()["errors"]
        assert error["field"] == "trait_filters.0" and error["rule"] == "trait_filter"
        assert error["message"] == rule_text
