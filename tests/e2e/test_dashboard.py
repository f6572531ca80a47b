"""The dashboard in headless Chromium against a running node fed with demo traffic.

Debian's chromium (installed by the test command) driven by Playwright; every
figure on the page is checked against what the API returns; screenshots are
kept in test-artifacts/. The node runs the demo's outreach rules (abandoned
carts fire after seconds) with the demo's webhook inbox subscribed, as
``journeys up --demo`` does, so the trigger log has delivered triggers.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from simulation.storefront import Storefront
from simulation.webhook_inbox import WebhookInbox
from stack import demo
from stack.broker import EmbeddedBroker
from stack.processes import wait_until
from streams.topics import ensure_topics
from tests.node_process import NodeProcess, platform_settings

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOPPERS = 80
FUNNEL = {
    "steps": [{"event_type": t} for t in ("browse", "cart", "checkout", "purchase")],
    "window_seconds": 7 * 86400,
}
# What the retention panel asks by default.
RETENTION = {
    "start_event": {"event_type": "browse"},
    "return_event": {"event_type": "browse"},
    "period": "day",
    "periods": 8,
}


def settled(node: NodeProcess) -> bool:
    """True once no flow state wakes within the demo's longest wait (its runs that are
    done wait only for the goal's window, an hour) and no delivery is pending: the log
    stops changing."""
    admin = {"Authorization": f"Bearer {node.settings.admin_key}"}
    timers = httpx.get(f"{node.base}/v1/outreach/timers", headers=admin, timeout=30).json()
    soon = datetime.now(UTC) + timedelta(minutes=2)
    due = [t for t in timers["timers"] if datetime.fromisoformat(t["fire_at"]) < soon]
    fired = node.read("GET", "/v1/triggers", params={"limit": 1000}).json()["triggers"]
    pending = [d for t in fired for d in t["deliveries"] if d["state"] == "pending"]
    return not due and not pending and bool(fired)


@pytest.fixture(scope="module")
def inbox() -> Iterator[WebhookInbox]:
    """The demo's webhook receiver."""
    receiver = WebhookInbox()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, inbox: WebhookInbox) -> Iterator[NodeProcess]:
    """A node with a few hundred storefront calls processed and their triggers delivered."""
    folder = tmp_path_factory.mktemp("dashboard")
    broker = EmbeddedBroker(folder / "broker.log")
    broker.start()
    settings = platform_settings(folder / "data", "dash", broker.bootstrap_servers)
    settings = demo.demo_settings(settings)
    ensure_topics(broker.bootstrap_servers, settings.all_topics, 2, 1)
    running = NodeProcess(settings, folder / "node.log")
    running.start()
    try:
        demo.subscribe_inbox(running.base, "ak_dash", inbox)
        # A month of imported history first, as `up --demo` sends into an empty platform;
        # ending two hours ago, so the stage-flow panel's last hour is the live traffic.
        ended = datetime.now(UTC) - timedelta(hours=2)
        history = list(demo.history_calls(seed=5, shoppers=40, days=30, now=ended))
        assert demo.send_history(running.base, "wk_dash", iter(history)) == (len(history), 0)
        calls = list(Storefront(seed=21, shoppers=SHOPPERS, live=True).calls())
        accepted, rejected = demo.send(running.base, "wk_dash", rate=1000, calls=iter(calls))
        assert (accepted, rejected) == (len(calls), 0)
        # One storefront bug, so the dead-letter counter has something to count.
        nameless = {"event": "Product Added", "messageId": "no-customer"}
        assert (
            httpx.post(
                f"{running.base}/v1/track", json=nameless, auth=("wk_dash", ""), timeout=30
            ).status_code
            == 400
        )
        deadline = time.monotonic() + 60
        while running.read("GET", "/v1/stats").json()["dead_letters"] != 1:
            assert time.monotonic() < deadline, running.log_tail()
            time.sleep(0.2)
        while running.read("GET", "/v1/stats").json()["worker_lag"] != 0:
            assert time.monotonic() < deadline, running.log_tail()
            time.sleep(0.2)
        # The demo rules fire abandoned carts seconds after the last cart activity.
        deadline = time.monotonic() + 90
        while not settled(running):
            assert time.monotonic() < deadline, running.log_tail()
            time.sleep(0.5)
        yield running
    finally:
        running.stop()
        broker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    """A fresh page and the console errors it logs."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    opened.on("console", on_console)
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened, errors
    context.close()


def sign_in(page: Page, node: NodeProcess, key: str) -> None:
    page.goto(f"{node.base}/dashboard")
    page.fill("#key-input", key)
    page.click("#key-submit")


def table(page: Page, selector: str) -> list[list[str]]:
    """The text of a table's body cells, row by row."""
    rows = page.locator(f"{selector} tbody tr")
    return [
        [cell.strip() for cell in rows.nth(i).locator("td").all_text_contents()]
        for i in range(rows.count())
    ]


def chart_data(page: Page, canvas: str) -> Any:
    """What Chart.js drew on a canvas: labels and each dataset's numbers."""
    return page.evaluate(
        f"""(() => {{
            const chart = Chart.getChart(document.getElementById('{canvas}'));
            return {{labels: chart.data.labels, data: chart.data.datasets.map((d) => d.data)}};
        }})()"""
    )


def count(text: str) -> int:
    """A number as the page shows it (with thousands separators)."""
    return int(text.replace(",", ""))


def percent(ratio: float) -> str:
    """A ratio as the page shows it."""
    return f"{ratio * 100:.1f}%"


def test_a_wrong_key_shows_an_error_and_no_data(
    node: NodeProcess, page: tuple[Page, list[str]], artifacts_dir: Path
) -> None:
    opened, _ = page
    sign_in(opened, node, "rk_wrong")
    opened.wait_for_function("document.getElementById('key-error').textContent.length > 0")
    assert "refused" in opened.text_content("#key-error")  # type: ignore[operator]
    assert opened.is_hidden("#content")
    for panel in ("#funnel-table", "#stages-table", "#rfm-tiers", "#triggers-table"):
        assert opened.locator(f"{panel} tbody tr").count() == 0
    opened.screenshot(path=str(artifacts_dir / "dashboard-wrong-key.png"))


def test_the_funnel_shows_the_numbers_the_api_returns(
    node: NodeProcess, page: tuple[Page, list[str]], artifacts_dir: Path
) -> None:
    opened, errors = page
    expected: dict[str, Any] = node.read("POST", "/v1/funnels", json=FUNNEL).json()
    assert expected["steps"][0]["customers"] > expected["steps"][-1]["customers"] > 0

    sign_in(opened, node, "rk_dash")
    opened.wait_for_selector("#funnel-table tbody tr")
    rows = opened.locator("#funnel-table tbody tr")
    shown = [
        [cell.strip() for cell in rows.nth(i).locator("td").all_text_contents()]
        for i in range(rows.count())
    ]
    assert [row[0] for row in shown] == [s["step"] for s in expected["steps"]]
    assert [int(row[1].replace(",", "")) for row in shown] == [
        s["customers"] for s in expected["steps"]
    ]
    assert shown[-1][3] == f"{expected['steps'][-1]['conversion_from_first'] * 100:.1f}%"
    drawn = opened.evaluate(
        "Chart.getChart(document.getElementById('funnel-chart')).data.datasets[0].data"
    )
    assert drawn == [s["customers"] for s in expected["steps"]]
    opened.wait_for_function("document.getElementById('live-lag').textContent === '0'")
    # Caught up: nothing accepted waits, so the oldest unprocessed event is 0 s old.
    opened.wait_for_function("document.getElementById('live-behind').textContent === '0.0 s'")
    opened.screenshot(path=str(artifacts_dir / "dashboard-funnel.png"), full_page=True)

    # A date range: from tomorrow (UTC) on, the demo's events (all sent now) are outside it.
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    later = node.read(
        "POST", "/v1/funnels", json={**FUNNEL, "start": f"{tomorrow.isoformat()}T00:00:00Z"}
    ).json()
    opened.fill("#funnel-start", tomorrow.isoformat())
    opened.click("#run-funnel")
    opened.wait_for_function(
        "document.querySelector('#funnel-table tbody td.num').textContent === '0'"
    )
    assert [count(row[1]) for row in table(opened, "#funnel-table")] == [
        s["customers"] for s in later["steps"]
    ]
    assert errors == []


def test_the_trigger_log_is_read_only_for_read_keys(node: NodeProcess) -> None:
    url = f"{node.base}/v1/triggers"
    for wrong in ("rk_wrong", "wk_dash"):
        refused = httpx.get(url, headers={"Authorization": f"Bearer {wrong}"}, timeout=30)
        assert refused.status_code == 401
        assert "triggers" not in refused.json()
    assert node.read("GET", "/v1/triggers").status_code == 200
    redeliver = node.read("POST", "/v1/outreach/triggers/anything/redeliver")
    assert redeliver.status_code == 403  # a read key is an analyst: re-delivery is a marketer's
    assert redeliver.json()["errors"][0]["rule"] == "role_required"


def test_a_customer_timeline_shows_the_journey_and_its_triggers(
    node: NodeProcess, inbox: WebhookInbox, page: tuple[Page, list[str]], artifacts_dir: Path
) -> None:
    opened, errors = page
    fired = node.read("GET", "/v1/triggers", params={"limit": 1000}).json()["triggers"]
    # The flow's reminder (a webhook); its coupon is an e-mail, skipped without a relay.
    abandoned = next(
        t
        for t in fired
        if t["rule"] == "flow:abandoned_cart"
        and any(d["channel"] == "webhook" for d in t["deliveries"])
    )
    customer = abandoned["customer_id"]
    expected = node.read("GET", f"/v1/customers/{customer}").json()
    journey = node.read("GET", f"/v1/customers/{customer}/journey").json()
    theirs = node.read("GET", "/v1/triggers", params={"customer_id": customer}).json()["triggers"]

    sign_in(opened, node, "rk_dash")
    opened.wait_for_selector("#funnel-table tbody tr")
    opened.fill("#customer-id", customer)
    opened.click("#customer-form button")
    opened.wait_for_selector("#customer-timeline li")
    assert opened.text_content("#customer-card dd[data-field=stage]") == expected["stage"]
    assert opened.text_content("#customer-card dd[data-field=events]") == str(
        expected["event_count"]
    )

    def shown(kind: str) -> list[str]:
        return opened.locator(f"#customer-timeline li[data-kind={kind}] b").all_text_contents()

    assert shown("event") == [e["event_name"] for e in journey["entries"] if "event_name" in e]
    assert shown("stage") == [
        f"stage: {e['stage']}" for e in journey["entries"] if e["type"] == "StageReached"
    ]
    assert "Product Added" in shown("event")
    assert sorted(shown("trigger")) == sorted(f"trigger: {t['rule']}" for t in theirs)
    assert "trigger: flow:abandoned_cart" in shown("trigger")
    # The webhook really reached the demo inbox.
    assert abandoned["trigger_id"] in {body.get("trigger_id") for body in inbox.received}
    opened.screenshot(path=str(artifacts_dir / "dashboard-customer.png"), full_page=True)

    unknown = node.read("GET", "/v1/customers/nobody-at-all")
    assert unknown.status_code == 404
    opened.fill("#customer-id", "nobody-at-all")
    opened.click("#customer-form button")
    opened.wait_for_function("document.getElementById('customer-error').textContent.length > 0")
    assert opened.text_content("#customer-error") == unknown.json()["message"]
    assert opened.is_hidden("#customer-timeline")
    # The 404 is the answer asked for; the browser logs it as a failed resource, nothing else.
    assert [e for e in errors if "404" not in e] == []


def test_stages_retention_and_rfm_show_the_numbers_the_api_returns(
    node: NodeProcess, page: tuple[Page, list[str]], artifacts_dir: Path
) -> None:
    opened, errors = page
    stages = node.read("GET", "/v1/stages").json()["stages"]
    reached = node.read("GET", "/v1/funnels/stages").json()["stages"]
    retention = node.read("POST", "/v1/retention", json=RETENTION).json()["cohorts"]
    rfm = node.read("GET", "/v1/rfm").json()
    assert sum(stages.values()) > 0 and retention and rfm["customers"] > 0

    sign_in(opened, node, "rk_dash")
    for filled in ("#stages-table", "#stage-funnel-table", "#retention-table", "#rfm-tiers"):
        opened.wait_for_selector(f"{filled} tbody tr")

    assert [[row[0], count(row[1])] for row in table(opened, "#stages-table")] == [
        [stage, n] for stage, n in stages.items()
    ]
    assert chart_data(opened, "stages-chart") == {
        "labels": list(stages),
        "data": [list(stages.values())],
    }
    assert [[row[0], count(row[1])] for row in table(opened, "#stage-funnel-table")] == [
        [s["stage"], s["customers"]] for s in reached
    ]

    grid = table(opened, "#retention-table")
    assert [[row[0], count(row[1])] for row in grid] == [
        [c["cohort"], c["size"]] for c in retention
    ]
    assert [row[2:] for row in grid] == [[percent(r) for r in c["rates"]] for c in retention]

    assert opened.text_content("#rfm-customers") == f"{rfm['customers']:,}"
    drawn = chart_data(opened, "rfm-chart")
    assert dict(zip(drawn["labels"], drawn["data"][0], strict=True)) == {
        segment.replace("_", " "): n for segment, n in rfm["segments"].items()
    }
    assert {row[0]: count(row[1]) for row in table(opened, "#rfm-tiers")} == {
        tier.replace("_", " "): n for tier, n in rfm["tiers"].items()
    }
    opened.wait_for_selector("#flow-table tbody tr")
    # The panel shows the last hour; the history ends two hours ago (see the fixture).
    hour = {"start": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}
    flow = node.read("GET", "/v1/stage-flow", params=hour).json()["transitions"]
    assert sorted(tuple(row) for row in table(opened, "#flow-table")) == sorted(
        (t["from"] or "(new)", t["to"], f"{t['customers']:,}") for t in flow
    )
    # Over time: the bars split the last hour, so each stage's bars add up to its changes.
    bars = opened.evaluate(
        """Chart.getChart(document.getElementById('flow-chart')).data.datasets
           .map((d) => [d.label, d.data.reduce((a, b) => a + b, 0)])"""
    )
    entered: dict[str, int] = {}
    for t in flow:
        entered[t["to"]] = entered.get(t["to"], 0) + t["customers"]
    assert dict(bars) == entered
    opened.screenshot(path=str(artifacts_dir / "dashboard-panels.png"), full_page=True)
    assert errors == []


def test_the_segments_panel_shows_the_segments_and_sizes_the_api_returns(
    node: NodeProcess, page: tuple[Page, list[str]], artifacts_dir: Path
) -> None:
    opened, errors = page
    segments = node.read("GET", "/v1/segments").json()["segments"]
    assert segments  # the shipped definitions seed the node

    def history(segment: dict[str, Any]) -> str:
        backfill = segment["backfill"]
        if backfill["state"] == "done":
            return "backfilled"
        if backfill["state"] == "running":
            return f"backfilling {backfill['progress'] * 100:.0f}%"
        return "not backfilled yet"

    sign_in(opened, node, "rk_dash")
    opened.wait_for_selector("#segments-table tbody tr")
    # The worker backfills the shipped segments after its start: wait for it to settle.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        segments = node.read("GET", "/v1/segments").json()["segments"]
        if all(s["backfilled"] for s in segments):
            break
        time.sleep(1)
    assert all(s["backfilled"] for s in segments)
    opened.reload()
    opened.wait_for_selector("#segments-table tbody tr")
    assert table(opened, "#segments-table") == [[s["id"], s["name"], history(s)] for s in segments]
    first = segments[0]["id"]
    assert opened.input_value("#segment-choice") == first
    opened.click("#segment-form button")
    opened.wait_for_function(
        "() => Chart.getChart(document.getElementById('segment-sizes-chart')) !== undefined"
    )
    month = node.read("GET", f"/v1/segments/{first}/sizes", params={"days": 30}).json()
    drawn = chart_data(opened, "segment-sizes-chart")
    assert drawn["labels"] == [s["at"][:10] for s in month["sizes"]]
    assert drawn["data"] == [[s["size"] for s in month["sizes"]]]
    assert count(opened.text_content("#segment-members") or "") == month["sizes"][-1]["size"]
    opened.screenshot(path=str(artifacts_dir / "dashboard-segments.png"), full_page=True)
    assert errors == []


def test_an_admin_defines_a_segment_and_a_trait_from_the_dashboard_and_breaks_a_funnel_down(
    node: NodeProcess, page: tuple[Page, list[str]], artifacts_dir: Path
) -> None:
    opened, errors = page
    sign_in(opened, node, node.settings.admin_key)
    opened.wait_for_selector("#segments-table tbody tr")
    assert opened.is_visible("#definition-editor")

    # The editor takes TOML, as the definitions file is written. Text that is not TOML is
    # refused in the page (nothing is sent); a refusal lists its errors by node and field.
    assert opened.input_value("#definition-format") == "toml"
    opened.fill("#definition-id", "dash_viewers")
    opened.fill("#definition-body", "where = { event = ")
    opened.click("#definition-save")
    opened.wait_for_selector("#definition-errors li")
    assert opened.text_content("#definition-errors li code") == "body"
    assert "not valid TOML" in (opened.text_content("#definition-errors li") or "")
    opened.fill("#definition-body", 'where = { event = "Product Viewed", count = -1 }')
    opened.click("#definition-save")
    opened.wait_for_selector("#definition-errors li >> text=integer >= 0")
    assert opened.text_content("#definition-errors li code") == "segments.dash_viewers.where.count"
    assert node.read("GET", "/v1/segments/dash_viewers").status_code == 404

    # Defined: listed in the panel as the API lists it.
    body = {"name": "Dashboard viewers", "where": {"event": "Product Viewed", "count": 2}}
    opened.fill(
        "#definition-body",
        'name = "Dashboard viewers"\n[where]\nevent = "Product Viewed"\ncount = 2\n',
    )
    opened.click("#definition-save")
    opened.wait_for_function(
        "document.getElementById('definition-status').textContent.includes('saved')"
    )
    assert opened.locator("#definition-errors li").count() == 0
    stored = node.read("GET", "/v1/segments/dash_viewers").json()
    assert stored["definition"] == body
    opened.wait_for_selector("#segments-table tbody tr >> text=dash_viewers")
    listed = {row[0]: row[1] for row in table(opened, "#segments-table")}
    assert listed["dash_viewers"] == "Dashboard viewers"

    # A computed trait the same way (as JSON here); its table shows it.
    opened.select_option("#definition-format", "json")
    opened.select_option("#definition-kind", "traits")
    opened.fill("#definition-id", "dash_views")
    opened.fill("#definition-body", '{"op": "count", "event": "Product Viewed", "within": "7d"}')
    opened.click("#definition-save")
    opened.wait_for_selector("#traits-table tbody tr >> text=dash_views")
    assert node.read("GET", "/v1/traits/dash_views").json()["used_by"] == []

    # The funnel by the new segment, once its history is backfilled.
    deadline = time.monotonic() + 60
    while not node.read("GET", "/v1/segments/dash_viewers").json()["backfilled"]:
        assert time.monotonic() < deadline, node.log_tail()
        time.sleep(0.5)
    expected = node.read(
        "POST", "/v1/funnels", json={**FUNNEL, "breakdown_segment": "dash_viewers"}
    ).json()
    assert sum(s[0]["customers"] for s in expected["breakdown"].values()) > 0
    opened.select_option("#funnel-segment", "dash_viewers")
    opened.wait_for_selector("#funnel-breakdown-table tbody tr")
    shown = table(opened, "#funnel-breakdown-table")
    assert [(r[0], r[1], count(r[2])) for r in shown] == [
        (group, step["step"], step["customers"])
        for group in ("in", "not in")
        for step in expected["breakdown"].get(group, [])
    ]
    # Retention by the segment too, as the API answers it.
    retention = node.read(
        "POST", "/v1/retention", json={**RETENTION, "breakdown_segment": "dash_viewers"}
    ).json()
    opened.select_option("#retention-segment", "dash_viewers")
    opened.wait_for_selector("#retention-breakdown-table tbody tr")
    assert [(r[0], r[1], count(r[2])) for r in table(opened, "#retention-breakdown-table")] == [
        (group, cohort["cohort"], cohort["size"])
        for group in ("in", "not in")
        for cohort in retention["breakdown"][group]
    ]
    opened.screenshot(path=str(artifacts_dir / "dashboard-segment-editor.png"), full_page=True)

    # Deleted from the editor: gone from the API and the panel.
    opened.select_option("#definition-choice", "traits:dash_views")
    opened.click("#definition-load")
    assert json.loads(opened.input_value("#definition-body"))["op"] == "count"
    opened.click("#definition-delete")
    opened.wait_for_function(
        "document.getElementById('definition-status').textContent.includes('deleted')"
    )
    opened.select_option("#definition-choice", "segments:dash_viewers")
    opened.click("#definition-load")
    opened.click("#definition-delete")
    opened.wait_for_function(
        "!document.getElementById('segments-table').textContent.includes('dash_viewers')"
    )
    assert node.read("GET", "/v1/segments/dash_viewers").status_code == 404
    assert node.read("GET", "/v1/traits/dash_views").status_code == 404

    # A definition loaded as TOML reads back as the stored table.
    opened.select_option("#definition-format", "toml")
    opened.select_option("#definition-choice", "segments:shoe_lookers")
    opened.click("#definition-load")
    shown = tomllib.loads(opened.input_value("#definition-body"))
    assert shown == node.read("GET", "/v1/segments/shoe_lookers").json()["definition"]

    # A static segment from a CSV file: a bad row is refused naming it, then the list is set.
    opened.fill("#list-segment", "dash_list")
    opened.set_input_files(
        "#list-file", files=[{"name": "bad.csv", "mimeType": "text/csv", "buffer": b"ann\nb,c\n"}]
    )
    opened.click("#list-upload")
    opened.wait_for_selector("#list-errors li")
    assert opened.text_content("#list-errors li code") == "row 2"
    assert node.read("GET", "/v1/segments/dash_list").status_code == 404
    rows = b"customer_id\nann\nbob\nann\n"
    opened.set_input_files(
        "#list-file", files=[{"name": "vips.csv", "mimeType": "text/csv", "buffer": rows}]
    )
    opened.click("#list-upload")
    opened.wait_for_function(
        "document.getElementById('list-status').textContent.includes('2 members')"
    )
    assert opened.locator("#list-errors li").count() == 0
    listed = node.read("GET", "/v1/segments/dash_list/list").json()
    assert sorted(listed["members"]) == ["ann", "bob"], listed
    opened.wait_for_selector("#segments-table tbody tr >> text=dash_list")
    # The browser logs the deliberate refusals' statuses; nothing else went wrong.
    assert len(errors) == 2 and all("422" in e for e in errors), errors


def test_the_trigger_log_shows_abandoned_carts_and_their_delivery(
    node: NodeProcess, page: tuple[Page, list[str]], artifacts_dir: Path
) -> None:
    opened, errors = page
    fired = node.read("GET", "/v1/triggers").json()["triggers"]
    delivered = [
        t
        for t in fired
        if t["rule"] == "flow:abandoned_cart"
        and any(d["channel"] == "webhook" and d["state"] == "delivered" for d in t["deliveries"])
    ]
    assert delivered

    sign_in(opened, node, "rk_dash")
    opened.wait_for_selector("#triggers-table tbody tr")
    rows = table(opened, "#triggers-table")
    assert [(row[1], row[2]) for row in rows] == [(t["rule"], t["customer_id"]) for t in fired]
    one = opened.locator(f"#triggers-table tr[data-trigger-id='{delivered[0]['trigger_id']}']")
    states = one.locator(".delivery").all_text_contents()
    assert sorted(states) == sorted(
        f"{d['channel']}: {d['state']}" for d in delivered[0]["deliveries"]
    )
    assert "webhook: delivered" in states
    opened.wait_for_function("document.getElementById('live-dead').textContent === '1'")
    assert opened.text_content("#live-dead") == str(
        node.read("GET", "/v1/stats").json()["dead_letters"]
    )
    opened.screenshot(path=str(artifacts_dir / "dashboard-triggers.png"), full_page=True)
    assert errors == []


PASSWORD = "a long pass phrase"


def add_user(node: NodeProcess, name: str, role: str) -> None:
    """``journeys users add`` beside the running node, as an operator would."""
    added = subprocess.run(
        [
            sys.executable,
            "-m",
            "stack.cli",
            "users",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
        ],
        env={**os.environ, **node.settings.to_env()},
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr


def sign_in_as(page: Page, name: str, password: str = PASSWORD) -> None:
    page.fill("#user-name", name)
    page.fill("#user-password", password)
    page.click("#sign-in-submit")


def test_people_sign_in_and_see_what_their_role_may(
    node: NodeProcess, page: tuple[Page, list[str]], artifacts_dir: Path
) -> None:
    opened, errors = page
    add_user(node, "dash-viewer", "viewer")
    add_user(node, "dash-analyst", "analyst")
    opened.goto(f"{node.base}/dashboard")
    sign_in_as(opened, "dash-viewer", "not the password")
    opened.wait_for_selector("#key-error:not(:empty)")
    assert "unknown user or wrong password" in (opened.text_content("#key-error") or "")
    assert opened.is_hidden("#content")
    # The refused sign-in is the one error the console shows (the browser logs the 401).
    assert len(errors) == 1 and "401" in errors[0], errors
    errors.clear()

    sign_in_as(opened, "dash-viewer")
    opened.wait_for_selector("#content", state="visible")
    assert "dash-viewer (viewer)" in (opened.text_content("#who") or "")
    assert opened.is_visible("#funnel") and opened.is_visible("#stages")
    for panel in ("#rfm", "#triggers", "#customer", "#audit"):  # customer data: analysts up
        assert opened.is_hidden(panel), panel
    opened.wait_for_selector("#funnel-table tbody tr")
    opened.screenshot(path=str(artifacts_dir / "dashboard-viewer.png"))
    cookies = {c["name"]: c for c in opened.context.cookies()}
    assert (
        cookies["journeys_session"]["httpOnly"]
        and cookies["journeys_session"]["sameSite"] == "Strict"
    )
    session = {"journeys_session": cookies["journeys_session"]["value"]}
    assert httpx.get(f"{node.base}/v1/rfm", cookies=session, timeout=30).status_code == 403

    opened.click("#sign-out")
    opened.wait_for_selector("#key-dialog", state="visible")
    assert opened.is_hidden("#content")
    assert httpx.get(f"{node.base}/v1/stages", cookies=session, timeout=30).status_code == 401

    sign_in_as(opened, "dash-analyst")
    opened.wait_for_selector("#rfm", state="visible")
    opened.reload()  # the session outlives a reload
    opened.wait_for_selector("#content", state="visible")
    assert "dash-analyst (analyst)" in (opened.text_content("#who") or "")
    assert opened.is_visible("#customer") and opened.is_hidden("#audit")  # the log: admins

    opened.click("#sign-out")
    add_user(node, "dash-admin", "admin")
    sign_in_as(opened, "dash-admin")
    opened.wait_for_selector("#audit-table tbody tr")
    audit = table(opened, "#audit-table")
    api = httpx.get(
        f"{node.base}/v1/audit",
        params={"limit": 1000},
        headers={"Authorization": f"Bearer {node.settings.admin_key}"},
        timeout=30,
    ).json()
    shown = {(r[1], r[3], r[6]) for r in audit}
    assert ("user:dash-viewer", "sign_in", "denied") in shown
    assert ("user:dash-analyst", "sign_in", "allowed") in shown
    assert shown <= {(e["actor"], e["action"], e["outcome"]) for e in api}
    opened.screenshot(path=str(artifacts_dir / "dashboard-audit.png"))
    assert errors == []


def test_signing_out_cancels_the_reads_still_in_flight(
    node: NodeProcess, page: tuple[Page, list[str]]
) -> None:
    """A panel's refresh answered after the sign-out would be a 401 on the console."""
    opened, errors = page
    add_user(node, "dash-leaver", "analyst")
    opened.goto(f"{node.base}/dashboard")
    sign_in_as(opened, "dash-leaver")
    opened.wait_for_selector("#rfm", state="visible")
    held: list[Route] = []
    # Hold the RFM reads until the session is closed, as a slow answer under load would be.
    opened.route("**/v1/rfm*", lambda route: held.append(route))
    opened.evaluate("() => { refreshRfm(); }")  # not awaited: it is held
    deadline = time.monotonic() + 10
    while not held:
        assert time.monotonic() < deadline, "the RFM read never left"
        opened.wait_for_timeout(50)
    errors.clear()
    opened.click("#sign-out")
    opened.wait_for_selector("#key-dialog", state="visible")
    with contextlib.suppress(PlaywrightError):  # the browser dropped it: nothing to continue
        held[0].continue_()
    opened.wait_for_timeout(1000)
    assert errors == []


def test_the_flows_panel_draws_the_flow_with_its_live_counts(
    node: NodeProcess, page: tuple[Page, list[str]], artifacts_dir: Path
) -> None:
    """The shipped abandoned cart, entered by the storefront's carts: its nodes with the
    counts the results route gives, pause and resume (admin), and a backtest."""
    opened, errors = page
    admin = {"Authorization": f"Bearer {node.settings.admin_key}"}
    base = f"{node.base}/v1/flows/abandoned_cart"
    results = httpx.get(f"{base}/results", headers=admin, timeout=30).json()
    assert results["entered"]["runs"] > 0, results  # the demo's carts entered it
    add_user(node, "dash-flows", "admin")
    opened.goto(f"{node.base}/dashboard")
    sign_in_as(opened, "dash-flows")
    opened.wait_for_selector("#flows-graph .flow-node")
    listed = httpx.get(f"{node.base}/v1/flows", headers=admin, timeout=30).json()["flows"]
    shown_flows = table(opened, "#flows-table")
    assert shown_flows[0] == ["abandoned_cart", "Abandoned cart", "1", "live"]
    # The demo's rules (survey, welcome) migrated into flows at start: on.
    assert shown_flows[1:] == [
        [f["id"], f["name"], str(f["version"]), "live" if f["enabled"] else "disabled"]
        for f in listed[1:]
    ]
    assert {f["id"] for f in listed if f["enabled"]} == {
        "abandoned_cart",
        "satisfaction_survey",
        "high_value_welcome",
    }
    assert len(shown_flows) == len(listed) > 1
    assert count(opened.text_content("#flows-entered") or "") == results["entered"]["runs"]
    drawn = opened.locator("#flows-graph .flow-node")
    assert [drawn.nth(i).get_attribute("data-node") for i in range(drawn.count())] == [
        "cart_started",
        "holdout_split",
        "wait_for_order",
        "reminder",
        "wait_a_day",
        "coupon",
    ]
    counts = "#flows-graph .flow-node[data-node={}] .node-counts"
    entry = opened.text_content(counts.format("cart_started")) or ""
    assert f"reached {results['nodes']['cart_started']['reached']}" in entry
    waiting = results["nodes"]["wait_for_order"]["waiting"]
    assert f"waiting {waiting}" in (opened.text_content(counts.format("wait_for_order")) or "")
    sent = f"sent {results['nodes']['reminder']['sent']}"
    assert sent in (opened.text_content(counts.format("reminder")) or "")
    # Laid out: one layer per depth from the entry, top to bottom; the edges labelled.
    tops = opened.eval_on_selector_all(
        "#flows-graph .flow-node",
        "nodes => Object.fromEntries(nodes.map(n => [n.dataset.node, n.getBBox().y"
        " + n.transform.baseVal.consolidate().matrix.f]))",
    )
    assert tops["cart_started"] < tops["holdout_split"] < tops["wait_for_order"]
    assert tops["wait_for_order"] < tops["reminder"] < tops["wait_a_day"] < tops["coupon"]
    edges = opened.eval_on_selector_all(
        "#flows-graph .edge",
        "edges => edges.map(e => [e.dataset.from, e.dataset.to,"
        " e.querySelector('text')?.textContent ?? ''])",
    )
    assert ["wait_for_order", "reminder", "timeout"] in edges
    assert any(f == "holdout_split" and "%" in label for f, _, label in edges), edges
    # A node clicked: who is there now, then who passed it, each opening their "why".
    at_node = httpx.get(f"{base}/nodes/wait_for_order/customers", headers=admin, timeout=30).json()
    assert at_node["now"] + at_node["passed"] > 0, at_node
    opened.click("#flows-graph .flow-node[data-node=wait_for_order]")
    opened.wait_for_selector("#flows-node-who li")
    assert opened.text_content("#flows-node-title") == (
        f"wait_for_order: {at_node['now']} at the node now, {at_node['passed']} passed it"
    )
    who = opened.locator("#flows-node-who li")
    assert [who.nth(i).get_attribute("data-at") for i in range(who.count())] == [
        c["at_node"] for c in at_node["customers"]
    ]
    first = at_node["customers"][0]["customer_id"]
    assert opened.locator("#flows-node-who li button").first.text_content() == first
    opened.locator("#flows-node-who li button").first.click()
    opened.wait_for_selector("#flows-why .why-flow[data-flow=abandoned_cart]")
    assert opened.input_value("#flows-why-id") == first
    # "Runs of" offers the versions that exist; a window of entries narrows the counts.
    defined = httpx.get(base, headers=admin, timeout=30).json()["versions"]
    versions = [f"v{v}" for v in sorted(defined, reverse=True)]
    assert opened.locator("#flows-version option").all_text_contents() == [
        "all versions",
        *versions,
    ]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    opened.fill("#flows-results-from", tomorrow)
    opened.dispatch_event("#flows-results-from", "change")
    opened.wait_for_function("document.getElementById('flows-entered').textContent === '0'")
    windowed = httpx.get(
        f"{base}/results", params={"from": tomorrow}, headers=admin, timeout=30
    ).json()
    assert windowed["entered"]["runs"] == 0 < results["entered"]["runs"]
    opened.fill("#flows-results-from", "")
    opened.dispatch_event("#flows-results-from", "change")
    opened.wait_for_function("document.getElementById('flows-entered').textContent !== '0'")

    opened.click("#flows-pause")
    opened.wait_for_function(
        "document.querySelector('#flows-table tbody tr td:last-child')"
        ".textContent.startsWith('paused')"
    )
    assert httpx.get(base, headers=admin, timeout=30).json()["paused"] is True
    opened.click("#flows-resume")
    opened.wait_for_function(
        "document.querySelector('#flows-table tbody tr td:last-child').textContent === 'live'"
    )
    assert httpx.get(base, headers=admin, timeout=30).json()["paused"] is False

    start = opened.input_value("#flows-backtest-from")
    end = opened.input_value("#flows-backtest-to")
    opened.click("#flows-backtest-form button")
    opened.wait_for_selector("#flows-backtest", state="visible")
    report = httpx.post(
        f"{base}/backtest", json={"from": start, "to": end}, headers=admin, timeout=120
    ).json()
    card = dict(
        zip(
            opened.locator("#flows-backtest dt").all_text_contents(),
            opened.locator("#flows-backtest dd").all_text_contents(),
            strict=True,
        )
    )
    entered = report["entered"]
    assert card["Entered"] == f"{entered['customers']} customers, {entered['runs']} runs"
    assert entered["runs"] > 0
    opened.screenshot(path=str(artifacts_dir / "dashboard-flows.png"), full_page=True)
    assert errors == []


def canonical_cart_toml(flow_id: str) -> str:
    """The shipped abandoned cart's TOML, as a marketer copies it from the flows file."""
    shipped = (Path(__file__).parents[2] / "journeys" / "flows.toml").read_text()
    start = shipped.index("[flows.abandoned_cart]")
    end = shipped.index("[flows.review_request]")
    section = shipped[start:end].split("# The seven lifecycle")[0]
    return section.replace("flows.abandoned_cart", f"flows.{flow_id}")


def test_a_marketer_backtests_a_draft_launches_it_and_asks_why(
    node: NodeProcess, page: tuple[Page, list[str]], artifacts_dir: Path
) -> None:
    """Issue 18's "done when": the canonical flow written as in the file, refused while a
    node's field is wrong, backtested over the last month, launched, refused again when
    changed without a new version, and a customer's "why" opened from the backtest."""
    opened, errors = page
    admin = {"Authorization": f"Bearer {node.settings.admin_key}"}
    add_user(node, "dash-launcher", "admin")
    opened.goto(f"{node.base}/dashboard")
    sign_in_as(opened, "dash-launcher")
    opened.wait_for_selector("#flows-graph .flow-node")
    assert opened.locator("#flows-version option").all_text_contents() == ["all versions", "v1"]

    text = canonical_cart_toml("cart_rescue")
    broken = text.replace("entry.name | default('your item')", "cart.total")
    opened.fill("#flows-edit-text", broken)
    opened.click("#flows-edit-validate")
    opened.wait_for_selector("#flows-edit-errors li")
    assert opened.text_content("#flows-edit-errors li code") == (
        "flows.cart_rescue.nodes.reminder.body"
    )
    assert "unknown variable 'cart'" in (opened.text_content("#flows-edit-errors li") or "")

    opened.fill("#flows-edit-text", text)
    opened.click("#flows-edit-backtest")
    opened.wait_for_selector("#flows-backtest-result", state="visible")
    assert opened.input_value("#flows-edit-id") == "cart_rescue"  # taken from the text
    assert opened.locator("#flows-edit-errors li").count() == 0
    parsed = httpx.post(
        f"{node.base}/v1/flows/validate",
        content=text,
        headers={**admin, "Content-Type": "application/toml"},
        timeout=30,
    ).json()
    definition = parsed["flows"][0]["definition"]
    window = {
        "from": opened.input_value("#flows-backtest-from"),
        "to": opened.input_value("#flows-backtest-to"),
    }
    report = httpx.post(
        f"{node.base}/v1/flows/cart_rescue/backtest",
        json={**window, "definition": definition},
        headers=admin,
        timeout=120,
    ).json()
    assert report["entered"]["runs"] > 0, report
    card = dict(
        zip(
            opened.locator("#flows-backtest dt").all_text_contents(),
            opened.locator("#flows-backtest dd").all_text_contents(),
            strict=True,
        )
    )
    entered = report["entered"]
    assert card["Entered"] == f"{entered['customers']} customers, {entered['runs']} runs"
    assert card["Caps hit"] == str(report["caps_hit"])
    holdout = report["conversions"]["holdout"]
    assert card["Holdout converted"].startswith(f"{holdout['converted']}/{holdout['runs']} ")
    assert table(opened, "#flows-backtest-paths") == [
        [" → ".join(p["path"]), str(p["runs"]), "".join(p["customers"])] for p in report["paths"]
    ]
    assert table(opened, "#flows-backtest-days") == [
        [d["day"], d["channel"], str(d["count"])] for d in report["messages_per_day"]
    ]
    drawn = opened.locator("#flows-backtest-graph .flow-node")
    reached = report["nodes"]["reminder"]["reached"]
    assert drawn.count() == len(definition["nodes"])
    reminder = "#flows-backtest-graph .flow-node[data-node=reminder] .node-counts"
    assert f"reached {reached}" in (opened.text_content(reminder) or "")
    entry = "#flows-backtest-graph .flow-node[data-node=cart_started] .node-counts"
    assert f"reached {entered['runs']}" in (opened.text_content(entry) or "")

    opened.click("#flows-edit-launch")
    opened.wait_for_function(
        "document.getElementById('flows-edit-status').textContent === 'cart_rescue v1 launched'"
    )
    stored = httpx.get(f"{node.base}/v1/flows/cart_rescue", headers=admin, timeout=30).json()
    assert (stored["version"], stored["definition"]) == (1, definition)
    opened.wait_for_selector("#flows-table tbody tr >> text=cart_rescue")
    assert opened.input_value("#flows-choice") == "cart_rescue"

    # Changed without a new version: refused, and said apart from a broken field.
    opened.fill("#flows-edit-text", text.replace('timeout = "1h"', 'timeout = "2h"'))
    opened.click("#flows-edit-launch")
    opened.wait_for_selector("#flows-edit-conflict:not(:empty)")
    assert "without a new version" in (opened.text_content("#flows-edit-conflict") or "")
    assert opened.text_content("#flows-edit-errors li code") == "flows.cart_rescue.version"
    unchanged = httpx.get(f"{node.base}/v1/flows/cart_rescue", headers=admin, timeout=30).json()
    assert unchanged["definition"] == definition

    # Why: a customer of the commonest path, opened from the report.
    opened.locator("#flows-backtest-paths tbody tr").first.locator("button").first.click()
    customer = opened.input_value("#flows-why-id")
    assert customer == report["paths"][0]["customers"][0]
    opened.wait_for_selector("#flows-why .why-flow")
    why = node.read("GET", f"/v1/customers/{customer}/flows").json()
    shown_flows = opened.locator("#flows-why .why-flow")
    assert [shown_flows.nth(i).get_attribute("data-flow") for i in range(shown_flows.count())] == [
        flow["flow_id"] for flow in why["flows"]
    ]
    live = next(flow for flow in why["flows"] if flow["flow_id"] == "abandoned_cart")
    facts = opened.locator("#flows-why .why-flow[data-flow=abandoned_cart] li span")
    assert facts.all_text_contents() == [fact["why"] for fact in live["facts"]]
    assert live["facts"], live
    opened.screenshot(path=str(artifacts_dir / "dashboard-flows-draft.png"), full_page=True)
    # The browser logs the two deliberate refusals' statuses (400, 409); nothing else.
    assert len(errors) == 2 and "400" in errors[0] and "409" in errors[1], errors

    # A shopper enters the launched flow live; their run is inside when it is deleted.
    cart = {"cart_id": "rescue-cart", "product_id": "p-rescue", "name": "Kettle", "price": 30}
    assert node.track("rescue-1", "Product Added", "rescue-1-add", **cart) == 200
    rescue = f"{node.base}/v1/flows/cart_rescue/results"

    def entered() -> int:
        return int(httpx.get(rescue, headers=admin, timeout=30).json()["entered"]["runs"])

    assert wait_until(lambda: entered() == 1, timeout=60, alive=lambda: True, interval=0.3)

    # Delete, confirmed: dismissed, nothing changes; accepted, the flow is out of force,
    # listed as deleted with its run's results (the run finishes on its version).
    opened.select_option("#flows-choice", "cart_rescue")
    opened.once("dialog", lambda dialog: dialog.dismiss())
    opened.click("#flows-delete")
    assert httpx.get(f"{node.base}/v1/flows/cart_rescue", headers=admin, timeout=30).is_success
    opened.once("dialog", lambda dialog: dialog.accept())
    opened.click("#flows-delete")
    opened.wait_for_function(
        "[...document.querySelectorAll('#flows-table tbody td')]"
        ".some(td => td.textContent === 'deleted (runs inside finish)')"
    )
    gone = httpx.get(f"{node.base}/v1/flows/cart_rescue", headers=admin, timeout=30)
    assert gone.status_code == 404
    rows = {cells[0]: cells for cells in table(opened, "#flows-table")}
    assert rows["cart_rescue"][1:] == ["Abandoned cart", "1", "deleted (runs inside finish)"]
    opened.select_option("#flows-choice", "cart_rescue")
    opened.wait_for_function("document.getElementById('flows-delete').disabled")
    assert opened.text_content("#flows-entered") == "1"
    assert opened.is_disabled("#flows-pause") and opened.is_disabled("#flows-resume")
    choices = opened.eval_on_selector_all(
        "#flows-choice option", "os => os.map(o => [o.value, o.textContent])"
    )
    assert ["cart_rescue", "Abandoned cart (deleted)"] in choices
    opened.select_option("#flows-choice", "abandoned_cart")  # in force: its buttons again
    opened.wait_for_function("!document.getElementById('flows-delete').disabled")
