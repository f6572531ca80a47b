"""Retention, paths, trends, stage flow, the stage funnel and RFM over the event log.

Definitions (the reference in :mod:`projections.analytics.reference` follows them):

- **retention**: periods are UTC days, ISO weeks (from Monday) or calendar
  months. ``first_time``: a customer's cohort is the period of their first
  start event; ``recurring``: every period with a start event is a cohort
  entry. A customer is retained at offset k (1..periods) when a return event
  falls in cohort + k.
- **paths**: from each customer's first anchor event (timeline ordered by time
  then event id, duplicates removed), the names of the next (or previous,
  nearest first) N events; customers are counted per distinct path.
- **trends**: distinct events per UTC day and canonical type.
- **stage flow**: stage changes in the period, counted per (previous, stage).
- **stage funnel**: customers reaching each stage, awareness → loyalty.
- **RFM**: over the orders placed before ``as_of`` (``Order Completed`` events, one
  per ``order_id`` at its first occurrence by event time): recency (ms since
  the last order), frequency (orders), monetary (revenue, summed in cents).
  Each score is ``1 + floor(5 * below / n)`` where ``below`` counts customers
  strictly worse (longer ago, fewer orders, less revenue): quintiles that give
  ties the same score. Segments and tiers: :data:`SEGMENTS`, :func:`tier`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from clickhouse_connect.driver.client import Client

from journeys.funnels import FunnelStep
from journeys.rfm import NEEDS_ATTENTION, SEGMENTS
from journeys.stages import PROGRESSION
from projections.analytics.errors import QueryProblem
from projections.analytics.funnels import IN_SEGMENT, NOT_IN_SEGMENT, check_event_names
from projections.analytics.sql import Params, step_sql
from projections.customer_stages import current_stage_changes

MAX_PERIODS = 52
MAX_PATH_STEPS = 5


class Period(StrEnum):
    """Cohort period of a retention table."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"


class RetentionMode(StrEnum):
    """Which start events make a cohort."""

    FIRST_TIME = "first_time"
    RECURRING = "recurring"


# The period number of a timestamp; the same arithmetic as ``period_index``.
_PERIOD_SQL = {
    Period.DAY: "toRelativeDayNum(toDate(timestamp))",
    Period.WEEK: "intDiv(toRelativeDayNum(toMonday(timestamp)) - 4, 7)",
    Period.MONTH: "toYear(timestamp) * 12 + toMonth(timestamp) - 1",
}


def period_index(moment: datetime | date, period: Period) -> int:
    """The number of the period holding ``moment`` (days, Monday-weeks or months since 1970)."""
    day = moment.date() if isinstance(moment, datetime) else moment
    days = (day - date(1970, 1, 1)).days
    if period is Period.DAY:
        return days
    if period is Period.WEEK:
        monday = days - day.weekday()
        return (monday - 4) // 7  # 1970-01-05 was the first Monday
    return day.year * 12 + day.month - 1


def period_start(index: int, period: Period) -> date:
    """The first day of period ``index``."""
    from datetime import timedelta

    if period is Period.DAY:
        return date(1970, 1, 1) + timedelta(days=index)
    if period is Period.WEEK:
        return date(1970, 1, 5) + timedelta(days=7 * index)
    return date(index // 12, index % 12 + 1, 1)


@dataclass(frozen=True, slots=True)
class Cohort:
    """A cohort's first day, size, and customers retained at offsets 1..periods."""

    start: date
    size: int
    retained: list[int]


@dataclass(frozen=True, slots=True)
class RfmScore:
    """One customer's RFM figures, quintile scores, segment and tier."""

    customer_key: str
    recency_days: float
    frequency: int
    monetary: float
    r: int
    f: int
    m: int
    segment: str
    tier: str
    # True when a stored revenue was not finite or beyond MAX_STORED_MONEY and was
    # clamped (an event accepted before the value bounds, or written by hand).
    clamped: bool = False


# Defence in depth: events accepted under older, looser rules may hold any
# Float64 (1e307, -inf, NaN). RFM counts a revenue only as a finite amount within
# the ingest bound (events.ecommerce.MAX_MONEY), clamped, so no stored value can
# overflow the cents or fail the report (and the worker's segment scan) for all.
MAX_STORED_MONEY = 1e12
_REVENUE = "ifNull(first_revenue, 0)"  # the order's first occurrence (below)
_CLAMPED_REVENUE = (
    f"if(isFinite({_REVENUE}), greatest(-{MAX_STORED_MONEY:.0e}, "
    f"least({MAX_STORED_MONEY:.0e}, {_REVENUE})), 0)"
)
_OUT_OF_RANGE = f"(NOT isFinite({_REVENUE}) OR abs({_REVENUE}) > {MAX_STORED_MONEY:.0e})"


def segment(r: int, f: int) -> str:
    """The named segment of recency and frequency scores."""
    for name, r_low, r_high, f_low, f_high in SEGMENTS:
        if r_low <= r <= r_high and f_low <= f <= f_high:
            return name
    return NEEDS_ATTENTION


def tier(f: int, m: int) -> str:
    """Purchase-frequency tier: high-value, medium or low-activity, from F and M scores."""
    if f + m >= 8:
        return "high_value"
    if f + m >= 5:
        return "medium"
    return "low_activity"


def _segment_sql() -> str:
    arms = ", ".join(
        f"r BETWEEN {a} AND {b} AND f BETWEEN {c} AND {d}, '{name}'"
        for name, a, b, c, d in SEGMENTS
    )
    return f"multiIf({arms}, '{NEEDS_ATTENTION}')"


class Reports:
    """The non-funnel analyses, over ``database``."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._db = database

    def _rows(self, sql: str, params: Params) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._client.query(sql, parameters=params.values).result_rows]

    def retention(
        self,
        start_step: FunnelStep,
        return_step: FunnelStep,
        period: Period,
        mode: RetentionMode,
        periods: int,
        start: datetime | None = None,
        end: datetime | None = None,
        customers: Sequence[str] | None = None,
    ) -> list[Cohort]:
        """Cohorts in period order, each with its retained counts at offsets 1..periods
        (``customers``: only these, a trait filter's answer)."""
        groups = self._retention(
            start_step, return_step, period, mode, periods, start, end, None, customers
        )
        return groups.get("", [])

    def retention_by_segment(
        self,
        start_step: FunnelStep,
        return_step: FunnelStep,
        period: Period,
        mode: RetentionMode,
        periods: int,
        segment: str,
        start: datetime | None = None,
        end: datetime | None = None,
        customers: Sequence[str] | None = None,
    ) -> tuple[list[Cohort], dict[str, list[Cohort]]]:
        """The cohorts overall and by membership of ``segment`` ("in" / "not in").

        A cohort entry is in the segment when, at the customer's first start event
        of the cohort's period (in the range), the segment's last recorded change
        (``segment_changes``) is an entry, as a funnel's breakdown by segment.
        Each (customer, cohort) falls in exactly one group, so the groups add up
        to the overall table.
        """
        groups = self._retention(
            start_step, return_step, period, mode, periods, start, end, segment, customers
        )
        by_start: dict[date, list[int]] = {}
        for cohorts in groups.values():
            for c in cohorts:
                held = by_start.setdefault(c.start, [0] * (periods + 1))
                held[0] += c.size
                for k, n in enumerate(c.retained, 1):
                    held[k] += n
        overall = [Cohort(day, v[0], v[1:]) for day, v in sorted(by_start.items())]
        return overall, {g: groups.get(g, []) for g in (IN_SEGMENT, NOT_IN_SEGMENT)}

    def _retention(
        self,
        start_step: FunnelStep,
        return_step: FunnelStep,
        period: Period,
        mode: RetentionMode,
        periods: int,
        start: datetime | None,
        end: datetime | None,
        segment: str | None,
        customers: Sequence[str] | None = None,
    ) -> dict[str, list[Cohort]]:
        if not 1 <= periods <= MAX_PERIODS:
            raise QueryProblem("periods", f"must be between 1 and {MAX_PERIODS}")
        named = [
            (field, step.event_name)
            for field, step in (
                ("start_event.event", start_step),
                ("return_event.event", return_step),
            )
            if step.event_name is not None
        ]
        check_event_names(self._client, self._db, named)
        params = Params()
        s = step_sql(start_step, params, "start_event")
        r = step_sql(return_step, params, "return_event")
        where = params.time_range(start, end, "timestamp")
        if customers is not None:
            where += f" AND has({params.add(list(customers), 'Array(String)')}, customer_key)"
        # Each cohort entry (customer, c) with the time of its first start event (t).
        if mode is RetentionMode.FIRST_TIME:
            entries = (
                "SELECT customer_key, min(p) AS c, argMin(t, p) AS t FROM per WHERE s"
                " GROUP BY customer_key"
            )
        else:
            entries = "SELECT customer_key, p AS c, t FROM per WHERE s"
        if segment is None:
            cohorts = f"SELECT customer_key, c, '' AS bd FROM ({entries})"
        else:
            name = params.add(segment, "String")
            cohorts = f"""
                SELECT e.customer_key AS customer_key, e.c AS c,
                       if(m.entered = 1, '{IN_SEGMENT}', '{NOT_IN_SEGMENT}') AS bd
                FROM ({entries}) AS e
                ASOF LEFT JOIN (
                    SELECT customer_key, at, entered FROM {self._db}.segment_changes FINAL
                    WHERE segment = {name}
                    ORDER BY customer_key, at, entered
                ) AS m ON e.customer_key = m.customer_key AND e.t >= m.at
            """
        sql = f"""
            WITH per AS (
                SELECT customer_key, {_PERIOD_SQL[period]} AS p, max({s}) AS s, max({r}) AS r,
                       minIf(timestamp, {s}) AS t
                FROM {self._db}.events
                WHERE {where} AND ({s} OR {r})
                GROUP BY customer_key, p
            ),
            cohorts AS ({cohorts})
            SELECT bd, c, -1 AS k, uniqExact(customer_key) FROM cohorts GROUP BY bd, c
            UNION ALL
            SELECT cohorts.bd AS bd, cohorts.c AS c, per.p - cohorts.c AS k,
                   uniqExact(cohorts.customer_key)
            FROM cohorts INNER JOIN per ON per.customer_key = cohorts.customer_key
            WHERE per.r AND k BETWEEN 1 AND {int(periods)}
            GROUP BY bd, c, k
        """
        sizes: dict[str, dict[int, int]] = {}
        kept: dict[str, dict[int, list[int]]] = {}
        for bd, c, k, count in self._rows(sql, params):
            if k == -1:
                sizes.setdefault(str(bd), {})[int(c)] = int(count)
            else:
                kept.setdefault(str(bd), {}).setdefault(int(c), [0] * periods)[int(k) - 1] = int(
                    count
                )
        return {
            bd: [
                Cohort(period_start(c, period), n[c], kept.get(bd, {}).get(c, [0] * periods))
                for c in sorted(n)
            ]
            for bd, n in sizes.items()
        }

    def paths(
        self,
        anchor: FunnelStep,
        direction: str,
        steps: int,
        limit: int = 20,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[tuple[list[str], int]]:
        """The most common paths after (or before) each customer's first anchor event."""
        if not 1 <= steps <= MAX_PATH_STEPS:
            raise QueryProblem("steps", f"must be between 1 and {MAX_PATH_STEPS}")
        if direction not in ("next", "previous"):
            raise QueryProblem("direction", "must be next or previous")
        if anchor.event_name is not None:
            check_event_names(self._client, self._db, [("event", anchor.event_name)])
        params = Params()
        cond = step_sql(anchor, params, "event")
        where = params.time_range(start, end, "timestamp")
        n = int(steps)
        if direction == "next":
            path = f"arraySlice(names, i + 1, {n})"
        else:
            path = f"arrayReverse(arraySlice(names, greatest(1, i - {n}), least({n}, i - 1)))"
        sql = f"""
            SELECT path, count() AS customers FROM (
                SELECT {path} AS path FROM (
                    SELECT arrayMap(x -> x.3, ev) AS names,
                           arrayFirstIndex(x -> x.4, ev) AS i
                    FROM (
                        SELECT arraySort(groupArray(tuple(timestamp, event_id,
                                   toString(event_name), {cond}))) AS ev
                        FROM {self._db}.events FINAL
                        WHERE {where}
                        GROUP BY customer_key
                    )
                ) WHERE i > 0
            )
            GROUP BY path ORDER BY customers DESC, path LIMIT {int(limit)}
        """
        return [(list(p), int(c)) for p, c in self._rows(sql, params)]

    def trends(self, start: datetime | None, end: datetime | None) -> list[tuple[date, str, int]]:
        """Distinct events per UTC day and canonical type."""
        params = Params()
        where = params.time_range(start, end, "timestamp")
        sql = f"""
            SELECT toDate(timestamp) AS day, toString(event_type) AS kind, count()
            FROM {self._db}.events FINAL WHERE {where}
            GROUP BY day, kind ORDER BY day, kind
        """
        return [(d, str(k), int(c)) for d, k, c in self._rows(sql, params)]

    def stage_flow(
        self, start: datetime | None, end: datetime | None
    ) -> list[tuple[str, str, int]]:
        """Stage changes in ``[start, end)`` per (previous stage, stage); '' = first stage."""
        params = Params()
        where = params.time_range(start, end, "at")
        sql = f"""
            SELECT toString(previous_stage) AS prev, toString(stage) AS st, count()
            FROM {current_stage_changes(self._db)} WHERE {where}
            GROUP BY prev, st ORDER BY prev, st
        """
        return [(p, s, int(c)) for p, s, c in self._rows(sql, params)]

    def stage_funnel(self, start: datetime | None, end: datetime | None) -> list[tuple[str, int]]:
        """Customers reaching each stage in ``[start, end)``, awareness → loyalty."""
        params = Params()
        where = params.time_range(start, end, "at")
        sql = f"""
            SELECT toString(stage), uniqExact(customer_key)
            FROM {current_stage_changes(self._db)} WHERE {where} GROUP BY stage
        """
        counts = {str(s): int(c) for s, c in self._rows(sql, params)}
        return [(stage.value, counts.get(stage.value, 0)) for stage in PROGRESSION]

    def rfm(self, as_of: datetime, customer: str | None = None) -> list[RfmScore]:
        """Every buyer's RFM scores (or one customer's), ordered by customer."""
        params = Params()
        cutoff = params.add(as_of, "DateTime64(3, 'UTC')")
        only = ""
        if customer is not None:
            only = f"WHERE customer_key = {params.add(customer, 'String')}"
        sql = f"""
            SELECT customer_key, recency_ms, frequency, cents, r, f, m,
                   {_segment_sql()} AS segment, clamped
            FROM (
                SELECT customer_key, recency_ms, frequency, cents, clamped,
                       1 + intDiv(5 * (rank() OVER (ORDER BY recency_ms DESC) - 1), n) AS r,
                       1 + intDiv(5 * (rank() OVER (ORDER BY frequency) - 1), n) AS f,
                       1 + intDiv(5 * (rank() OVER (ORDER BY cents) - 1), n) AS m
                FROM (
                    SELECT customer_key,
                           toUnixTimestamp64Milli({cutoff})
                               - max(toUnixTimestamp64Milli(first_at)) AS recency_ms,
                           count() AS frequency,
                           sum(toInt128(floor({_CLAMPED_REVENUE} * 100 + 0.5))) AS cents,
                           max({_OUT_OF_RANGE}) AS clamped,
                           count() OVER () AS n
                    FROM (
                        -- One order per order_id (the event itself without one): its
                        -- first occurrence by event time, as the journey counts it.
                        SELECT customer_key,
                               if(ifNull(order_id, '') = '', concat(source, '/', event_id),
                                  order_id) AS order_key,
                               min(timestamp) AS first_at,
                               argMin(revenue, (timestamp, source, event_id)) AS first_revenue
                        FROM {self._db}.events FINAL
                        WHERE event_type = 'purchase' AND lower(event_name) = 'order completed'
                        GROUP BY customer_key, order_key
                    )
                    WHERE first_at < {cutoff}
                    GROUP BY customer_key
                )
            )
            {only}
            ORDER BY customer_key
        """
        return [
            RfmScore(
                customer_key=str(key),
                recency_days=round(int(rec) / 86_400_000, 3),
                frequency=int(freq),
                monetary=int(cents) / 100,
                r=int(r),
                f=int(f),
                m=int(m),
                segment=str(seg),
                tier=tier(int(f), int(m)),
                clamped=bool(clamped),
            )
            for key, rec, freq, cents, r, f, m, seg, clamped in self._rows(sql, params)
        ]

    def customer_rfm(self, customer_key: str, as_of: datetime) -> RfmScore | None:
        """One customer's RFM scores among all buyers, or None if they never ordered.

        For the customer profile.
        """
        found = self.rfm(as_of, customer_key)
        return found[0] if found else None
