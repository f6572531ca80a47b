"""/docs and /redoc render every operation in Chromium with nothing sent beyond 127.0.0.1.

The browser reaches no other host (a refusing proxy); what a page asks beyond the API
is listed, and must be refused by its Content-Security-Policy before any request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser

from api.app import create_api
from api.dependencies import AccessKeys, Gateway
from stack.processes import free_port, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[str, dict[str, Any]]]:
    """The API in a thread; the pages and the OpenAPI document need no collaborator."""
    gateway = Gateway(
        sink=None,  # type: ignore[arg-type]
        keys=AccessKeys(frozenset(), frozenset()),
        event_log=None,  # type: ignore[arg-type]
        stages=None,  # type: ignore[arg-type]
    )
    app = create_api(gateway)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, timeout=30, alive=thread.is_alive)
    yield f"http://127.0.0.1:{server.config.port}", app.openapi()
    server.should_exit = True
    thread.join(timeout=30)


def operation_ids(document: dict[str, Any]) -> set[str]:
    return {
        operation["operationId"]
        for methods in document["paths"].values()
        for operation in methods.values()
    }


# How each page marks one rendered operation, and where it names its id.
RENDERED = {
    "/docs": ("#swagger-ui .opblock", "id"),  # id="operations-<tag>-<operationId>"
    "/redoc": ("[data-section-id*='operation/']", "data-section-id"),  # tag/<t>/operation/<id>
}


# What a page asks beyond the API: ReDoc's sidebar logo, from its vendor's CDN.
REFUSED = {"/docs": [], "/redoc": ["https://cdn.redoc.ly/redoc/logo-mini.svg"]}


@pytest.mark.parametrize("path", sorted(RENDERED))
def test_the_docs_render_every_operation_offline(
    api: tuple[str, dict[str, Any]], browser: Browser, path: str
) -> None:
    base, document = api
    expected = operation_ids(document)
    context = browser.new_context()
    requested: list[str] = []
    errors: list[str] = []
    failed: dict[str, str | None] = {}
    context.on("request", lambda request: requested.append(request.url))
    context.on("requestfailed", lambda request: failed.update({request.url: request.failure}))
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}{path}")
    selector, attribute = RENDERED[path]
    # Polled from here, not by wait_for_function: its predicate is evaluated as a
    # string in the page, which the pages' CSP (no 'unsafe-eval') refuses.
    rendered = page.locator(selector)
    deadline = time.monotonic() + 60
    while rendered.count() < len(expected):
        assert time.monotonic() < deadline, f"{path}: {rendered.count()} of {len(expected)}"
        page.wait_for_timeout(200)
    names = page.eval_on_selector_all(
        selector, f"(nodes) => nodes.map((n) => n.getAttribute({attribute!r}))"
    )
    context.close()
    assert {name for name in names if any(name.endswith(i) for i in expected)} == set(names)
    assert all(any(name.endswith(i) for name in names) for i in expected), (expected, names)
    outside = [url for url in requested if not url.startswith((f"{base}/", f"blob:{base}/"))]
    assert outside == REFUSED[path], outside
    # Refused by the page's Content-Security-Policy: never sent, and said so on the console.
    assert all(failed[url] == "csp" for url in outside), failed
    assert [
        e for e in errors if not any(url in e and "Content Security Policy" in e for url in outside)
    ] == []
