"""Segment definitions over the admin API, stored in the event store's database (SQLite).

Checked: the file seeds the store once; PUT defines and replaces (201 / 200),
DELETE removes (404 unknown, 409 while another segment refers to it); only
admins change definitions; invalid and hostile bodies are 4xx naming the node
and the field, never a 500; a process reading the same store sees the change;
the worker's maintainer takes it on reload (no restart).
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from api.app import create_api
from events import TrackedEvent
from projections.event_log import EventLog
from projections.migrations import migrate
from projections.segment_changes import SegmentChangeLog
from projections.segment_definition_store import SegmentDefinitions
from projections.segment_reads import SegmentReads
from projections.segment_store import SegmentStore
from stack.analysis_cli import retention_table
from stack.bootstrap import build_segment_definitions
from stack.cli import main
from stack.processes import wait_until
from stack.segments_cli import definition_table, segment_table
from stack.settings import Settings
from streams.segments import SegmentMaintainer
from tests.conftest import make_event
from tests.integration.gateways import ingest_gateway
from tests.node_process import run_cli, started_node
from tests.topic_records import topic_values

pytestmark = pytest.mark.integration

SEED = """
[traits.orders]
op = "count"
event = "Order Completed"

[segments.buyers]
name = "Bought at least once"
where = { trait = "orders", gte = 1 }
"""


class NoSink:
    async def publish(self, events: Sequence[TrackedEvent]) -> None:
        raise AssertionError("definitions must not publish")

    async def dead_letter(
        self, payload: bytes, reasons: Sequence[dict[str, Any]], source: str = ""
    ) -> None:
        raise AssertionError("definitions must not dead-letter")


class Api:
    def __init__(self, settings: Settings, clickhouse: Client) -> None:
        migrate(clickhouse, settings.clickhouse_database)
        self.definitions = build_segment_definitions(settings)
        self.store = SegmentStore(sqlite_path=settings.sqlite_path)
        self.log = SegmentChangeLog(clickhouse, settings.clickhouse_database)
        reads = SegmentReads(self.definitions, self.store, self.log)
        gateway = ingest_gateway(settings, clickhouse, NoSink(), segments=reads)
        self.client = TestClient(create_api(gateway), raise_server_exceptions=False)
        self.admin = {"Authorization": f"Bearer {settings.admin_key}"}
        self.read = {"Authorization": f"Bearer {settings.read_key}"}

    def put(self, segment_id: str, body: Any, **kwargs: Any) -> Any:
        return self.client.put(
            f"/v1/segments/{segment_id}", json=body, headers=self.admin, **kwargs
        )

    def close(self) -> None:
        self.client.close()
        self.store.close()
        self.definitions.close()


@pytest.fixture
def api(settings: Settings, clickhouse: Client, tmp_path: Path) -> Iterator[Api]:
    seed = tmp_path / "segments.toml"
    seed.write_text(SEED)
    made = Api(settings.model_copy(update={"segments_file": seed}), clickhouse)
    yield made
    made.close()


def test_definitions_are_seeded_once_then_changed_by_admins_only(
    api: Api, settings: Settings, tmp_path: Path
) -> None:
    listed = api.client.get("/v1/segments", headers=api.read)
    assert [s["id"] for s in listed.json()["segments"]] == ["buyers"]

    body = {
        "name": "Viewed twice this week",
        "where": {"event": "Product Viewed", "within": "7d", "count": 2},
    }
    assert api.client.put("/v1/segments/viewers", json=body, headers=api.read).status_code == 403
    created = api.put("viewers", body)
    assert created.status_code == 201, created.text
    assert created.json()["definition"] == body
    replaced = api.put("viewers", {**body, "name": "Viewed twice"})
    assert replaced.status_code == 200 and replaced.json()["name"] == "Viewed twice"
    shown = api.client.get("/v1/segments/viewers", headers=api.read)
    assert shown.json()["name"] == "Viewed twice"

    # Another process on the same database (a second API, the worker) sees it.
    other = SegmentDefinitions(sqlite_path=settings.sqlite_path)
    assert sorted(other.current().segments) == ["buyers", "viewers"]
    # A restart does not seed again: the file's segments do not come back after a delete.
    refers = api.put(
        "loyal_viewers", {"where": {"and": [{"segment": "viewers"}, {"segment": "buyers"}]}}
    )
    assert refers.status_code == 201, refers.text
    refused = api.client.delete("/v1/segments/viewers", headers=api.admin)
    assert refused.status_code == 409
    assert refused.json()["errors"][0]["field"] == "segments.loyal_viewers.where.and[0].segment"
    for gone in ("loyal_viewers", "buyers"):
        assert api.client.delete(f"/v1/segments/{gone}", headers=api.admin).status_code == 200
    assert api.client.delete("/v1/segments/buyers", headers=api.admin).status_code == 404
    assert sorted(build_segment_definitions(settings).current().segments) == ["viewers"]
    assert sorted(other.current().segments) == ["viewers"]
    other.close()


def test_traits_are_defined_replaced_and_deleted_by_admins_like_segments(
    api: Api, settings: Settings, tmp_path: Path
) -> None:
    listed = api.client.get("/v1/traits", headers=api.read)
    assert listed.status_code == 200
    assert [(t["id"], t["used_by"]) for t in listed.json()["traits"]] == [("orders", ["buyers"])]

    body = {"op": "sum", "property": "revenue", "event": "Order Completed", "within": "90d"}
    put = api.client.put("/v1/traits/spend_90d", json=body, headers=api.read)
    assert put.status_code == 403
    created = api.client.put("/v1/traits/spend_90d", json=body, headers=api.admin)
    assert created.status_code == 201, created.text
    shown = created.json()
    assert shown["definition"] == body and shown["used_by"] == [] and shown["time_dependent"]
    replaced = api.client.put(
        "/v1/traits/spend_90d", json={**body, "within": "30d"}, headers=api.admin
    )
    assert replaced.status_code == 200 and replaced.json()["definition"]["within"] == "30d"
    refused = api.client.put("/v1/traits/spend_90d", json={"op": "avg"}, headers=api.admin)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "traits.spend_90d.op"
    bad_id = api.client.put("/v1/traits/Spend", json=body, headers=api.admin)
    assert bad_id.status_code == 422 and bad_id.json()["errors"][0]["field"] == "trait_id"
    # The worker's definitions (another process on the same store) have it.
    other = SegmentDefinitions(sqlite_path=settings.sqlite_path)
    assert other.current().traits["spend_90d"].window.within_ms == 30 * 86_400_000
    other.close()

    # In use by a segment: the delete is refused, naming the referring node.
    in_use = api.client.delete("/v1/traits/orders", headers=api.admin)
    assert in_use.status_code == 409
    assert in_use.json()["errors"][0]["field"] == "segments.buyers.where.trait"
    assert api.client.get("/v1/traits/orders", headers=api.read).status_code == 200
    assert api.client.delete("/v1/traits/spend_90d", headers=api.admin).status_code == 200
    assert api.client.get("/v1/traits/spend_90d", headers=api.read).status_code == 404
    assert api.client.delete("/v1/traits/spend_90d", headers=api.admin).status_code == 404
    # The CLI reads a trait's table as segments' (the file itself, or [traits.ID]).
    whole = tmp_path / "all.toml"
    whole.write_text('[traits.t]\nop = "count"\nevent = "A"\n')
    assert definition_table(whole, "traits", "t") == {"op": "count", "event": "A"}


@pytest.mark.parametrize(
    ("segment_id", "body", "field"),
    [
        ("x", {"where": {"event": "A", "count": -1}}, "segments.x.where.count"),
        ("x", {"where": {"trait": "nope", "gt": 1}}, "segments.x.where.trait"),
        ("x", {"where": {"segment": "x"}}, "segments.x.where"),  # refers to itself
        ("x", {"where": {"event": "A", "within": "1e400d"}}, "segments.x.where.within"),
        ("x", {"where": {"event": "A", "within": 1e300}}, "segments.x.where.within"),
        ("x", {"where": {"trait": "orders", "gt": math.nan}}, "segments.x.where.gt"),
        ("x", {"where": {"trait": "orders", "eq": 10**30}}, "segments.x.where.eq"),
        ("x", {"where": {"trait": "orders", "in": [{"a": 1}]}}, "segments.x.where.in"),
        ("x", {"where": {"event": 5}}, "segments.x.where.event"),
        ("x", {"where": "yes"}, "segments.x.where"),
        ("x", {"name": ["a"], "where": {"event": "A"}}, "segments.x.name"),
        ("x", {"where": {"event": "A"}, "colour": "red"}, "segments.x.colour"),
        ("Bad-Id", {"where": {"event": "A"}}, "segment_id"),
        ("x", {"where": {"rfm": "kings"}}, "segments.x.where.rfm"),
        ("x", {"where": {"rfm": []}}, "segments.x.where.rfm"),
        ("x", {"where": {"rfm": "champions", "gt": 1}}, "segments.x.where.gt"),
    ],
)
def test_invalid_definitions_are_422_naming_the_node_and_field(
    api: Api, segment_id: str, body: dict[str, Any], field: str
) -> None:
    answer = api.client.put(
        f"/v1/segments/{segment_id}",
        content=json.dumps(body, allow_nan=True),
        headers={**api.admin, "Content-Type": "application/json"},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == field
    assert api.client.get("/v1/segments/x", headers=api.read).status_code == 404


def test_hostile_bodies_are_4xx_never_5xx(api: Api) -> None:
    deep: dict[str, Any] = {"event": "A"}
    for _ in range(40):
        deep = {"not": deep}
    answer = api.put("deep", {"where": deep})
    assert answer.status_code == 422
    assert "nested" in answer.json()["errors"][0]["message"]
    very_deep = "[" * 100_000 + "]" * 100_000
    for raw in ('{"where": ' + very_deep + "}", "[]", "not json", '{"where": {"event": "A"}'):
        answer = api.client.put(
            "/v1/segments/y",
            content=raw,
            headers={**api.admin, "Content-Type": "application/json"},
        )
        assert 400 <= answer.status_code < 500, (raw[:40], answer.status_code, answer.text)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5)
    | st.sampled_from(["7d", "Product Viewed", "gte", "orders", "buyers", "2026-01-01"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "where",
                    "and",
                    "or",
                    "not",
                    "event",
                    "type",
                    "count",
                    "within",
                    "since",
                    "trait",
                    "gt",
                    "eq",
                    "in",
                    "segment",
                    "properties",
                    "absent",
                    "name",
                    "compare",
                    "exists",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@hypothesis_settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=json_values)
def test_random_bodies_never_make_a_500(api: Api, body: Any) -> None:
    answer = api.client.put(
        "/v1/segments/random",
        content=json.dumps(body, allow_nan=True),
        headers={**api.admin, "Content-Type": "application/json"},
    )
    assert answer.status_code in (200, 201, 400, 422), answer.text


def test_the_worker_takes_a_changed_definition_without_a_restart(
    api: Api, settings: Settings
) -> None:
    maintainer = SegmentMaintainer(
        api.definitions.current(), api.store, api.log, api.definitions.current
    )
    assert not maintainer.reload()  # nothing changed
    assert api.put("viewers", {"where": {"event": "Product Viewed"}}).status_code == 201
    assert maintainer.reload()
    folded = maintainer.fold(
        "journey.events#0", 1, [(0, make_event("v1", "ann", "Product Viewed"))], {}
    )
    assert folded is not None
    assert [(key, c.segment, c.entered) for key, c in folded.changes] == [("ann", "viewers", True)]


def test_the_cli_reads_a_segment_table_from_toml_or_json(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('name = "N"\nwhere = { event = "A", since = 2026-01-01 }\n')
    assert segment_table(toml, "s") == {"name": "N", "where": {"event": "A", "since": "2026-01-01"}}
    whole = tmp_path / "all.toml"
    whole.write_text('[segments.s]\nwhere = { event = "A" }\n')
    assert segment_table(whole, "s") == {"where": {"event": "A"}}
    as_json = tmp_path / "s.json"
    as_json.write_text('{"where": {"event": "A"}}')
    assert segment_table(as_json, "s") == {"where": {"event": "A"}}


def test_a_running_node_takes_a_segment_set_from_the_cli_and_backfills_it(
    settings: Settings, tmp_path: Path
) -> None:
    node = started_node(settings)

    def running() -> bool:
        return node.process is not None and node.process.poll() is None

    def in_viewers(customer: str) -> bool:
        answer = node.read("GET", f"/v1/customers/{customer}")
        found = answer.json().get("segments") if answer.status_code == 200 else None
        return bool(found) and "viewers" in found["segments"]

    try:
        # Zoe viewed before the segment existed: the backfill finds her.
        assert node.track("zoe", "Product Viewed", "zoe-1") == 200
        assert wait_until(
            lambda: node.read("GET", "/v1/customers/zoe").status_code == 200, 30, running
        )
        table = tmp_path / "viewers.toml"
        table.write_text('name = "Viewers"\nwhere = { event = "Product Viewed" }\n')
        done = run_cli(node.settings, "segments", "set", "viewers", str(table))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["name"] == "Viewers"

        def backfilled() -> dict[str, Any] | None:
            status = run_cli(node.settings, "segments", "status", "viewers")
            shown = json.loads(status.stdout) if status.returncode == 0 else {}
            return shown if shown.get("backfilled") else None

        # The worker re-reads the definitions' version every few seconds, then backfills.
        assert wait_until(lambda: backfilled() is not None, 30, running), node.log_tail()
        shown = backfilled()
        assert shown is not None
        assert shown["backfill"]["state"] == "done" and shown["backfill"]["progress"] == 1
        assert shown["backfill"]["customers_total"] >= 1
        assert wait_until(lambda: in_viewers("zoe"), 30, running), node.log_tail()
        # Then live: Amy enters with her first view.
        assert node.track("amy", "Product Viewed", "amy-1") == 200
        assert wait_until(lambda: in_viewers("amy"), 30, running), node.log_tail()
        # A static list uploaded through the node: the worker applies it within a tick.
        csv_file = tmp_path / "picked.csv"
        csv_file.write_text("customer_id\namy\nnew-customer\n")
        uploaded = run_cli(node.settings, "segments", "upload", "picked", str(csv_file))
        assert uploaded.returncode == 0, uploaded.stderr

        def in_picked(customer: str) -> bool:
            answer = node.read("GET", "/v1/segments/picked/members")
            return answer.status_code == 200 and customer in answer.json()["members"]

        assert wait_until(lambda: in_picked("amy") and in_picked("new-customer"), 10, running)

        bad = tmp_path / "bad.toml"
        bad.write_text('where = { event = "Product Viewed", count = -1 }\n')
        refused = run_cli(node.settings, "segments", "set", "viewers", str(bad))
        assert refused.returncode == 1 and "segments.viewers.where.count" in refused.stderr
        assert run_cli(node.settings, "segments", "delete", "viewers").returncode == 0
        assert run_cli(node.settings, "segments", "status", "viewers").returncode == 1
    finally:
        node.stop()
    records = [  # membership changes (TraitsChanged records go to the flows too)
        r
        for r in topic_values(settings.kafka_bootstrap_servers, settings.segments_topic)
        if r["type"] != "TraitsChanged"
    ]
    flags = {(r["customer_key"], r["backfill"]) for r in records if r["segment"] == "viewers"}
    assert flags == {("zoe", True), ("amy", False)}
    picked = {(r["customer_key"], r["type"]) for r in records if r["segment"] == "picked"}
    assert picked == {("amy", "SegmentEntered"), ("new-customer", "SegmentEntered")}


def test_a_funnel_breakdown_names_a_defined_segment(api: Api) -> None:
    body: dict[str, Any] = {
        "steps": [{"event_type": "browse"}, {"event_type": "purchase"}],
        "breakdown_segment": "nope",
    }
    refused = api.client.post("/v1/funnels", json=body, headers=api.read)
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "breakdown_segment"
    both = api.client.post("/v1/funnels", json={**body, "breakdown": "category"}, headers=api.read)
    assert both.status_code == 400
    answered = api.client.post(
        "/v1/funnels", json={**body, "breakdown_segment": "buyers"}, headers=api.read
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["breakdown"] == {}


@pytest.fixture
def served(api: Api) -> Iterator[str]:
    """The ``api`` fixture's app behind a real HTTP server, for the CLI."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(api.client.app, host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_retention_and_funnels_break_down_by_a_segment_over_the_api_and_the_cli(
    api: Api, served: str, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    body: dict[str, Any] = {
        "start_event": {"event_type": "browse"},
        "return_event": {"event_type": "purchase"},
        "period": "day",
        "breakdown_segment": "nope",
    }
    refused = api.client.post("/v1/retention", json=body, headers=api.read)
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "breakdown_segment"
    answered = api.client.post(
        "/v1/retention", json={**body, "breakdown_segment": "buyers"}, headers=api.read
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["breakdown"] == {"in": [], "not in": []}
    plain = api.client.post(
        "/v1/retention", json={**body, "breakdown_segment": None}, headers=api.read
    )
    assert plain.status_code == 200 and plain.json()["breakdown"] is None

    common = ["--url", served, "--read-key", settings.read_key, "--json"]
    # No events: the retention's groups are empty, the funnel's has none (nobody at step 1).
    for command, groups in (
        (["retention", "--period", "day"], {"in", "not in"}),
        (["funnel", "--step", "browse", "--step", "purchase"], set()),
    ):
        assert main([*command, *common]) == 0
        assert json.loads(capsys.readouterr().out)["breakdown"] is None
        assert main([*command, *common, "--breakdown-segment", "buyers"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["breakdown"] is not None and set(printed["breakdown"]) == groups
        assert main([*command, *common, "--breakdown-segment", "nope"]) == 1
        assert "breakdown_segment" in capsys.readouterr().err


def test_the_retention_table_has_a_group_column_with_a_breakdown() -> None:
    cohort = {"cohort": "2026-03-01", "size": 2, "retained": [1], "rates": [0.5]}
    result = {
        "period": "day",
        "cohorts": [cohort],
        "breakdown": {"in": [{**cohort, "size": 1, "rates": [1.0]}], "not in": []},
    }
    header, rows = retention_table(result)
    assert header == ["group", "cohort", "size", "day 1"]
    assert rows == [["all", "2026-03-01", 2, "1 (50.0%)"], ["in", "2026-03-01", 1, "1 (100.0%)"]]
    header, rows = retention_table({**result, "breakdown": None})
    assert header[0] == "cohort" and len(rows) == 1


def test_a_static_segment_is_uploaded_as_csv_and_saved_from_a_funnel(
    api: Api, settings: Settings, clickhouse: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def upload(segment_id: str, text: str | bytes, headers: dict[str, str] | None = None) -> Any:
        return api.client.post(
            f"/v1/segments/{segment_id}/members",
            content=text,
            headers={**(headers or api.admin), "Content-Type": "text/csv"},
        )

    assert upload("vips", "customer_id\nann\n", api.read).status_code == 403
    done = upload("vips", "customer_id\nann\n\nanon:a-1\n zed \n")
    assert done.status_code == 200, done.text
    assert done.json() == {"segment": "vips", "members": 3, "added": 3, "removed": 0}
    shown = api.client.get("/v1/segments/vips", headers=api.read).json()
    assert shown["definition"] == {"name": "vips", "static": True} and shown["backfilled"]
    listed = api.client.get("/v1/segments/vips/list", headers=api.read).json()
    assert listed["members"] == ["ann", "anon:a-1", "zed"]
    assert [p[1] for p in api.store.pending_lists(10)] == ["ann", "anon:a-1", "zed"]
    again = upload("vips", "zed\nbob\n")
    assert again.json() == {"segment": "vips", "members": 2, "added": 1, "removed": 2}
    # Another segment may refer to it.
    referring = {"where": {"and": [{"segment": "vips"}, {"segment": "buyers"}]}}
    assert api.put("vip_buyers", referring).status_code == 201

    for text, field, rule in (
        ("ann\nbad\x01id\n", "row 2", "customer_id"),
        ("ann,bob\n", "row 1", "one_column"),
        ("ann\n" + "x" * 256 + "\n", "row 2", "customer_id"),
    ):
        refused = upload("vips", text)
        assert refused.status_code == 422, text
        assert refused.json()["errors"][0]["field"] == field
        assert refused.json()["errors"][0]["rule"] == rule
    assert upload("vips", b"\xff\xfe").status_code == 422
    # A segment defined by a rule has no list.
    conflict = upload("buyers", "ann\n")
    assert conflict.status_code == 409 and conflict.json()["errors"][0]["field"] == "segment_id"
    monkeypatch.setattr("api.segments.MAX_LIST_ROWS", 2)
    too_many = upload("vips", "a\nb\nc\n")
    assert too_many.status_code == 413 and too_many.json()["errors"][0]["field"] == "body"
    monkeypatch.setattr("api.segments.MAX_LIST_BYTES", 10)
    assert upload("vips", "a\n" * 20).status_code == 413
    assert api.client.get("/v1/segments/vips/list", headers=api.read).json()["count"] == 2

    # Drop-outs of a funnel: bob viewed and did not buy.
    EventLog(clickhouse, settings.clickhouse_database).append(
        [
            make_event("a1", "ann", "Product Viewed", 1),
            make_event("a2", "ann", "Order Completed", 2, order_id="a", revenue=5),
            make_event("b1", "bob", "Product Viewed", 3),
        ]
    )
    funnel = {
        "steps": [{"event": "Product Viewed"}, {"event": "Order Completed"}],
        "dropped_at": 2,
        "segment": "viewed_not_bought",
        "name": "Viewed, did not buy",
    }
    assert api.client.post("/v1/funnels/dropoffs", json=funnel, headers=api.read).status_code == 403
    saved = api.client.post("/v1/funnels/dropoffs", json=funnel, headers=api.admin)
    assert saved.status_code == 200, saved.text
    assert saved.json() == {"segment": "viewed_not_bought", "members": 1, "added": 1, "removed": 0}
    shown = api.client.get("/v1/segments/viewed_not_bought", headers=api.read).json()
    assert shown["name"] == "Viewed, did not buy"
    assert api.store.list_members("viewed_not_bought") == ["bob"]
    bad = api.client.post(
        "/v1/funnels/dropoffs", json={**funnel, "dropped_at": 3}, headers=api.admin
    )
    assert bad.status_code in (400, 422) and "dropped_at" in bad.text
    # Deleting a static segment drops its list.
    assert api.client.delete("/v1/segments/vip_buyers", headers=api.admin).status_code == 200
    assert api.client.delete("/v1/segments/vips", headers=api.admin).status_code == 200
    assert api.store.list_members("vips") == []


def test_the_cli_uploads_a_static_list_and_sets_traits(
    api: Api, served: str, settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = ["--url", served, "--admin-key", settings.admin_key]
    listed = tmp_path / "vips.csv"
    listed.write_text("customer_id\nann\nzed\n")
    assert main(["segments", "upload", "vips", str(listed), *admin]) == 0
    assert json.loads(capsys.readouterr().out)["members"] == 2
    listed.write_text("ann\nbad,row\n")
    assert main(["segments", "upload", "vips", str(listed), *admin]) == 1
    assert '"row 2"' in capsys.readouterr().err
    trait = tmp_path / "t.toml"
    trait.write_text('op = "count"\nevent = "Product Viewed"\nwithin = "7d"\n')
    assert main(["traits", "set", "views_7d", str(trait), *admin]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "views_7d"
    read = ["--url", served, "--read-key", settings.read_key]
    assert main(["traits", "list", *read]) == 0
    assert {t["id"] for t in json.loads(capsys.readouterr().out)["traits"]} == {
        "orders",
        "views_7d",
    }
    assert main(["traits", "delete", "orders", *admin]) == 1  # buyers compares it
    assert "segments.buyers.where.trait" in capsys.readouterr().err
    assert main(["traits", "delete", "views_7d", *admin]) == 0
