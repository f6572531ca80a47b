"""The process-layout benchmark runs end to end at a tiny size (speed is never asserted)."""

from __future__ import annotations

import re

import pytest

from tests.bench_process import run_bench

pytestmark = pytest.mark.integration


def test_layout_benchmark_prints_both_layouts_beside_bare_uvicorn() -> None:
    # The third layout (journey workers apart, --journey-workers) is left out: a third
    # stack would take this test past its time limit; tests/e2e/test_journey_workers.py
    # runs that layout.
    stdout = run_bench(
        "-m",
        "bench.layout",
        *("--seconds", "2", "--connections", "8", "--gateways", "2"),
        *("--journey-workers", "0", "--pipeline-events", "500"),
        *("--latency-rate", "20", "--latency-low-rate", "10", "--latency-seconds", "2"),
        timeout=600,
    )
    rows = [line for line in stdout.splitlines() if "single /v1/track calls" in line]
    assert [row.split(":")[0] for row in rows] == ["node on the socket", "2 gateways"]
    for row in rows:
        found = re.search(r"([\d,.]+) calls/s\s+bare uvicorn, same client: ([\d,]+)", row)
        assert found is not None, row
        taken, bare = (float(value.replace(",", "")) for value in found.groups())
        assert taken > 0 and bare > 0
        assert "refused 0" in row
    assert stdout.count("stage visible after the 200") == 4
    assert stdout.count("pipeline, until visible through the API") == 2
    # Each stage row says what the worker's batches were meanwhile (its /metrics).
    assert stdout.count(" journey batches of ") == 4, stdout
