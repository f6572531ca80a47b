"""The ingest gateway's benchmark runs end to end at a tiny size (speed is never asserted)."""

from __future__ import annotations

import pytest

from tests.bench_process import run_bench

pytestmark = pytest.mark.integration


def test_ingest_benchmark_prints_the_gateway_beside_the_raw_producer() -> None:
    stdout = run_bench("-m", "bench.ingest", "--events", "300", "--repeats", "1", "--journal")
    rows = {
        line[:42].strip(): line[42:].split() for line in stdout.splitlines() if line[:42].strip()
    }
    raw = rows["raw producer (librdkafka, acks=all)"]
    gateway = rows["gateway: /v1/batch"]
    # Every request got its 200 (the run stops otherwise): both rates are measured.
    assert float(raw[0].replace(",", "")) > 0
    assert float(gateway[0].replace(",", "")) > 0
    assert "gateway / raw producer" in rows
    # The gateway behind the ingest journal, and single-track latencies of both.
    assert float(rows["journaled gateway: /v1/batch"][0].replace(",", "")) > 0
    for name in ("gateway", "journaled gateway"):
        for connections in ("1 connection", "16 connections"):
            p50, p99 = (float(v) for v in rows[f"{name}, {connections}"])
            assert 0 < p50 <= p99
