"""The outreach fact-path benchmark runs end to end at a tiny size (its own process)."""

from __future__ import annotations

import re

import pytest

from tests.bench_process import ROOT, run_bench

pytestmark = pytest.mark.integration


def test_outreach_benchmark_runs_over_events_and_their_stage_changes() -> None:
    out = run_bench(str(ROOT / "bench" / "outreach.py"), "600", timeout=240)
    found = re.search(r"(\d+) events and (\d+) stage changes, ([\d,]+) events per CPU second", out)
    assert found is not None, out
    events, changes, rate = found.groups()
    assert int(events) == 600 and int(changes) > 0 and int(rate.replace(",", "")) > 0
