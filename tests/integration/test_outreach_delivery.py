"""Delivery channels against real local servers: HTTP receivers and an aiosmtpd server."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from stack.processes import free_port
from streams.outreach.channels import post_webhook, send_email, sign, verify
from streams.outreach.worker import retry_delay

TRIGGER = {
    "trigger_id": "t-1",
    "rule": "abandoned_cart",
    "customer_id": "c1",
    "email": "c1@example.com",
    "data": {"value": 40.0},
}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path == "/slow":
                time.sleep(1.5)
            status = {"/ok": 200, "/busy": 503, "/limit": 429, "/bad": 400, "/slow": 200}
            self.send_response(status[self.path])
            if self.path == "/limit":
                self.send_header("Retry-After", "7")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    running = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=running.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{running.server_address[1]}"
    running.shutdown()


def attempt(url: str, timeout_s: float = 5) -> Any:
    async def go() -> Any:
        async with httpx.AsyncClient() as client:
            return await post_webhook(client, url, "secret", TRIGGER, 1, timeout_s)

    return asyncio.run(go())


def test_answers_are_classified_for_retry(server: str) -> None:
    assert attempt(f"{server}/ok").ok
    busy = attempt(f"{server}/busy")
    assert not busy.ok and busy.retryable and busy.error.startswith("HTTP 503")
    limited = attempt(f"{server}/limit")
    assert limited.retryable and limited.retry_after_s == 7
    refused = attempt(f"{server}/bad")
    assert not refused.ok and not refused.retryable
    slow = attempt(f"{server}/slow", timeout_s=0.3)
    assert slow.retryable and slow.error.startswith("timeout")
    closed = attempt(f"http://127.0.0.1:{free_port()}/")
    assert closed.retryable and not closed.ok


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    delays = [retry_delay(n, 1.0, 60.0, None) for n in range(8)]
    for n, delay in enumerate(delays):
        ceiling = min(60.0, 2.0**n)
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(retry_delay(3, 1.0, 60.0, None), 6) for _ in range(20)}) > 1  # jitter
    assert retry_delay(0, 1.0, 60.0, 30.0) >= 30.0
    assert retry_delay(0, 1.0, 60.0, 3600.0) == 60.0  # bounded by the maximum


def test_signature_verifies_with_the_readme_snippet() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = re.search(
        r"A receiver verifies a request like this:\n\n```python\n(.*?)```", readme, re.S
    )
    assert snippet is not None
    namespace: dict[str, Any] = {}
    exec(snippet.group(1), namespace)
    body = b'{"trigger_id": "t-1"}'
    header = sign("secret", int(time.time()), body)
    assert namespace["verify"]("secret", header, body)
    assert not namespace["verify"]("secret", header, body + b" ")
    assert not namespace["verify"]("other", header, body)
    assert verify("secret", header, body)
    assert not verify("secret", sign("secret", int(time.time()) - 3600, body), body)


def test_email_goes_to_a_real_smtp_server() -> None:
    received: list[Any] = []

    class Box:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(message_from_bytes(envelope.content))
            return "250 OK"

    port = free_port()
    controller = Controller(Box(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        sent = asyncio.run(send_email("127.0.0.1", port, "shop@example.com", TRIGGER, 5))
        assert sent.ok
        no_address = asyncio.run(
            send_email("127.0.0.1", port, "shop@example.com", {**TRIGGER, "email": None}, 5)
        )
        assert not no_address.ok and not no_address.retryable
    finally:
        controller.stop()
    unreachable = asyncio.run(send_email("127.0.0.1", free_port(), "s@example.com", TRIGGER, 2))
    assert unreachable.retryable
    assert len(received) == 1
    assert received[0]["To"] == "c1@example.com" and received[0]["Idempotency-Key"] == "t-1"
