"""bench/flows.py runs end to end at a tiny size (its speed is never asserted in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_backtest_benchmark_prints_each_rate_beside_the_read_rate(tmp_path: Path) -> None:
    out = tmp_path / "flows.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.flows", "--events", "3000", "--customers", "300",
         "--runs", "1", "--json", str(out), "--profile", str(tmp_path / "backtest.prof")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "read (raw limit)" in done.stdout and "of the read rate" in done.stdout
    assert "scan (raw limit)" in done.stdout and "of the scan rate" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["events_logged"] == figures["scanned_events"] == 3000
    assert figures["scan_events_per_s"] > 0 and figures["backtest_over_scan"] > 0
    assert any("run_history" in line or "observe" in line for line in figures["profile_top"])
    assert 0 < figures["inputs"] <= 3000
    assert figures["runs"] > 0 and figures["candidates"] > 0
    assert figures["backtest_inputs_per_s"] > 0 and figures["read_inputs_per_s"] > 0


def test_the_timer_benchmark_prints_lateness_beside_the_due_query(tmp_path: Path) -> None:
    out = tmp_path / "timers.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.flows_live", "timers", "--waiting", "600",
         "--due-per-s", "100", "--measure-s", "3", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "due-range query" in done.stdout and "timer p99 lateness" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["waiting_at_start"] == 600  # nobody was due before the measured window
    assert 0 < figures["sends_measured"] < 600
    assert figures["lateness_p99_s"] >= figures["lateness_p50_s"] >= 0


def test_the_worker_benchmark_compares_flows_with_none(tmp_path: Path) -> None:
    out = tmp_path / "worker.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.flows_live", "worker", "--events", "400",
         "--custom", "2", "--runs", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "flows / none" in done.stdout
    figures = json.loads(out.read_text())
    # The shipped abandoned cart, the seven lifecycle flows (switched on at start from
    # the shipped rules) and two custom ones.
    assert figures["flows_active"] == 10
    assert figures["no_flow_events_per_s"] > 0 and figures["flows_events_per_s"] > 0
