"""Abandoned-cart sends end to end: real broker, real node, real HTTP receivers, real SMTP.

One node drives every scenario with its own customers, on flows: the abandoned
cart as a date anchor on the cart's last activity (a purchase stamped before the
due time cancels it, however late it arrives), beside two lifecycle flows on the
same engine. Receivers:
``/ok`` always accepts, ``/flaky`` answers 503 twice per trigger id and then
accepts, ``/dead`` always answers 500 (until the test revives it to check
re-delivery). The e-mail channel goes to an aiosmtpd server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord

from events.segment import TrackCall, to_tracked_event
from stack.cli import main as cli_main
from stack.processes import free_port, wait_until
from stack.settings import Settings
from tests.node_process import NodeProcess, started_node

pytestmark = pytest.mark.integration

DELAY_S = 5.0
BACKLOG = 3000
# The cart's contents and value at the due time, from the customer's facts.
CART_BODY = (
    "{% for l in data.cart.lines %}{{ l.product_id }} {{ l.name }} x{{ l.quantity }} "
    "at {{ l.price }}; {% endfor %}value {{ data.cart.value }}"
)
FLOWS = f"""
[flows.abandoned_cart]
name = "Abandoned cart"
version = 1
reentry = "always"
frequency_cap = "1d"
exit = [{{ event = "Order Completed" }}]

[flows.abandoned_cart.nodes.due]
kind = "date_entry"
anchor = "cart"
after = "{DELAY_S:g}s"
next = "send_webhook"

[flows.abandoned_cart.nodes.send_webhook]
kind = "send"
channel = "webhook"
body = {json.dumps(CART_BODY)}
next = "send_email"

[flows.abandoned_cart.nodes.send_email]
kind = "send"
channel = "email"
subject = "Your cart is waiting"
body = "You left {{{{ data.cart.lines | length }}}} items in your cart."

[flows.satisfaction_survey]
name = "Satisfaction survey"
version = 1
reentry = "always"

[flows.satisfaction_survey.nodes.due]
kind = "date_entry"
anchor = "event"
event = "Ticket Resolved"
after = "2s"
next = "send_webhook"

[flows.satisfaction_survey.nodes.send_webhook]
kind = "send"
channel = "webhook"
body = "ticket {{{{ data.ticket_id }}}}"

[flows.win_back]
name = "Win-back"
version = 1
reentry = "always"

[flows.win_back.nodes.due]
kind = "date_entry"
anchor = "inactivity"
stage = "loyalty"
after = "3s"
next = "send_webhook"

[flows.win_back.nodes.send_webhook]
kind = "send"
channel = "webhook"
body = "we miss you"
"""


class Receiver:
    """A real local HTTP server that records every webhook request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failures: Counter[str] = Counter()
        self.dead_revived = False
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                key = self.headers.get("Idempotency-Key", "")
                with receiver.lock:
                    status = receiver.answer(self.path, key)
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "status": status,
                            "key": key,
                            "signature": self.headers.get("X-Journeys-Signature", ""),
                            "body": body,
                            "at": time.time(),
                        }
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()

    def answer(self, path: str, key: str) -> int:
        if path == "/flaky":
            self.failures[key] += 1
            return 503 if self.failures[key] <= 2 else 200
        if path == "/dead":
            return 200 if self.dead_revived else 500
        return 200

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def seen(self, path: str, customer: str | None = None, status: int | None = None) -> list:
        with self.lock:
            return [
                r
                for r in self.requests
                if r["path"] == path
                and (customer is None or json.loads(r["body"])["customer_id"] == customer)
                and (status is None or r["status"] == status)
            ]


class Mailbox:
    """aiosmtpd handler keeping every message."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


def verify_signature(secret: str, header: str, body: bytes) -> bool:
    """The receiver side, as the README shows it."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(
        secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    fresh = abs(time.time() - int(parts["t"])) < 300
    return fresh and hmac.compare_digest(expected, parts["v1"])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def start_node(settings: Settings, flows: str, tmp_path: Path, **updates: Any) -> NodeProcess:
    """A started node with ``flows`` as its flows file and ``updates`` to its settings."""
    flows_file = tmp_path / "flows.toml"
    flows_file.write_text(flows)
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text("")  # no rules file to migrate: only these flows send
    update = {"flows_file": flows_file, "trigger_rules_file": str(rules_file), **updates}
    return started_node(settings.model_copy(update=update))


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


def admin(node: NodeProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {node.settings.admin_key}"}
    return httpx.request(method, f"{node.base}{path}", headers=headers, timeout=30, **kwargs)


def track(node: NodeProcess, body: dict[str, Any]) -> None:
    response = httpx.post(
        f"{node.base}/v1/track", json=body, auth=(node.settings.write_key, ""), timeout=30
    )
    assert response.status_code == 200, response.text


def add_to_cart(node: NodeProcess, customer: str, n: int, **extra: Any) -> None:
    body = {
        "userId": customer,
        "event": "Product Added",
        "messageId": f"{customer}-add-{n}",
        "properties": {"product_id": f"p{n}", "price": 20, "quantity": 2, "name": "Mug"},
        **extra,
    }
    track(node, body)


def triggers_of(node: NodeProcess, customer: str) -> list[dict[str, Any]]:
    response = admin(node, "GET", "/v1/outreach/triggers", params={"customer_id": customer})
    assert response.status_code == 200, response.text
    return list(response.json()["triggers"])


def webhook_triggers(node: NodeProcess, customer: str) -> list[dict[str, Any]]:
    """The customer's messages on the webhook channel (a flow sends one per channel)."""
    return [t for t in triggers_of(node, customer) if t["channels"] == ["webhook"]]


def timers_of(node: NodeProcess, customer: str) -> list[dict[str, Any]]:
    response = admin(node, "GET", "/v1/outreach/timers", params={"customer_id": customer})
    assert response.status_code == 200, response.text
    return list(response.json()["timers"])


def reminder_due(node: NodeProcess, customer: str) -> datetime | None:
    """When the abandoned-cart flow's wait ends, once the cart entered it (before, the
    customer's shared memory waits for the clock to reach the cart: ``flow:``)."""
    waits = [t for t in timers_of(node, customer) if t["rule"] == "flow:abandoned_cart"]
    return datetime.fromisoformat(waits[0]["due_at"]) if waits else None


def topic_records(settings: Settings, topic: str) -> list[ConsumerRecord]:
    """Every record on ``topic`` so far, read outside any consumer group."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
        enable_auto_commit=False,
    )
    try:
        return list(consumer)
    finally:
        consumer.close()


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    records = topic_records(settings, settings.triggers_dead_letter_topic)
    return [json.loads(record.value) for record in records]


def test_abandoned_carts_send_once_signed_retried_dead_lettered_and_survive_a_kill(
    settings: Settings,
    receiver: Receiver,
    mailbox: tuple[Mailbox, int],
    tmp_path: Path,
    artifacts_dir: Path,
) -> None:
    box, smtp_port = mailbox
    node = start_node(
        settings,
        FLOWS,
        tmp_path,
        trigger_grace_s=180.0,
        outreach_backoff_base_s=0.3,
        outreach_backoff_max_s=2.0,
        outreach_retry_horizon_s=4.0,
        outreach_timeout_s=3.0,
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
    )
    settings = node.settings
    try:
        # Endpoints: one through the CLI (an HTTP client of the API), two through the API.
        secrets: dict[str, str] = {}
        assert (
            cli_main(
                [
                    "outreach",
                    "--url",
                    node.base,
                    "--admin-key",
                    settings.admin_key,
                    "webhooks",
                    "add",
                    f"{receiver.base}/ok",
                    "--secret",
                    "ok-secret-0123456789",
                ]
            )
            == 0
        )
        secrets["/ok"] = "ok-secret-0123456789"
        for path in ("/flaky", "/dead"):
            created = admin(
                node, "POST", "/v1/outreach/webhooks", json={"url": receiver.base + path}
            )
            assert created.status_code == 201, created.text
            secrets[path] = created.json()["secret"]
        # The rules' routes are gone, naming the flows API (after authentication).
        unauthorised = httpx.get(f"{node.base}/v1/outreach/rules", timeout=30)
        assert unauthorised.status_code == 401
        gone = admin(node, "PUT", "/v1/outreach/rules/vip", json={"trigger": "high_value"})
        assert gone.status_code == 410 and "/v1/flows" in gone.json()["errors"][0]["message"]
        bad = admin(node, "POST", "/v1/outreach/webhooks", json={"url": "ftp://x"})
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "url"
        assert (
            admin(node, "GET", "/v1/outreach/webhooks").json()["webhooks"][0]["url"].endswith("/ok")
        )

        # --- phase A: normal operation ---------------------------------------------------
        httpx.post(
            f"{node.base}/v1/identify",
            json={"userId": "c-abandon", "messageId": "i1", "traits": {"email": "a@example.com"}},
            auth=(settings.write_key, ""),
            timeout=30,
        ).raise_for_status()
        add_to_cart(node, "c-abandon", 1)
        add_to_cart(node, "c-bought", 1)
        # Bought one second before the delay ends, sent on its own clock so the calls
        # below, slow on a loaded machine, cannot push the order past the due time.
        carted = time.time()
        ordered: list[float] = []

        def order() -> None:
            track(
                node,
                {
                    "userId": "c-bought",
                    "event": "Order Completed",
                    "messageId": "c-bought-order",
                    "properties": {"revenue": 40},
                },
            )
            ordered.append(time.time())

        buying = threading.Timer(max(0.0, carted + DELAY_S - 1 - time.time()), order)
        buying.start()
        bench = [f"c-bench-{i}" for i in range(8)]
        for customer in bench:
            add_to_cart(node, customer, 1)
        # An import: flagged historical, stamped now.
        add_to_cart(node, "c-hist", 1, context={"historical": True})
        # A backfill of a cart abandoned three days ago.
        old = (datetime.now(UTC) - timedelta(days=3)).isoformat()
        add_to_cart(node, "c-old", 1, timestamp=old)
        # Lifecycle flows on the same engine: a resolved ticket; a loyal customer gone quiet
        # (loyalty comes from the journey worker's stage changes).
        for n, (customer, event, props) in enumerate(
            [
                ("c-ticket", "Ticket Created", {"ticket_id": "t1"}),
                ("c-ticket", "Ticket Resolved", {"ticket_id": "t1"}),
                ("c-loyal", "Order Completed", {"revenue": 10}),
                ("c-loyal", "Order Completed", {"revenue": 12}),
            ]
        ):
            track(
                node,
                {"userId": customer, "event": event, "messageId": f"life-{n}", "properties": props},
            )
        buying.join()
        assert ordered and ordered[0] < carted + DELAY_S, "the order was not answered in time"

        def delivered_everywhere(customer: str) -> bool:
            return bool(receiver.seen("/ok", customer, 200)) and bool(
                receiver.seen("/flaky", customer, 200)
            )

        assert wait_until(
            lambda: all(
                delivered_everywhere(c) for c in ["c-abandon", "c-ticket", "c-loyal", *bench]
            ),
            timeout=60,
            alive=lambda: True,
            interval=0.2,
        ), node.log_tail()
        for customer, flow, body in (
            ("c-ticket", "satisfaction_survey", "ticket t1"),
            ("c-loyal", "win_back", "we miss you"),
        ):
            [life] = receiver.seen("/ok", customer, 200)
            assert (json.loads(life["body"])["rule"], json.loads(life["body"])["body"]) == (
                f"flow:{flow}",
                body,
            )
        first = receiver.seen("/ok", "c-abandon", 200)[0]
        payload = json.loads(first["body"])
        assert payload["rule"] == "flow:abandoned_cart" and payload["customer_id"] == "c-abandon"
        # The cart's contents and value at the due time, from the customer's facts.
        assert payload["body"] == "p1 Mug x2 at 20.0; value 40.0"
        assert first["key"] == payload["trigger_id"]
        for path in ("/ok", "/flaky", "/dead"):
            for request in receiver.seen(path):
                assert verify_signature(secrets[path], request["signature"], request["body"])
        # Not before the delay (event time + delay, on the wall clock).
        due = datetime.fromisoformat(payload["due_at"]).timestamp()
        assert first["at"] >= due

        # The dead receiver ends in the dead letter, without holding the others up.
        assert wait_until(
            lambda: (
                all(
                    d["state"] == "dead"
                    for t in webhook_triggers(node, "c-abandon")
                    for d in t["deliveries"]
                    if "/dead" in _endpoint_url(node, d["endpoint_id"])
                )
                and len(webhook_triggers(node, "c-abandon")) == 1
            ),
            timeout=30,
            alive=lambda: True,
            interval=0.5,
        )
        # The dead endpoint did not hold the others up: the good one had it first.
        assert first["at"] < max(r["at"] for r in receiver.seen("/dead", "c-abandon"))
        # Cart activity after the send: the frequency cap (1 day) allows no second one.
        add_to_cart(node, "c-abandon", 2)
        time.sleep(DELAY_S + 3)

        # --- phase B: SIGKILL between scheduling and firing; a late purchase ----------------
        add_to_cart(node, "c-kill", 1)
        add_to_cart(node, "c-late", 1)
        scheduled_at = time.time()
        assert wait_until(
            lambda: (
                reminder_due(node, "c-kill") is not None
                and reminder_due(node, "c-late") is not None
            ),
            timeout=DELAY_S - 1,
            alive=lambda: True,
            interval=0.1,
        ), "the flows' waits were not persisted before they were due"
        late_due = reminder_due(node, "c-late")
        assert late_due is not None
        node.kill()
        assert not receiver.seen("/ok", "c-kill"), "fired before the kill: the test proves nothing"
        # While the worker is down, the purchase reaches the log: stamped a second before
        # the due time, arriving after it (the gateway's envelope, as it would produce it).
        time.sleep(max(0.0, scheduled_at + DELAY_S + 1 - time.time()))
        call = TrackCall.model_validate(
            {
                "userId": "c-late",
                "event": "Order Completed",
                "messageId": "c-late-order",
                "timestamp": (late_due - timedelta(seconds=1)).isoformat(),
                "properties": {"revenue": 40},
            }
        )
        late = to_tracked_event(call, received_at=datetime.now(UTC))
        assert late.received_at > late_due > late.timestamp
        # Inside the wait: after the cart that entered it (an order before the cart ends nothing).
        assert late.timestamp > late_due - timedelta(seconds=DELAY_S)
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
        # A backlog ahead of the purchase on its partition: the restarted worker needs
        # several batches to reach it, and no wait of that partition may end meanwhile.
        for n in range(BACKLOG):
            browse = TrackCall.model_validate(
                {
                    "userId": "c-late",
                    "event": "Product Viewed",
                    "messageId": f"c-late-view-{n}",
                    "timestamp": (late_due - timedelta(seconds=2)).isoformat(),
                }
            )
            viewed = to_tracked_event(browse, received_at=datetime.now(UTC))
            producer.send(settings.events_topic, key=b"c-late", value=viewed.to_json())
        producer.send(settings.events_topic, key=b"c-late", value=late.to_json()).get(timeout=30)
        producer.close()
        node.start()
        assert wait_until(
            lambda: bool(receiver.seen("/ok", "c-kill", 200)),
            timeout=90,
            alive=lambda: True,
            interval=0.2,
        ), node.log_tail()
        time.sleep(3)  # room for a double, were there one

        # --- outcomes -------------------------------------------------------------------
        for customer in ["c-abandon", "c-kill", *bench]:
            accepted = receiver.seen("/ok", customer, 200)
            assert len(accepted) == 1, (customer, len(accepted))
            assert len(webhook_triggers(node, customer)) == 1
            flaky = receiver.seen("/flaky", customer)
            assert [r["status"] for r in flaky] == [503, 503, 200], customer
            assert len({r["key"] for r in flaky}) == 1
        for customer in ("c-bought", "c-late", "c-hist", "c-old"):
            assert not receiver.seen("/ok", customer), customer
            assert triggers_of(node, customer) == [], customer
            assert timers_of(node, customer) == [], customer

        letters = dead_letters(settings)
        abandon_id = payload["trigger_id"]
        dead_for_abandon = [x for x in letters if x["trigger_id"] == abandon_id]
        assert len(dead_for_abandon) == 1
        assert dead_for_abandon[0]["last_error"].startswith("HTTP 500")
        assert dead_for_abandon[0]["attempts"] >= 2

        # E-mail: one message to the customer with an address; the others are skipped.
        mails = [m for m in box.messages if m["To"] == "a@example.com"]
        [mailed] = [t for t in triggers_of(node, "c-abandon") if t["channels"] == ["email"]]
        assert len(mails) == 1 and mailed["trigger_id"] in mails[0]["Message-ID"]
        assert mails[0].get_payload().strip() == "You left 1 items in your cart."
        listed = triggers_of(node, "c-kill")
        assert {d["state"] for t in listed for d in t["deliveries"] if d["channel"] == "email"} == {
            "skipped"
        }

        # Re-deliver the dead-lettered trigger once the receiver is back (through the CLI).
        receiver.dead_revived = True
        assert (
            cli_main(
                [
                    # The connection flags after the verb too, as for every HTTP command.
                    "outreach",
                    "triggers",
                    "redeliver",
                    abandon_id,
                    "--url",
                    node.base,
                    "--admin-key",
                    settings.admin_key,
                ]
            )
            == 0
        )
        assert wait_until(
            lambda: len(receiver.seen("/dead", "c-abandon", 200)) == 1,
            timeout=30,
            alive=lambda: True,
            interval=0.2,
        )
        missing = admin(node, "POST", "/v1/outreach/triggers/nope/redeliver")
        assert missing.status_code == 404
        assert missing.json()["errors"][0]["field"] == "trigger_id"

        # Lateness of firing (fired minus due, wall clock), measured, not asserted.
        lateness = [webhook_triggers(node, c)[0]["lateness_ms"] for c in ["c-abandon", *bench]]
        # Receiver side: accepted by /ok minus the due time (event time + delay).
        at_receiver = [
            round(
                (
                    receiver.seen("/ok", c, 200)[0]["at"]
                    - datetime.fromisoformat(webhook_triggers(node, c)[0]["due_at"]).timestamp()
                )
                * 1000,
                1,
            )
            for c in ["c-abandon", *bench]
        ]
        report = {
            "received_after_due_ms": at_receiver,
            "lateness_ms": lateness,
            "median_ms": statistics.median(lateness),
            "max_ms": max(lateness),
            "after_kill_ms": webhook_triggers(node, "c-kill")[0]["lateness_ms"],
        }
        (artifacts_dir / "trigger-lateness.json").write_text(json.dumps(report, indent=2))
        print("trigger lateness:", report)
    finally:
        node.stop()


def _endpoint_url(node: NodeProcess, endpoint_id: str) -> str:
    hooks = admin(node, "GET", "/v1/outreach/webhooks").json()["webhooks"]
    return next((h["url"] for h in hooks if h["id"] == endpoint_id), "")
