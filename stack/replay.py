"""``journeys replay``: rebuild the projections from the event store, or try other rules.

Run it with the worker stopped. With the embedded ClickHouse (chdb) this is
required anyway: a chdb folder is opened by one process only, so a running node
makes this command fail to open it. Against a ClickHouse server it would work
alongside, but a worker writing during the rebuild could interleave rows, so
stop the workers there too.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO
from uuid import UUID

from journeys.application import JourneyApplication, orders_of
from journeys.domainmodel import FACT_EVENTS, CustomerJourney
from journeys.stages import JOURNEY_STAGES, Stage, StageRules
from journeys.touches import Touch
from projections.customer_stages import CustomerStageView
from projections.migrations import migrate
from projections.profiles import ProfileView
from stack.bootstrap import Platform

# Journeys written to ClickHouse per insert.
CHUNK = 2000
# Tables rebuilt from the event store (the raw `events` log is not: it is not derived).
PROJECTION_TABLES = ("stage_changes", "customer_stages", "customer_orders", "customer_profiles")


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay went through, and how fast."""

    journeys: int
    events: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        """Domain events replayed per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


class Progress:
    """A text progress bar on a terminal stream, redrawn at most ten times a second."""

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "replay") -> None:
        self.total, self.label = max(total, 1), label
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: int, *, final: bool = False) -> None:
        """Show ``done`` of the total."""
        now = time.monotonic()
        if not final and now - self._drawn < 0.1:
            return
        self._drawn = now
        share = min(done / self.total, 1.0)
        bar = "#" * int(share * 30)
        rate = done / max(now - self.started, 1e-9)
        self.stream.write(
            f"\r{self.label} [{bar:<30}] {share:6.1%} {done}/{self.total} events {rate:,.0f}/s"
        )
        if final:
            self.stream.write("\n")
        self.stream.flush()


def journey_histories(
    app: JourneyApplication, on_event: Callable[[int], None]
) -> Iterator[tuple[CustomerJourney, list[Any]]]:
    """Every journey rebuilt from its own events (no snapshots), with those events."""
    ids: dict[UUID, None] = {}
    for journey_id, _ in app.all_journey_ids():
        ids[journey_id] = None
    done = 0
    for journey_id in ids:
        history: list[Any] = list(app.events.get(journey_id))
        journey: Any = None
        for domain_event in history:
            journey = domain_event.mutate(journey)
        done += len(history)
        on_event(done)
        assert isinstance(journey, CustomerJourney)
        yield journey, history


def count_events(app: JourneyApplication) -> int:
    """How many domain events the event store holds."""
    return app.recorder.max_notification_id() or 0


def rebuild(platform: Platform, stream: TextIO | None = None) -> ReplayReport:
    """Empty the projection tables and rebuild them from every stored journey."""
    app, client = platform.journeys, platform.clickhouse
    database = platform.settings.clickhouse_database
    migrate(client, database)
    for table in PROJECTION_TABLES:
        client.command(f"TRUNCATE TABLE IF EXISTS {database}.{table}")
    progress = Progress(count_events(app), stream)
    started = time.monotonic()
    journeys = events = 0
    for chunk in _chunks(journey_histories(app, progress.update), CHUNK):
        _write(platform, chunk)
        journeys += len(chunk)
        events += sum(len(history) for _, history in chunk)
    progress.update(events, final=True)
    return ReplayReport(journeys, events, time.monotonic() - started)


def _write(platform: Platform, chunk: list[tuple[CustomerJourney, list[Any]]]) -> None:
    stage_rows: list[list[Any]] = []
    orders: list[tuple[str, Touch]] = []
    for journey, history in chunk:
        # The rows of the newest revision, as the live worker leaves them current:
        # a revision replaces the history, later stage changes extend it.
        rows: list[list[Any]] = []
        revision = 0
        for domain_event in history:
            kind = type(domain_event).__name__
            if kind == "StageReached":
                previous = rows[-1][1] if rows else ""
                rows.append(
                    [
                        journey.customer_key,
                        domain_event.stage,
                        previous,
                        domain_event.reason,
                        domain_event.event_id,
                        domain_event.at,
                        revision,
                    ]
                )
            elif kind == "StagesRevised":
                revision = domain_event.revision
                rows = []
                for stage, reason, at, event_id in domain_event.history:
                    previous = rows[-1][1] if rows else ""
                    rows.append(
                        [journey.customer_key, stage, previous, reason, event_id, at, revision]
                    )
            orders.extend((journey.customer_key, order) for order in orders_of(domain_event))
        stage_rows.extend(rows)
    journeys = [journey for journey, _ in chunk]
    platform.event_log.append_stage_rows(stage_rows)
    platform.stages.append_orders(orders)
    platform.stages.upsert(journey.summary() for journey in journeys)
    platform.profiles.upsert(journeys)


def redecide(history: Iterable[Any], rules: StageRules) -> CustomerJourney:
    """The journey its recorded facts would have made under ``rules`` (in memory only)."""
    journey: CustomerJourney | None = None
    facts: list[Touch] = []
    for domain_event in history:
        kind = type(domain_event).__name__
        if kind == "JourneyStarted":
            journey = CustomerJourney(
                customer_key=domain_event.customer_key, started_at=domain_event.started_at
            )
        elif journey is None:
            continue
        elif kind in FACT_EVENTS:
            facts.append(Touch.from_dict(domain_event.touch))
            journey.record_touch(facts[-1], rules, decide=False)
        elif kind == "IdentityMerged":
            # The anonymous journey's stages as it recorded them (it is re-decided on its own).
            stages = [(stage, at) for stage, at in domain_event.stages]
            journey.absorb(domain_event.anonymous_key, [], domain_event.at, rules, stages)
        elif kind == "MergedInto":
            # The anonymous journey's stages from its facts, then its end in the merge.
            journey.revise(facts, rules)
            journey.merge_into(domain_event.customer_key, domain_event.at, domain_event.event_id)
    assert journey is not None
    # Every fact decided in event time (journeys.domainmodel.fact_order), as live.
    journey.revise(facts, rules)
    return journey


def what_if(
    platform: Platform, rules: StageRules, stream: TextIO | None = None
) -> tuple[dict[str, tuple[int, int]], ReplayReport, str]:
    """Stage counts now under the current rules and under ``rules``.

    The re-decided journeys go to a separate projection, the database
    ``<clickhouse_database>_whatif`` (its ``customer_stages`` and ``stage_changes``);
    the live projections are not touched. Returns {stage: (now, with rules)}.
    """
    app, client = platform.journeys, platform.clickhouse
    database = f"{platform.settings.clickhouse_database}_whatif"
    migrate(client, database)
    for table in PROJECTION_TABLES:
        client.command(f"TRUNCATE TABLE IF EXISTS {database}.{table}")
    what_if_view = CustomerStageView(client, database)
    what_if_profiles = ProfileView(client, database)
    now = datetime.now(UTC)
    current: Counter[str] = Counter()
    other: Counter[str] = Counter()
    progress = Progress(count_events(app), stream, label="what-if")
    started = time.monotonic()
    journeys = events = 0
    for chunk in _chunks(journey_histories(app, progress.update), CHUNK):
        redecided = []
        for journey, history in chunk:
            events += len(history)
            again = redecide(history, rules)
            redecided.append(again)
            for counter, subject, subject_rules in (
                (current, journey, app.rules),
                (other, again, rules),
            ):
                stage = subject.stage_as_of(now, subject_rules)
                if stage is not None and stage is not Stage.MERGED:
                    counter[stage.value] += 1
        _write_what_if(client, database, redecided)
        what_if_view.upsert(j.summary() for j in redecided)
        what_if_profiles.upsert(redecided)
        journeys += len(chunk)
    progress.update(events, final=True)
    report = ReplayReport(journeys, events, time.monotonic() - started)
    counts = {stage.value: (current[stage.value], other[stage.value]) for stage in JOURNEY_STAGES}
    return counts, report, database


def _write_what_if(client: Any, database: str, journeys: list[CustomerJourney]) -> None:
    rows = []
    for journey in journeys:
        previous = ""
        for stage, at in journey.stage_history:
            rows.append([journey.customer_key, stage, previous, "", "", at])
            previous = stage
    if rows:
        client.insert(
            f"{database}.stage_changes",
            rows,
            column_names=["customer_key", "stage", "previous_stage", "reason", "event_id", "at"],
        )


def format_what_if(table: dict[str, tuple[int, int]]) -> str:
    """The stage-count comparison as a text table."""
    lines = [f"{'stage':<14}{'now':>10}{'with rules':>12}{'change':>10}"]
    for stage, (now, other) in table.items():
        lines.append(f"{stage:<14}{now:>10}{other:>12}{other - now:>+10}")
    return "\n".join(lines)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
