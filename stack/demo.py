"""Demo traffic: the synthetic storefront, sent live to a running platform over HTTP.

``journeys up --demo`` also runs the flows of :data:`FLOWS_FILE` (the canonical
abandoned cart, reminding after seconds, not an hour) and the outreach rules of
:data:`RULES_FILE` (read through the migration into flows) and subscribes a local
:class:`~simulation.webhook_inbox.WebhookInbox`, so fired triggers have a
delivery state. Production defaults are untouched: only the demo does this.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from simulation.storefront import Storefront
from simulation.webhook_inbox import WebhookInbox
from stack.settings import Settings

RULES_FILE = Path(__file__).resolve().parent / "demo_rules.toml"
FLOWS_FILE = Path(__file__).resolve().parent / "demo_flows.toml"
# A month of history from a few hundred shoppers: enough for retention cohorts,
# times to convert and RFM spread, sent in seconds.
HISTORY_DAYS = 30
HISTORY_SHOPPERS = 400


def live_calls(seed: int, shoppers: int) -> Iterator[dict[str, Any]]:
    """Storefront calls without end: one storefront after another, seed after seed."""
    for offset in itertools.count():
        yield from Storefront(seed=seed + offset, shoppers=shoppers, live=True).calls()


def history_calls(seed: int, shoppers: int, days: int, now: datetime) -> Iterator[dict[str, Any]]:
    """The storefront's last ``days`` days before ``now``, marked as imported history.

    History gives the retention grid its cohorts, the funnel its times to convert
    and RFM its spread; marked historical (``context.historical``), it fires no
    outreach, as a real import would not.
    """
    start = now - timedelta(days=days)
    for call in Storefront(seed=seed, shoppers=shoppers, start=start, days=days).calls():
        call["context"]["historical"] = True
        yield call


def send_history(
    base_url: str, write_key: str, calls: Iterator[dict[str, Any]], batch_size: int = 100
) -> tuple[int, int]:
    """POST ``calls`` to /v1/batch, ``batch_size`` at a time; returns (accepted, rejected)."""
    accepted = rejected = 0
    with httpx.Client(base_url=base_url, auth=(write_key, ""), timeout=60) as client:
        while chunk := list(itertools.islice(calls, batch_size)):
            try:
                response = client.post("/v1/batch", json={"batch": chunk})
            except httpx.HTTPError:
                rejected += len(chunk)
                continue
            # A 400 with "accepted" is a partial batch: its valid items went in.
            body = response.json() if response.status_code in (200, 400) else {}
            taken = len(chunk) if response.status_code == 200 else int(body.get("accepted", 0))
            accepted += taken
            rejected += len(chunk) - taken
    return accepted, rejected


def send(
    base_url: str,
    write_key: str,
    rate: float,
    calls: Iterator[dict[str, Any]],
    limit: int | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """POST calls to /v1/<type> at ``rate`` per second; returns (accepted, rejected).

    The calls are stamped like a browser SDK's, so the gateway's clock-skew
    correction places them at the moment they are sent.
    """
    accepted = rejected = 0
    started = time.monotonic()
    with httpx.Client(base_url=base_url, auth=(write_key, ""), timeout=30) as client:
        for index, call in enumerate(calls):
            if (limit is not None and index >= limit) or (stop is not None and stop.is_set()):
                break
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                response = client.post(f"/v1/{call['type']}", json=call)
            except httpx.HTTPError:
                rejected += 1
                continue
            if response.status_code == 200:
                accepted += 1
            else:
                rejected += 1
            if on_progress is not None and (index + 1) % 100 == 0:
                on_progress(accepted, rejected)
    return accepted, rejected


def demo_settings(settings: Settings) -> Settings:
    """``settings`` with the demo's flows and outreach rules, each unless configured."""
    update: dict[str, Any] = {}
    if not settings.trigger_rules_file:
        update["trigger_rules_file"] = str(RULES_FILE)
    if settings.flows_file is None:
        update["flows_file"] = FLOWS_FILE
    return settings.model_copy(update=update)


def subscribe_inbox(base_url: str, admin_key: str, inbox: WebhookInbox) -> str:
    """Subscribe ``inbox`` to every rule, replacing earlier demo inboxes; the endpoint id."""
    path = inbox.url.split("/", 3)[3]
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        listed = client.get("/v1/outreach/webhooks")
        listed.raise_for_status()
        # A previous demo's inbox (another port, now closed) would only collect retries.
        for endpoint in listed.json()["webhooks"]:
            if endpoint["url"].startswith("http://127.0.0.1:") and endpoint["url"].endswith(path):
                client.delete(f"/v1/outreach/webhooks/{endpoint['id']}").raise_for_status()
        created = client.post("/v1/outreach/webhooks", json={"url": inbox.url, "rules": []})
        created.raise_for_status()
        return str(created.json()["id"])


class DemoRun:
    """Demo traffic flowing to a node, and the webhook inbox subscribed to its triggers."""

    def __init__(self, base_url: str, settings: Settings, rate: float) -> None:
        self.base_url = base_url
        self.admin_key = settings.admin_key
        self.inbox = WebhookInbox()
        self.endpoint_id = subscribe_inbox(base_url, settings.admin_key, self.inbox)
        self._stop = threading.Event()
        flows = settings.flows_file or FLOWS_FILE
        print(
            f"demo traffic: {rate:g} storefront calls/s; outreach flows {flows} "
            f"(abandoned carts remind after seconds); webhooks go to {self.inbox.url}",
            flush=True,
        )
        self._write_key, self._rate = settings.write_key, rate
        threading.Thread(target=self._feed, daemon=True).start()

    def _feed(self) -> None:
        # History only into an empty platform: a second `up --demo` would re-send it
        # with other timestamps, past the dedup window once a day has gone by.
        if not self._has_customers():
            accepted, rejected = send_history(
                self.base_url,
                self._write_key,
                history_calls(
                    seed=3, shoppers=HISTORY_SHOPPERS, days=HISTORY_DAYS, now=datetime.now(UTC)
                ),
            )
            print(
                f"demo history: {accepted} calls of the last {HISTORY_DAYS} days "
                f"({rejected} rejected)",
                flush=True,
            )
        send(
            self.base_url,
            self._write_key,
            self._rate,
            live_calls(seed=7, shoppers=200),
            stop=self._stop,
        )

    def _has_customers(self) -> bool:
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        response = httpx.get(f"{self.base_url}/v1/stages", headers=headers, timeout=30)
        response.raise_for_status()
        return int(response.json()["total"]) > 0

    def stop(self) -> None:
        """Stop the traffic and unsubscribe the inbox (best effort: the node may be gone)."""
        self._stop.set()
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        # Should the node be gone, the next demo replaces the endpoint (subscribe_inbox).
        with contextlib.suppress(httpx.HTTPError):
            url = f"{self.base_url}/v1/outreach/webhooks/{self.endpoint_id}"
            httpx.delete(url, headers=headers, timeout=5)
        self.inbox.close()
