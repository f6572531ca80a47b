"""The benchmark's quicker tools run end to end at a tiny size (speed is never asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_pipeline_phases_are_measured_per_event() -> None:
    out = _run(str(ROOT / "bench" / "replay.py"), "--phases", "300", "50")
    assert "300 events in batches of 50" in out
    for phase in ("record journeys", "ClickHouse effects", "event-store commit"):
        found = re.search(rf"{phase}: +(\d+) us wall, +(\d+) us thread CPU per event", out)
        assert found is not None, out
        assert int(found.group(1)) > 0


def test_one_node_reports_its_rate_and_cpu_per_event() -> None:
    out = _run("-m", "bench.node", "300")
    found = re.search(
        r"300 events: ([\d,]+) events/s, ([\d,]+) events per node CPU-second, "
        r"node peak ([\d,]+) MiB",
        out,
    )
    assert found is not None, out
    assert all(int(value.replace(",", "")) > 0 for value in found.groups())
