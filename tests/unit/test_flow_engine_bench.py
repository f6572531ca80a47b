"""bench/flow_engine.py runs at a tiny size, and the state it measures is stored as before."""

from __future__ import annotations

import copy
import dataclasses
import json
from uuid import uuid5

from bench.flow_engine import main, run_engine, shipped_flows, synthetic_inputs
from journeys.flows.definitions import FlowCatalog
from journeys.flows.engine import FlowEngine, FlowState
from journeys.flows.facts import _FACT_NAMESPACE


def test_the_engine_benchmark_runs_at_a_tiny_size() -> None:
    figures = main(["--events", "300", "--customers", "30", "--runs", "1", "--live", "50"])
    assert figures["canonical_events_per_s"] > 0 and figures["eight_events_per_s"] > 0
    assert figures["eight_over_canonical"] > 0
    writes = figures["state_writes_per_event"]
    # The lifecycle flows' anchors read more than the cart's events: more states touched.
    assert writes["eight"] > writes["canonical"] > 0
    assert figures["facts"]["eight"] > figures["facts"]["canonical"] > 0
    assert figures["live_eight_state_rows"] > figures["live_canonical_state_rows"] > 0
    assert figures["live_eight_over_canonical"] > 0


def test_a_state_is_written_as_dataclasses_asdict_wrote_it() -> None:
    """to_dict is the stored shape: what the old code (asdict) wrote loads back the same."""
    inputs = synthetic_inputs(400, 10)
    flows = shipped_flows(all_on=True)
    engine = FlowEngine(FlowCatalog.of(flows))
    states: dict[tuple[str, str], FlowState] = {}
    for key, item in inputs:
        for flow in flows:
            state = states.setdefault((key, flow.id), FlowState(key, flow.id))
            engine.observe(state, item, item.at_ms)
            engine.advance(state, item.at_ms, item.at_ms)
    assert any(state.facts and state.anchored for state in states.values())
    assert any(state.run is not None for state in states.values())
    for state in states.values():
        old = dataclasses.asdict(state)
        assert state.to_dict() == old
        loaded = FlowState.from_dict(copy.deepcopy(old))
        assert loaded == state and loaded.to_dict() == old
    assert run_engine(flows, inputs[:50])["state_writes"] > 0


def test_fact_ids_are_the_ids_the_asdict_formula_gave() -> None:
    """A fact's id keys it in the store (a replay inserts nothing twice): it must not move."""
    inputs = synthetic_inputs(400, 10)
    engine = FlowEngine(FlowCatalog.of(shipped_flows(all_on=True)))
    found = []
    for key, item in inputs:
        for flow_id in engine.catalog.flow_ids():
            state = FlowState(key, flow_id)
            found += engine.observe(state, item, item.at_ms).facts
            found += engine.advance(state, item.at_ms + 30 * 86_400_000).facts
    assert {fact.type for fact in found} >= {"Entered", "Sent", "Waiting", "Left"}
    for fact in found:
        detail = json.dumps(dataclasses.asdict(fact), sort_keys=True, default=str)
        assert fact.fact_id == str(uuid5(_FACT_NAMESPACE, f"{fact.type}|{detail}"))
