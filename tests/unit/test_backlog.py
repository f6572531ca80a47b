"""The node's backlog in memory (streams/backlog.py) and the ingest lag limit on it."""

from __future__ import annotations

import pytest

from api.dependencies import BacklogLimit
from streams.backlog import MAX_MARKS, Backlog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_events_behind_are_the_known_end_less_the_processed_position() -> None:
    clock = Clock()
    backlog = Backlog(clock)
    backlog.processed(0, 0)
    backlog.processed(1, 5)
    backlog.delivered([(0, 0), (0, 1), (0, 2), None, (1, 9)])
    assert backlog.partitions() == {0: 3, 1: 5}
    assert backlog.events() == 8
    # The consumer saw more on partition 1 than the gateway wrote (identity messages).
    backlog.fetched(1, 12)
    backlog.fetched(1, None)
    assert backlog.partitions() == {0: 3, 1: 7}
    backlog.processed(0, 3)
    backlog.processed(1, 12)
    assert backlog.events() == 0


def test_a_partition_without_a_position_is_not_counted() -> None:
    backlog = Backlog(Clock())
    backlog.delivered([(3, 40)])
    assert backlog.events() == 0 and backlog.seconds() == 0.0
    backlog.processed(3, 0)
    assert backlog.events() == 41


def test_seconds_are_the_age_of_the_oldest_unprocessed_accepted_event() -> None:
    clock = Clock()
    backlog = Backlog(clock, resolution_s=0.05)
    backlog.processed(0, 0)
    backlog.processed(1, 0)
    backlog.delivered([(0, 0), (0, 1)])  # accepted at 100.0
    clock.now = 100.02
    backlog.delivered([(0, 2)])  # within the resolution: the same mark
    clock.now = 101.0
    backlog.delivered([(0, 3), (1, 0)])  # accepted at 101.0
    clock.now = 104.0
    assert backlog.seconds() == pytest.approx(4.0)
    backlog.processed(0, 2)  # offset 2 shares the 100.0 mark: still that old
    assert backlog.seconds() == pytest.approx(4.0)
    backlog.processed(0, 3)
    assert backlog.seconds() == pytest.approx(3.0)
    backlog.processed(0, 4)
    backlog.processed(1, 1)
    assert backlog.seconds() == 0.0


def test_marks_are_bounded_and_merging_never_makes_the_backlog_younger() -> None:
    clock = Clock()
    backlog = Backlog(clock, resolution_s=0.01)
    backlog.processed(0, 0)
    for offset in range(MAX_MARKS + 50):
        backlog.delivered([(0, offset)])
        clock.now += 1
    assert len(backlog._marks[0]) == MAX_MARKS
    assert backlog.seconds() == pytest.approx(MAX_MARKS + 50)


def test_the_limit_names_what_it_is_past_and_zero_turns_it_off() -> None:
    clock = Clock()
    backlog = Backlog(clock)
    backlog.processed(0, 0)
    backlog.delivered([(0, offset) for offset in range(10)])
    assert BacklogLimit(backlog, max_events=10).exceeded() is None
    assert BacklogLimit(backlog, max_events=9).exceeded() == (
        "10 events not yet processed (limit 9)"
    )
    assert BacklogLimit(backlog).exceeded() is None
    clock.now += 30
    by_age = BacklogLimit(backlog, max_seconds=20)
    assert by_age.exceeded() == "oldest unprocessed event 30.0 s old (limit 20 s)"
    state = by_age.state()
    assert state == {
        "ok": True,
        "accepting": False,
        "lag_events": 10,
        "lag_seconds": 30.0,
        "partitions": {"0": 10},
        "max_lag_events": 0,
        "max_lag_s": 20,
    }
    backlog.processed(0, 10)
    assert by_age.exceeded() is None and by_age.state()["accepting"] is True


def test_behind_gateways_seconds_are_the_age_of_the_batch_in_hand() -> None:
    # The node accepts nothing itself (no marks): its consumer tells it when the first
    # record of the batch it handles was produced (the record's Kafka timestamp).
    clock, wall = Clock(), Clock()
    wall.now = 1_700_000_000.0
    backlog = Backlog(clock, wall_clock=wall)
    backlog.processed(0, 0)
    backlog.processed(1, 0)
    assert backlog.seconds() == 0.0
    backlog.handling(0, 1_699_999_997.5)
    backlog.handling(1, 1_699_999_999.0)
    assert backlog.seconds() == pytest.approx(2.5)
    wall.now += 1.0
    assert backlog.seconds() == pytest.approx(3.5)
    backlog.processed(0, 40)  # that batch committed: partition 1's is the oldest in hand
    assert backlog.seconds() == pytest.approx(2.0)
    backlog.processed(1, 7)
    assert backlog.seconds() == 0.0
    # Marks of this process's own deliveries still count, whichever is older.
    backlog.delivered([(0, 40)])
    clock.now += 4.0
    backlog.handling(0, wall.now - 1.0)
    assert backlog.seconds() == pytest.approx(4.0)
