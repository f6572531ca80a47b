"""The ``segment_changes`` table: every SegmentEntered / SegmentExited, at its event time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from clickhouse_connect.driver.client import Client

from journeys.segment_state import MembershipChange, from_ms
from projections.clickhouse import TableInsert, as_utc

_COLUMNS = ["segment", "customer_key", "at", "entered", "event_id", "backfill"]


class SegmentChangeLog:
    """Appends membership changes (idempotent: a replayed batch's rows collapse) and reads them."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._database = database
        self._insert = TableInsert(client, f"{database}.segment_changes", _COLUMNS)

    def append(
        self, changes: Sequence[tuple[str, MembershipChange]], backfill: bool = False
    ) -> None:
        """Insert (customer key, change) pairs (``backfill``: found by a backfill)."""
        self._insert.insert(
            [
                [c.segment, customer, from_ms(c.at_ms), int(c.entered), c.event_id, int(backfill)]
                for customer, c in changes
            ]
        )

    def append_flagged(self, changes: Sequence[tuple[str, MembershipChange, bool]]) -> None:
        """Insert (customer key, change, found by a backfill) rows in one insert."""
        self._insert.insert(
            [
                [c.segment, customer, from_ms(c.at_ms), int(c.entered), c.event_id, int(flag)]
                for customer, c, flag in changes
            ]
        )

    def changes_of(
        self, customer_keys: Sequence[str]
    ) -> dict[str, list[tuple[MembershipChange, bool]]]:
        """Each customer's recorded changes of every segment (with their backfill flag)."""
        result = self._client.query(
            "SELECT customer_key, segment, toUnixTimestamp64Milli(at), entered, event_id,"
            f" max(backfill) FROM {self._database}.segment_changes FINAL"
            " WHERE customer_key IN {customers:Array(String)}"
            " GROUP BY customer_key, segment, at, entered, event_id ORDER BY at, segment",
            parameters={"customers": list(customer_keys)},
        )
        found: dict[str, list[tuple[MembershipChange, bool]]] = {}
        for row in result.result_rows:
            change = MembershipChange(row[1], bool(row[3]), int(row[2]), row[4])
            found.setdefault(row[0], []).append((change, bool(row[5])))
        return found

    def forget_changes(self, changes: Sequence[tuple[str, MembershipChange]]) -> None:
        """Delete these recorded (customer key, change) rows: a revision found them untrue."""
        if not changes:
            return
        rows = [
            (customer, c.segment, c.at_ms, int(c.entered), c.event_id) for customer, c in changes
        ]
        self._client.command(
            f"DELETE FROM {self._database}.segment_changes WHERE"
            " (customer_key, segment, toUnixTimestamp64Milli(at), entered, event_id)"
            " IN {rows:Array(Tuple(String, String, Int64, UInt8, String))}",
            parameters={"rows": rows},
        )

    def forget_segment(self, segment: str) -> None:
        """Delete the segment's recorded changes (its definition changed: backfilled anew)."""
        self._client.command(
            f"DELETE FROM {self._database}.segment_changes WHERE segment = {{segment:String}}",
            parameters={"segment": segment},
        )

    def backfilled_changes(self, segment: str) -> list[tuple[str, datetime, bool, bool]]:
        """(customer, time, entered, backfill) of ``segment``, in time order."""
        result = self._client.query(
            f"SELECT customer_key, at, entered, backfill FROM {self._database}.segment_changes"
            " FINAL WHERE segment = {segment:String} ORDER BY customer_key, at, entered",
            parameters={"segment": segment},
        )
        return [(row[0], as_utc(row[1]), bool(row[2]), bool(row[3])) for row in result.result_rows]

    def changes(self, segment: str) -> list[tuple[str, datetime, bool, str]]:
        """(customer, time, entered, event id) of ``segment``, in time order."""
        result = self._client.query(
            f"SELECT customer_key, at, entered, event_id FROM {self._database}.segment_changes"
            " FINAL WHERE segment = {segment:String} ORDER BY customer_key, at, entered",
            parameters={"segment": segment},
        )
        return [(row[0], as_utc(row[1]), bool(row[2]), row[3]) for row in result.result_rows]

    def members_as_of(self, segment: str, as_of: datetime) -> list[str]:
        """Customers whose last recorded change of ``segment`` at or before ``as_of`` is an entry.

        As recorded by the worker: exits caused by a window sliding are recorded
        by its timer loop once due (within a tick, when the worker is caught up).
        """
        result = self._client.query(
            f"SELECT customer_key FROM {self._database}.segment_changes FINAL"
            " WHERE segment = {segment:String} AND at <= {as_of:DateTime64(3)}"
            " GROUP BY customer_key HAVING argMax(entered, (at, entered)) = 1"
            " ORDER BY customer_key",
            parameters={"segment": segment, "as_of": as_of},
        )
        return [row[0] for row in result.result_rows]

    def segments_of(self, customer_key: str, as_of: datetime) -> list[str]:
        """The segments the customer last entered, not left, at or before ``as_of``."""
        result = self._client.query(
            f"SELECT segment FROM {self._database}.segment_changes FINAL"
            " WHERE customer_key = {customer:String} AND at <= {as_of:DateTime64(3)}"
            " GROUP BY segment HAVING argMax(entered, (at, entered)) = 1 ORDER BY segment",
            parameters={"customer": customer_key, "as_of": as_of},
        )
        return [row[0] for row in result.result_rows]
