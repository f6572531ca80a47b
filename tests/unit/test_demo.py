"""What `journeys up --demo` changes, and what it leaves alone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from journeys.flows.nodes import SendNode, WaitUntilNode
from simulation.webhook_inbox import WebhookInbox
from stack import demo
from stack.flows import load_flows
from stack.outreach import declared_rules
from stack.settings import Settings


@pytest.fixture
def inbox() -> Iterator[WebhookInbox]:
    receiver = WebhookInbox()
    yield receiver
    receiver.close()


def test_the_demo_reminds_of_abandoned_carts_within_seconds(tmp_path: Path) -> None:
    settings = demo.demo_settings(Settings(data_dir=tmp_path))
    cart = next(flow for flow in load_flows(settings) if flow.id == "abandoned_cart")
    wait = cart.nodes["wait_for_order"]
    assert isinstance(wait, WaitUntilNode) and wait.timeout_ms == 15_000
    assert {node.channel for node in cart.nodes.values() if isinstance(node, SendNode)} == {
        "webhook",
        "email",
    }
    # Its other outreach is rules, read through the migration at start (no cart rule:
    # the canonical flow is the demo's abandoned cart).
    rules = {r.id: r for r in declared_rules(settings)}
    assert set(rules) == {"satisfaction_survey", "high_value_welcome"}
    assert rules["satisfaction_survey"].delay == timedelta(seconds=30)


def test_production_runs_the_shipped_flows_and_no_rules(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert declared_rules(settings) == []  # no rules file by default: nothing to migrate
    cart = next(flow for flow in load_flows(settings) if flow.id == "abandoned_cart")
    wait = cart.nodes["wait_for_order"]
    assert isinstance(wait, WaitUntilNode) and wait.timeout_ms == 3_600_000


def test_a_configured_rules_file_wins_over_the_demo_rules(tmp_path: Path) -> None:
    configured = Settings(
        data_dir=tmp_path,
        trigger_rules_file=str(tmp_path / "mine.toml"),
        flows_file=tmp_path / "mine-flows.toml",
    )
    assert demo.demo_settings(configured).trigger_rules_file == str(tmp_path / "mine.toml")
    assert demo.demo_settings(configured).flows_file == tmp_path / "mine-flows.toml"


def test_the_webhook_inbox_keeps_what_it_is_sent(inbox: WebhookInbox) -> None:
    answer = httpx.post(inbox.url, json={"trigger_id": "t-1", "rule": "abandoned_cart"})
    assert answer.status_code == 204
    assert inbox.received == [{"trigger_id": "t-1", "rule": "abandoned_cart"}]


def test_the_demo_history_is_a_month_of_imported_calls_before_now() -> None:
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    calls = list(demo.history_calls(seed=3, shoppers=50, days=30, now=now))
    stamps = [datetime.fromisoformat(call["timestamp"]) for call in calls]
    assert calls and all(call["context"]["historical"] is True for call in calls)
    assert all(now - timedelta(days=30) <= stamp <= now for stamp in stamps)
    # Spread over the month, so retention has cohorts: more than three distinct weeks.
    assert len({stamp.isocalendar()[1] for stamp in stamps}) > 3
    assert any(call.get("event") == "Order Completed" for call in calls)
