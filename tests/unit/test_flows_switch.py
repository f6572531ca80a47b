"""The switch from the trigger rules to flows (stack/flows_switch.py) over a real SQLite
store: a store with rule history is carried forward (nothing a rule sent is sent again,
orders before the switch count, the next due send still happens), the rules file is
read through the migration (the canonical abandoned cart reconciled), a flow changed
over the API is kept, and lifecycle sends now honour consent."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from events import TrackedEvent, event_type_for
from journeys.flows.backtest import run_history
from journeys.flows.definitions import FlowCatalog, parse_flow
from journeys.flows.engine import FlowEngine
from journeys.flows.facts import Sent, Skipped
from journeys.flows.inputs import to_ms, tracked_input
from journeys.flows.migration import lifecycle_flows
from journeys.triggers import CustomerFacts, TriggerEngine
from stack.demo import RULES_FILE as DEMO_RULES
from stack.flows import build_flow_definitions
from stack.flows_switch import shipped_rules, switch_to_flows
from stack.outreach import OutreachAdmin, build_store
from stack.settings import Settings
from streams.outreach.flows import FlowRunner

GRACE = timedelta(minutes=15)
DAY_MS = 86_400_000
# The switch is now (the seeded states wake at its wall time); the history lies at noon
# UTC on the days before, clear of the flows' quiet hours (21:00-08:00).
SWITCH = datetime.fromtimestamp(int(time.time()), UTC)
T0 = datetime.combine(SWITCH.date() - timedelta(days=8), datetime.min.time(), UTC).replace(hour=12)


def tracked(customer: str, event_id: str, name: str, at: datetime, **props: Any) -> TrackedEvent:
    return TrackedEvent(
        event_id=event_id,
        customer_key=customer,
        call_type="track",
        event_type=event_type_for("track", name),
        event_name=name,
        timestamp=at,
        received_at=at,
        properties=props,
        context={},
    )


def order(customer: str, n: int, at: datetime) -> TrackedEvent:
    return tracked(
        customer, f"{customer}-o{n}", "Order Completed", at, order_id=f"{customer}-{n}", revenue=20
    )


def rule_era(settings: Settings) -> None:
    """The rules ran, as the worker ran them: c1 ordered 8 days ago and got the review
    request a day ago; c2 ordered 6 days ago and its review request is still due; c3's
    ticket was resolved 65 minutes ago and the survey went out 5 minutes ago (within the
    grace: a flow not told would send it again)."""
    store = build_store(settings)
    engine = TriggerEngine(shipped_rules(), GRACE)
    resolved = SWITCH - timedelta(minutes=65)
    history = {
        "c1": order("c1", 1, T0),
        "c2": order("c2", 1, T0 + timedelta(days=2)),
        "c3": tracked("c3", "c3-t", "Ticket Resolved", resolved, ticket_id="t1"),
    }
    fired = []
    saved = []
    for key, event in history.items():
        facts = CustomerFacts(key)
        engine.observe(facts, event)
        for timer in engine.plan(facts):
            if timer.fire_at <= SWITCH:
                decision = engine.decide(facts, timer, timer.fire_at)
                fired.append((key, timer.rule_id, decision.outcome))
        saved.append((facts, 0, engine.plan(facts)))
    assert fired == [("c1", "review_request", "fired"), ("c3", "satisfaction_survey", "fired")]
    store.save_customers(saved)
    assert [t["rule"] for t in store.timers()] == ["review_request"]  # c2's, running
    store.close()


def sends(write: Any) -> list[tuple[str, str, str]]:
    return sorted((m["customer_id"], m["flow"], m["node"]) for m, _ in write.sends)


def test_a_store_with_rule_history_is_carried_forward(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    rule_era(settings)

    store, definitions = build_store(settings), build_flow_definitions(settings)
    report = switch_to_flows(settings, definitions, store)
    lifecycle = [rule.id for rule in shipped_rules() if rule.id != "abandoned_cart"]
    assert sorted(report.switched_on) == sorted(lifecycle)
    # Every lifecycle flow keeps facts (date anchors, or templates reading ``data``).
    assert report.seeded == {flow_id: 3 for flow_id in lifecycle}
    assert report.timers_dropped == 1 and store.timers() == []
    in_force = definitions.current()
    assert all(in_force.get(f).enabled and in_force.get(f).version == 2 for f in lifecycle)
    assert in_force.get("abandoned_cart").version == 1  # the canonical flow, as shipped

    runner = FlowRunner(store, definitions, lambda *_: [], int(GRACE.total_seconds() * 1000))
    now = int(time.time() * 1000) + 1000
    at_switch = runner.advance_due([0], now)
    store.save_flows(at_switch)
    # c1's review and c3's survey were sent by the rules: not again (c3's is within the
    # grace, so only the seeded anchors stop it).
    assert sends(at_switch) == []
    c3 = {row["flow_id"]: row["state"] for row in store.flow_states("c3")}
    assert c3["satisfaction_survey"]["anchored"]["due"][0][2] == "fired"
    c2_due = to_ms(T0 + timedelta(days=9))
    # The rules' routes on flows: the rules retired naming the flows API, the timers the
    # flows' states waiting (c2's review request wakes at its due time).
    admin = OutreachAdmin(settings, store)
    assert "/v1/flows" in (admin.retired() or "")
    waits = {(t["customer_id"], t["rule"]): t["fire_at"] for t in admin.timers(None, 100)}
    assert waits[("c2", "flow:review_request")] == (T0 + timedelta(days=9)).isoformat()
    ruled = OutreachAdmin(settings.model_copy(update={"outreach_engine": "rules"}), store)
    assert ruled.retired() is None
    due = runner.advance_due([0], c2_due)
    store.save_flows(due)
    assert sends(due) == [
        ("c2", "review_request", "send_email"),
        ("c2", "review_request", "send_webhook"),
    ]  # the rule's running clock, sent by the flow at its due time
    assert sends(runner.advance_due([0], c2_due + DAY_MS)) == []

    # c1's second order after the switch: its orders before count (the repurchase
    # reminder's cycle is the gap between the two), and the review comes 7 days on.
    second = T0 + timedelta(days=10)
    store.save_flows(runner.observe(0, [("c1", tracked_input(order("c1", 2, second)))], c2_due))
    review = runner.advance_due([0], to_ms(second + timedelta(days=7)))
    store.save_flows(review)
    assert sends(review) == [
        ("c1", "review_request", "send_email"),
        ("c1", "review_request", "send_webhook"),
    ]
    cycle = runner.advance_due([0], to_ms(second + (second - T0)))
    store.save_flows(cycle)
    assert sends(cycle) == [
        ("c1", "repurchase_reminder", "send_email"),
        ("c1", "repurchase_reminder", "send_webhook"),
    ]

    # A second start changes nothing: switched on and seeded once.
    again = switch_to_flows(settings, definitions, store)
    assert (again.switched_on, again.seeded, again.kept) == ([], {}, [])
    store.close()
    definitions.close()


def test_a_flow_changed_over_the_api_is_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    store, definitions = build_store(settings), build_flow_definitions(settings)
    mine = dict(definitions.current().get("birthday").source)
    definitions.put(parse_flow("birthday", {**mine, "version": 5, "name": "Ours"}))
    report = switch_to_flows(settings, definitions, store)
    assert report.kept == ["birthday"] and "birthday" not in report.switched_on
    assert definitions.current().get("birthday").version == 5
    store.close()
    definitions.close()


def test_the_rules_file_is_read_through_the_migration(tmp_path: Path) -> None:
    # The shipped abandoned-cart rule is the canonical flow: it migrates to nothing.
    assert "abandoned_cart" not in lifecycle_flows(shipped_rules(), shipped_rules())
    rules = tmp_path / "rules.toml"
    rules.write_text(
        DEMO_RULES.read_text()
        + '\n[[rule]]\nid = "abandoned_cart"\ntrigger = "abandoned_cart"\ndelay = "15s"\n'
        + 'frequency_cap = "24h"\nexit = ["Order Completed"]\nchannels = ["webhook"]\n'
    )
    settings = Settings(data_dir=tmp_path, trigger_rules_file=str(rules))
    store, definitions = build_store(settings), build_flow_definitions(settings)
    report = switch_to_flows(settings, definitions, store)
    # A cart rule of its own (15 s) was configured on purpose: it replaces the canonical
    # flow; the lifecycle flows the file has no rule for stay off.
    assert sorted(report.switched_on) == [
        "abandoned_cart",
        "high_value_welcome",
        "satisfaction_survey",
    ]
    cart = definitions.current().get("abandoned_cart")
    assert cart.version == 2 and cart.date_entries[0].anchor.after_ms == 15_000
    assert not definitions.current().get("review_request").enabled
    store.close()
    definitions.close()


def test_a_lifecycle_send_is_skipped_for_consent() -> None:
    """The rules knew no consent; their flows skip an unsubscribed customer."""
    table = lifecycle_flows(shipped_rules(), shipped_rules())["review_request"]
    engine = FlowEngine(FlowCatalog.of([parse_flow("review_request", table)]))  # type: ignore[list-item]
    unsubscribed = TrackedEvent(
        event_id="u1",
        customer_key="c1",
        call_type="track",
        event_type=event_type_for("track", "Unsubscribed"),
        event_name="Unsubscribed",
        timestamp=T0,
        received_at=T0,
        properties={"channel": "email"},
        context={},
    )
    inputs = [tracked_input(unsubscribed), tracked_input(order("c1", 1, T0 + timedelta(hours=1)))]
    facts, _ = run_history(engine, "review_request", "c1", inputs, to_ms(T0) + 8 * DAY_MS)
    due = to_ms(T0 + timedelta(hours=1)) + 7 * DAY_MS
    decided = [f for f in facts if isinstance(f, Sent | Skipped)]
    assert [(type(f).__name__, f.at_ms, f.node) for f in decided] == [
        ("Sent", due, "send_webhook"),
        ("Skipped", due, "send_email"),
    ]
    skipped = next(f for f in facts if isinstance(f, Skipped))
    assert skipped.reason == "consent"
