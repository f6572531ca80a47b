# ruff: noqa: E501 - the page templates keep the vendors' snippet lines as they are
"""The real browser SDKs, unmodified, in headless Chromium, from another origin than the API.

A storefront page is served from one origin (a static server on 127.0.0.1) and
a real node (broker, worker, API) answers on another. Segment's analytics.js
(the standalone bundle its snippet loads) and RudderStack's browser SDK (its
npm bundle, plugins included) are vendored in tests/data/browser/. Each sends
page, identify, track (e-commerce), group and alias in its delivery modes:
per call, batched, and on unload (fetch keepalive, sendBeacon) by navigating
away. Every event must land exactly once: counted through the read API while
the node runs, then row by row in ClickHouse. No request may leave 127.0.0.1
(a refusing proxy for every other host; Playwright's own request interception
would drop the keepalive fetches sent on pagehide, which is why an earlier
version of this test saw analytics.js's unload modes lose events).
"""

from __future__ import annotations

import functools
import json
import signal
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request

from stack.broker import EmbeddedBroker
from stack.processes import free_port, wait_until
from stack.settings import Settings
from streams.topics import ensure_topics
from tests.node_process import NodeProcess, platform_settings, query_chdb_folder
from tests.stack_process import RunningStack

pytestmark = pytest.mark.e2e

BUNDLES = Path(__file__).resolve().parents[1] / "data" / "browser"
SEGMENT_BUNDLE = "analytics-next-1.84.3.standalone.js"
RUDDER_BUNDLE = "rudderstack-analytics-js-3.34.1.bundled.umd.js"
WRITE_KEY = "wk_browser"

# Segment's snippet (5.2.1) as its docs give it, but for where the bundle is loaded
# from, and with analytics._cdn naming the API, which serves the SDK's settings.
SEGMENT_PAGE = """<!doctype html><html><head><title>shop</title>ICON<script>
!function(){var i="analytics",analytics=window[i]=window[i]||[];if(!analytics.initialize)
if(analytics.invoked)window.console&&console.error&&console.error("Segment snippet included twice.");
else{analytics.invoked=!0;analytics.methods=["trackSubmit","trackClick","trackLink","trackForm",
"pageview","identify","reset","group","track","ready","alias","debug","page","screen","once","off",
"on","addSourceMiddleware","addIntegrationMiddleware","setAnonymousId","addDestinationMiddleware",
"register"];analytics.factory=function(e){return function(){if(window[i].initialized)return window[i][e]
.apply(window[i],arguments);var n=Array.prototype.slice.call(arguments);if(["track","screen","alias",
"group","page","identify"].indexOf(e)>-1){var c=document.querySelector("link[rel='canonical']");
n.push({__t:"bpc",c:c&&c.getAttribute("href")||void 0,p:location.pathname,u:location.href,
s:location.search,t:document.title,r:document.referrer})}n.unshift(e);analytics.push(n);return analytics}};
for(var n=0;n<analytics.methods.length;n++){var key=analytics.methods[n];analytics[key]=analytics.factory(key)}
analytics.load=function(key,n){var t=document.createElement("script");t.type="text/javascript";t.async=!0;
t.setAttribute("data-global-segment-analytics-key",i);t.src="/BUNDLE";
var r=document.getElementsByTagName("script")[0];r.parentNode.insertBefore(t,r);analytics._loadOptions=n};
analytics._writeKey="WRITE_KEY";analytics._cdn="API";analytics.SNIPPET_VERSION="5.2.1";
analytics.load("WRITE_KEY", OPTIONS);
}}();
</script></head><body>shop</body></html>"""

RUDDER_PAGE = """<!doctype html><html><head><title>shop</title>ICON
<script src="/BUNDLE"></script><script>
window.rudder = new rudderanalytics.RudderAnalytics();
window.rudder.load("WRITE_KEY", "API", Object.assign({configUrl: "API", logLevel: "ERROR"}, OPTIONS));
window.rudder.ready(() => { window.rudderReady = true; });
</script></head><body>shop</body></html>"""

# No favicon: its 404 from the static server would be a console error.
NO_ICON = '<link rel="icon" href="data:,">'

# Per mode: the load options, and whether the calls are sent by leaving the page.
SEGMENT_MODES: dict[str, tuple[dict[str, Any], bool]] = {
    "per-call": ({}, False),
    "batching": (
        {"integrations": {"Segment.io": {"deliveryStrategy": {
            "strategy": "batching", "config": {"size": 3, "timeout": 300}}}}},
        False,
    ),
    "keepalive-unload": (
        {"integrations": {"Segment.io": {"deliveryStrategy": {"config": {"keepalive": True}}}}},
        True,
    ),
    "batching-unload": (
        {"integrations": {"Segment.io": {"deliveryStrategy": {
            "strategy": "batching", "config": {"size": 100, "timeout": 600000}}}}},
        True,
    ),
}  # fmt: skip
RUDDER_MODES: dict[str, tuple[dict[str, Any], bool]] = {
    "per-call": ({}, False),
    "batching": (
        {"queueOptions": {"batch": {"enabled": True, "maxItems": 3, "flushInterval": 300}}},
        False,
    ),
    "beacon-unload": (
        {"useBeacon": True, "beaconQueueOptions": {"maxItems": 100, "flushQueueInterval": 600000}},
        True,
    ),
}

# The calls of one mode, as (call type, event name as the event log keeps it).
SEGMENT_CALLS = """(user) => {
  const a = window.analytics;
  return [
    a.identify(user, {email: user + "@example.com", first_name: "Ada"}),
    a.page("Shop", "Home", {path: "/"}),
    a.track("Product Viewed", {product_id: "p1", sku: "SKU-1", price: 19.5, category: "shoes"}),
    a.track("Product Added", {product_id: "p1", price: 19.5, quantity: 2, cart_id: "c1"}),
    a.track("Checkout Started", {order_id: "o-" + user, revenue: 39, currency: "EUR"}),
    a.track("Order Completed", {order_id: "o-" + user, revenue: 39, currency: "EUR",
      products: [{product_id: "p1", price: 19.5, quantity: 2}]}),
    a.group("org-" + user, {name: "Acme"}),
    a.alias(user, "legacy-" + user),
  ];
}"""
RUDDER_CALLS = """(user) => {
  const r = window.rudder;
  r.identify(user, {email: user + "@example.com", first_name: "Ada"});
  r.page("Shop", "Home", {path: "/"});
  r.track("Product Viewed", {product_id: "p1", sku: "SKU-1", price: 19.5, category: "shoes"});
  r.track("Product Added", {product_id: "p1", price: 19.5, quantity: 2, cart_id: "c1"});
  r.track("Checkout Started", {order_id: "o-" + user, revenue: 39, currency: "EUR"});
  r.track("Order Completed", {order_id: "o-" + user, revenue: 39, currency: "EUR",
    products: [{product_id: "p1", price: 19.5, quantity: 2}]});
  r.group("org-" + user, {name: "Acme"});
  r.alias(user, "legacy-" + user);
  return [];
}"""
CALLS_PER_MODE = 8

# Playwright reports no request a page issues while it unloads (the pagehide batch,
# the beacons), so the pages note each fetch and beacon they hand to the browser,
# keepalive flag included, in sessionStorage: it outlives the page (per tab and
# origin) and the next page of the shop reads it. The SDKs are untouched: they
# call these very functions, which pass every call through.
RECORDER = """(() => {
  const note = (kind, method, url, keepalive) => {
    const sent = JSON.parse(sessionStorage.getItem("sent") || "[]");
    sent.push({kind, method: String(method).toUpperCase(), url: String(url), keepalive: Boolean(keepalive)});
    sessionStorage.setItem("sent", JSON.stringify(sent));
  };
  const fetch = window.fetch, beacon = navigator.sendBeacon.bind(navigator);
  window.fetch = function (input, init) {
    const request = input instanceof Request ? input : null;
    note("fetch", (init && init.method) || (request ? request.method : "GET"),
      request ? request.url : input, init ? init.keepalive : request && request.keepalive);
    return fetch.apply(this, arguments);
  };
  navigator.sendBeacon = (url, data) => { note("beacon", "POST", url, true); return beacon(url, data); };
})()"""
TRACKED = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"]

# Users sent for, per platform (its base URL), across the module's tests: the last
# test counts their rows.
SENT: dict[str, list[str]] = {}


class GatewaysStack:
    """`journeys up` with two ingest gateways (the lean single-call route, the node behind
    them), in the shape of NodeProcess that these tests use."""

    def __init__(self, folder: Path) -> None:
        keys = {"write_key": WRITE_KEY, "read_key": "rk_browser", "admin_key": "ak_browser"}
        self.settings = Settings(data_dir=folder / "data", **keys)
        self.stack = RunningStack(
            folder, free_port(), gateways="2", data_dir=str(self.settings.data_dir), **keys
        )
        self.base = self.stack.base
        self.process: object | None = self.stack.process

    def start(self) -> None:
        self.stack.wait_for_banner()
        if not wait_until(self._healthy, 90, alive=lambda: self.stack.process.poll() is None):
            raise AssertionError(f"the stack did not become healthy:\n{self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def read(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.settings.read_key}"}
        return httpx.request(method, f"{self.base}{path}", headers=headers, timeout=30, **kwargs)

    def log_tail(self, lines: int = 40) -> str:
        return "".join(self.stack.output().splitlines(True)[-lines:])

    def stop(self) -> int:
        """SIGTERM: gateways, then the node drained, then the broker."""
        code, _ = self.stack.interrupt(signal.SIGTERM)
        self.process = None
        return code


# The node serving the browsers itself, and `journeys up`'s gateways in front of it.
Platform = NodeProcess | GatewaysStack


@pytest.fixture(scope="module", params=["node", "gateways"])
def node(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Platform]:
    folder = tmp_path_factory.mktemp("browser")
    if request.param == "gateways":
        stack = GatewaysStack(folder)
        try:
            stack.start()
            yield stack
        finally:
            if stack.process is not None:
                stack.stop()
        return
    broker = EmbeddedBroker(folder / "broker.log")
    broker.start()
    settings = platform_settings(
        folder / "data", "browser", broker.bootstrap_servers, write_key=WRITE_KEY
    )
    ensure_topics(broker.bootstrap_servers, settings.all_topics, 2, 1)
    running = NodeProcess(settings, folder / "node.log")
    running.start()
    try:
        yield running
    finally:
        if running.process is not None:
            running.stop()
        broker.stop()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, node: Platform) -> Iterator[str]:
    """The storefront's origin: a static server with a page per SDK and mode."""
    root = tmp_path_factory.mktemp("shop")
    for name in (SEGMENT_BUNDLE, RUDDER_BUNDLE):
        (root / name).write_bytes((BUNDLES / name).read_bytes())
    for sdk, template, bundle, modes in (
        ("segment", SEGMENT_PAGE, SEGMENT_BUNDLE, SEGMENT_MODES),
        ("rudder", RUDDER_PAGE, RUDDER_BUNDLE, RUDDER_MODES),
    ):
        for mode, (options, _) in modes.items():
            page = (
                template.replace("BUNDLE", bundle)
                .replace("WRITE_KEY", WRITE_KEY)
                .replace("API", node.base)
                .replace("OPTIONS", json.dumps(options))
                .replace("ICON", NO_ICON)
            )
            (root / f"{sdk}-{mode}.html").write_text(page)
    (root / "bye.html").write_text(f"<!doctype html>{NO_ICON}<title>bye</title>bye")
    server = ThreadingHTTPServer(
        ("127.0.0.1", free_port()), functools.partial(_Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def event_count(node: Platform, user: str) -> int:
    response = node.read("GET", f"/v1/customers/{user}")
    return int(response.json()["event_count"]) if response.is_success else 0


def run_mode(
    browser: Browser, shop: str, node: Platform, sdk: str, mode: str, unload: bool
) -> dict[str, Any]:
    """Load the page, send the calls, leave if asked; what the browser saw."""
    user = f"{sdk}-{mode}"
    context = browser.new_context()  # its own storage: the SDKs persist ids and queues
    outside: list[str] = []
    errors: list[str] = []
    posted: list[str] = []

    def seen(request: Request) -> None:
        if not request.url.startswith("http://127.0.0.1"):
            outside.append(request.url)  # refused by the proxy; listed to name it
        elif request.method == "POST" and request.url.startswith(node.base):
            posted.append(request.url)

    context.on("request", seen)
    context.add_init_script(RECORDER)
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{shop}/{sdk}-{mode}.html")
    if sdk == "segment":
        page.wait_for_function("window.analytics && window.analytics.initialized === true")
        calls = SEGMENT_CALLS
    else:
        page.wait_for_function("window.rudderReady === true")
        calls = RUDDER_CALLS
    if mode == "keepalive-unload":
        # Leave as soon as every call is handed to fetch, not waiting for the
        # answers: keepalive is what keeps a request in flight alive past the unload.
        page.evaluate(f"(user) => {{ ({calls})(user); }}", user)
        issued = wait_until(
            lambda: len(handed(page, node)) >= CALLS_PER_MODE,
            timeout=30,
            alive=lambda: True,
            interval=0.01,
        )
        assert issued, handed(page, node)
    else:
        # Resolved once each call is handed to the SDK's delivery: sent, or queued
        # for a batch that only leaving the page sends (its timers are ten minutes).
        page.evaluate(f"(user) => Promise.all(({calls})(user))", user)
    if unload:
        page.goto(f"{shop}/bye.html")  # pagehide, visibilitychange: keepalive fetches, beacons
    landed = wait_until(
        lambda: event_count(node, user) >= CALLS_PER_MODE, timeout=60, alive=lambda: True
    )
    sent = handed(page, node)
    context.close()
    SENT.setdefault(node.base, []).append(user)
    return {
        "user": user,
        "landed": landed,
        "count": event_count(node, user),
        "outside": outside,
        "errors": errors,
        "posted": posted,
        "sent": sent,
    }


def handed(page: Page, node: Platform) -> list[dict[str, Any]]:
    """The POSTs (fetch, beacon) to the API the shop's pages handed to the browser."""
    sent: list[dict[str, Any]] = json.loads(page.evaluate("sessionStorage.getItem('sent') || '[]'"))
    return [s for s in sent if s["method"] == "POST" and s["url"].startswith(node.base)]


def delivered(seen: dict[str, Any], base: str, unload: bool) -> set[tuple[str, str, bool]]:
    """How the calls left: (transport, path, keepalive) of each request to the API."""
    if unload:  # what the pages noted: the browser reports no keepalive request
        return {
            (s["kind"], s["url"].removeprefix(base).partition("?")[0], s["keepalive"])
            for s in seen["sent"]
        }
    return {("request", p.removeprefix(base).partition("?")[0], False) for p in seen["posted"]}


SEGMENT_PATHS = ("/v1/i", "/v1/p", "/v1/t", "/v1/g", "/v1/a")
SEGMENT_DELIVERY = {
    "per-call": {("request", path, False) for path in SEGMENT_PATHS},
    "batching": {("request", "/v1/b", False)},
    "keepalive-unload": {("fetch", path, True) for path in SEGMENT_PATHS},
    # On pagehide the batch goes out with keepalive whatever the configuration.
    "batching-unload": {("fetch", "/v1/b", True)},
}
RUDDER_PATHS = ("/v1/identify", "/v1/page", "/v1/track", "/v1/group", "/v1/alias")
RUDDER_DELIVERY = {
    "per-call": {("request", path, False) for path in RUDDER_PATHS},
    "batching": {("request", "/v1/batch", False)},
    # sendBeacon cannot set headers: the key is in the query, the body text/plain.
    "beacon-unload": {("beacon", "/beacon/v1/batch", True)},
}


@pytest.mark.parametrize(("mode", "unload"), [(m, u) for m, (_, u) in SEGMENT_MODES.items()])
def test_analytics_js_sends_from_another_origin(
    browser: Browser, shop: str, node: Platform, mode: str, unload: bool
) -> None:
    seen = run_mode(browser, shop, node, "segment", mode, unload)
    assert seen["landed"], (repr(seen), node.log_tail())
    assert seen["count"] == CALLS_PER_MODE, seen
    assert seen["outside"] == [] and seen["errors"] == [], seen
    assert delivered(seen, node.base, unload) == SEGMENT_DELIVERY[mode], seen


@pytest.mark.parametrize(("mode", "unload"), [(m, u) for m, (_, u) in RUDDER_MODES.items()])
def test_rudderstack_sends_from_another_origin(
    browser: Browser, shop: str, node: Platform, mode: str, unload: bool
) -> None:
    seen = run_mode(browser, shop, node, "rudder", mode, unload)
    assert seen["landed"], (repr(seen), node.log_tail())
    assert seen["count"] == CALLS_PER_MODE, seen
    assert seen["outside"] == [] and seen["errors"] == [], seen
    assert delivered(seen, node.base, unload) == RUDDER_DELIVERY[mode], seen


def test_the_readme_snippet_is_the_one_tested() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = readme.split("```html\n<script>\n", 1)[1].split("\n</script>\n```", 1)[0]
    for placeholder, tested in (
        ("/js/analytics-next-1.84.3.standalone.js", "/BUNDLE"),
        ("YOUR_WRITE_KEY", "WRITE_KEY"),
        ("https://journeys.example.com", "API"),
        ('"WRITE_KEY", {})', '"WRITE_KEY", OPTIONS)'),
    ):
        snippet = snippet.replace(placeholder, tested)
    assert f"<script>\n{snippet}\n</script>" in SEGMENT_PAGE


def test_every_browser_event_is_stored_exactly_once(node: Platform) -> None:
    """After both SDKs' tests: the node stops, and ClickHouse is counted without FINAL."""
    sent = SENT.get(node.base, [])
    assert len(sent) == len(SEGMENT_MODES) + len(RUDDER_MODES), "run the whole module"
    assert node.stop() == 0, node.log_tail()
    users = ", ".join(f"'{user}'" for user in sent)
    rows = query_chdb_folder(
        node.settings.chdb_path,
        f"SELECT user_id, call_type, event_name, event_id, count() "
        f"FROM {node.settings.clickhouse_database}.events WHERE user_id IN ({users}) "
        "GROUP BY user_id, call_type, event_name, event_id",
    )
    assert all(count == 1 for *_, count in rows), rows
    for user in sent:
        mine = sorted((call, name) for u, call, name, _, _ in rows if u == user)
        assert len(mine) == CALLS_PER_MODE, (user, mine)
        assert [name for call, name in mine if call == "track"] == sorted(TRACKED), mine
        assert sorted(call for call, _ in mine) == sorted(
            ["identify", "page", "group", "alias", *["track"] * len(TRACKED)]
        ), mine
