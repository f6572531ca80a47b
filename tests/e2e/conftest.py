"""What the browser tests share: a Chromium that reaches nothing but 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import cast

import pytest
from playwright.sync_api import Browser, ProxySettings, sync_playwright

from tests.e2e.test_dashboard import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Nothing may leave 127.0.0.1: every other host goes through a proxy that refuses
    # connections (a bound socket that never listens). Not Playwright's request
    # interception (context.route): it drops a keepalive fetch issued on pagehide,
    # which is exactly what the unload modes send.
    with socket.socket() as closed, sync_playwright() as playwright:
        closed.bind(("127.0.0.1", 0))
        proxy = {"server": f"http://127.0.0.1:{closed.getsockname()[1]}", "bypass": "127.0.0.1"}
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, proxy=cast(ProxySettings, proxy)
        )
        yield launched
        launched.close()
