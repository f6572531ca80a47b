"""The switch from the trigger rules to flows (stack/flows_switch.py) over a real SQLite
store: a store the rules engine wrote (its facts, settled clocks, timer table and API
overrides) is carried forward (nothing a rule sent is sent again, orders before the
switch count, the next due send still happens, the timer table is dropped), a
configured rules file is read through the migration (the canonical abandoned cart
reconciled), a flow changed over the API is kept, and lifecycle sends now honour
consent."""

from __future__ import annotations

import sqlite3
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from events import TrackedEvent, event_type_for
from journeys.flows.backtest import run_history
from journeys.flows.definitions import FlowCatalog, parse_flow
from journeys.flows.engine import FlowEngine
from journeys.flows.facts import Sent, Skipped
from journeys.flows.inputs import to_ms, tracked_input
from journeys.flows.migration import LIFECYCLE, SHIPPED_ABANDONED_CART, lifecycle_flows
from journeys.triggers import CustomerFacts
from stack.demo import RULES_FILE as DEMO_RULES
from stack.flows import build_flow_definitions
from stack.flows_switch import switch_to_flows
from stack.outreach import OutreachAdmin, build_store
from stack.settings import Settings
from streams.outreach.flows import FlowRunner

GRACE = timedelta(minutes=15)
SHIPPED = tomllib.loads((Path(__file__).parents[2] / "journeys/flows.toml").read_text())["flows"]
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


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def rule_era(settings: Settings) -> None:
    """A store as the rules engine left it: c1 ordered 8 days ago and got the review
    request a day ago; c2 ordered 6 days ago and its review request is still due (a row
    of the rules' timer table); c3's ticket was resolved 65 minutes ago and the survey
    went out 5 minutes ago (within the grace: a flow not told would send it again). The
    facts are folded by the code that still keeps them; the ended clocks (``settled``)
    and the timer row are written as the engine wrote them."""
    build_store(settings).close()  # today's tables; the rules' own ones added below
    resolved = SWITCH - timedelta(minutes=65)
    history = {
        "c1": order("c1", 1, T0),
        "c2": order("c2", 1, T0 + timedelta(days=2)),
        "c3": tracked("c3", "c3-t", "Ticket Resolved", resolved, ticket_id="t1"),
    }
    ended = {
        "c1": ("review_request", T0, T0 + timedelta(days=7)),
        "c3": ("satisfaction_survey", resolved, resolved + timedelta(hours=1)),
    }
    with sqlite3.connect(settings.sqlite_path) as db:
        for key, event in history.items():
            facts = CustomerFacts(key)
            assert facts.observe(event)
            if key in ended:
                rule_id, anchor, due = ended[key]
                facts.settled[rule_id] = [
                    {"anchor": iso(anchor), "due": iso(due), "outcome": "fired"}
                ]
            db.execute(
                "INSERT INTO trigger_customers (customer_key, partition_no, facts) "
                "VALUES (?, 0, ?)",
                (key, orjson.dumps(facts.to_dict()).decode()),
            )
        db.execute(
            """CREATE TABLE trigger_timers (
            timer_id TEXT PRIMARY KEY, customer_key TEXT NOT NULL, rule_id TEXT NOT NULL,
            partition_no INTEGER NOT NULL, anchor TEXT NOT NULL, due_at TEXT NOT NULL,
            fire_at TEXT NOT NULL, fire_ts DOUBLE PRECISION NOT NULL)"""
        )
        anchor, due = T0 + timedelta(days=2), T0 + timedelta(days=9)
        db.execute(
            "INSERT INTO trigger_timers VALUES ('t-c2', 'c2', 'review_request', 0, ?, ?, ?, ?)",
            (iso(anchor), iso(due), iso(due), due.timestamp()),
        )


def sends(write: Any) -> list[tuple[str, str, str]]:
    return sorted((m["customer_id"], m["flow"], m["node"]) for m, _ in write.sends)


def test_a_store_with_rule_history_is_carried_forward(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    rule_era(settings)

    store, definitions = build_store(settings), build_flow_definitions(settings)
    report = switch_to_flows(settings, definitions, store)
    lifecycle = list(LIFECYCLE)
    assert sorted(report.switched_on) == sorted(lifecycle)
    # Every lifecycle flow keeps facts (date anchors, or templates reading ``data``).
    assert report.seeded == {flow_id: 3 for flow_id in lifecycle}
    assert report.timers_dropped == 1  # the rules' table, dropped with its row
    with sqlite3.connect(settings.sqlite_path) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert "trigger_timers" not in tables and "flow_states" in tables
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
    assert "/v1/flows" in admin.retired()
    waits = {(t["customer_id"], t["rule"]): t["fire_at"] for t in admin.timers(None, 100)}
    assert waits[("c2", "flow:review_request")] == (T0 + timedelta(days=9)).isoformat()
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
    assert (again.switched_on, again.seeded, again.kept, again.timers_dropped) == ([], {}, [], 0)
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


def test_a_stores_rule_overrides_are_migrated(tmp_path: Path) -> None:
    """Rules once changed over the rules' API (``outreach_rule_overrides``) become their
    flows at the switch, over the shipped lifecycle flows; a new rule id, a new flow."""
    settings = Settings(data_dir=tmp_path)
    build_store(settings).close()
    overrides = [
        {"id": "review_request", "trigger": "post_purchase", "delay": "3d", "channels": ["email"]},
        {"id": "vip-two", "trigger": "high_value", "frequency_cap": "30d"},
    ]
    with sqlite3.connect(settings.sqlite_path) as db:
        db.executemany(
            "INSERT INTO outreach_rule_overrides (rule_id, body, updated_ts) VALUES (?, ?, 0)",
            [(rule["id"], orjson.dumps(rule).decode()) for rule in overrides],
        )
    store, definitions = build_store(settings), build_flow_definitions(settings)
    report = switch_to_flows(settings, definitions, store)
    assert sorted(report.switched_on) == sorted([*LIFECYCLE, "vip_two"])
    in_force = definitions.current()
    review = in_force.get("review_request")
    assert review.enabled and review.date_entries[0].anchor.after_ms == 3 * DAY_MS
    assert [node for node in review.source["nodes"]] == ["due", "send_email"]
    assert in_force.get("vip_two").enabled
    assert in_force.get("win_back").source == {**SHIPPED["win_back"], "enabled": True, "version": 2}
    store.close()
    definitions.close()


def test_the_rules_file_is_read_through_the_migration(tmp_path: Path) -> None:
    # The shipped abandoned-cart rule is the canonical flow: it migrates to nothing.
    assert lifecycle_flows([SHIPPED_ABANDONED_CART]) == {}
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
    table = {**SHIPPED["review_request"], "enabled": True}  # as the switch turns it on
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
