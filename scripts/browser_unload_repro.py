"""analytics.js on page unload, against a bare test server (not the platform): what lands.

Two findings behind tests/e2e/test_browser_sdks.py and the README's unload notes:

1. ``interception``: analytics.js's batching mode queues 8 calls (each call's
   promise resolved), then the page is left; its ``pagehide`` flush is one
   keepalive fetch. With Playwright's request interception on (``context.route``)
   the flush is dropped; without it, it lands.
2. ``same-task``: 8 calls and ``location.href = next`` in one task, per-call
   keepalive and batching, the next page without analytics.js or loading it
   again: how many of the 8 land, per run.

The server answers the SDK's settings, preflights and posts, and counts distinct
messageIds per run. Run: ``python -m scripts.browser_unload_repro [RUNS] [WAIT_S]``.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright

from tests.e2e.test_browser_sdks import BUNDLES, NO_ICON, SEGMENT_BUNDLE, SEGMENT_PAGE
from tests.e2e.test_dashboard import CHROMIUM, CHROMIUM_ARGS

WRITE_KEY = "wk_repro"
CALLS = 8
KEEPALIVE = {"integrations": {"Segment.io": {"deliveryStrategy": {"config": {"keepalive": True}}}}}
BATCHING = {
    "integrations": {
        "Segment.io": {
            "deliveryStrategy": {"strategy": "batching", "config": {"size": 10, "timeout": 5000}}
        }
    }
}
# A batch only the pagehide flush sends: more calls than its size, timers of ten minutes.
BATCH_UNTIL_UNLOAD = {
    "integrations": {
        "Segment.io": {
            "deliveryStrategy": {"strategy": "batching", "config": {"size": 100, "timeout": 600000}}
        }
    }
}
LANDED: dict[str, set[str]] = {}
PAGES: dict[str, bytes] = {}


class Api(BaseHTTPRequestHandler):
    """Settings, preflights and posts, as the platform answers them; counts what lands."""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _answer(self, status: int, body: bytes = b"") -> None:
        try:
            self.send_response(status)
            self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin", "*"))
            self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
            self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            self.send_header("Access-Control-Max-Age", "7200")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except BrokenPipeError:
            pass  # the page is gone: a keepalive request's answer has no reader

    def do_OPTIONS(self) -> None:
        self._answer(204)

    def do_GET(self) -> None:
        segment = {"apiKey": WRITE_KEY, "apiHost": f"{self.headers['Host']}/v1", "protocol": "http"}
        settings = {
            "integrations": {"Segment.io": {**segment, "unbundledIntegrations": []}},
            "plan": {},
            "edgeFunction": {},
            "analyticsNextEnabled": True,
            "middlewareSettings": {},
            "enabledMiddleware": {},
            "metrics": {"sampleRate": 0},
            "legacyVideoPluginsEnabled": False,
            "remotePlugins": [],
        }
        self._answer(200, json.dumps(settings).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        for event in body.get("batch", [body]):
            if event.get("type") == "track":
                LANDED.setdefault(event["properties"]["run"], set()).add(event["messageId"])
        self._answer(200, b"{}")


class Shop(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        body = PAGES.get(self.path.partition("?")[0], f"<!doctype html>{NO_ICON}bye".encode())
        kind = "text/javascript" if self.path.endswith(".js") else "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(handler: type[BaseHTTPRequestHandler]) -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def shop_page(api: str, options: dict[str, Any]) -> bytes:
    page = (
        SEGMENT_PAGE.replace("BUNDLE", SEGMENT_BUNDLE)
        .replace("WRITE_KEY", WRITE_KEY)
        .replace("API", api)
        .replace("OPTIONS", json.dumps(options))
        .replace("ICON", NO_ICON)
    )
    return page.encode()


def landed(page: Page, run: str, wait_s: float) -> int:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and len(LANDED.get(run, ())) < CALLS:
        page.wait_for_timeout(100)
    return len(LANDED.get(run, ()))


def open_shop(browser: Browser, shop: str, name: str, route: bool = False) -> Page:
    context = browser.new_context()
    if route:  # as the test once kept requests inside 127.0.0.1
        context.route(re.compile(r"^(?!http://127\.0\.0\.1[:/])"), lambda r: r.abort())
    page = context.new_page()
    page.goto(f"{shop}/{name}.html")
    page.wait_for_function("window.analytics && window.analytics.initialized === true")
    return page


TRACKS = f"(run) => Array.from({{length: {CALLS}}}, (_, i) => analytics.track('E' + i, {{run}}))"


def interception(browser: Browser, shop: str, runs: int, wait_s: float) -> None:
    for route in (True, False):
        counts = []
        for index in range(runs):
            run = f"route-{route}-{index}"
            page = open_shop(browser, shop, "until-unload", route)
            page.evaluate(f"(run) => Promise.all(({TRACKS})(run))", run)
            page.goto(f"{shop}/bye.html")
            counts.append(landed(page, run, wait_s))
            page.context.close()
        print(f"pagehide batch, request interception {'on ' if route else 'off'}: {counts}")


def same_task(browser: Browser, shop: str, runs: int, wait_s: float) -> None:
    for mode in ("keepalive", "batching"):
        for then in ("bye", f"{mode}-again"):
            counts = []
            for index in range(runs):
                run = f"{mode}-{then}-{index}"
                page = open_shop(browser, shop, mode)
                target = f"{shop}/{then}.html"
                page.evaluate(
                    f"([run, target]) => {{ ({TRACKS})(run); location.href = target; }}",
                    [run, target],
                )
                page.wait_for_url(target)
                counts.append(landed(page, run, wait_s))
                page.context.close()
            nxt = "loads analytics.js" if then != "bye" else "has no analytics.js"
            print(f"same task, {mode}, next page {nxt}: {counts} of {CALLS} per run")


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    wait_s = float(sys.argv[2]) if len(sys.argv) > 2 else 10
    api, shop = serve(Api), serve(Shop)
    PAGES[f"/{SEGMENT_BUNDLE}"] = (BUNDLES / SEGMENT_BUNDLE).read_bytes()
    for name, options in (
        ("keepalive", KEEPALIVE),
        ("batching", BATCHING),
        ("until-unload", BATCH_UNTIL_UNLOAD),
    ):
        PAGES[f"/{name}.html"] = PAGES[f"/{name}-again.html"] = shop_page(api, options)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        print(f"Chromium {browser.version}, analytics.js {SEGMENT_BUNDLE}, {runs} runs each")
        interception(browser, shop, runs, wait_s)
        same_task(browser, shop, runs, wait_s)
        browser.close()


if __name__ == "__main__":
    main()
