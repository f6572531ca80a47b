"""The outreach fact-path benchmark runs end to end at a tiny size (its own process)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_outreach_benchmark_runs_over_events_and_their_stage_changes() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "outreach.py"), "600"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(
        r"(\d+) events and (\d+) stage changes, ([\d,]+) events per CPU second", done.stdout
    )
    assert found is not None, done.stdout
    events, changes, rate = found.groups()
    assert int(events) == 600 and int(changes) > 0 and int(rate.replace(",", "")) > 0
