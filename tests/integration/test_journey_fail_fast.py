"""A failing journey batch stops the worker at once; after a restart the event counts once.

The failure is a real one of the database: a SQLite trigger refuses the
journey commit's tracking record. The journey consumer stops consuming and
the worker crashes; it must not then wait for journey positions that can no
longer move (the clean stop's drain), and the next start re-reads the batch
from the stored position.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from stack.processes import wait_until
from stack.settings import Settings
from tests.integration.test_outreach_fail_fast import FLOWS, _execute
from tests.integration.test_outreach_triggers import start_node

pytestmark = pytest.mark.integration

POISON = (
    "CREATE TRIGGER refuse_commits BEFORE INSERT ON tracking "
    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
)
# Well below the drain's 60 s: a crashed worker that drained would overrun it.
CRASH_EXIT_S = 40


def test_a_failing_journey_batch_stops_the_worker_and_is_redone_after_restart(
    settings: Settings, tmp_path: Path
) -> None:
    node = start_node(settings, FLOWS, tmp_path)
    settings = node.settings
    try:
        before = committed_batches(settings.sqlite_path)
        _execute(settings, POISON)
        assert node.track("c-journey", "Product Viewed", message_id="m-1") == 200
        process = node.process
        assert process is not None
        assert wait_until(lambda: process.poll() is not None, CRASH_EXIT_S, alive=lambda: True), (
            f"the worker went on (or drained) after a failed journey batch:\n{node.log_tail()}"
        )
        assert "journey batch failed; stopping the worker" in node.log_path.read_text()
        assert committed_batches(settings.sqlite_path) == before

        _execute(settings, "DROP TRIGGER refuse_commits")
        node.start()

        def counted() -> int:
            response = node.read("GET", "/v1/customers/c-journey")
            return int(response.json()["event_count"]) if response.is_success else 0

        assert wait_until(lambda: counted() == 1, 60, alive=lambda: True), node.log_tail()
        assert node.track("c-journey", "Product Viewed", message_id="m-1") == 200  # a re-send
        assert node.track("c-journey", "Product Added", message_id="m-2") == 200
        assert wait_until(lambda: counted() == 2, 60, alive=lambda: True), node.log_tail()
    finally:
        node.stop()


def committed_batches(sqlite_path: Path) -> int:
    """Tracking records committed by the journey consumer so far."""
    with sqlite3.connect(sqlite_path, timeout=30) as connection:
        [(count,)] = connection.execute("SELECT count(*) FROM tracking").fetchall()
    return int(count)
