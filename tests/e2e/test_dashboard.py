"""The dashboard in headless Chromium against a running node fed with demo traffic.

Debian's chromium (installed by the test command) driven by Playwright; every
figure on the page is checked against what the API returns; screenshots are
kept in test-artifacts/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from simulation.storefront import Storefront
from stack import demo
from stack.broker import EmbeddedBroker
from stack.settings import Settings
from streams.topics import ensure_topics
from tests.node_process import NodeProcess

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


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with a few hundred storefront calls processed."""
    folder = tmp_path_factory.mktemp("dashboard")
    broker = EmbeddedBroker(folder / "broker.log")
    broker.start()
    settings = Settings(
        data_dir=folder / "data",
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_epoch="dash",
        topic_prefix="dash",
        topic_partitions=2,
        worker_group="dash",
        kafka_session_timeout_s=6,
        write_key="wk_dash",
        read_key="rk_dash",
        batch_within_s=0.05,
    )
    ensure_topics(broker.bootstrap_servers, settings.all_topics, 2, 1)
    running = NodeProcess(settings, folder / "node.log")
    running.start()
    try:
        calls = list(Storefront(seed=21, shoppers=SHOPPERS, live=True).calls())
        accepted, rejected = demo.send(running.base, "wk_dash", rate=1000, calls=iter(calls))
        assert (accepted, rejected) == (len(calls), 0)
        deadline = time.monotonic() + 60
        while running.read("GET", "/v1/stats").json()["worker_lag"] != 0:
            assert time.monotonic() < deadline, running.log_tail()
            time.sleep(0.2)
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


def test_a_wrong_key_shows_an_error_and_no_data(
    node: NodeProcess, page: tuple[Page, list[str]], artifacts_dir: Path
) -> None:
    opened, _ = page
    sign_in(opened, node, "rk_wrong")
    opened.wait_for_function("document.getElementById('key-error').textContent.length > 0")
    assert "refused" in opened.text_content("#key-error")  # type: ignore[operator]
    assert opened.is_hidden("#content")
    assert opened.locator("#funnel-table tbody tr").count() == 0
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
    opened.screenshot(path=str(artifacts_dir / "dashboard-funnel.png"), full_page=True)
    assert errors == []


def test_a_customer_search_shows_the_customers_stage(
    node: NodeProcess, page: tuple[Page, list[str]], artifacts_dir: Path
) -> None:
    opened, errors = page
    buyers = httpx.post(
        f"{node.base}/v1/funnels",
        timeout=30,
        headers={"Authorization": "Bearer rk_dash"},
        json=FUNNEL,
    )
    assert buyers.status_code == 200
    customer = next(
        c
        for c in (f"user-{i:06d}" for i in range(SHOPPERS))
        if node.read("GET", f"/v1/customers/{c}").status_code == 200
    )
    expected = node.read("GET", f"/v1/customers/{customer}").json()

    sign_in(opened, node, "rk_dash")
    opened.wait_for_selector("#funnel-table tbody tr")
    opened.fill("#customer-id", customer)
    opened.click("#customer-form button")
    opened.wait_for_selector("#customer-card dd[data-field=stage]")
    assert opened.text_content("#customer-card dd[data-field=stage]") == expected["stage"]
    assert opened.text_content("#customer-card dd[data-field=events]") == str(
        expected["event_count"]
    )
    unknown = node.read("GET", "/v1/customers/nobody-at-all")
    assert unknown.status_code == 404
    opened.fill("#customer-id", "nobody-at-all")
    opened.click("#customer-form button")
    opened.wait_for_function("document.getElementById('customer-error').textContent.length > 0")
    assert opened.text_content("#customer-error") == unknown.json()["message"]
    opened.screenshot(path=str(artifacts_dir / "dashboard-customer.png"), full_page=True)
    # The 404 is the answer asked for; the browser logs it as a failed resource, nothing else.
    assert [e for e in errors if "404" not in e] == []
