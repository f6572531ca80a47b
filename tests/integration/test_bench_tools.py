"""The benchmark's quicker tools run end to end at a tiny size (speed is never asserted)."""

from __future__ import annotations

import re

import pytest

from tests.bench_process import ROOT, run_bench

pytestmark = pytest.mark.integration


def test_pipeline_phases_are_measured_per_event() -> None:
    out = run_bench(str(ROOT / "bench" / "replay.py"), "--phases", "300", "50")
    assert "300 events in batches of 50" in out
    for phase in ("record journeys", "ClickHouse effects", "event-store commit"):
        found = re.search(rf"{phase}: +(\d+) us wall, +(\d+) us thread CPU per event", out)
        assert found is not None, out
        assert int(found.group(1)) > 0


def test_one_node_reports_its_rate_and_cpu_per_event() -> None:
    out = run_bench("-m", "bench.node", "300")
    found = re.search(
        r"300 events: ([\d,]+) events/s, ([\d,]+) events per node CPU-second, "
        r"node peak ([\d,]+) MiB",
        out,
    )
    assert found is not None, out
    assert all(int(value.replace(",", "")) > 0 for value in found.groups())


def test_the_cost_of_late_and_shuffled_arrival_is_measured() -> None:
    out = run_bench(str(ROOT / "bench" / "replay.py"), "--arrival", "300")
    for name in ("in time order", "10% late", "shuffled"):
        found = re.search(rf"{name}: ([\d,]+) events per CPU second \(([\d.]+) of", out)
        assert found is not None, out
        assert int(found.group(1).replace(",", "")) > 0
