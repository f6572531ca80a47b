"""Flows' rules through a running node: real broker, node, signed-webhook receiver, SMTP.

One node run, several customers, each exercising one behaviour (node starts are
what the suite's time goes to):

- consent: the first e-mail carries a signed one-click unsubscribe link
  (``List-Unsubscribe`` with an https URL, ``List-Unsubscribe-Post``, and in the
  body through ``{{ unsubscribe_url }}``); a forged link is refused naming the
  rule, GET only confirms, POST records ``Unsubscribed`` through ingest (on the
  broker, in the journey, in the event log) and the flow's next e-mail is
  skipped with reason ``consent``;
- quiet hours in the customer's time zone: the same flow sends to a customer in
  UTC and skips one in Tokyo, where it is inside the quiet hours now;
- re-entry: a second entry event gets a ``never`` flow's customer nothing more
  (``reentry`` recorded) and an ``always`` flow's customer a second message.
"""

from __future__ import annotations

import json
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from stack.processes import wait_until
from stack.settings import Settings
from tests.integration.test_outreach_triggers import (
    Mailbox,
    Receiver,
    admin,
    mailbox,  # noqa: F401  (a fixture)
    receiver,  # noqa: F401  (a fixture)
    topic_records,
    track,
    triggers_of,
)
from tests.node_process import NodeProcess, query_chdb_folder, started_node

pytestmark = pytest.mark.integration

PUBLIC_URL = "https://mail.shop.example/journeys"
TOKYO = "Asia/Tokyo"  # UTC+9 all year: 9 hours from UTC, outside a 2-hour window there


def _flows(quiet_start: str, quiet_end: str) -> str:
    return f"""
[flows.consent_probe]
version = 1
[flows.consent_probe.nodes.start]
kind = "entry"
event = "Consent Probe"
next = "first"
[flows.consent_probe.nodes.first]
kind = "send"
channel = "email"
subject = "First"
body = "Hello. To stop these: {{{{ unsubscribe_url }}}}"
next = "pause"
[flows.consent_probe.nodes.pause]
kind = "wait"
duration = "10s"
next = "second"
[flows.consent_probe.nodes.second]
kind = "send"
channel = "email"
subject = "Second"
body = "Again."

[flows.quiet_probe]
version = 1
quiet_hours = {{ start = "{quiet_start}", end = "{quiet_end}", policy = "skip" }}
[flows.quiet_probe.nodes.start]
kind = "entry"
event = "Quiet Probe"
next = "hello"
[flows.quiet_probe.nodes.hello]
kind = "send"
channel = "webhook"
body = "quiet probe"

[flows.reentry_never]
version = 1
reentry = "never"
[flows.reentry_never.nodes.start]
kind = "entry"
event = "Reentry Probe"
next = "hello"
[flows.reentry_never.nodes.hello]
kind = "send"
channel = "webhook"
body = "once only"

[flows.reentry_always]
version = 1
reentry = "always"
[flows.reentry_always.nodes.start]
kind = "entry"
event = "Reentry Probe"
next = "hello"
[flows.reentry_always.nodes.hello]
kind = "send"
channel = "webhook"
body = "every time"
"""


def _quiet_window_now_in(zone: str) -> tuple[str, str]:
    """A two-hour window around the local time in ``zone`` now (HH:MM, may wrap midnight)."""
    local = datetime.now(UTC).astimezone(ZoneInfo(zone))
    return (local - timedelta(hours=1)).strftime("%H:%M"), (local + timedelta(hours=1)).strftime(
        "%H:%M"
    )


def _facts(node: NodeProcess, customer: str, flow_id: str) -> list[dict[str, Any]]:
    answer = node.read("GET", f"/v1/customers/{customer}/flows")
    assert answer.status_code == 200, answer.text
    found = [f for f in answer.json()["flows"] if f["flow_id"] == flow_id]
    return list(found[0]["facts"]) if found else []


def _skips(node: NodeProcess, customer: str, flow_id: str) -> list[tuple[str, str]]:
    facts = _facts(node, customer, flow_id)
    return [(f["node"], f["reason"]) for f in facts if f["type"] == "Skipped"]


def _webhooks(server: Receiver, customer: str) -> list[dict[str, Any]]:
    return [json.loads(r["body"]) for r in server.seen("/ok", customer)]


def test_consent_quiet_hours_and_reentry_through_a_node(
    settings: Settings,
    receiver: Receiver,  # noqa: F811
    mailbox: tuple[Mailbox, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    box, smtp_port = mailbox
    quiet_start, quiet_end = _quiet_window_now_in(TOKYO)
    flows_file = tmp_path / "flows.toml"
    flows_file.write_text(_flows(quiet_start, quiet_end))
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text("")  # no rules: only the flows send
    node = started_node(
        settings.model_copy(
            update={
                "flows_file": flows_file,
                "trigger_rules_file": str(rules_file),
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp_port,
                "public_url": PUBLIC_URL,
            }
        )
    )
    try:
        added = admin(node, "POST", "/v1/outreach/webhooks", json={"url": f"{receiver.base}/ok"})
        assert added.status_code == 201, added.text
        unsubscriber, tokyo, utc, returner = "c-unsub", "c-tokyo", "c-utc", "c-return"
        identify = {
            "userId": unsubscriber,
            "messageId": "unsub-id",
            "traits": {"email": "unsub@example.com"},
        }
        key = (node.settings.write_key, "")
        answer = httpx.post(f"{node.base}/v1/identify", json=identify, auth=key, timeout=30)
        assert answer.status_code == 200, answer.text
        track(node, {"userId": unsubscriber, "event": "Consent Probe", "messageId": "unsub-1"})
        track(
            node,
            {
                "userId": tokyo,
                "event": "Quiet Probe",
                "messageId": "tokyo-1",
                "context": {"timezone": TOKYO},
            },
        )
        track(node, {"userId": utc, "event": "Quiet Probe", "messageId": "utc-1"})
        track(node, {"userId": returner, "event": "Reentry Probe", "messageId": "return-1"})

        # Consent. The first e-mail and its link.
        assert wait_until(lambda: len(box.messages) >= 1, 60, lambda: True), node.log_tail()
        (mail,) = box.messages
        assert mail["To"] == "unsub@example.com" and mail["Subject"] == "First"
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        listed = mail["List-Unsubscribe"]
        assert listed.startswith(f"<{PUBLIC_URL}/v1/unsubscribe/") and listed.endswith(">")
        link = listed[1:-1]
        assert mail.get_payload().strip() == f"Hello. To stop these: {link}"
        # The public URL is where customers reach the node (a proxy); here the node itself.
        at_node = f"{node.base}{link.removeprefix(PUBLIC_URL)}"
        version, payload, signature = link.rsplit("/", 1)[1].split(".")
        other = "A" if signature[0] != "A" else "B"
        forged = f"{node.base}/v1/unsubscribe/{version}.{payload}.{other}{signature[1:]}"
        refused = httpx.post(forged, content="List-Unsubscribe=One-Click", timeout=30)
        assert refused.status_code == 400, refused.text
        assert refused.json()["errors"][0]["rule"] == "signature"
        page = httpx.get(at_node, timeout=30)  # a link preview: changes nothing
        assert page.status_code == 200 and '<form method="post">' in page.text
        one_click = httpx.post(
            at_node,
            content="List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
            timeout=30,
        )
        assert one_click.status_code == 200, one_click.text
        assert "no longer receive" in one_click.text

        # Re-entry: the first run's messages, then the entry event again.
        assert wait_until(lambda: len(_webhooks(receiver, returner)) >= 2, 60, lambda: True)
        track(node, {"userId": returner, "event": "Reentry Probe", "messageId": "return-2"})
        assert wait_until(lambda: len(_webhooks(receiver, returner)) >= 3, 60, lambda: True)

        assert wait_until(
            lambda: ("second", "consent") in _skips(node, unsubscriber, "consent_probe"),
            60,
            lambda: True,
        ), _facts(node, unsubscriber, "consent_probe")
        time.sleep(1)  # nothing else is due: nothing more may come
        assert len(box.messages) == 1  # the second e-mail was not sent
        assert [m["Subject"] for m in box.messages] == ["First"]

        # Quiet hours, by the customer's zone.
        assert [w["body"] for w in _webhooks(receiver, utc)] == ["quiet probe"]
        assert _webhooks(receiver, tokyo) == []
        assert _skips(node, tokyo, "quiet_probe") == [("hello", "quiet_hours")]
        assert _skips(node, utc, "quiet_probe") == []

        bodies = sorted(w["body"] for w in _webhooks(receiver, returner))
        assert bodies == ["every time", "every time", "once only"]
        assert ("start", "reentry") in _skips(node, returner, "reentry_never")
        assert _skips(node, returner, "reentry_always") == []

        # The unsubscribe is an event like a storefront's: in the journey and on the broker.
        journey = node.read("GET", f"/v1/customers/{unsubscriber}/journey")
        assert journey.status_code == 200, journey.text
        assert "Unsubscribed" in journey.text
        on_broker = [
            json.loads(r.value) for r in topic_records(node.settings, node.settings.events_topic)
        ]
        unsubscribed = [e for e in on_broker if "Unsubscribed" in json.dumps(e)]
        assert len(unsubscribed) == 1, unsubscribed
        assert "email" in json.dumps(unsubscribed[0])
    finally:
        node.stop()
    # And in the event log (chdb opens in one process at a time: after the node).
    rows = query_chdb_folder(
        node.settings.chdb_path,
        f"SELECT customer_key, properties['channel'] FROM "
        f"{node.settings.clickhouse_database}.events WHERE event_name = 'Unsubscribed'",
    )
    assert rows == [[unsubscriber, '"email"']]  # properties are kept as JSON


def _kill_flows(versioned: int) -> str:
    return f"""
[flows.kill_probe]
version = 1
[flows.kill_probe.nodes.start]
kind = "entry"
event = "Kill Probe"
next = "pause"
[flows.kill_probe.nodes.pause]
kind = "wait"
duration = "10s"
next = "hello"
[flows.kill_probe.nodes.hello]
kind = "send"
channel = "webhook"
body = "after the wait"

[flows.versioned]
version = {versioned}
[flows.versioned.nodes.start]
kind = "entry"
event = "Version Probe"
next = "pause"
[flows.versioned.nodes.pause]
kind = "wait"
duration = "10s"
next = "hello"
[flows.versioned.nodes.hello]
kind = "send"
channel = "webhook"
body = "version {versioned}"
"""


def _waiting(node: NodeProcess, customer: str, flow_id: str) -> bool:
    return any(f["type"] == "Waiting" for f in _facts(node, customer, flow_id))


def test_a_kill_between_scheduling_and_sending_and_a_new_version_across_the_restart(
    settings: Settings,
    receiver: Receiver,  # noqa: F811
    tmp_path: Path,
) -> None:
    """SIGKILL while every run waits for its send: after the restart each message is sent
    once; version 2 of a flow, put just before the kill, is in force after the restart,
    and the run inside finishes on version 1."""
    flows_file = tmp_path / "flows.toml"
    flows_file.write_text(_kill_flows(1))
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text("")
    node = started_node(
        settings.model_copy(
            update={"flows_file": flows_file, "trigger_rules_file": str(rules_file)}
        )
    )
    waiting = [f"k{i}" for i in range(6)]
    inside, newcomer = "v-inside", "v-newcomer"
    try:
        added = admin(node, "POST", "/v1/outreach/webhooks", json={"url": f"{receiver.base}/ok"})
        assert added.status_code == 201, added.text
        for customer in waiting:
            track(node, {"userId": customer, "event": "Kill Probe", "messageId": f"{customer}-1"})
        track(node, {"userId": inside, "event": "Version Probe", "messageId": "inside-1"})
        # Scheduled: every run's state is saved, waiting for its send.
        assert wait_until(
            lambda: (
                all(_waiting(node, c, "kill_probe") for c in waiting)
                and _waiting(node, inside, "versioned")
            ),
            60,
            lambda: True,
        ), node.log_tail()
        assert receiver.seen("/ok") == []  # nothing is due yet: not sent
        # Version 2, stored (the file only seeds the store once): the restart reads it.
        table = tomllib.loads(_kill_flows(2))["flows"]["versioned"]
        changed = admin(node, "PUT", "/v1/flows/versioned", json=table)
        assert changed.status_code == 200, changed.text
        node.kill()

        node.start()
        track(node, {"userId": newcomer, "event": "Version Probe", "messageId": "newcomer-1"})
        everyone = [*waiting, inside, newcomer]
        assert wait_until(
            lambda: all(_webhooks(receiver, c) for c in everyone), 90, lambda: True
        ), node.log_tail()
        time.sleep(2)  # a second copy would be on its way by now
        for customer in everyone:
            posts = receiver.seen("/ok", customer)
            assert len(posts) == 1, (customer, posts)
            (trigger,) = triggers_of(node, customer)
            assert posts[0]["key"] == trigger["trigger_id"]
        assert [w["body"] for w in _webhooks(receiver, waiting[0])] == ["after the wait"]
        assert [w["body"] for w in _webhooks(receiver, inside)] == ["version 1"]
        assert [w["body"] for w in _webhooks(receiver, newcomer)] == ["version 2"]
        entered = {
            c: [f["version"] for f in _facts(node, c, "versioned") if f["type"] == "Entered"]
            for c in (inside, newcomer)
        }
        assert entered == {inside: [1], newcomer: [2]}
    finally:
        if node.process is not None:
            node.stop()
