"""The customer profile read model: who the customer is, commercially.

A row per customer in ``customer_profiles`` (ClickHouse), taken whole from the
journey aggregate with its version (the newest wins), so a replayed batch
writes the same row again. Recency depends on "now": the row keeps the last
order time and the API computes recency at question time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from journeys.domainmodel import CustomerJourney
from projections.clickhouse import TableInsert, as_utc

INTEREST_TAGS = 5
# Defence in depth: a profile's money sums stay finite and within this bound, on
# write and on read (a journey built from events accepted before the value
# bounds may sum to 1e308 or inf). A thousand orders at the ingest maximum.
MAX_PROFILE_MONEY = 1e15
# Past this a cycle or a rating is not data: more than any span of real order times.
_BOUNDS = {
    "revenue": MAX_PROFILE_MONEY,
    "refunded": MAX_PROFILE_MONEY,
    "aov": MAX_PROFILE_MONEY,
    "ltv_estimate": MAX_PROFILE_MONEY,
    "purchase_cycle_days": 100_000.0,
    "average_rating": 5.0,
}
# The LTV estimate looks this many days ahead at the observed purchase cycle.
LTV_HORIZON_DAYS = 365

_COLUMNS = [
    "customer_key",
    "first_seen",
    "last_seen",
    "channels",
    "orders",
    "revenue",
    "refunded",
    "aov",
    "last_order_at",
    "ltv_estimate",
    "purchase_cycle_days",
    "interest_tags",
    "average_rating",
    "open_tickets",
    "version",
]


def profile_of(journey: CustomerJourney) -> dict[str, Any]:
    """The profile of ``journey``'s customer as plain data (the row of ``customer_profiles``).

    - revenue is net of refunds; aov = revenue / orders.
    - purchase_cycle_days: the median gap between consecutive orders.
    - ltv_estimate: net revenue so far plus the orders expected in the next
      ``LTV_HORIZON_DAYS`` at that cycle and the AOV (revenue so far when the
      cycle is unknown, i.e. fewer than two orders).
    - interest_tags: the most viewed product categories, most viewed first.
    """
    revenue = round(journey.revenue - journey.refunded, 2)
    aov = round(journey.revenue / journey.orders, 2) if journey.orders else 0.0
    cycle = journey.purchase_cycle_days()
    ltv = revenue
    if cycle is not None and cycle > 0:
        ltv = round(revenue + aov * LTV_HORIZON_DAYS / cycle, 2)
    tags = sorted(journey.categories.items(), key=lambda item: (-item[1], item[0]))
    ratings = journey.ratings
    profile = {
        "customer_key": journey.customer_key,
        "first_seen": journey.first_seen,
        "last_seen": journey.last_seen,
        "channels": sorted(journey.channels),
        "orders": journey.orders,
        "revenue": revenue,
        "refunded": round(journey.refunded, 2),
        "aov": aov,
        "last_order_at": max(journey.order_times) if journey.order_times else None,
        "ltv_estimate": ltv,
        "purchase_cycle_days": round(cycle, 2) if cycle is not None else None,
        "interest_tags": [name for name, _ in tags[:INTEREST_TAGS]],
        "average_rating": round(sum(ratings) / len(ratings), 2) if ratings else None,
        "open_tickets": journey.open_tickets,
        "version": journey.version,
    }
    return bounded(profile)


def bounded(profile: dict[str, Any]) -> dict[str, Any]:
    """``profile`` with every number finite and within its bound; ``clamped`` says
    whether one was not (NaN reads as 0, infinities and excess as the bound).

    A value exactly at the bound reads as clamped too: the row was clamped when
    written (no real sum lands on 1e15 exactly), and the table keeps no flag.
    """
    clamped = False
    for column, bound in _BOUNDS.items():
        value = profile.get(column)
        if value is None or (math.isfinite(value) and abs(value) < bound):
            continue
        if column == "average_rating" and value == bound:
            continue  # straight fives
        clamped = True
        profile[column] = 0.0 if math.isnan(value) else math.copysign(bound, value)
    profile["clamped"] = clamped
    return profile


def rfm(profile: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Raw recency (days since the last order, None without one), frequency and monetary.

    Quintile scores need the whole population; they are computed in ClickHouse
    by the analysis read side, not per customer here.
    """
    last = profile["last_order_at"]
    recency = round((now - last).total_seconds() / 86400, 2) if last is not None else None
    return {"recency_days": recency, "frequency": profile["orders"], "monetary": profile["revenue"]}


class ProfileView:
    """Reads and writes ``customer_profiles``; a row per customer, newest version wins."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._table = f"{database}.customer_profiles"
        self._rows = TableInsert(client, self._table, _COLUMNS)

    def upsert(self, journeys: Iterable[CustomerJourney]) -> None:
        """Write the current profile of each journey."""
        self._rows.insert([[p[c] for c in _COLUMNS] for p in map(profile_of, journeys)])

    def get(self, customer_key: str) -> dict[str, Any] | None:
        """The customer's profile, or None if the customer was never seen."""
        result = self._client.query(
            f"SELECT {', '.join(_COLUMNS)} FROM {self._table} FINAL "
            "WHERE customer_key = {customer:String}",
            parameters={"customer": customer_key},
        )
        if not result.result_rows:
            return None
        row = dict(zip(_COLUMNS, result.result_rows[0], strict=True))
        for column in ("first_seen", "last_seen", "last_order_at"):
            if row[column] is not None:
                row[column] = as_utc(row[column])
        row["channels"] = list(row["channels"])
        row["interest_tags"] = list(row["interest_tags"])
        return bounded(row)
