"""A flow's pauses judged by event time (journeys/flows/pauses.py), through the engine's
shared-memory path (flows that keep the customer's facts, as the worker runs them):
an entry stamped inside a pause is refused whenever it arrives, one stamped before
the pause that arrives during it enters on resume, and a date anchor due inside a
pause is refused rather than entered late."""

from __future__ import annotations

from typing import Any

from journeys.flows.definitions import FlowCatalog, parse_flow
from journeys.flows.engine import CustomerMemory, FlowEngine, FlowState
from journeys.flows.facts import Entered, FlowFact, Sent, Skipped
from journeys.flows.inputs import FlowInput
from journeys.flows.pauses import PAUSES_KEPT, FlowPause
from tests.unit.test_flow_anchors import DAY, HOUR, MINUTE, ORDER_PLUS_7D, T0, ev, flow, send

# Event-triggered, keeping facts (its message reads ``data``): shares the memory.
WELCOME = flow(
    {
        "signed_up": {"kind": "entry", "event": "Signed Up", "next": "s"},
        "s": send(body="orders so far: {{ data.orders }}"),
    }
)


def test_a_pause_covers_its_spans_and_holds_what_came_before_it() -> None:
    running = FlowPause()
    assert not running.in_force and not running.covers(T0) and not running.holds(T0)
    paused = running.paused(T0)
    assert paused.covers(T0) and paused.covers(T0 + DAY) and not paused.covers(T0 - 1)
    assert paused.holds(T0 - 1) and not paused.holds(T0)
    assert paused.paused(T0 + HOUR) == paused  # paused already: since stays
    ended = paused.resumed(T0 + HOUR)
    assert ended == FlowPause(None, ((T0, T0 + HOUR),))
    assert ended.covers(T0 + HOUR - 1) and not ended.covers(T0 + HOUR)
    assert not ended.holds(T0 - 1)  # nothing waits once resumed
    assert ended.resumed(T0 + DAY) == ended
    assert FlowPause.from_dict(ended.to_dict()) == ended
    many = FlowPause()
    for n in range(PAUSES_KEPT + 5):
        many = many.paused(T0 + n * HOUR).resumed(T0 + n * HOUR + MINUTE)
    assert len(many.ended) == PAUSES_KEPT and many.ended[0][0] == T0 + 5 * HOUR


class Customer:
    """One customer's memory and flow states, saved only as the engine returns them."""

    def __init__(self) -> None:
        self.engine = FlowEngine(
            FlowCatalog.of(
                [parse_flow("review", ORDER_PLUS_7D), parse_flow("welcome", WELCOME)]  # type: ignore[list-item]
            )
        )
        assert all(self.engine.shares_memory(f) for f in ("review", "welcome"))
        self.memory = CustomerMemory("c1")
        self.stored: dict[str, dict[str, Any]] = {}
        self.facts: list[FlowFact] = []

    def states(self) -> dict[str, FlowState]:
        return {
            f: FlowState.from_dict(self.stored[f]) if f in self.stored else FlowState("c1", f)
            for f in ("review", "welcome")
        }

    def observe(self, item: FlowInput, now: int, pauses: dict[str, FlowPause]) -> None:
        step = self.engine.observe_customer(self.memory, self.states(), item, now, pauses)
        self._save(step.states, step.facts)

    def advance(self, now: int, pauses: dict[str, FlowPause]) -> None:
        step = self.engine.advance_customer(self.memory, self.states(), now, now, pauses)
        self._save(step.states, step.facts)

    def _save(self, states: list[FlowState], facts: list[FlowFact]) -> None:
        self.stored.update((state.flow_id, state.to_dict()) for state in states)
        self.facts += facts

    def of(self, kind: type[FlowFact], flow_id: str) -> list[tuple[int, str]]:
        return [
            (fact.at_ms - T0, getattr(fact, "reason", ""))
            for fact in self.facts
            if isinstance(fact, kind) and fact.flow_id == flow_id
        ]


def test_entries_are_judged_by_their_stamps_against_the_pauses() -> None:
    customer = Customer()
    customer.advance(T0, {})
    customer.observe(ev(1, "Order Completed", T0, revenue=5), T0 + 10_000, {})  # due at 7 d
    pause = FlowPause(T0 + HOUR)
    paused = {"review": pause, "welcome": pause}
    # From before the pause, consumed during it: held for the resume, not refused.
    customer.observe(ev(2, "Signed Up", T0 + 30 * MINUTE), T0 + 2 * HOUR, paused)
    # Stamped inside the pause: held too, behind it (what came first is decided first:
    # an order during the pause converts the run the held cart starts).
    customer.observe(ev(3, "Signed Up", T0 + 3 * HOUR), T0 + 3 * HOUR, paused)
    customer.advance(T0 + 8 * DAY, paused)  # the review's anchor came due at 7 d: held
    assert customer.facts == []

    resumed = pause.resumed(T0 + 8 * DAY)
    after = {"review": resumed, "welcome": resumed}
    customer.advance(T0 + 8 * DAY + MINUTE, after)
    # The held sign-up enters at its own time, the one inside the pause is refused; so
    # is the anchor due inside the pause.
    assert customer.of(Entered, "welcome") == [(30 * MINUTE, "")]
    assert customer.of(Sent, "welcome") == [(30 * MINUTE, "")]
    assert customer.of(Skipped, "welcome") == [(3 * HOUR, "paused")]
    assert customer.of(Skipped, "review") == [(7 * DAY, "paused")]
    assert customer.stored["review"]["anchored"]["after_order"][-1][2] == "paused"
    # Stamped inside the ended pause, consumed after it: refused all the same.
    customer.observe(ev(4, "Signed Up", T0 + 5 * HOUR), T0 + 8 * DAY + 2 * MINUTE, after)
    assert customer.of(Skipped, "welcome") == [(3 * HOUR, "paused"), (5 * HOUR, "paused")]
    # After the resume the flows run as ever: a new order's anchor enters 7 days on.
    customer.observe(ev(5, "Order Completed", T0 + 8 * DAY + HOUR), T0 + 8 * DAY + HOUR, after)
    customer.advance(T0 + 16 * DAY, after)
    assert customer.of(Entered, "review") == [(15 * DAY + HOUR, "")]
    assert customer.of(Sent, "review") == [(15 * DAY + HOUR, "")]


def test_a_customer_with_nothing_held_is_refused_at_once_and_the_facts_still_fold() -> None:
    customer = Customer()
    pause = FlowPause(T0)
    paused = {"review": pause, "welcome": pause}
    customer.advance(T0, paused)
    customer.observe(ev(1, "Signed Up", T0 + MINUTE), T0 + MINUTE, paused)
    customer.observe(ev(2, "Order Completed", T0 + 2 * MINUTE, revenue=5), T0 + 2 * MINUTE, paused)
    customer.advance(T0 + 3 * MINUTE, paused)  # the memory's wake-up: its inputs taken
    assert customer.of(Skipped, "welcome") == [(MINUTE, "paused")]
    assert customer.stored["welcome"]["pending"] == []  # nothing kept for the resume
    # What the inputs said of the customer is known to every flow sharing the memory.
    assert customer.memory.facts is not None and len(customer.memory.facts["orders"]) == 1
