"""The worker-journal benchmark runs end to end at a tiny size (speed is never asserted)."""

from __future__ import annotations

import pytest

from tests.bench_process import run_bench

pytestmark = pytest.mark.integration


def test_worker_journal_benchmark_prints_both_paths_beside_the_raw_fsync() -> None:
    stdout = run_bench(
        "-m",
        "bench.worker_journal",
        *("--events", "400", "--batch", "200", "--repeats", "1", "--fsyncs", "10"),
    )
    rows = {line[:44].strip(): line[44:].split() for line in stdout.splitlines()}
    plain = rows["worker batch path, plain"]
    journaled = rows["worker batch path, journaled"]
    assert float(plain[0]) > 0 and float(journaled[0]) > 0
    # Plain journals nothing; journaled, both journals took records (the storefront's
    # seed has identity merges) and fsynced them.
    assert plain[3:] == ["0", "0", "0"]
    assert int(journaled[3]) > 0 and int(journaled[4]) > 0 and int(journaled[5]) > 0
    # The journal's cost stands beside its raw limit: the batch's fsyncs at the probe's p50.
    in_fsync, limit, ratio = (float(v) for v in rows["journal per batch: in fdatasync, ms"])
    assert in_fsync > 0 and limit > 0 and ratio == pytest.approx(in_fsync / limit, rel=0.05)
    assert float(rows["journal per batch: fsyncs"][0]) > 0
    assert len(rows["journal per record: extra wall, µs"]) == 3
    p50, p99 = (float(v) for v in rows["raw fdatasync 4 KiB, ms p50 / p99 (before)"])
    assert 0 < p50 <= p99
