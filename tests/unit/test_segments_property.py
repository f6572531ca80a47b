"""Property: incremental segment membership equals a direct evaluation over the events known.

Random definitions (TOML-like dicts) and random histories (ties, out-of-order
arrival, instants on window boundaries): after each arrival, at random instants
not before the latest event, the evaluator's membership and trait values equal
those computed here directly, in plain Python, from the raw definitions and the
events known then. The state is folded in arrival order, in random batches.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journeys.segment_definitions import DAY_MS, parse_definitions
from journeys.segment_state import SegmentEvaluator, SegmentEvent, SegmentState

T0 = 1_780_000_000_000
STEP = DAY_MS // 4
NAMES = ["Product Viewed", "Order Completed", "Product Added"]
TYPES = {"Product Viewed": "browse", "Order Completed": "purchase", "Product Added": "cart"}
WINDOWS = {"1d": DAY_MS, "3d": 3 * DAY_MS}
STAGES = ["awareness", "purchase", "loyalty"]

# --- definitions ---------------------------------------------------------------------

filters: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"cat": st.sampled_from(["x", "y", {"in": ["x", "z"]}, {"ne": "x"}])}),
    st.fixed_dictionaries(
        {"price": st.sampled_from([{"gt": 2}, {"gte": 2}, {"lt": 3}, {"lte": 1}, 4])}
    ),
    st.fixed_dictionaries({"cat": st.just({"contains": "x"})}),
)


@st.composite
def matches(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if draw(st.booleans()):
        raw["event"] = draw(st.sampled_from([*NAMES, "product viewed"]))
    else:
        raw["type"] = draw(st.sampled_from(["browse", "purchase", "cart", "identify"]))
    props = draw(filters)
    if props:
        raw["properties"] = props
    return raw


@st.composite
def windows(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["all", "within", "since"]))
    if kind == "within":
        return {"within": draw(st.sampled_from(sorted(WINDOWS)))}
    if kind == "since":
        return {"since": _iso(T0 + draw(st.integers(0, 20)) * STEP)}
    return {}


@st.composite
def traits(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(["count", "sum", "min", "max", "first", "last", "most_frequent"]))
    raw = {"op": draw(st.sampled_from([op, "days_since_last"])), **draw(matches())}
    if raw["op"] in ("sum", "min", "max"):
        raw["property"] = "price"
    elif raw["op"] in ("first", "last", "most_frequent") and draw(st.booleans()):
        raw["property"] = draw(st.sampled_from(["cat", "price"]))
    raw.update(draw(windows()))
    return raw


def conditions(
    trait_ids: list[str], segment_ids: list[str], stages: bool = True
) -> st.SearchStrategy[Any]:
    """Condition trees; ``stages``: with stage and identify-trait leaves too."""
    leaves: list[st.SearchStrategy[Any]] = [
        st.builds(
            lambda m, w, c, absent: {**m, **w, **({"absent": True} if absent else c)},
            matches(),
            windows(),
            st.fixed_dictionaries(
                {},
                optional={
                    "count": st.integers(0, 3),
                    "compare": st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]),
                },
            ),
            st.booleans(),
        ),
    ]
    if stages:
        leaves.append(
            st.builds(lambda s: {"stage": s}, st.sampled_from([*STAGES, ["purchase", "loyalty"]]))
        )
        leaves.append(
            st.builds(
                lambda op: {"identify": "plan", **op},
                st.sampled_from(
                    [{"eq": "pro"}, {"ne": "pro"}, {"exists": True}, {"exists": False}]
                ),
            )
        )
    if trait_ids:
        leaves.append(
            st.builds(
                lambda t, op: {"trait": t, **op},
                st.sampled_from(trait_ids),
                st.sampled_from(
                    [
                        {"gte": 2},
                        {"lt": 1},
                        {"eq": "x"},
                        {"in": ["x", 3]},
                        {"exists": True},
                        {"exists": False},
                        {"gt": 0},
                    ]
                ),
            )
        )
    if segment_ids:
        leaves.append(st.builds(lambda s: {"segment": s}, st.sampled_from(segment_ids)))
    return st.recursive(
        st.one_of(leaves),
        lambda inner: st.one_of(
            st.builds(lambda c: {"and": c}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda c: {"or": c}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda c: {"not": c}, inner),
        ),
        max_leaves=5,
    )


@st.composite
def definition_sets(draw: st.DrawFn) -> dict[str, Any]:
    trait_set = {f"t{i}": draw(traits()) for i in range(draw(st.integers(0, 3)))}
    segments: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 4))):
        # Only earlier segments are referred to: no cycles (the parser refuses them).
        segments[f"s{i}"] = {"where": draw(conditions(sorted(trait_set), sorted(segments)))}
    return {"traits": trait_set, "segments": segments}


@st.composite
def histories(draw: st.DrawFn) -> list[SegmentEvent]:
    events = []
    for i in range(draw(st.integers(0, 14))):
        name = draw(st.sampled_from([*NAMES, "Identify"]))
        props: dict[str, Any] = {}
        if name == "Identify":
            if draw(st.booleans()):
                props["plan"] = draw(st.sampled_from(["pro", "free"]))
        else:
            if draw(st.booleans()):
                props["cat"] = draw(st.sampled_from(["x", "y", "xz"]))
            if draw(st.booleans()):
                props["price"] = draw(st.integers(0, 5))
        at = T0 + draw(st.integers(0, 24)) * STEP  # few slots: ties happen
        kind = TYPES.get(name, "identify")
        events.append(SegmentEvent(f"e{i:02}", at, name, kind, props))
    return draw(st.permutations(events))  # arrival order differs from event time


# --- the direct evaluation -----------------------------------------------------------


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _since_ms(raw: dict[str, Any]) -> int | None:
    from datetime import datetime

    return int(datetime.fromisoformat(raw["since"]).timestamp() * 1000) if "since" in raw else None


def cmp(value: Any, op: str, operand: Any) -> bool:
    def num(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    def same(a: Any, b: Any) -> bool:
        if num(a) and num(b):
            return float(a) == float(b)
        return type(a) is type(b) and a == b

    if op == "exists":
        return (value is not None) == operand
    if value is None:
        return False
    if op in ("gt", "gte", "lt", "lte"):
        if not num(value):
            return False
        return {
            "gt": value > operand,
            "gte": value >= operand,
            "lt": value < operand,
            "lte": value <= operand,
        }[op]
    if op == "eq":
        return same(value, operand)
    if op == "ne":
        return not same(value, operand)
    if op == "in":
        return any(same(value, o) for o in operand)
    return isinstance(value, str) and operand in value


def event_matches(raw: dict[str, Any], e: SegmentEvent) -> bool:
    if "event" in raw and e.name.lower() != raw["event"].lower():
        return False
    if "type" in raw and e.type != raw["type"]:
        return False
    for prop, spec in raw.get("properties", {}).items():
        op, operand = next(iter(spec.items())) if isinstance(spec, dict) else ("eq", spec)
        if not cmp(e.properties.get(prop), op, operand):
            return False
    return True


def in_window(raw: dict[str, Any], e: SegmentEvent, t: int) -> bool:
    if "within" in raw:
        return t - WINDOWS[raw["within"]] < e.at_ms <= t
    since = _since_ms(raw)
    return e.at_ms <= t and (since is None or e.at_ms >= since)


def trait_direct(raw: dict[str, Any], events: list[SegmentEvent], t: int) -> Any:
    op = raw["op"]
    picked: list[tuple[int, str, Any]] = []
    for e in events:
        if not (event_matches(raw, e) and in_window(raw, e, t)):
            continue
        value = e.properties.get(raw["property"]) if "property" in raw else e.name
        if op in ("sum", "min", "max") and not isinstance(value, int | float):
            continue
        if op in ("first", "last", "most_frequent") and value is None:
            continue
        picked.append((e.at_ms, e.event_id, value))
    if op == "count":
        return len(picked)
    if op == "sum":
        return float(sum(v for _, _, v in picked))
    if not picked:
        return None
    if op == "min":
        return min(v for _, _, v in picked)
    if op == "max":
        return max(v for _, _, v in picked)
    if op == "first":
        return min(picked)[2]
    if op == "last":
        return max(picked)[2]
    if op == "days_since_last":
        return (t - max(picked)[0]) // DAY_MS
    counts: dict[str, int] = {}
    for _, _, v in picked:
        counts[json.dumps(v)] = counts.get(json.dumps(v), 0) + 1
    return json.loads(min(counts, key=lambda k: (-counts[k], k)))


def holds(
    raw: dict[str, Any],
    defs: dict[str, Any],
    events: list[SegmentEvent],
    t: int,
    stage: str,
) -> bool:
    if "and" in raw:
        return all(holds(c, defs, events, t, stage) for c in raw["and"])
    if "or" in raw:
        return any(holds(c, defs, events, t, stage) for c in raw["or"])
    if "not" in raw:
        return not holds(raw["not"], defs, events, t, stage)
    if "stage" in raw:
        return stage in ([raw["stage"]] if isinstance(raw["stage"], str) else raw["stage"])
    if "segment" in raw:
        return holds(defs["segments"][raw["segment"]]["where"], defs, events, t, stage)
    if "identify" in raw:
        known = [e for e in events if e.type == "identify" and "plan" in e.properties]
        value = (
            max(known, key=lambda e: (e.at_ms, e.event_id)).properties["plan"] if known else None
        )
        op = next(k for k in raw if k != "identify")
        return cmp(value, op, raw[op])
    if "trait" in raw:
        value = trait_direct(defs["traits"][raw["trait"]], events, t)
        op = next(k for k in raw if k != "trait")
        return cmp(value, op, raw[op])
    count = sum(1 for e in events if event_matches(raw, e) and in_window(raw, e, t))
    if raw.get("absent"):
        return count == 0
    n, op = raw.get("count", 1), raw.get("compare", "gte")
    return {
        "eq": count == n,
        "ne": count != n,
        "gt": count > n,
        "gte": count >= n,
        "lt": count < n,
        "lte": count <= n,
    }[op]


def direct_members(
    defs: dict[str, Any], events: list[SegmentEvent], t: int, stage: str
) -> set[str]:
    return {sid for sid, s in defs["segments"].items() if holds(s["where"], defs, events, t, stage)}


# --- the property --------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    defs=definition_sets(),
    history=histories(),
    stage=st.sampled_from(STAGES),
    data=st.data(),
)
def test_incremental_membership_equals_direct_evaluation(
    defs: dict[str, Any], history: list[SegmentEvent], stage: str, data: st.DataObject
) -> None:
    evaluator = SegmentEvaluator(parse_definitions(defs))
    state = SegmentState()
    known: list[SegmentEvent] = []
    remaining = list(history)
    while remaining:
        size = data.draw(st.integers(1, 3), label="batch")
        batch, remaining = remaining[:size], remaining[size:]
        evaluator.advance(state, batch, stage=stage)
        known.extend(batch)
        clock = state.clock
        assert clock is not None
        assert state.members == direct_members(defs, known, clock, stage)
        # Instants not before the clock: on window boundaries, just before them, later.
        edges = [e.at_ms + w for e in known for w in WINDOWS.values()]
        candidates = [clock, clock + DAY_MS, clock + 5 * DAY_MS]
        candidates += [x for edge in edges for x in (edge - 1, edge) if x >= clock]
        for t in data.draw(st.lists(st.sampled_from(candidates), max_size=4), label="instants"):
            assert evaluator.members(state, t) == direct_members(defs, known, t, stage)
            values = evaluator.trait_values(state, t)
            assert values == {
                tid: trait_direct(raw, known, t) for tid, raw in defs["traits"].items()
            }
        # Nothing changes before the next change the evaluator names.
        due = evaluator.next_change(state, clock)
        before = due - 1 if due is not None else clock + 10 * DAY_MS
        assert direct_members(defs, known, before, stage) == state.members
    # Timers: ticking to each due instant reports exactly the changes a direct look sees.
    if state.clock is not None:
        until = state.clock + 5 * DAY_MS
        members = set(state.members)
        for change in evaluator.tick(state, until):
            expected = direct_members(defs, known, change.at_ms, stage)
            assert (change.segment in expected) is change.entered
            members ^= {change.segment}
        assert members == direct_members(defs, known, until, stage) == state.members
