"""An ingest gateway's view of the journey worker's backlog, read periodically.

A gateway (``journeys gateway``) shares no process with the worker, so the
in-memory :class:`~streams.backlog.Backlog` is fed from outside: its own
delivery reports as they come (exact, with when: the lag in seconds), and every
``interval_s`` the worker's committed positions (the event store's tracking
records, one read per partition) and the broker's end offsets (a ListOffsets
request and a fetch of each partition's last batch, on a consumer kept open:
streams/topics.py ``log_ends``), which count what the other gateways and the
worker's identity messages wrote. The lag limit is therefore stale by up to one
interval plus the read's own time: a burst can overshoot it by what the
gateways accept in that time. Not more often by default: every read of the
event store's positions from another process cost the worker's batches time
(stage-visible p50 at 100 calls/s, two gateways, loaded machine: ~1.9 s polling
every 0.25 s, ~1.0 s every 5 s, docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.backlog import Backlog
from streams.topics import log_end_reader, log_ends

log = logging.getLogger(__name__)


class BacklogPoller:
    """Keeps ``backlog`` fed with the worker's positions and the broker's ends."""

    def __init__(
        self,
        backlog: Backlog,
        bootstrap_servers: str,
        topic: str,
        partitions: int,
        position: Callable[[int], int],
        interval_s: float,
    ) -> None:
        self.backlog = backlog
        self._bootstrap = bootstrap_servers
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self._position = position
        self.interval_s = interval_s
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        # The positions last read, for the journal's trim (older is safe: it trims less).
        self.latest: dict[int, int] = {}

    def positions(self) -> dict[int, int]:
        """The worker's committed position of every partition (event-store reads)."""
        return {tp.partition: self._position(tp.partition) for tp in self._partitions}

    async def poll_once(self) -> None:
        """One read of positions and ends into the backlog."""
        positions = await asyncio.to_thread(self.positions)
        self.latest = positions
        if self._consumer is None:
            consumer = log_end_reader(self._bootstrap)
            await consumer.start()
            self._consumer = consumer
        ends = await log_ends(self._consumer, self._partitions)
        for tp, end in ends.items():
            self.backlog.fetched(tp.partition, end)
        for partition, position in positions.items():
            self.backlog.processed(partition, position)

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:
                # The limit keeps its last reading; the next round tries again.
                log.exception("could not read the backlog")
                await self._drop_consumer()
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        """Read once (so the first request sees a backlog), then every interval."""
        with contextlib.suppress(Exception):
            await self.poll_once()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_consumer()

    async def _drop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
