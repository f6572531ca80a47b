"""``journeys verify``: do the event store, the ClickHouse event log and the counters agree?

Run with the node stopped (a chdb folder is one process's). The event store is
the truth: every journey's recorded facts are its events. Then:

- ``events`` (FINAL) holds, per customer, exactly those event ids, as many
  times each (two sources may share a messageId: two facts, two rows); an
  anonymous journey merged into a customer holds none (its rows moved);
- no (customer, event id, source) has two rows under FINAL: a re-send that got
  a second row (a new receive time) would be counted twice by every analysis;
- ``customer_stages.event_count`` (FINAL) is each journey's number of facts,
  and no counter belongs to a customer without a journey.

Rows not yet collapsed by a merge (identical copies of a replayed batch, read
without FINAL) are reported as a note, not a difference: FINAL, which every
query uses, reads one.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from uuid import UUID

from journeys.application import JourneyApplication
from journeys.domainmodel import FACT_EVENTS, CustomerJourney
from projections.clickhouse import database_name
from stack.bootstrap import Platform, StoresUnavailable, open_platform_offline
from stack.settings import Settings

# Ids listed per difference, at most.
SHOWN = 5


@dataclass
class VerifyReport:
    """What was compared and every difference found."""

    journeys: int = 0
    events: int = 0
    rows: int = 0
    unmerged_rows: int = 0
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when the stores agree."""
        return not self.differences


@dataclass(frozen=True, slots=True)
class StoredJourney:
    """One journey as the event store has it: its key, its events' ids, merged or not."""

    customer_key: str
    event_ids: Counter[str]
    merged_into: str


def stored_journeys(journeys: JourneyApplication) -> Iterable[StoredJourney]:
    """Every journey of the event store, with the ids of the events it recorded."""
    seen: set[UUID] = set()
    for journey_id, _ in journeys.all_journey_ids():
        if journey_id in seen:
            continue
        seen.add(journey_id)
        journey: object = journeys.repository.get(journey_id)
        if not isinstance(journey, CustomerJourney):
            continue
        ids = Counter(
            str(e.touch["event_id"])
            for e in journeys.history(journey)
            if type(e).__name__ in FACT_EVENTS
        )
        yield StoredJourney(journey.customer_key, ids, journey.merged_into or "")


def verify(platform: Platform) -> VerifyReport:
    """Compare the stores of ``platform``; every difference in the report."""
    report = VerifyReport()
    client = platform.clickhouse
    db = database_name(platform.settings.clickhouse_database)
    logged: dict[str, Counter[str]] = {}
    for key, event_id, count in client.query(
        f"SELECT customer_key, event_id, count() FROM {db}.events FINAL "
        "GROUP BY customer_key, event_id"
    ).result_rows:
        logged.setdefault(str(key), Counter())[str(event_id)] = int(count)
    report.rows = sum(sum(ids.values()) for ids in logged.values())
    raw = int(str(client.command(f"SELECT count() FROM {db}.events")))
    report.unmerged_rows = raw - report.rows
    if report.unmerged_rows:
        report.notes.append(
            f"{report.unmerged_rows} rows of events not yet collapsed by a merge "
            "(identical copies of a replayed batch; FINAL reads one)"
        )
    doubled = client.query(
        f"SELECT customer_key, event_id, source, count() AS n FROM {db}.events FINAL "
        "GROUP BY customer_key, event_id, source HAVING n > 1 ORDER BY customer_key, event_id"
    ).result_rows
    for key, event_id, source, count in doubled:
        report.differences.append(
            f"events: {key} has event id {event_id!r} (source {source!r}) in {count} rows "
            f"(different receive times: counted {count} times)"
        )
    counters = {
        str(key): int(count)
        for key, count in client.query(
            f"SELECT customer_key, event_count FROM {db}.customer_stages FINAL"
        ).result_rows
    }
    keys: set[str] = set()
    for journey in stored_journeys(platform.journeys):
        keys.add(journey.customer_key)
        report.journeys += 1
        report.events += sum(journey.event_ids.values())
        _compare_journey(journey, logged.get(journey.customer_key, Counter()), counters, report)
    for key in sorted(set(logged) - keys):
        report.differences.append(
            f"events: {key} has {sum(logged[key].values())} rows and no journey"
        )
    for key in sorted(set(counters) - keys):
        report.differences.append(
            f"customer_stages: {key} counts {counters[key]} events and has no journey"
        )
    return report


def _compare_journey(
    journey: StoredJourney,
    rows: Counter[str],
    counters: dict[str, int],
    report: VerifyReport,
) -> None:
    key = journey.customer_key
    recorded = sum(journey.event_ids.values())
    counted = counters.get(key)
    if counted != recorded:
        report.differences.append(
            f"customer_stages: {key} counts {counted} events, its journey recorded {recorded}"
        )
    if journey.merged_into:
        if rows:
            report.differences.append(
                f"events: {key} merged into {journey.merged_into} but still has "
                f"{sum(rows.values())} rows"
            )
        return
    missing = journey.event_ids - rows
    extra = rows - journey.event_ids
    if missing:
        report.differences.append(
            f"events: {key} lacks {sum(missing.values())} of its journey's events: {_some(missing)}"
        )
    if extra:
        report.differences.append(
            f"events: {key} has {sum(extra.values())} rows its journey did not record: "
            f"{_some(extra)}"
        )


def _some(ids: Counter[str]) -> str:
    shown = sorted(ids)[:SHOWN]
    more = len(ids) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def format_report(report: VerifyReport) -> str:
    """The report as the command prints it."""
    lines = [f"difference: {line}" for line in report.differences]
    lines += [f"note: {line}" for line in report.notes]
    verdict = (
        "the stores agree"
        if report.clean
        else f"{len(report.differences)} differences between the stores"
    )
    lines.append(
        f"{verdict}: {report.journeys} journeys with {report.events} events in the event "
        f"store, {report.rows} event rows in ClickHouse"
    )
    return "\n".join(lines)


def run_verify(settings: Settings) -> int:
    """``journeys verify``: 0 when the stores agree, 1 on any difference, 2 if not openable."""
    try:
        platform = open_platform_offline(settings)
    except StoresUnavailable as error:
        print(error, file=sys.stderr)
        return 2
    try:
        report = verify(platform)
    finally:
        platform.close()
    print(format_report(report))
    return 0 if report.clean else 1
