"""Plain-Python answers to the analysis queries, straight from the definitions.

Slow on purpose: no state machines, just the definitions in
:mod:`journeys.funnels` and the docstrings of the query modules, enumerated.
The property-based tests hold the ClickHouse queries to these.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from events import TrackedEvent
from journeys.funnels import FilterOp, Funnel, FunnelStep, OrderMode, PropertyFilter
from projections.analytics.funnels import FunnelReport, nearest_rank, step_stats
from projections.analytics.sql import NUMERIC_COLUMNS, string_form
from projections.event_log import FLOAT_FIELDS, INT_FIELDS, STRING_FIELDS, split_properties


def dedup(events: Iterable[TrackedEvent]) -> list[TrackedEvent]:
    """One copy per (customer, timestamp, event id): what ``FINAL`` leaves."""
    seen: dict[tuple[str, Any, str], TrackedEvent] = {}
    for e in events:
        seen.setdefault((e.customer_key, e.timestamp, e.event_id), e)
    return list(seen.values())


def ms(e: TrackedEvent) -> int:
    """The event's time in milliseconds since the epoch (the log's resolution)."""
    return int(e.timestamp.timestamp() * 1000)


def _fields(e: TrackedEvent) -> tuple[dict[str, Any], dict[str, str]]:
    typed, rest = split_properties(e.properties)
    names = STRING_FIELDS + FLOAT_FIELDS + INT_FIELDS
    return dict(zip(names, typed, strict=True)), rest


def _text(e: TrackedEvent, name: str) -> str | None:
    typed, rest = _fields(e)
    if name in STRING_FIELDS:
        return str(typed[name])
    if name in ("event_name", "call_type"):
        return str(getattr(e, name))
    if name not in rest:
        return None
    return string_form(_json_value(rest[name]))


def _json_value(text: str) -> Any:
    import orjson

    return orjson.loads(text)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def matches_filter(e: TrackedEvent, f: PropertyFilter) -> bool:
    """The filter's definition (see :class:`journeys.funnels.PropertyFilter`)."""
    compare = {
        FilterOp.EQ: lambda a, b: a == b,
        FilterOp.NEQ: lambda a, b: a != b,
        FilterOp.GT: lambda a, b: a > b,
        FilterOp.GTE: lambda a, b: a >= b,
        FilterOp.LT: lambda a, b: a < b,
        FilterOp.LTE: lambda a, b: a <= b,
    }
    values = f.value if isinstance(f.value, tuple) else (f.value,)
    if f.property in NUMERIC_COLUMNS:
        typed, _ = _fields(e)
        number = typed[f.property]
        if number is None:
            return False
        if f.op is FilterOp.IN:
            return float(number) in [float(v) for v in values]
        return bool(compare[f.op](float(number), float(values[0])))
    text = _text(e, f.property)
    if text is None:
        return False
    if f.op is FilterOp.IN:
        return text in [string_form(v) for v in values]
    if f.op in (FilterOp.EQ, FilterOp.NEQ):
        return bool(compare[f.op](text, string_form(f.value)))
    number = _number(text)
    return number is not None and bool(compare[f.op](number, float(values[0])))


def matches(e: TrackedEvent, step: FunnelStep) -> bool:
    """Whether ``e`` is an event of ``step``."""
    if step.event_type is not None and e.event_type != step.event_type:
        return False
    if step.event_name is not None and e.event_name != step.event_name:
        return False
    return all(matches_filter(e, f) for f in step.filters)


def _in_range(e: TrackedEvent, funnel: Funnel) -> bool:
    return (funnel.start is None or e.timestamp >= funnel.start) and (
        funnel.end is None or e.timestamp < funnel.end
    )


def funnel_times(events: Sequence[TrackedEvent], funnel: Funnel) -> dict[str, list[int]]:
    """Per customer who reached step 1: ``d_k`` in ms for each step (-1 when not reached)."""
    by_customer: dict[str, list[TrackedEvent]] = defaultdict(list)
    for e in dedup(events):
        if _in_range(e, funnel):
            by_customer[e.customer_key].append(e)
    out = {}
    for customer, own in by_customer.items():
        if funnel.mode is OrderMode.STRICT:
            d = _strict(own, funnel)
        elif funnel.mode is OrderMode.ORDERED:
            d = _ordered(own, funnel)
        else:
            d = _any_order(own, funnel)
        if d[0] >= 0:
            out[customer] = d
    return out


def _step_times(own: list[TrackedEvent], funnel: Funnel) -> tuple[list[list[int]], list[int]]:
    steps = [sorted({ms(e) for e in own if matches(e, s)}) for s in funnel.steps]
    excluded = sorted({ms(e) for e in own for x in funnel.exclusions if matches(e, x)})
    return steps, excluded


def _clean(start: int, end: int, excluded: list[int]) -> bool:
    return not any(start < x < end for x in excluded)


def _best(chains: list[tuple[int, int]]) -> int:
    """Among (start, end) chains: earliest end, then latest start; the time between."""
    if not chains:
        return -1
    end = min(c[1] for c in chains)
    return end - max(c[0] for c in chains if c[1] == end)


def _ordered(own: list[TrackedEvent], funnel: Funnel) -> list[int]:
    steps, excluded = _step_times(own, funnel)
    window = funnel.window_ms
    # chains[k]: every (start, end) of a chain t1 <= … <= tk over steps 1..k.
    chains: set[tuple[int, int]] = {(t, t) for t in steps[0]}
    result = [_best(sorted(chains))]
    for k in range(1, len(steps)):
        chains = {
            (start, t)
            for start, end in chains
            for t in steps[k]
            if t >= end and t - start <= window and _clean(start, t, excluded)
        }
        result.append(_best(sorted(chains)))
    return result


def _any_order(own: list[TrackedEvent], funnel: Funnel) -> list[int]:
    steps, excluded = _step_times(own, funnel)
    window = funnel.window_ms
    result = []
    combos: set[tuple[int, int]] = {(t, t) for t in steps[0]}  # (min, max) of a choice
    result.append(_best(sorted(combos)))
    for k in range(1, len(steps)):
        combos = {(min(lo, t), max(hi, t)) for lo, hi in combos for t in steps[k]}
        combos = {c for c in combos if c[1] - c[0] <= window}
        # only the choice's span must be clean, which min/max capture
        valid = [c for c in combos if _clean(c[0], c[1], excluded)]
        result.append(_best(valid))
    # a level needs every lower level reachable by the same choice: implied above
    return result


def _strict(own: list[TrackedEvent], funnel: Funnel) -> list[int]:
    timeline = sorted(own, key=lambda e: (ms(e), e.event_id))
    window = funnel.window_ms
    result = []
    for k in range(1, len(funnel.steps) + 1):
        chains = []
        for p in range(len(timeline) - k + 1):
            run = timeline[p : p + k]
            in_order = all(matches(e, funnel.steps[i]) for i, e in enumerate(run))
            if in_order and ms(run[-1]) - ms(run[0]) <= window:
                chains.append((ms(run[0]), ms(run[-1])))
        result.append(_best(chains))
    return result


def breakdown_value(own: list[TrackedEvent], funnel: Funnel) -> str:
    """The breakdown property on the customer's first step-1 event ('' when absent)."""
    assert funnel.breakdown is not None
    firsts = [e for e in own if matches(e, funnel.steps[0])]
    earliest = min(ms(e) for e in firsts)
    values = [_text(e, funnel.breakdown) or "" for e in firsts if ms(e) == earliest]
    return min(values)


def funnel_report(events: Sequence[TrackedEvent], funnel: Funnel) -> FunnelReport:
    """The whole report, as :meth:`FunnelQueries.run` gives it (``source`` aside)."""
    times = funnel_times(events, funnel)

    def stats(customers: Iterable[str]) -> Any:
        rows = [times[c] for c in customers]
        n = len(funnel.steps)
        counts = [sum(1 for r in rows if r[k] >= 0) for k in range(n)]
        sorted_times = [sorted(r[k] for r in rows if r[k] >= 0) for k in range(n)]
        return step_stats(
            funnel,
            counts,
            [nearest_rank(s, 50) for s in sorted_times],
            [nearest_rank(s, 90) for s in sorted_times],
        )

    overall = stats(times)
    if funnel.breakdown is None:
        return FunnelReport(overall, None, "reference")
    in_range = [e for e in dedup(events) if _in_range(e, funnel)]
    groups: dict[str, list[str]] = defaultdict(list)
    for customer in times:
        own = [e for e in in_range if e.customer_key == customer]
        groups[breakdown_value(own, funnel)].append(customer)
    return FunnelReport(overall, {v: stats(c) for v, c in groups.items()}, "reference")


def dropped(events: Sequence[TrackedEvent], funnel: Funnel, step: int) -> list[str]:
    """Customers reaching step ``step - 1`` and not ``step``, sorted."""
    times = funnel_times(events, funnel)
    return sorted(c for c, d in times.items() if d[step - 2] >= 0 and d[step - 1] < 0)
