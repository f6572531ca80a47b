"""The benchmark runs end to end at a tiny size (speed itself is never asserted in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_prints_each_figure_beside_its_raw_limit_and_writes_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--events",
            "400",
            "--repeats",
            "1",
            "--latency-rate",
            "20",
            "--latency-seconds",
            "2",
            "--latency-low-rate",
            "10",
            "--customers",
            "300",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "raw limit (same run)" in done.stdout
    [written] = list(tmp_path.glob("run-*.json"))
    run = json.loads(written.read_text())
    figures = {figure["name"]: figure for figure in run["figures"]}
    pipeline = figures["pipeline: journey agent → event store + ClickHouse"]
    assert pipeline["value"] > 0
    assert pipeline["raw_value"] == figures["raw consumer (aiokafka + JSON parse)"]["value"] > 0
    producer = figures["raw producer (librdkafka, acks=all)"]["value"]
    assert producer > 0
    ingest = figures["ingest: /v1/batch (100 events, broker-acked)"]
    assert ingest["value"] > 0 and ingest["raw_value"] == producer
    faust_floor = figures["Faust agent doing nothing (take_events)"]
    assert faust_floor["value"] > 0 and faust_floor["raw_value"] == pipeline["raw_value"]
    assert figures["replay: event store → projections"]["value"] > 0
    latency_p50 = figures["latency p50: /v1/track 200 → stage visible"]["value"]
    assert 0 < latency_p50 <= figures["latency p99: /v1/track 200 → stage visible"]["value"]
    low_p50 = figures["latency p50 at low load"]["value"]
    assert 0 < low_p50 <= figures["latency p99 at low load"]["value"]
    assert figures["peak memory: node"]["value"] > 0
    base = figures["pipeline: 300 new customers, one event each"]
    assert base["value"] > 0 and base["raw_value"] == pipeline["raw_value"]
    assert figures["peak memory: node with 300 customers"]["value"] > 0
    assert run["sizes"]["events"] == 400
