"""The funnel benchmark runs end to end at a tiny size (its own process, its own chdb folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_process import run_bench

pytestmark = pytest.mark.integration


def test_funnel_benchmark_runs_and_both_queries_agree(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    stdout = run_bench(
        "-m",
        "bench.funnel",
        "--events",
        "5000",
        "--customers",
        "300",
        "--runs",
        "1",
        "--json",
        str(out),
        timeout=240,
    )
    figures = json.loads(out.read_text())
    assert figures["events"] == 5000
    assert figures["counts_equal"] is True
    assert figures["plain_counts"][0] > figures["plain_counts"][-1] > 0
    assert len(figures["plain_seconds"]) == len(figures["our_seconds"]) == 1
    assert "ratio" in stdout


def test_funnel_benchmark_reuses_its_kept_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runs = []
    for name in ("first", "second"):
        out = tmp_path / f"{name}.json"
        sizes = ["--events", "3000", "--customers", "200", "--runs", "1"]
        stdout = run_bench(
            "-m", "bench.funnel", *sizes, "--data", str(data), "--json", str(out), timeout=240
        )
        runs.append((stdout, json.loads(out.read_text())))
    (first_out, first), (second_out, second) = runs
    assert first["generate_seconds"] is not None and "generated in" in first_out
    assert second["generate_seconds"] is None and "data reused" in second_out
    assert second["plain_counts"] == first["plain_counts"]
    assert second["our_counts"] == first["our_counts"]
