"""The funnel benchmark runs end to end at a tiny size (its own process, its own chdb folder)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_funnel_benchmark_runs_and_both_queries_agree(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [
            sys.executable,
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
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    assert figures["events"] == 5000
    assert figures["counts_equal"] is True
    assert figures["plain_counts"][0] > figures["plain_counts"][-1] > 0
    assert len(figures["plain_seconds"]) == len(figures["our_seconds"]) == 1
    assert "ratio" in done.stdout
