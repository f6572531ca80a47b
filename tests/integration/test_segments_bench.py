"""bench/segments.py runs end to end at a tiny size (its speed is never asserted in tests)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_segments_benchmark_prints_a_row_per_target_beside_its_limit(tmp_path: Path) -> None:
    out = tmp_path / "segments.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.segments", "--events", "1000", "--runs", "1",
         "--latency-seconds", "2", "--probes-per-s", "5", "--backfill-events", "3000",
         "--backfill-customers", "300", "--plain-runs", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=400, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "without segments:" in done.stdout and "plain ClickHouse query:" in done.stdout
    report = json.loads(out.read_text())
    rows = {row["target"].split(",")[0]: row for row in report["rows"]}
    assert len(report["rows"]) == 3
    throughput = rows["worker events/s"]
    assert throughput["value"] > 0 and throughput["met"] == (
        throughput["value"] >= 0.8 * statistics.median(report["details"]["throughput"]["none"])
    )
    latency = report["details"]["latency"]
    assert latency["probes"] > 0 and 0 < latency["p50_ms"] <= latency["p99_ms"]
    backfill = report["details"]["backfill"]
    # The worker's backfill and the plain query agree on who is in the segment.
    assert backfill["equal"] and backfill["members"] == backfill["plain_members"] > 0
    # Below the 10M-event target size the row says so: never reported as met.
    assert not rows["backfill of a new segment"]["met"]
    assert "below the 10M/1M target size" in rows["backfill of a new segment"]["gap"]
