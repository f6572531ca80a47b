"""The broker memory benchmark runs end to end at a tiny size (memory is never asserted)."""

from __future__ import annotations

import re

import pytest

from tests.bench_process import run_bench

pytestmark = pytest.mark.integration


def test_broker_memory_benchmark_prints_rss_beside_the_bytes_produced() -> None:
    stdout = run_bench(
        "-m", "bench.broker_memory", "--events", "3000", "--samples", "3", "--retention-s", "1"
    )
    samples = re.findall(r"^\s+([\d,]+)\s+([\d.,]+)\s+([\d.,]+)\s+(-?[\d.]+)$", stdout, re.M)
    assert [int(events.replace(",", "")) for events, *_ in samples] == [1000, 2000, 3000]
    for _, produced, rss, _ in samples:
        assert float(produced.replace(",", "")) > 0 and float(rss.replace(",", "")) > 0
    assert "produced 3,000 events" in stdout
    # Each way of bounding the memory was tried and reported.
    assert re.search(r"after retention\.ms passed .* earliest offsets", stdout)
    assert "DeleteRecords (offset 1 of each partition):" in stdout
    assert "a new broker (new epoch), idle with the topic:" in stdout


def test_broker_memory_benchmark_through_the_stack_rolls_the_broker() -> None:
    stdout = run_bench(
        "-m",
        "bench.broker_memory",
        "--stack",
        "--events",
        "3000",
        "--samples",
        "3",
        "--max-rss-mib",
        "18",
    )
    assert "JOURNEYS_BROKER_MAX_RSS_MIB=18" in stdout
    found = re.search(r"acknowledged ([\d,]+) events in .* (\d+) rolls", stdout)
    assert found, stdout
    assert found.group(1) == "3,000"
    # 3,000 storefront events take the broker past 18 MiB (about 16 idle): it is rolled.
    assert int(found.group(2)) >= 1, stdout
    assert "broker rolled (next broker ready in" in stdout
