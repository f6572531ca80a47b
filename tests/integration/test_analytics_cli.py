"""``journeys funnel`` / ``journeys retention`` against a real API server over HTTP."""

from __future__ import annotations

import csv
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from stack.analysis_cli import duration_seconds, step_body
from stack.cli import main
from tests.integration.test_analytics_api import api  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
def served(api: TestClient) -> Iterator[str]:  # noqa: F811
    """The analysis app of the ``api`` fixture behind a real HTTP server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api.app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_funnel_prints_a_table_and_writes_csv(
    served: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "funnel.csv"
    code = main(
        [
            "funnel",
            "--url",
            served,
            "--read-key",
            "rk_test",
            "--step",
            "browse",
            "--step",
            "cart",
            "--step",
            "Order Completed",
            "--window",
            "1h",
            "--csv",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "from previous" in printed and "Order Completed" in printed
    rows = list(csv.reader(out.open()))
    assert rows[0][:3] == ["group", "step", "customers"]
    assert [r[2] for r in rows[1:]] == ["3", "2", "1"]


def test_retention_prints_cohorts(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["retention", "--url", served, "--read-key", "rk_test", "--period", "day", "--periods", "2"]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "cohort" in printed and "day 1" in printed


def test_an_api_error_is_shown_not_raised(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["funnel", "--url", served, "--read-key", "wrong", "--step", "browse", "--step", "cart"]
    )
    assert code == 1 and "401" in capsys.readouterr().err


def test_durations_and_steps_parse() -> None:
    assert [duration_seconds(x) for x in ("7d", "12h", "30m", "45s", "90")] == [
        604800,
        43200,
        1800,
        45,
        90,
    ]
    assert step_body("Cart") == {"event_type": "cart"}
    assert step_body("Order Completed") == {"event": "Order Completed"}
