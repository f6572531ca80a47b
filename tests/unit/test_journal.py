"""The ingest journal on a real file system: torn tails, group commit, rotation, trimming."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from streams.journal import (
    SEGMENT_MAGIC,
    Delivery,
    GroupCommit,
    Journal,
    JournalFull,
    Record,
    journal_records,
    partition_of,
    read_segment,
    replay_segments,
)

EPOCH = "e1"


def records(n: int, start: int = 0) -> list[Record]:
    return [(f"c{i % 7}".encode(), f'{{"id":"m{i}"}}'.encode()) for i in range(start, start + n)]


def opened(directory: Path, epoch: str = EPOCH, **options: int | float) -> Journal:
    journal = Journal(directory, epoch, **options)  # type: ignore[arg-type]
    journal.open()
    return journal


def deliver(ticket_records: Sequence[Record], base: int = 0) -> list[tuple[int, int]]:
    """Deliveries as a broker with 4 partitions would report them, offsets from ``base``."""
    return [(partition_of(key, 4), base + i) for i, (key, _) in enumerate(ticket_records)]


def highest(deliveries: Sequence[tuple[int, int]]) -> dict[int, int]:
    top: dict[int, int] = {}
    for partition, offset in deliveries:
        top[partition] = max(offset, top.get(partition, -1))
    return top


def test_records_read_back_byte_identical_across_a_restart(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    written = records(50)
    journal.write(written[:20])
    journal.write(written[20:])
    journal.close()
    again = Journal(tmp_path, EPOCH)
    pending = again.open()
    # Offsets never reported: both appends must be produced again.
    assert len(pending) == 1
    assert list(journal_records(again)) == written


def test_a_torn_tail_is_ignored_and_the_records_before_it_kept(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    journal.write(records(10))
    journal.close()
    (segment,) = tmp_path.glob("*.seg")
    whole = segment.read_bytes()
    # A crash mid-write: the last record is cut short.
    segment.write_bytes(whole[:-5])
    kept, ignored = read_segment(segment)
    assert kept == records(9)
    assert ignored > 0
    # A flipped byte inside the 5th record: its checksum fails, reading stops there.
    frames = whole[len(SEGMENT_MAGIC) :]
    one = len(frames) // 10
    corrupt = bytearray(whole)
    corrupt[len(SEGMENT_MAGIC) + 4 * one + 12] ^= 0xFF
    segment.write_bytes(bytes(corrupt))
    kept, ignored = read_segment(segment)
    assert kept == records(4)
    assert ignored == 6 * one
    # The next run does not append after the garbage: a new segment.
    again = Journal(tmp_path, EPOCH)
    again.open()
    again.write(records(1, start=100))
    again.close()
    assert list(journal_records(again)) == records(4) + records(1, start=100)


def test_one_fsync_covers_every_append_before_it(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    before = journal.fsyncs
    tickets = [journal.append(records(3, start=3 * i)) for i in range(5)]
    journal.sync(tickets[-1])
    assert journal.fsyncs == before + 1
    for ticket in tickets:
        journal.sync(ticket)  # covered: no fsync of its own
    assert journal.fsyncs == before + 1
    later = journal.append(records(1, start=99))
    journal.sync(later)
    assert journal.fsyncs == before + 2


def test_concurrent_writers_share_fsyncs_and_lose_nothing(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    before = journal.fsyncs
    barrier = threading.Barrier(16)

    def writer(n: int) -> None:
        barrier.wait()
        for i in range(20):
            journal.write(records(1, start=n * 1000 + i))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    journal.close()
    written = sorted(r for n in range(16) for i in range(20) for r in records(1, n * 1000 + i))
    assert sorted(journal_records(journal)) == written
    # 320 durable appends; group commit shares fsyncs between the concurrent ones.
    assert journal.fsyncs - before < 320


def test_requests_on_the_event_loop_share_the_fsync_thread(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    commit = GroupCommit(journal)

    async def requests() -> None:
        commit.start()
        try:

            async def request(n: int) -> None:
                await commit.durable(journal.append(records(2, start=2 * n)))

            await asyncio.gather(*(request(n) for n in range(200)))
        finally:
            await commit.stop()

    before = journal.fsyncs
    asyncio.run(requests())
    assert journal.synced == 200  # every append durable when its request returned
    assert 1 <= journal.fsyncs - before < 200
    journal.close()
    assert sorted(journal_records(journal)) == sorted(records(400))


def test_segments_rotate_by_size_and_by_age(tmp_path: Path) -> None:
    journal = opened(tmp_path, segment_bytes=1000)
    for i in range(30):
        journal.write(records(2, start=2 * i))
    assert len(list(tmp_path.glob("*.seg"))) > 1
    assert list(journal_records(journal)) == records(60)
    aged = opened(tmp_path / "aged", segment_age_s=0.0)
    aged.write(records(1))
    aged.write(records(1, start=1))
    assert len(list((tmp_path / "aged").glob("*.seg"))) == 2


def test_a_segment_is_trimmed_only_once_every_partition_is_processed_past_it(
    tmp_path: Path,
) -> None:
    journal = opened(tmp_path, segment_bytes=1)  # every append after the first rotates
    first, second = records(8), records(8, start=8)
    t1 = journal.write(first)
    t2 = journal.write(second)  # rotates: the first segment is closed
    journal.resolve(t1, deliver(first, base=0))
    top = highest(deliver(first, base=0))
    positions = {p: 0 for p in range(4)}

    def position(epoch: str, partition: int) -> int:
        assert epoch == EPOCH
        return positions[partition]

    assert journal.trim(position) == []
    # All partitions but one past: still kept.
    some = sorted(top)
    for p in some[:-1]:
        positions[p] = top[p] + 1
    positions[some[-1]] = top[some[-1]]
    assert journal.trim(position) == []
    positions[some[-1]] = top[some[-1]] + 1
    assert journal.trim(position) == [t1.segment]
    # The active segment (the second append) is never trimmed, however far the positions.
    journal.resolve(t2, deliver(second, base=100))
    positions.update({p: 10_000 for p in range(4)})
    assert journal.trim(position) == []
    assert list(journal_records(journal)) == second


def test_unresolved_records_keep_their_segment(tmp_path: Path) -> None:
    journal = opened(tmp_path, segment_bytes=1)
    batch = records(4)
    ticket = journal.write(batch)
    journal.write(records(1, start=50))  # closes the first segment
    deliveries = deliver(batch)
    journal.resolve(ticket, deliveries[:3])  # one delivery report still to come
    assert journal.trim(lambda _e, _p: 10**9) == []
    journal.resolve(ticket, deliveries[3:])
    assert journal.trim(lambda _e, _p: 10**9) == [ticket.segment]


def test_offsets_of_another_epoch_do_not_trim(tmp_path: Path) -> None:
    journal = opened(tmp_path, segment_bytes=1)
    batch = records(4)
    ticket = journal.write(batch)
    journal.write(records(1, start=50))
    journal.resolve(ticket, deliver(batch))
    journal.close()
    # A new broker: the old epoch's offsets mean nothing there, the segment is replayed.
    fresh = Journal(tmp_path, "e2", segment_bytes=1)
    pending = fresh.open()
    assert [s.index for s in pending] == [ticket.segment, ticket.segment + 1]
    assert fresh.trim(lambda _e, _p: 10**9) == []
    # The same broker after a node restart: offsets known, nothing to produce again for it.
    same = Journal(tmp_path, EPOCH, segment_bytes=1)
    assert [s.index for s in same.open()] == [ticket.segment + 1]


def test_a_full_journal_refuses_before_writing(tmp_path: Path) -> None:
    journal = opened(tmp_path, max_bytes=600)
    journal.write(records(5))
    with pytest.raises(JournalFull):
        journal.write(records(50))
    journal.close()
    assert list(journal_records(journal)) == records(5)


def test_replay_produces_in_journal_order_and_skips_partitions_processed_before(
    tmp_path: Path,
) -> None:
    journal = opened(tmp_path, segment_bytes=1)
    first, second = records(14), records(14, start=14)
    t1 = journal.write(first)
    t2 = journal.write(second)
    d1 = deliver(first)
    journal.resolve(t1, d1)
    journal.resolve(t2, deliver(second, base=50))
    journal.close()
    # The old broker's pipeline had processed partition P past the first segment only.
    done = partition_of(first[0][0], 4)
    highest_done = highest(d1)[done]

    def old_position(epoch: str, partition: int) -> int:
        assert epoch == EPOCH
        return highest_done + 1 if partition == done else 0

    fresh = Journal(tmp_path, "e2", segment_bytes=1)
    pending = fresh.open()
    produced: list[Record] = []

    async def produce(chunk: Sequence[Record]) -> list[Delivery]:
        produced.extend(chunk)
        return [(partition_of(k, 4), 1000 + len(produced) + i) for i, (k, _) in enumerate(chunk)]

    report = asyncio.run(replay_segments(fresh, pending, produce, 4, old_position))
    expected = [r for r in first if partition_of(r[0], 4) != done] + second
    assert produced == expected
    assert report.produced == len(expected)
    assert report.skipped == len(first) + len(second) - len(expected) > 0
    # Replayed segments now belong to the new epoch: trimmable once processed there.
    assert all(s.known_in("e2") for s in pending)
    assert fresh.trim(lambda _e, _p: 0) == []
    assert sorted(fresh.trim(lambda _e, _p: 10**9)) == [t1.segment, t2.segment]
