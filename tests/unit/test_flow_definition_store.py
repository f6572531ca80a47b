"""The stored flows (projections/flow_definition_store.py) over a real SQLite file:
seeded once, versions that mean one definition, pauses, and what the runner reads."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from journeys.flows.definitions import FlowError, parse_flow
from journeys.flows.pauses import FlowPause
from projections.flow_definition_store import FlowConflict, FlowDefinitions
from projections.segment_definition_store import SegmentDefinitions
from stack.flows import load_flows
from stack.settings import Settings


def _cart() -> dict[str, Any]:
    (flow,) = [f for f in load_flows(Settings()) if f.id == "abandoned_cart"]
    return copy.deepcopy(dict(flow.source))


def _store(tmp_path: Path) -> FlowDefinitions:
    store = FlowDefinitions(sqlite_path=tmp_path / "events.sqlite")
    store.seed({"flows": {"abandoned_cart": _cart()}})
    return store


def _flow(table: dict[str, Any], flow_id: str = "abandoned_cart") -> Any:
    flow = parse_flow(flow_id, table)
    assert flow is not None
    return flow


def test_seeded_once_and_read_back_as_written(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.version() == 1
    assert not store.seed({"flows": {}})  # seeded before: the file is not read again
    (flow,) = store.current().flows
    assert (flow.id, flow.version, flow.fingerprint) == (
        "abandoned_cart",
        1,
        _flow(_cart()).fingerprint,
    )
    store.close()
    # Another process (the API beside the worker) sees the same.
    again = FlowDefinitions(sqlite_path=tmp_path / "events.sqlite")
    assert [f.id for f in again.current().flows] == ["abandoned_cart"]
    again.close()


def test_a_changed_flow_needs_a_new_version(tmp_path: Path) -> None:
    store = _store(tmp_path)
    changed = _cart()
    changed["nodes"]["wait_for_order"]["timeout"] = "2h"
    with pytest.raises(FlowConflict) as refused:
        store.put(_flow(changed))
    assert refused.value.errors == [
        (
            "flows.abandoned_cart.version",
            "version 1 is in force with another definition: give the change version 2",
        )
    ]
    assert store.version() == 1  # nothing written
    existed, in_force = store.put(_flow({**changed, "version": 2}))
    assert existed and in_force.get("abandoned_cart").version == 2  # type: ignore[union-attr]
    with pytest.raises(FlowConflict, match="version 2 is in force"):
        store.put(_flow(_cart()))  # back to version 1
    # The same definition again: accepted, nothing changes.
    existed, _ = store.put(_flow({**changed, "version": 2}))
    assert existed
    store.close()


def test_a_version_the_runner_recorded_keeps_its_definition(tmp_path: Path) -> None:
    """Deleted and defined again: version 1 was run with the shipped definition."""
    store = _store(tmp_path)
    shipped = _flow(_cart())
    assert store.delete("abandoned_cart")
    assert not store.delete("abandoned_cart")
    changed = _cart()
    changed["nodes"]["reminder"]["body"] = "Still there?"
    with pytest.raises(FlowConflict, match="version 1 was run with another definition"):
        store.put(_flow(changed), {1: shipped.fingerprint})
    existed, _ = store.put(_flow({**changed, "version": 3}), {1: shipped.fingerprint})
    assert not existed
    store.close()


def test_pause_and_resume_are_changes_the_runner_sees(tmp_path: Path) -> None:
    store = _store(tmp_path)
    before = store.version()
    assert store.pause("abandoned_cart", 1234)
    assert store.current().paused == {"abandoned_cart": 1234}
    assert store.pause("abandoned_cart", 9999)  # paused already: since stays
    assert store.current().paused == {"abandoned_cart": 1234}
    assert store.version() == before + 1
    assert not store.pause("nope", 1)
    assert not store.resume("nope", 1)
    assert store.document()["paused"] == {"abandoned_cart": {"at_ms": 1234, "ended": []}}
    assert store.resume("abandoned_cart", 2000)
    assert store.current().paused == {}
    assert store.resume("abandoned_cart", 3000)  # not paused: nothing written
    assert store.version() == before + 2
    # The pause is kept as an ended one: an entry stamped inside it is still refused.
    assert store.current().pauses["abandoned_cart"] == FlowPause(None, ((1234, 2000),))
    assert store.pause("abandoned_cart", 2500) and store.resume("abandoned_cart", 2600)
    assert store.current().pauses["abandoned_cart"].ended == ((1234, 2000), (2500, 2600))
    # A deleted flow takes its pauses with it, in the same transaction (one version):
    # defined again, it is not paused and was never paused.
    store.pause("abandoned_cart", 5000)
    deleting = store.version()
    assert store.delete("abandoned_cart")
    assert store.version() == deleting + 1
    assert store.document() == {"flows": {}, "paused": {}}
    assert not store.pause("abandoned_cart", 6000)  # deleted: unknown
    store.put(_flow(_cart()))
    assert store.current().pauses == {}
    store.close()


def test_a_pause_stored_before_ended_pauses_were_kept_reads_as_in_force(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.change("paused", "abandoned_cart", {"at_ms": 1234})  # the shape stored before
    assert store.current().pauses["abandoned_cart"] == FlowPause(1234)
    assert store.resume("abandoned_cart", 2000)
    assert store.current().pauses["abandoned_cart"] == FlowPause(None, ((1234, 2000),))
    store.close()


def test_invalid_flows_are_refused_naming_the_node_and_field(tmp_path: Path) -> None:
    store = _store(tmp_path)
    broken = _cart()
    broken["nodes"]["reminder"]["body"] = "{{ cart.total }}"
    with pytest.raises(FlowError) as refused:
        parse_flow("abandoned_cart", broken)
    (path, message), *_ = refused.value.errors
    assert path == "flows.abandoned_cart.nodes.reminder.body"
    assert "unknown variable 'cart'" in message
    # The store checks the whole document in the change's transaction too.
    with pytest.raises(FlowError, match="unknown variable 'cart'"):
        store.change("flows", "abandoned_cart", broken)
    assert store.version() == 1
    assert store.document()["flows"]["abandoned_cart"] == _cart()
    store.close()


def test_segments_keep_their_store_in_the_shared_shape(tmp_path: Path) -> None:
    """Segments and flows share the store's code, each in its own tables."""
    path = tmp_path / "events.sqlite"
    flows = _store(tmp_path)
    segments = SegmentDefinitions(sqlite_path=path)
    assert segments.version() == 0
    segments.seed({"traits": {}, "segments": {}})
    assert segments.document() == {"traits": {}, "segments": {}}
    assert flows.version() == 1
    segments.close()
    flows.close()
