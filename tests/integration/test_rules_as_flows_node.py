"""The lifecycle rules migrated to flows, through a running node and nothing else: real
broker, one node (SQLite), a real receiver that verifies signatures; no rules.

test_outreach_lifecycle.py's scenario and rules (delays of seconds), the rules file
empty and the flows file what ``journeys flows migrate-rules`` writes from those
rules: every flow sends once to whom its rule fired for, at the rule's instants
(the welcome stamped by the order that earned it, through the worker's RFM scan
as a segment input; the repurchase one cycle times the factor after the last
order; the birthday at the top of the hour), and the history import sends nothing.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from journeys.flows.migration import flows_from_rules, flows_toml
from journeys.outreach_rules import parse_rules
from stack.processes import wait_until
from stack.settings import Settings
from tests.integration.test_outreach_lifecycle import (
    SECRET,
    _now,
    _orders,
    identify,
    lifecycle_receiver,  # noqa: F401  (a fixture)
    rules,
)
from tests.integration.test_outreach_triggers import Receiver, admin, start_node, track
from tests.integration.test_outreach_triggers import verify_signature as verified

pytestmark = pytest.mark.integration


def test_the_migrated_lifecycle_flows_send_as_the_rules_did(
    settings: Settings,
    lifecycle_receiver: Receiver,  # noqa: F811
    tmp_path: Path,
) -> None:
    receiver = lifecycle_receiver
    start = _now()
    top_of_hour = start.replace(minute=0, second=0)
    migrated = flows_from_rules(parse_rules(tomllib.loads(rules(start.hour))))
    flows_file = tmp_path / "flows.toml"
    flows_file.write_text(flows_toml(migrated))
    node = start_node(
        settings,
        "",  # no rules: only the flows send
        tmp_path,
        flows_file=flows_file,
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
    finally:
        node.stop()
