"""The incremental evaluation gives what a full one does; the evaluator bench runs."""

from __future__ import annotations

from typing import Any

from bench.segment_evaluator import history, main
from bench.segments import definitions_document
from journeys.segment_definitions import parse_definitions
from journeys.segment_state import MembershipChange, SegmentEvaluator, SegmentState


def _definitions() -> dict[str, Any]:
    document = definitions_document(True)
    # A static segment, and one that refers to it (as the bench's, listed below).
    document["segments"]["vip_list"] = {"static": True}
    document["segments"]["vip_browsers"] = {
        "where": {"and": [{"segment": "vip_list"}, {"segment": "browsers"}]}
    }
    return document


def _fold(incremental: bool) -> list[MembershipChange]:
    evaluator = SegmentEvaluator(parse_definitions(_definitions()))
    stored: dict[str, dict[str, object]] = {}
    changes: list[MembershipChange] = []
    for i, (customer, event, stage) in enumerate(history(3_000, 150, seed=5)):
        held = stored.get(customer)
        state = SegmentState.from_dict(held) if held is not None else SegmentState()
        if not incremental:
            state.evaluated_by = ""  # every segment evaluated again
        changes.extend(evaluator.advance(state, [event], stage=stage))
        if i % 7 == 0:  # time passing alone, between events
            changes.extend(evaluator.tick(state, (state.clock or 0) + 3_600_000 * (i % 50)))
        if i % 11 == 0:
            changes.extend(evaluator.observe_rfm(state, ("loyal", "")[i % 2], state.clock or 0))
        if i % 13 == 0:
            at = state.clock or 0
            changes.extend(evaluator.observe_listed(state, "vip_list", i % 26 == 0, at))
        assert state.clock is not None
        assert state.members == evaluator.members(state, state.clock)
        stored[customer] = state.to_dict()
    return changes


def test_incremental_evaluation_equals_full_evaluation() -> None:
    incremental = _fold(incremental=True)
    assert incremental == _fold(incremental=False)
    moved = {c.segment for c in incremental}
    assert len(moved) >= 10 and {"vip_list", "vip_browsers"} <= moved  # most segments moved


def test_the_evaluator_bench_runs_at_a_tiny_size(capsys: object) -> None:
    assert main(["--events", "300", "--customers", "30", "--runs", "1"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "20 segments + 10 traits" in out and "raw limit" in out
