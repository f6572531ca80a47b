"""The lifecycle rules migrated to flows, through a running node on PostgreSQL: real
broker, one node (the journey event store and the outreach store on the session's
embedded PostgreSQL), a real receiver that verifies signatures.

Every lifecycle rule with delays of seconds (review request, satisfaction
survey, ticket escalation, repurchase reminder, win-back, birthday, high-value
welcome, abandoned cart), the flows file what ``journeys flows migrate-rules``
writes from them: every flow sends once to whom its rule was written for, at the
rule's instants (the welcome stamped by the order that earned it, through the
worker's RFM scan as a segment input; the repurchase one cycle times the factor
after the last order; the birthday at the top of the hour), and a history import
touching every flow sends nothing.

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
import tomllib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from journeys.flows.migration import flows_from_rules, flows_toml
from journeys.outreach_rules import parse_rules
from stack.processes import wait_until
from stack.settings import Settings
from tests.integration.test_outreach_triggers import Receiver, admin, start_node, track
from tests.integration.test_outreach_triggers import verify_signature as verified
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


def test_the_migrated_lifecycle_flows_send_as_the_rules_did(
    settings: Settings, postgres_dsn: str, lifecycle_receiver: Receiver, tmp_path: Path
) -> None:
    receiver = lifecycle_receiver
    start = _now()
    top_of_hour = start.replace(minute=0, second=0)
    migrated = flows_from_rules(parse_rules(tomllib.loads(rules(start.hour))))
    node = start_node(
        settings,
        flows_toml(migrated),
        tmp_path,
        event_store="postgres",
        postgres_dsn=postgres_dsn,
        trigger_grace_s=7200.0,  # the birthday's send time is the top of this hour
        rfm_scan_s=0.5,
    )
    try:
        hook = {"url": f"{receiver.base}/ok", "secret": SECRET}
        assert admin(node, "POST", "/v1/outreach/webhooks", json=hook).status_code == 201
        birthday = f"1990-{start:%m-%d}"
        for customer in ("c-review-1", "c-review-2"):
            _orders(node, customer, [_now()])
        imported = {"context": {"historical": True}}
        for n, (event, props) in enumerate(
            [
                ("Ticket Created", {"ticket_id": "h1"}),
                ("Product Added", {"product_id": "p9", "price": 5}),
            ]
        ):
            body = {"userId": "c-hist", "event": event, "messageId": f"c-hist-{n}"}
            track(node, {**body, "properties": props, **imported})
        identify(node, "c-hist", birthday, top_of_hour - timedelta(minutes=1), **imported)
        hist_at = _now()
        _orders(node, "c-hist", [hist_at - timedelta(seconds=s) for s in (4, 3, 2, 1)], **imported)
        rep_at = _now()
        vip_at = rep_at + timedelta(seconds=3)  # the most recent orders of all
        _orders(node, "c-vip", [vip_at - timedelta(seconds=s) for s in (2, 1, 0)])
        _orders(node, "c-repurchase", [rep_at - timedelta(seconds=1), rep_at])
        for n, (customer, event, props) in enumerate(
            [
                ("c-survey", "Ticket Created", {"ticket_id": "t1"}),
                ("c-survey", "Ticket Resolved", {"ticket_id": "t1"}),
                ("c-escalate", "Ticket Created", {"ticket_id": "t9"}),
                ("c-cart", "Product Added", {"product_id": "p1", "price": 20, "quantity": 2}),
            ]
        ):
            body = {"userId": customer, "event": event, "messageId": f"life-{n}"}
            track(node, {**body, "properties": props})
        identify(node, "c-birthday", birthday, top_of_hour - timedelta(minutes=1))

        expected = Counter(
            {
                ("c-review-1", "flow:review_request"): 1,
                ("c-review-2", "flow:review_request"): 1,
                ("c-repurchase", "flow:review_request"): 1,
                ("c-repurchase", "flow:repurchase_reminder"): 1,
                ("c-repurchase", "flow:win_back"): 1,
                ("c-vip", "flow:review_request"): 1,
                ("c-vip", "flow:repurchase_reminder"): 1,
                ("c-vip", "flow:win_back"): 1,
                ("c-vip", "flow:high_value_welcome"): 1,
                ("c-survey", "flow:satisfaction_survey"): 1,
                ("c-escalate", "flow:ticket_escalation"): 1,
                ("c-birthday", "flow:birthday"): 1,
                ("c-cart", "flow:abandoned_cart"): 1,
            }
        )

        def received() -> Counter[tuple[str, str]]:
            payloads = [json.loads(r["body"]) for r in receiver.seen("/ok", status=200)]
            return Counter((p["customer_id"], p["rule"]) for p in payloads)

        assert wait_until(
            lambda: set(received()) >= set(expected), timeout=90, alive=lambda: True, interval=0.2
        ), (received(), node.log_tail())
        time.sleep(3)  # room for a double or a late history message, were there one
        assert received() == expected

        sent: dict[tuple[str, str], dict[str, Any]] = {}
        for request in receiver.seen("/ok"):
            assert verified(SECRET, request["signature"], request["body"])
            payload = json.loads(request["body"])
            assert request["key"] == payload["trigger_id"]
            sent[(payload["customer_id"], payload["rule"])] = payload

        def due(customer: str, flow: str) -> datetime:
            return datetime.fromisoformat(sent[(customer, f"flow:{flow}")]["due_at"])

        # Entered at the order that earned the place: event time decides.
        assert due("c-vip", "high_value_welcome") == vip_at
        assert "3 orders, 150.0" in sent[("c-vip", "flow:high_value_welcome")]["body"]
        for customer, last in (("c-repurchase", rep_at), ("c-vip", vip_at)):
            # One purchase cycle (1 s) times the factor (4) after the last order.
            assert due(customer, "repurchase_reminder") == last + timedelta(seconds=4)
            assert due(customer, "win_back") == last + timedelta(seconds=4)
        assert due("c-birthday", "birthday") == top_of_hour
        assert "t9" in sent[("c-escalate", "flow:ticket_escalation")]["body"]
        assert "1 items (40.0)" in sent[("c-cart", "flow:abandoned_cart")]["body"]
        listed = admin(node, "GET", "/v1/outreach/triggers", params={"customer_id": "c-hist"})
        assert listed.json()["triggers"] == []
        # The messages are in PostgreSQL, with their deliveries, once each.
        with psycopg.connect(postgres_dsn) as connection:
            rows = connection.execute("SELECT customer_key, rule_id FROM triggers").fetchall()
            delivered = connection.execute(
                "SELECT count(*) FROM trigger_deliveries WHERE state = 'delivered'"
            ).fetchone()
        assert Counter((str(c), str(r)) for c, r in rows) == expected
        assert delivered is not None and delivered[0] == sum(expected.values())
    finally:
        node.stop()
