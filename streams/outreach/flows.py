"""Journey flows run live, beside the trigger rules, in the trigger consumer and timer loop.

The engine is journeys/flows (pure, the one the backtest runs). Here: each
customer's state per flow is kept in the outreach store (``flow_states``), saved
with the consumed position of the batch that changed it, as the trigger facts
are; the timer loop advances the states whose wake-up time has come, for
partitions consumed to their high-water mark only (so an order already
accepted is taken before the deadline it beats), and records the facts and the
messages to send in one transaction. A message is a trigger for the existing
delivery path (outbox, ``journey.triggers``, signed webhook / SMTP, retries),
its id the ``Sent`` fact's ``message_id``: one per run and send node, so it is
delivered once across crashes and replays.

Every version of a flow the worker has seen is recorded (``flow_versions``), so
customers inside finish on the version they entered after the flows moved on.
With the stored flows (projections/flow_definition_store.py) the runner polls
their version every ``DEFINITIONS_RELOAD_S`` and takes a change (a new version,
a deleted flow, a pause or a resume) between two ticks, with no restart.

A paused flow takes no new runs and decides nothing for the runs inside: their
inputs are kept in their states and their due steps are not advanced; on resume
they are advanced in event time, as after an outage: a customer who bought during
the pause converts, and a send that came due longer than the grace before the
resume is skipped ``expired``. Entries are judged by their stamps
(journeys/flows/pauses.py): one stamped inside a pause is refused (``Skipped``
paused), also when it arrives after the resume; one stamped before the pause that
arrives during it is held and enters on resume.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from journeys.flows.definitions import FlowCatalog, FlowDefinition, FlowError, parse_flow
from journeys.flows.engine import (
    CustomerMemory,
    FlowEngine,
    FlowState,
    FlowStep,
    join_memory,
    render_message,
)
from journeys.flows.facts import FlowFact, Sent
from journeys.flows.inputs import FlowInput, iso
from journeys.flows.nodes import SendNode
from journeys.flows.pauses import FlowPause
from journeys.flows.templates import RenderFailed
from projections.flow_definition_store import FlowDefinitions, FlowsInForce
from streams.outreach.store import SHARED_MEMORY, FlowWrite, OutreachStore

log = logging.getLogger(__name__)

# (rule id, channels, message) → its deliveries (endpoint id, channel, initial state).
Targets = Callable[[str, Sequence[str], dict[str, Any]], list[tuple[str, str, str]]]

# How often the stored flows' version is read (a one-row query), as segments' definitions.
DEFINITIONS_RELOAD_S = 2.0


def _paused_now(pauses: Mapping[str, FlowPause]) -> list[str]:
    return sorted(flow_id for flow_id, pause in pauses.items() if pause.in_force)


class FlowRunner:
    """The flows in force, and every recorded version, over the outreach store."""

    def __init__(
        self,
        store: OutreachStore,
        flows: Sequence[FlowDefinition] | FlowDefinitions,
        targets: Targets,
        grace_ms: int | None,
    ) -> None:
        self.store = store
        self._targets = targets
        self._grace_ms = grace_ms
        # The stored flows (polled for changes), or a fixed list (tests, the file).
        self._stored = flows if isinstance(flows, FlowDefinitions) else None
        self._version = -1
        self._checked = 0.0
        # The engine and the flows' pauses, swapped as one (a reload runs beside batches).
        self._current: tuple[FlowEngine, Mapping[str, FlowPause]] = (
            FlowEngine(FlowCatalog()),
            {},
        )
        if isinstance(flows, FlowDefinitions):
            self._take(self._stored_flows())
        else:
            self._take(FlowsInForce(tuple(flows)))

    @property
    def engine(self) -> FlowEngine:
        return self._current[0]

    @property
    def paused(self) -> list[str]:
        """The flows paused now."""
        return _paused_now(self._current[1])

    def _stored_flows(self) -> FlowsInForce:
        assert self._stored is not None
        self._version = self._stored.version()
        self._checked = time.monotonic()
        return self._stored.current()

    def _take(self, flows: FlowsInForce) -> None:
        self._current = (FlowEngine(self.catalog(flows.flows), self._grace_ms), dict(flows.pauses))

    def reload(self) -> bool:
        """Take the stored flows again if they changed (at most every DEFINITIONS_RELOAD_S);
        True when they did. A store that cannot be read or parsed keeps the flows as
        they were (logged)."""
        if self._stored is None or time.monotonic() - self._checked < DEFINITIONS_RELOAD_S:
            return False
        self._checked = time.monotonic()
        try:
            if self._stored.version() == self._version:
                return False
            self._take(self._stored_flows())
        except Exception:
            log.exception("stored flows could not be read; keeping the previous ones")
            return False
        log.info("flows reloaded (version %s); paused: %s", self._version, self.paused)
        return True

    def catalog(self, flows: Sequence[FlowDefinition]) -> FlowCatalog:
        """``flows`` in force, with every version recorded before for the runs inside."""
        self.store.record_flow_versions(
            [
                (f.id, f.version, f.fingerprint, orjson.dumps(dict(f.source), default=str).decode())
                for f in flows
            ]
        )
        in_force = {f.id: f for f in flows}
        catalog = FlowCatalog(in_force={f.id: f.version for f in flows})
        for flow_id, version, fingerprint, source in self.store.flow_versions():
            current = in_force.get(flow_id)
            if (
                current is not None
                and current.version == version
                and current.fingerprint != fingerprint
            ):
                log.error(
                    "flow %s changed without a new version: runs keep version %s as first "
                    "recorded; give the change a new version",
                    flow_id,
                    version,
                )
            try:
                parsed = parse_flow(flow_id, orjson.loads(source))
            except FlowError as error:
                log.error("recorded flow %s v%s no longer parses: %s", flow_id, version, error)
                continue
            if parsed is not None:
                catalog = catalog.with_version(parsed)
        return catalog

    @property
    def active(self) -> bool:
        """False without any flow: the worker skips the flow work entirely."""
        return bool(self.engine.catalog.versions)

    def observe(
        self, partition: int, items: Sequence[tuple[str, FlowInput]], now_ms: int
    ) -> FlowWrite:
        """Inputs of one partition into the states of the flows they can matter to."""
        engine, pauses = self._current
        flow_ids = engine.catalog.flow_ids()
        shared = tuple(f for f in flow_ids if engine.shares_memory(f))
        alone = [f for f in flow_ids if f not in shared]
        relevant = [
            (key, flow_id, item) for key, item in items for flow_id in engine.wanting(alone, item)
        ]
        write = FlowWrite()
        if relevant:
            stored = self.store.flow_states_of((key for key, _, _ in relevant), alone)
            states: dict[tuple[str, str], FlowState] = {}
            for key, flow_id, item in relevant:
                state = states.get((key, flow_id))
                if state is None:
                    found = stored.get((key, flow_id))
                    state = FlowState.from_dict(found) if found else FlowState(key, flow_id)
                    states[(key, flow_id)] = state
                pause = pauses.get(flow_id)
                if engine.holds(state, item, pause):
                    engine.hold(state, item)  # decided on resume, in event time
                else:
                    self._collect(write, engine.observe(state, item, now_ms, pause), now_ms)
            for state in states.values():
                write.states.append(self._row(state, partition, engine))
        if shared and items:
            self._observe_shared(write, partition, items, shared, now_ms)
        return write

    def _observe_shared(
        self,
        write: FlowWrite,
        partition: int,
        items: Sequence[tuple[str, FlowInput]],
        shared: Sequence[str],
        now_ms: int,
    ) -> None:
        """Every input into the customer's memory shared by the flows that keep facts: kept
        there (one row) until the timer advances it, or taken at once by the flows if late."""
        engine, pauses = self._current
        paused = {f: pauses[f] for f in shared if f in pauses}
        customers = self._customers(dict.fromkeys(key for key, _ in items), shared)
        changed = {key: {s.flow_id: s for s in joined} for key, (_, _, joined) in customers.items()}
        for key, item in items:
            memory, states, _ = customers[key]
            step = engine.observe_customer(memory, states, item, now_ms, paused)
            changed[key].update((s.flow_id, s) for s in step.states)
            self._collect_all(write, step.facts, states, now_ms)
        for key, (memory, _, _) in customers.items():
            write.states.append(self._memory_row(memory, partition))
            self._shared_rows(write, changed[key].values(), partition)

    def _customers(
        self, keys: Sequence[str] | Mapping[str, None], shared: Sequence[str]
    ) -> dict[str, tuple[CustomerMemory, dict[str, FlowState], list[FlowState]]]:
        """Each customer's memory and states in the flows sharing it (read from the store,
        or its memory of what it wrote), flow states stored before the memory carried
        forward into it (join_memory: those states are to be saved, as changed)."""
        stored = self.store.flow_states_of(keys, (SHARED_MEMORY, *shared))
        found = {}
        for key in keys:
            states = {
                flow_id: FlowState.from_dict(stored[(key, flow_id)])
                if (key, flow_id) in stored
                else FlowState(key, flow_id)
                for flow_id in shared
            }
            row = stored.get((key, SHARED_MEMORY))
            memory, joined = join_memory(
                CustomerMemory.from_dict(row) if row else None, key, states
            )
            found[key] = (memory, states, joined)
        return found

    def advance_due(self, ready: Sequence[int], now_ms: int) -> FlowWrite:
        """States of ready partitions whose wake-up time has come, advanced to now."""
        write = FlowWrite()
        engine, pauses = self._current
        due = self.store.due_flow_states(ready, now_ms / 1000, held=_paused_now(pauses))
        shared = tuple(f for f in engine.catalog.flow_ids() if engine.shares_memory(f))
        together: dict[str, int] = {}  # customer → partition: their shared flows advance as one
        for key, flow_id, partition, data in due:
            if flow_id == SHARED_MEMORY or flow_id in shared:
                together.setdefault(key, partition)
                continue
            state = FlowState.from_dict(data)
            advanced = engine.advance(state, now_ms, now_ms, pauses.get(flow_id))
            self._collect(write, advanced, now_ms)
            write.states.append(self._row(state, partition, engine))
        if together:
            paused = {f: pauses[f] for f in shared if f in pauses}
            for key, (memory, states, joined) in self._customers(list(together), shared).items():
                step = engine.advance_customer(memory, states, now_ms, now_ms, paused)
                self._collect_all(write, step.facts, states, now_ms)
                write.states.append(self._memory_row(memory, together[key]))
                saved = {s.flow_id: s for s in (*joined, *step.states)}
                self._shared_rows(write, saved.values(), together[key])
        return write

    def _shared_rows(self, write: FlowWrite, states: Iterable[FlowState], partition: int) -> None:
        """The rows of the states a call changed (the others are as stored)."""
        for state in states:
            if state.to_dict() != FlowState(state.customer_key, state.flow_id).to_dict():
                write.states.append(self._row(state, partition, self.engine))
            # else: nothing known in this flow yet; no row (a row once written is kept)

    @staticmethod
    def _memory_row(
        memory: CustomerMemory, partition: int
    ) -> tuple[str, str, int, dict[str, Any], float | None]:
        wake = memory.pending[0]["at_ms"] / 1000 if memory.pending else None
        return (memory.customer_key, SHARED_MEMORY, partition, memory.to_dict(), wake)

    @staticmethod
    def _row(
        state: FlowState, partition: int, engine: FlowEngine
    ) -> tuple[str, str, int, dict[str, Any], float | None]:
        wake = engine.wake(state)
        return (
            state.customer_key,
            state.flow_id,
            partition,
            state.to_dict(),
            None if wake is None else wake / 1000,
        )

    def _collect(self, write: FlowWrite, step: FlowStep, now_ms: int) -> None:
        self._collect_all(write, step.facts, {step.state.flow_id: step.state}, now_ms)

    def _collect_all(
        self,
        write: FlowWrite,
        facts: Sequence[FlowFact],
        states: Mapping[str, FlowState],
        now_ms: int,
    ) -> None:
        for fact in facts:
            write.facts.append(fact.to_dict())
            if isinstance(fact, Sent):
                message = self.message(fact, states[fact.flow_id], now_ms)
                targets = self._targets(message["rule"], [fact.channel], message)
                write.sends.append((message, targets))

    def rendered(self, message: dict[str, Any]) -> dict[str, Any]:
        """The message (its personal values opened) with its subject and body rendered, and
        without the variables; raises RenderFailed when it cannot be rendered."""
        flow = self.engine.catalog.definition(str(message["flow"]), int(message["version"]))
        node = flow.nodes.get(str(message["node"])) if flow is not None else None
        if not isinstance(node, SendNode):
            raise RenderFailed(f"flow {message['flow']} v{message['version']} has no such send")
        variables = {
            **(message.get("variables") or {}),
            "unsubscribe_url": message.get("unsubscribe_url") or "",
        }
        subject, body = render_message(node, variables)
        shown = {k: v for k, v in message.items() if k != "variables"}
        return {**shown, "subject": subject, "body": body}

    @staticmethod
    def message(sent: Sent, state: FlowState, now_ms: int) -> dict[str, Any]:
        """A flow's message as the triggers topic carries it and webhooks receive it."""
        email = state.traits.get("email")
        return {
            "trigger_id": sent.message_id,
            "rule": f"flow:{sent.flow_id}",
            "trigger": "flow",
            "customer_id": sent.customer_key,
            "flow": sent.flow_id,
            "version": sent.version,
            "node": sent.node,
            "run_id": sent.run_id,
            "fact_id": sent.fact_id,
            "channels": [sent.channel],
            "variables": dict(sent.variables),
            "email": email[0] if email else None,
            "started_at": iso(sent.at_ms),
            "due_at": iso(sent.at_ms),
            "fire_at": iso(sent.at_ms),
            "fired_at": iso(now_ms),
            "due_ts": sent.at_ms / 1000,
            "data": {"entry": state.run.entry if state.run else {}},
        }
