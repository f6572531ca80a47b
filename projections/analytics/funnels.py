"""Funnels over the event log: counts, conversion, time to convert, drop-offs.

A funnel runs in three stages, each a layer of one SQL statement:

A. per customer, the events that match a step (or an exclusion) as one sorted
   array of ``time_ms * 16 + code`` (code = step number, 15 = exclusion). It
   comes from ``customer_timelines`` (migration 4: a per-customer array kept
   by a materialized view, one row per customer, no sort or group by customer
   at query time) when the funnel names only event types or names; otherwise
   from ``events`` grouped by customer. An ordered funnel over types only,
   without exclusions, skips this stage: it reads ``customer_type_times``
   (migration 6: per customer, one array of times per type) and does stage B
   by lookups in its steps' arrays (:meth:`FunnelQueries._ordered_by_type`).
B. per customer, ``d1 … dn``: the time from the first step to reaching step k
   (-1 when not reached), by the definitions in :mod:`journeys.funnels`. The
   ordered mode is a few vectorised array scans (``arrayFill`` keeps the latest
   start of a chain at each level); strict and any-order modes fold over the
   timeline.
C. over customers: counts, nearest-rank median and p90 per step, breakdowns.

An anonymous key merged into a customer (``merged = 1`` in both per-customer
tables, see :meth:`EventLog.merge_identities`) is skipped: its events were
moved under the customer, whose arrays hold them.

Duplicate rows of one event change none of these answers: a funnel asks
whether a chain of events exists, and a second copy of an event adds no
chain. That is why stage A may read without ``FINAL``; the strict mode, where
a copy would sit between two steps, reads ``FINAL``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

from journeys.funnels import Funnel, FunnelStep, OrderMode
from projections.analytics.errors import QueryProblem
from projections.analytics.sql import TYPE_CODES, Params, breakdown_sql, step_sql

EXCLUSION = 15
MAX_BREAKDOWN_GROUPS = 100
# The groups of a breakdown by segment membership.
IN_SEGMENT, NOT_IN_SEGMENT = "in", "not in"
# The nearest-rank median and p90 (element ceil(p * n), 1-based) with
# ``quantilesExact``, which selects element floor(level * n), 0-based, by
# nth_element instead of sorting (measured: 0.03-0.04 s less on 10M events).
# With level = p - 1e-12: when p * n is a whole number m, floor gives m - 1;
# otherwise p * n is at least 0.1 past a whole number (p is 0.5 or 0.9), and
# floor gives ceil(p * n) - 1 as long as 1e-12 * n < 0.1: n below 10^11.
NEAREST_RANK_LEVELS = "0.5 - 1e-12, 0.9 - 1e-12"


@dataclass(frozen=True, slots=True)
class StepStats:
    """One step's numbers; times are seconds from the first step."""

    step: str
    customers: int
    conversion_from_previous: float | None
    conversion_from_first: float | None
    median_seconds: float | None
    p90_seconds: float | None


@dataclass(frozen=True, slots=True)
class FunnelReport:
    """A funnel's steps overall and, with a breakdown, per value of the property."""

    steps: list[StepStats]
    breakdown: dict[str, list[StepStats]] | None
    source: str


def nearest_rank(sorted_values: list[int], percent: int) -> int | None:
    """The nearest-rank percentile: element ``ceil(percent/100 * n)`` (1-based)."""
    if not sorted_values:
        return None
    return sorted_values[(len(sorted_values) * percent + 99) // 100 - 1]


def step_stats(
    funnel: Funnel, counts: list[int], medians: list[Any], p90s: list[Any]
) -> list[StepStats]:
    """Counts and time quantiles (ms) as the report's steps, with conversions."""
    out = []
    for index, step in enumerate(funnel.steps):
        count = counts[index]
        later = index > 0 and count > 0
        out.append(
            StepStats(
                step=step.label,
                customers=count,
                conversion_from_previous=_ratio(count, counts[index - 1]) if index else None,
                conversion_from_first=_ratio(count, counts[0]) if index else None,
                median_seconds=medians[index] / 1000 if later else None,
                p90_seconds=p90s[index] / 1000 if later else None,
            )
        )
    return out


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


class FunnelQueries:
    """Runs funnels against ``database``: ``events`` and the per-customer projections."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._db = database

    # --- validation -------------------------------------------------------------------

    def validate(self, funnel: Funnel) -> None:
        """Raise :class:`QueryProblem` for event names or properties the log has never seen."""
        named = [
            (f"steps[{i}].event", s.event_name)
            for i, s in enumerate(funnel.steps)
            if s.event_name is not None
        ] + [
            (f"exclusions[{i}].event", s.event_name)
            for i, s in enumerate(funnel.exclusions)
            if s.event_name is not None
        ]
        check_event_names(self._client, self._db, named)
        if funnel.breakdown is not None:
            params = Params()
            expression = breakdown_sql(funnel.breakdown, params)
            if "mapContains" in expression:
                key = next(iter(params.values))
                seen = self._client.query(
                    f"SELECT count() FROM (SELECT 1 FROM {self._db}.events "
                    f"WHERE mapContains(properties, {{{key}:String}}) LIMIT 1)",
                    parameters=params.values,
                ).result_rows[0][0]
                if not seen:
                    raise QueryProblem("breakdown", f"no event has a property {funnel.breakdown!r}")
        # Builds the conditions once, so bad filters fail here with their field.
        self.per_customer_sql(funnel, Params())

    # --- answers ---------------------------------------------------------------------

    def run(self, funnel: Funnel, customers: Sequence[str] | None = None) -> FunnelReport:
        """Counts, conversions and time to convert per step (and per breakdown value);
        ``customers``: only these (a trait filter's answer, :func:`only_customers`)."""
        params = Params()
        inner, source = self.per_customer_sql(funnel, params)
        inner = only_customers(inner, customers, params)
        if funnel.breakdown_segment is not None:
            inner = self._by_segment(inner, funnel, params)
        n = len(funnel.steps)
        picks = ["c1", "0", "0"]
        for k in range(2, n + 1):
            picks += [f"c{k}", f"q{k}[1]", f"q{k}[2]"]
        # Step 1's time is 0 by definition and the report shows no quantile for
        # it: collecting a million zeros would be wasted work.
        named = ["countIf(d1 >= 0) AS c1"]
        for k in range(2, n + 1):
            named += [
                f"countIf(d{k} >= 0) AS c{k}",
                f"quantilesExactIf({NEAREST_RANK_LEVELS})(d{k}, d{k} >= 0) AS q{k}",
            ]
        if funnel.breakdown is None and funnel.breakdown_segment is None:
            sql = (
                f"SELECT {', '.join(picks)} FROM "
                f"(SELECT {', '.join(named)} FROM ({inner}) WHERE d1 >= 0)"
            )
            row = self._client.query(sql, parameters=params.values).result_rows[0]
            return FunnelReport(self._stats(funnel, list(row)), None, source)
        sql = f"""
            SELECT g, bd, {", ".join(picks)} FROM (
                SELECT grouping(bd) AS g, bd, {", ".join(named)}
                FROM ({inner}) WHERE d1 >= 0
                GROUP BY GROUPING SETS ((bd), ())
            )
            ORDER BY g DESC, c1 DESC, bd
            LIMIT {MAX_BREAKDOWN_GROUPS + 1}
        """
        rows = self._client.query(sql, parameters=params.values).result_rows
        overall: list[StepStats] | None = None
        groups: dict[str, list[StepStats]] = {}
        for row in rows:
            if row[0]:  # grouping(bd) = 1: the grand total
                overall = self._stats(funnel, list(row[2:]))
            else:
                groups[str(row[1])] = self._stats(funnel, list(row[2:]))
        if overall is None:  # nobody reached step 1
            overall = self._stats(funnel, [0, 0, 0] * n)
        return FunnelReport(overall, groups, source)

    def dropped(
        self,
        funnel: Funnel,
        step: int,
        limit: int,
        offset: int,
        customers: Sequence[str] | None = None,
    ) -> tuple[int, list[str]]:
        """Customers who reached step ``step - 1`` but not ``step`` (1-based, >= 2): total, page."""
        if not 2 <= step <= len(funnel.steps):
            raise QueryProblem("dropped_at", f"must be between 2 and {len(funnel.steps)}")
        params = Params()
        inner, _ = self.per_customer_sql(funnel, params)
        inner = only_customers(inner, customers, params)
        where = f"d{step - 1} >= 0 AND d{step} < 0"
        total = self._client.query(
            f"SELECT count() FROM ({inner}) WHERE {where}", parameters=params.values
        ).result_rows[0][0]
        page = self._client.query(
            f"SELECT customer_key FROM ({inner}) WHERE {where} ORDER BY customer_key "
            f"LIMIT {int(limit)} OFFSET {int(offset)}",
            parameters=params.values,
        ).result_rows
        return int(total), [str(r[0]) for r in page]

    def _by_segment(self, inner: str, funnel: Funnel, params: Params) -> str:
        """``inner`` with ``bd`` = "in" / "not in": the customer's membership of the segment
        at their first event matching step 1 in the range, as ``segment_changes`` records
        it (the last change at or before that instant; none: not in)."""
        assert funnel.breakdown_segment is not None
        first = step_sql(funnel.steps[0], params, "steps[0]")
        where = params.time_range(funnel.start, funnel.end, "timestamp")
        segment = params.add(funnel.breakdown_segment, "String")
        n = len(funnel.steps)
        steps = ", ".join(f"p.d{k} AS d{k}" for k in range(1, n + 1))
        return f"""
            SELECT p.customer_key AS customer_key,
                   if(m.entered = 1, '{IN_SEGMENT}', '{NOT_IN_SEGMENT}') AS bd, {steps}
            FROM (
                SELECT i.*, f.t1 FROM ({inner}) AS i
                INNER JOIN (
                    SELECT customer_key, min(timestamp) AS t1 FROM {self._db}.events
                    WHERE {where} AND ({first}) GROUP BY customer_key
                ) AS f ON i.customer_key = f.customer_key
            ) AS p
            ASOF LEFT JOIN (
                SELECT customer_key, at, entered FROM {self._db}.segment_changes FINAL
                WHERE segment = {segment}
                ORDER BY customer_key, at, entered
            ) AS m ON p.customer_key = m.customer_key AND p.t1 >= m.at
        """

    def _stats(self, funnel: Funnel, flat: list[Any]) -> list[StepStats]:
        counts = [int(flat[3 * i]) for i in range(len(funnel.steps))]
        medians = [flat[3 * i + 1] for i in range(len(funnel.steps))]
        p90s = [flat[3 * i + 2] for i in range(len(funnel.steps))]
        return step_stats(funnel, counts, medians, p90s)

    # --- SQL -------------------------------------------------------------------------

    def per_customer_sql(self, funnel: Funnel, params: Params) -> tuple[str, str]:
        """``SELECT customer_key, bd, d1 … dn`` (stages A and B), and which table it reads."""
        n = len(funnel.steps)
        if by_type(funnel):
            return self._ordered_by_type(funnel, params), "customer_type_times"
        if funnel.mode is OrderMode.STRICT:
            timeline = self._strict_timeline(funnel, params)
            return self._wrap(timeline, _strict_fold(n, funnel.window_ms), n), "events"
        if _pre_aggregated(funnel):
            timeline, source = self._timeline_from_arrays(funnel, params), "customer_timelines"
        else:
            timeline, source = self._timeline_from_events(funnel, params), "events"
        if funnel.mode is OrderMode.ORDERED:
            scans = _ordered_scans(n, funnel.window_ms, bool(funnel.exclusions))
            sql = f"SELECT customer_key, bd, {', '.join(scans)} FROM ({timeline})"
            return f"SELECT customer_key, bd, {_columns(n)} FROM ({sql})", source
        return self._wrap(timeline, _any_order_fold(n, funnel.window_ms), n), source

    @staticmethod
    def _wrap(timeline: str, fold: str, n: int) -> str:
        picks = ", ".join(f"tupleElement(f, {2 * n + k}) AS d{k}" for k in range(1, n + 1))
        return (
            f"SELECT customer_key, bd, {picks} FROM "
            f"(SELECT customer_key, bd, {fold} AS f FROM ({timeline}))"
        )

    def _conditions(self, funnel: Funnel, params: Params) -> list[tuple[int, str]]:
        coded = [
            (k, step_sql(step, params, f"steps[{k - 1}]"))
            for k, step in enumerate(funnel.steps, start=1)
        ]
        coded += [
            (EXCLUSION, step_sql(step, params, f"exclusions[{i}]"))
            for i, step in enumerate(funnel.exclusions)
        ]
        return coded

    def _timeline_from_events(self, funnel: Funnel, params: Params) -> str:
        coded = self._conditions(funnel, params)
        time_ms = "toUnixTimestamp64Milli(timestamp)"
        arrays = ", ".join(f"groupArrayIf({time_ms} * 16 + {code}, {cond})" for code, cond in coded)
        first = coded[0][1]
        if funnel.breakdown is not None:
            value = breakdown_sql(funnel.breakdown, params)
            bd = f"argMinIf({value}, tuple(timestamp, {value}), {first})"
        else:
            bd = "''"
        where = params.time_range(funnel.start, funnel.end, "timestamp")
        any_step = " OR ".join(cond for _, cond in coded)
        return f"""
            SELECT customer_key, {bd} AS bd, arraySort(arrayConcat({arrays})) AS e
            FROM {self._db}.events
            WHERE {where} AND ({any_step})
            GROUP BY customer_key
        """

    def _timeline_from_arrays(self, funnel: Funnel, params: Params) -> str:
        steps = [(k, s) for k, s in enumerate(funnel.steps, start=1)]
        steps += [(EXCLUSION, s) for s in funnel.exclusions]
        types = [s.event_type for _, s in steps]
        in_range = []
        if funnel.start is not None:
            in_range.append(f"intDiv(x, 8) >= {params.add(_ms(funnel.start), 'Int64')}")
        if funnel.end is not None:
            in_range.append(f"intDiv(x, 8) < {params.add(_ms(funnel.end), 'Int64')}")
        keep = " AND ".join(in_range) or "1"
        if None not in types and len(set(types)) == len(types):
            # Each event matches at most one step: one pass maps type codes to steps.
            codes = [TYPE_CODES[t] for t in types if t is not None]
            targets = [k for k, _ in steps]
            entries = (
                f"arrayFilter(x -> x % 16 > 0, arrayMap(x -> intDiv(x, 8) * 16 + "
                f"transform(x % 8, {codes}, {targets}, 0), arrayFilter(x -> {keep}, tk)))"
            )
            names = ""
        else:
            parts = []
            for code, step in steps:
                if step.event_type is not None:
                    cond = f"x % 8 = {TYPE_CODES[step.event_type]}"
                else:
                    cond = f"n = {params.add(step.event_name, 'String')}"
                parts.append(
                    f"arrayFilter(v -> v >= 0, arrayMap((x, n) -> "
                    f"if({cond} AND {keep}, intDiv(x, 8) * 16 + {code}, -1), tk, nm))"
                )
            entries = f"arrayConcat({', '.join(parts)})"
            names = ", finalizeAggregation(names) AS nm"
        return f"""
            SELECT customer_key, '' AS bd, arraySort({entries}) AS e
            FROM (
                SELECT customer_key, finalizeAggregation(tk) AS tk{names}
                FROM {self._db}.customer_timelines FINAL
                WHERE merged = 0
            )
        """

    def _ordered_by_type(self, funnel: Funnel, params: Params) -> str:
        """Stages A and B of an ordered funnel over types, from ``customer_type_times``.

        ``T{k}`` is step k's times, sorted for k >= 2. Per level k and per time t in
        ``T{k}``: ``raw{k}`` is the latest start of a chain reaching level k at
        t, or -1; ``F{k}`` carries the latest valid one forward (the ``s_k`` of
        :func:`_ordered_scans`). A chain reaches level k at t when some level
        k-1 completion lies at or before t (ties in time count as in order, and
        one event may serve consecutive steps when they share a type) and t is
        within the window of its start. Starts of valid completions never
        decrease in time, so the last completion at or before t carries the
        latest start. ``d{k}`` is the time from that start to the first time
        level k is reached, as in the other modes.

        Each lookup scans one customer's short array of the previous step's
        times; measured on the benchmark this beats sorting and mapping all of
        a customer's events (the arrays hold only the steps' types). Copies of
        an event only repeat entries of a sorted array, which changes no
        lookup's answer.
        """
        in_range = []
        if funnel.start is not None:
            in_range.append(f"x >= {params.add(_ms(funnel.start), 'Int64')}")
        if funnel.end is not None:
            in_range.append(f"x < {params.add(_ms(funnel.end), 'Int64')}")
        arrays = []
        for k, step in enumerate(funnel.steps, start=1):
            column = str(step.event_type)
            if in_range:
                column = f"arrayFilter(x -> {' AND '.join(in_range)}, {column})"
            # Step 1's times need no order (level 2 takes a maximum over them);
            # sorting them was a fifth of the query on unsorted arrays.
            arrays.append(f"{column} AS T{k}" if k == 1 else f"arraySort({column}) AS T{k}")
        window = funnel.window_ms
        scans = ["if(notEmpty(T1), 0, -1) AS d1"]
        for k in range(2, len(funnel.steps) + 1):
            if k == 2:
                # j: the latest step-1 time at or before t, or -1 (times are >= 0;
                # +1 keeps "none" apart from a time 0 and from an empty array's 0).
                scans.append("arrayMap(t -> arrayMax(p -> if(p <= t, p + 1, 0), T1) - 1, T2) AS j2")
                start, valid = "j", f"j >= 0 AND t - j <= {window}"
            else:
                # j: 1-based index of the last entry of sorted T{k-1} at or before t
                # (0: none); F{k-1}[j] is the latest live start there.
                scans.append(f"arrayMap(t -> arrayLastIndex(p -> p <= t, T{k - 1}), T{k}) AS j{k}")
                start = f"F{k - 1}[j]"
                valid = f"j > 0 AND {start} >= 0 AND t - {start} <= {window}"
            scans.append(f"arrayMap((t, j) -> if({valid}, {start}, -1), T{k}, j{k}) AS raw{k}")
            scans.append(f"arrayFill(x -> x >= 0, raw{k}) AS F{k}")
            scans.append(f"arrayFirstIndex(x -> x >= 0, raw{k}) AS i{k}")
            scans.append(f"if(i{k} > 0, T{k}[i{k}] - raw{k}[i{k}], -1) AS d{k}")
        return f"""
            SELECT customer_key, bd, {_columns(len(funnel.steps))} FROM (
                SELECT customer_key, '' AS bd, {", ".join(scans)}
                FROM (
                    SELECT customer_key, {", ".join(arrays)}
                    FROM {self._db}.customer_type_times FINAL
                    WHERE merged = 0
                )
            )
        """

    def _strict_timeline(self, funnel: Funnel, params: Params) -> str:
        coded = self._conditions(funnel, params)
        mask = " + ".join(f"bitShiftLeft(toUInt16({cond}), {code - 1})" for code, cond in coded)
        if funnel.breakdown is not None:
            value = breakdown_sql(funnel.breakdown, params)
            bd = f"argMinIf({value}, tuple(timestamp, {value}), {coded[0][1]})"
        else:
            bd = "''"
        where = params.time_range(funnel.start, funnel.end, "timestamp")
        # Every event counts here (one between two steps breaks the chain), read
        # FINAL so a duplicate row is not mistaken for an event in between.
        return f"""
            SELECT customer_key, bd, arrayMap(x -> x.1, ev) AS t, arrayMap(x -> x.3, ev) AS m
            FROM (
                SELECT customer_key, {bd} AS bd,
                       arraySort(groupArray(tuple(toUnixTimestamp64Milli(timestamp), event_id,
                                                  {mask}))) AS ev
                FROM {self._db}.events FINAL
                WHERE {where}
                GROUP BY customer_key
            )
        """


def only_customers(inner: str, customers: Sequence[str] | None, params: Params) -> str:
    """``inner`` (rows with a ``customer_key``) kept to ``customers``; all of it for None.

    The keys are one Array parameter (a trait filter's customers, computed from the
    worker's stored states: projections/segment_reads.py ``with_traits``); ClickHouse
    builds a set of it once per query."""
    if customers is None:
        return inner
    keys = params.add(list(customers), "Array(String)")
    return f"SELECT * FROM ({inner}) WHERE has({keys}, customer_key)"


def check_event_names(client: Client, database: str, named: list[tuple[str, str]]) -> None:
    """Raise :class:`QueryProblem` for the first (field, event name) the log has never seen."""
    if not named:
        return
    known = {
        row[0]
        for row in client.query(
            f"SELECT DISTINCT event_name FROM {database}.events "
            "WHERE event_name IN {names:Array(String)}",
            parameters={"names": [name for _, name in named]},
        ).result_rows
    }
    for field, name in named:
        if name not in known:
            raise QueryProblem(field, f"no event named {name!r} in the event log")


def _ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000)


def _pre_aggregated(funnel: Funnel) -> bool:
    """True when the per-customer arrays hold all a funnel needs (types, names, no filters)."""
    steps = funnel.steps + funnel.exclusions
    return funnel.breakdown is None and not any(step.filters for step in steps)


def by_type(funnel: Funnel) -> bool:
    """True for an ordered funnel over event types only: no names, filters,
    exclusions or breakdown. ``customer_type_times`` answers it."""
    return (
        funnel.mode is OrderMode.ORDERED
        and not funnel.exclusions
        and funnel.breakdown is None
        and all(step.event_type is not None and not step.filters for step in funnel.steps)
    )


def _columns(n: int) -> str:
    return ", ".join(f"d{k}" for k in range(1, n + 1))


def _ordered_scans(n: int, window_ms: int, exclusions: bool) -> list[str]:
    """Per level k: ``raw_k`` (start of a chain completed at each entry, or -1) and
    ``s_k`` (latest start of a live chain at level k so far), by forward fill.

    Without exclusions the scans read the encoded entries directly: fewer
    arrays to materialise (measured: about a third less time than splitting
    time and code into arrays first).
    """
    if not exclusions:
        out = []
        for k in range(1, n + 1):
            if k == 1:
                out.append("arrayMap(x -> if(x % 16 = 1, intDiv(x, 16), -1), e) AS raw1")
            else:
                out.append(
                    f"arrayMap((x, s) -> if(x % 16 = {k} AND s >= 0 "
                    f"AND intDiv(x, 16) - s <= {window_ms}, s, -1), e, s{k - 1}) AS raw{k}"
                )
            out.append(f"arrayFill(x -> x >= 0, raw{k}) AS s{k}")
            out.append(f"arrayFirstIndex(x -> x >= 0, raw{k}) AS i{k}")
            out.append(f"if(i{k} > 0, intDiv(e[i{k}], 16) - raw{k}[i{k}], -1) AS d{k}")
        return out
    out = ["arrayMap(x -> intDiv(x, 16), e) AS _t", "arrayMap(x -> x % 16, e) AS _c"]
    for k in range(1, n + 1):
        if k == 1:
            out.append("arrayMap((t, c) -> if(c = 1, t, -1), _t, _c) AS raw1")
        else:
            out.append(
                f"arrayMap((t, c, s) -> if(c = {k} AND s >= 0 AND t - s <= {window_ms}, s, -1), "
                f"_t, _c, s{k - 1}) AS raw{k}"
            )
        # At an exclusion at time t, only chains that started at t live on.
        out.append(f"arrayFill(x -> x >= 0, raw{k}) AS r{k}")
        out.append(
            f"arrayFill((v, f) -> f, "
            f"arrayMap((t, c, r, w) -> if(c = {EXCLUSION}, if(r >= t, r, -1), w), "
            f"_t, _c, r{k}, raw{k}), "
            f"arrayMap((c, w) -> c = {EXCLUSION} OR w >= 0, _c, raw{k})) AS s{k}"
        )
        out.append(f"arrayFirstIndex(x -> x >= 0, raw{k}) AS i{k}")
        out.append(f"if(i{k} > 0, _t[i{k}] - raw{k}[i{k}], -1) AS d{k}")
    return out


def _fold_tail(n: int, reached: list[str], start_of: list[str]) -> list[str]:
    """First-reach time ``r_k`` and the shortest time to it ``d_k`` among ties."""
    r = [f"s.{n + k}" for k in range(1, n + 1)]
    d = [f"s.{2 * n + k}" for k in range(1, n + 1)]
    parts = [f"if({r[i]} < 0 AND {reached[i]}, t, {r[i]})" for i in range(n)]
    parts += [
        f"if({reached[i]} AND {r[i]} < 0, t - {start_of[i]}, "
        f"if({reached[i]} AND {r[i]} = t, least({d[i]}, t - {start_of[i]}), {d[i]}))"
        for i in range(n)
    ]
    return parts


def _strict_fold(n: int, window_ms: int) -> str:
    """Fold over the whole timeline: a chain survives only from one event to the next."""
    prev = [f"s.{k}" for k in range(1, n + 1)]
    new = []
    for k in range(1, n + 1):
        if k == 1:
            new.append("if(bitTest(m, 0), t, -1)")
        else:
            p = prev[k - 2]
            new.append(f"if(bitTest(m, {k - 1}) AND {p} >= 0 AND t - {p} <= {window_ms}, {p}, -1)")
    parts = new + _fold_tail(n, [f"({x}) >= 0" for x in new], new)
    init = "tuple(" + ", ".join(["toInt64(-1)"] * (3 * n)) + ")"
    return f"arrayFold((s, t, m) -> tuple({', '.join(parts)}), t, m, {init})"


def _any_order_fold(n: int, window_ms: int) -> str:
    """Fold over matching entries keeping each step's latest time; exclusions sort last."""
    last = []
    for k in range(1, n + 1):
        old = f"s.{k}"
        last.append(f"if(c = {EXCLUSION}, if({old} < t, -1, {old}), if(c = {k}, t, {old}))")
    reached, earliest = [], []
    for k in range(1, n + 1):
        present = " AND ".join(f"({last[j]}) >= 0" for j in range(k))
        low = f"least({', '.join(f'({last[j]})' for j in range(k))})" if k > 1 else f"({last[0]})"
        earliest.append(low)
        reached.append(f"({present} AND t - {low} <= {window_ms})")
    parts = last + _fold_tail(n, reached, earliest)
    init = "tuple(" + ", ".join(["toInt64(-1)"] * (3 * n)) + ")"
    return (
        f"arrayFold((s, t, c) -> tuple({', '.join(parts)}), "
        f"arrayMap(x -> intDiv(x, 16), e), arrayMap(x -> x % 16, e), {init})"
    )


def steps_of(funnel: Funnel) -> tuple[FunnelStep, ...]:
    """Steps then exclusions, in code order."""
    return funnel.steps + funnel.exclusions
