"""Plain-Python answers to the analysis queries, straight from the definitions.

Slow on purpose: no state machines, just the definitions in
:mod:`journeys.funnels` and the docstrings of the query modules, enumerated.
The property-based tests hold the ClickHouse queries to these.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import Any

from events import TrackedEvent
from journeys.funnels import FilterOp, Funnel, FunnelStep, OrderMode, PropertyFilter
from projections.analytics.funnels import FunnelReport, nearest_rank, step_stats
from projections.analytics.reports import (
    MAX_STORED_MONEY,
    Cohort,
    Period,
    RetentionMode,
    RfmScore,
    period_index,
    period_start,
    segment,
    tier,
)
from projections.analytics.sql import NUMERIC_COLUMNS, string_form
from projections.event_log import FLOAT_FIELDS, INT_FIELDS, STRING_FIELDS, split_properties


def identity_merges(events: Iterable[TrackedEvent]) -> list[tuple[str, str]]:
    """(anonymous key, customer key) per identify linking them, the first link winning.

    The journeys' rule (docs/architecture.md, identity merging): an identify
    with a userId U and an anonymousId A merges ``anon:A`` into U; a second
    customer claiming the same anonymous id is refused.
    """
    into: dict[str, str] = {}
    for e in events:
        if e.call_type == "identify" and e.user_id and e.anonymous_id:
            anonymous = f"anon:{e.anonymous_id}"
            if e.user_id != e.customer_key or e.anonymous_id == e.user_id:
                continue
            into.setdefault(anonymous, e.user_id)
    return list(into.items())


def dedup(events: Iterable[TrackedEvent]) -> list[TrackedEvent]:
    """One copy per (person, timestamp, event id, source): what ``FINAL`` leaves.

    A merged anonymous key's events count as its customer's (see
    :func:`identity_merges`): the person is one customer in every analysis.
    """
    events = list(events)
    person = dict(identity_merges(events))
    seen: dict[tuple[str, Any, str, str], TrackedEvent] = {}
    for e in events:
        key = person.get(e.customer_key, e.customer_key)
        if key != e.customer_key:
            e = replace(e, customer_key=key)
        seen.setdefault((e.customer_key, e.timestamp, e.event_id, e.source), e)
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


# --- the other reports (definitions: projections/analytics/reports.py) ---------------


def retention(
    events: Sequence[TrackedEvent],
    start_step: FunnelStep,
    return_step: FunnelStep,
    period: Period,
    mode: RetentionMode,
    periods: int,
) -> list[Cohort]:
    """Cohorts by enumeration."""
    starts: dict[str, set[int]] = defaultdict(set)
    returns: dict[str, set[int]] = defaultdict(set)
    for e in dedup(events):
        p = period_index(e.timestamp, period)
        if matches(e, start_step):
            starts[e.customer_key].add(p)
        if matches(e, return_step):
            returns[e.customer_key].add(p)
    entries = [
        (customer, c)
        for customer, ps in starts.items()
        for c in ([min(ps)] if mode is RetentionMode.FIRST_TIME else sorted(ps))
    ]
    out = []
    for c in sorted({c for _, c in entries}):
        members = [customer for customer, cc in entries if cc == c]
        kept = [sum(1 for m in members if c + k in returns[m]) for k in range(1, periods + 1)]
        out.append(Cohort(period_start(c, period), len(members), kept))
    return out


def paths(
    events: Sequence[TrackedEvent], anchor: FunnelStep, direction: str, steps: int, limit: int
) -> list[tuple[list[str], int]]:
    """Paths by enumeration: sort, find the first anchor, slice."""
    by_customer: dict[str, list[TrackedEvent]] = defaultdict(list)
    for e in dedup(events):
        by_customer[e.customer_key].append(e)
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for own in by_customer.values():
        timeline = sorted(own, key=lambda e: (e.timestamp, e.event_id))
        anchors = [i for i, e in enumerate(timeline) if matches(e, anchor)]
        if not anchors:
            continue
        i = anchors[0]
        names = [e.event_name for e in timeline]
        if direction == "next":
            path = names[i + 1 : i + 1 + steps]
        else:
            path = list(reversed(names[max(0, i - steps) : i]))
        counts[tuple(path)] += 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], list(item[0])))
    return [(list(p), c) for p, c in ranked[:limit]]


def trends(events: Sequence[TrackedEvent]) -> list[tuple[date, str, int]]:
    """Distinct events per day and type."""
    counts: dict[tuple[date, str], int] = defaultdict(int)
    for e in dedup(events):
        counts[(e.timestamp.date(), e.event_type.value)] += 1
    return [(d, k, c) for (d, k), c in sorted(counts.items())]


def rfm(events: Sequence[TrackedEvent], as_of: datetime) -> list[RfmScore]:
    """RFM by enumeration: scores from counts of strictly worse customers."""
    last: dict[str, int] = {}
    frequency: dict[str, int] = defaultdict(int)
    cents: dict[str, int] = defaultdict(int)
    clamped: set[str] = set()
    cutoff = int(as_of.timestamp() * 1000)
    for e in dedup(events):
        order = e.event_type.value == "purchase" and e.event_name.lower() == "order completed"
        if not order or e.timestamp >= as_of:
            continue
        last[e.customer_key] = max(last.get(e.customer_key, 0), ms(e))
        frequency[e.customer_key] += 1
        typed, _ = _fields(e)
        revenue = typed["revenue"] or 0
        if not math.isfinite(revenue) or abs(revenue) > MAX_STORED_MONEY:
            clamped.add(e.customer_key)
            revenue = max(-MAX_STORED_MONEY, min(MAX_STORED_MONEY, revenue))
            revenue = revenue if math.isfinite(revenue) else 0  # NaN counts nothing
        cents[e.customer_key] += math.floor(revenue * 100 + 0.5)
    n = len(last)
    out = []
    for c in sorted(last):
        recency = cutoff - last[c]
        r = 1 + 5 * sum(1 for o in last if cutoff - last[o] > recency) // n
        f = 1 + 5 * sum(1 for o in last if frequency[o] < frequency[c]) // n
        m = 1 + 5 * sum(1 for o in last if cents[o] < cents[c]) // n
        out.append(
            RfmScore(
                customer_key=c,
                recency_days=round(recency / 86_400_000, 3),
                frequency=frequency[c],
                monetary=cents[c] / 100,
                r=r,
                f=f,
                m=m,
                segment=segment(r, f),
                tier=tier(f, m),
                clamped=c in clamped,
            )
        )
    return out
