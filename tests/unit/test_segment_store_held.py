"""Segment states of batches folded and not yet saved, served to readers
(projections/segment_store.py: hold, landed, current_states) over a real SQLite store."""

from __future__ import annotations

from pathlib import Path

from journeys.segment_state import SegmentState
from projections.segment_store import SegmentStore


def members(store: SegmentStore, *keys: str) -> dict[str, set[str]]:
    return {key: state.members for key, state in store.current_states(keys).items()}


def test_a_batch_in_flight_is_read_until_saved_and_a_later_one_stays(tmp_path: Path) -> None:
    store = SegmentStore(sqlite_path=tmp_path / "events.sqlite")
    store.save([("events#0", 1, {"c1": SegmentState(clock=1, members={"a"})})])
    first = {"c1": SegmentState(clock=2, members={"a", "b"}), "c2": SegmentState(clock=2)}
    first_token, texts = store.hold(first)
    assert set(texts) == {"c1", "c2"}  # the JSON the batch's save writes as it is
    assert members(store, "c1", "c2", "c3") == {"c1": {"a", "b"}, "c2": set()}
    assert store.states(["c1", "c2"])["c1"].members == {"a"}  # what the worker folds from
    second_token, _ = store.hold({"c1": SegmentState(clock=3, members={"c"})})
    store.save([("events#0", 2, first)], texts=texts)
    store.landed(first, first_token)
    # The first batch is saved; the second, holding c1 again, is not yet.
    assert members(store, "c1", "c2") == {"c1": {"c"}, "c2": set()}
    store.save([("events#0", 3, {"c1": SegmentState(clock=3, members={"c"})})])
    store.landed(["c1"], second_token)
    assert members(store, "c1") == {"c1": {"c"}}
    # An erasure drops what is held too.
    store.hold({"c4": SegmentState(clock=4, members={"a"})})
    store.forget_customers(["c4"])
    assert members(store, "c4") == {}
    store.close()
