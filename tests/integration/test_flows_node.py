"""The abandoned-cart flow through a running node: real broker, node, signed webhooks, SMTP.

The canonical flow's shape with short waits (8 s for the order, 3 s more for
the coupon; the order is sent at once, but a loaded machine may take seconds
to consume it, and a timer fires only on what was consumed): a customer who
buys in time gets nothing, one who never buys gets the webhook reminder then
the e-mail coupon (rendered from the templates), one in the holdout gets
nothing and their skips are recorded; the customer's flows route says why for
each, and the CLI's backtest of the same history reports the same decisions.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack.cli import main as cli_main
from stack.processes import wait_until
from stack.settings import Settings
from tests.integration.test_flows_backtest import _key
from tests.integration.test_outreach_triggers import (
    Mailbox,
    Receiver,
    admin,
    mailbox,  # noqa: F401  (a fixture)
    receiver,  # noqa: F401  (a fixture)
    track,
    verify_signature,
)
from tests.node_process import started_node

pytestmark = pytest.mark.integration

FLOWS = """
[flows.abandoned_cart]
version = 1
reentry = "never"
goal = { event = "Order Completed", within = "1m" }

[flows.abandoned_cart.nodes.cart_started]
kind = "entry"
event = "Product Added"
next = "holdout_split"

[flows.abandoned_cart.nodes.holdout_split]
kind = "split"
branches = [
  { name = "holdout", percent = 10, holdout = true, next = "wait_for_order" },
  { name = "treatment", percent = 90, next = "wait_for_order" },
]

[flows.abandoned_cart.nodes.wait_for_order]
kind = "wait_until"
event = "Order Completed"
correlate = "cart_id"
timeout = "8s"
on_timeout = "reminder"

[flows.abandoned_cart.nodes.reminder]
kind = "send"
channel = "webhook"
body = "{{ traits.first_name | default('Hi') }}, {{ entry.name }} is still in your cart."
next = "wait_a_day"

[flows.abandoned_cart.nodes.wait_a_day]
kind = "wait_until"
event = "Order Completed"
timeout = "3s"
on_timeout = "coupon"

[flows.abandoned_cart.nodes.coupon]
kind = "send"
channel = "email"
subject = "{{ traits.first_name }}, 10 % off your cart"
body = "Use CART10 for {{ entry.name }}."

# Entered on a live segment entry (journey.segments): the first order makes a buyer.
[flows.first_order_thanks]
version = 1
reentry = "never"

[flows.first_order_thanks.nodes.became_buyer]
kind = "entry"
segment = "buyers"
next = "thanks"

[flows.first_order_thanks.nodes.thanks]
kind = "send"
channel = "webhook"
body = "Thank you for your first order, {{ traits.first_name }}."
"""

SEGMENTS = """
[segments.buyers]
name = "Ordered at least once"
where = { event = "Order Completed" }
"""


def _event(customer: str, name: str, n: int, /, **properties: Any) -> dict[str, Any]:
    return {
        "userId": customer,
        "event": name,
        "messageId": f"{customer}-{n}",
        "properties": properties,
    }


def test_the_flow_runs_live_and_says_why(
    settings: Settings,
    receiver: Receiver,  # noqa: F811
    mailbox: tuple[Mailbox, int],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    box, smtp_port = mailbox
    flows_file = tmp_path / "flows.toml"
    flows_file.write_text(FLOWS)
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text("")  # no rules: only the flow sends
    segments_file = tmp_path / "segments.toml"
    segments_file.write_text(SEGMENTS)
    node = started_node(
        settings.model_copy(
            update={
                "flows_file": flows_file,
                "segments_file": segments_file,
                "trigger_rules_file": str(rules_file),
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp_port,
                "outreach_backoff_base_s": 0.3,
            }
        )
    )
    try:
        added = admin(node, "POST", "/v1/outreach/webhooks", json={"url": f"{receiver.base}/ok"})
        assert added.status_code == 201, added.text
        secret = added.json()["secret"]
        buyer, never, holdout = _key(False, "buyer"), _key(False, "never"), _key(True, "held")
        began = datetime.now(UTC) - timedelta(seconds=5)
        cart = {"cart_id": "k1", "product_id": "p1", "name": "Mug", "price": 12}
        for who in (buyer, never, holdout):
            identify = {
                "userId": who,
                "messageId": f"{who}-id",
                "traits": {"first_name": "Ada", "email": f"{who}@example.com"},
            }
            response = httpx.post(
                f"{node.base}/v1/identify",
                json=identify,
                auth=(node.settings.write_key, ""),
                timeout=30,
            )
            assert response.status_code == 200, response.text
            track(node, _event(who, "Product Added", 1, **cart))
        track(node, _event(buyer, "Order Completed", 2, cart_id="k1", revenue=12))

        assert wait_until(lambda: len(box.messages) >= 1, 60, lambda: True), node.settings.data_dir

        def thanked() -> bool:
            return any(
                json.loads(r["body"])["rule"] == "flow:first_order_thanks"
                for r in receiver.seen("/ok")
            )

        # The thanks takes a hop more than the reminder (journey.segments), so it is
        # waited for on its own rather than assumed by the reminder's time.
        assert wait_until(thanked, 60, lambda: True), node.settings.data_dir
        time.sleep(2)  # anything else would be due by now: nothing more may come
        posted = receiver.seen("/ok")
        reminders = [r for r in posted if json.loads(r["body"])["rule"] == "flow:abandoned_cart"]
        assert [json.loads(r["body"])["customer_id"] for r in reminders] == [never]
        # The buyer's order put them in `buyers` (journey.segments): that flow's message.
        thanks = [r for r in posted if json.loads(r["body"])["rule"] == "flow:first_order_thanks"]
        assert [json.loads(r["body"])["customer_id"] for r in thanks] == [buyer]
        assert json.loads(thanks[0]["body"])["body"] == "Thank you for your first order, Ada."
        body = json.loads(reminders[0]["body"])
        assert body["rule"] == "flow:abandoned_cart" and body["node"] == "reminder"
        assert body["body"] == "Ada, Mug is still in your cart."
        assert verify_signature(secret, reminders[0]["signature"], reminders[0]["body"])
        assert reminders[0]["key"] == body["trigger_id"]
        (mail,) = box.messages
        assert mail["To"] == f"{never}@example.com"
        assert mail["Subject"] == "Ada, 10 % off your cart"
        assert mail.get_payload().strip() == "Use CART10 for Mug."

        def why(customer: str) -> list[str]:
            reader = {"Authorization": f"Bearer {node.settings.read_key}"}
            answer = httpx.get(
                f"{node.base}/v1/customers/{customer}/flows", headers=reader, timeout=30
            )
            assert answer.status_code == 200, answer.text
            flows = answer.json()["flows"]
            (flow,) = [f for f in flows if f["flow_id"] == "abandoned_cart"]
            return [fact["why"] for fact in flow["facts"]]

        assert any(line.startswith("converted") for line in why(buyer))
        held = why(holdout)
        assert "reminder not sent: in the holdout" in " ".join(held)
        assert "coupon not sent: in the holdout" in " ".join(held)
        assert any(line.startswith("sent coupon on email") for line in why(never))

        # The CLI's backtest of the history the node just ran live: the same decisions.
        until = datetime.now(UTC) + timedelta(seconds=1)
        capsys.readouterr()
        code = cli_main(
            ["flows", "backtest", "abandoned_cart", "--from", began.isoformat(),
             "--to", until.isoformat(), "--url", node.base,
             "--admin-key", node.settings.admin_key]
        )  # fmt: skip
        printed = capsys.readouterr()
        assert code == 0, printed.err
        report = json.loads(printed.out)
        assert report["entered"] == {"customers": 3, "runs": 3}
        assert report["messages"] == {"webhook": 1, "email": 1}
        assert report["skipped"] == {"holdout": 2}
        assert report["conversions"]["treatment"]["runs"] == 2
        assert report["conversions"]["treatment"]["converted"] == 1
        assert report["conversions"]["holdout"] == {"runs": 1, "converted": 0, "rate": 0.0}
        assert report["inside_at_end"] == 2  # waiting for the goal's minute to pass
    finally:
        node.stop()
