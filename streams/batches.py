"""The batch loop every Faust agent of the worker runs: take a batch, handle it, or stop the worker.

Fail fast: when handling a batch raises, its events stay unacked, but an agent
that Faust restarts in this process would go on with later offsets and save
positions past them (every agent saves its consumed position with its
effects). Stopping the worker instead re-reads everything from the failed
batch on at the next start, where positions and dedup absorb what repeats.

Faust's ``take_events`` acks a batch in a ``finally``, which also runs when
the failed generator is finalized during shutdown; a commit after that would
move the group's offset past the failed batch and lose it. So a failed batch
is fenced first: its messages are marked done without being counted as acked,
and no commit can pass them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import faust
from faust.types import EventT

log = logging.getLogger(__name__)

# (offset, value) per partition, in offset order.
PartitionRecords = dict[int, list[tuple[int, bytes]]]
BatchHandler = Callable[[Sequence[EventT]], Awaitable[None]]


def by_partition(events: Sequence[EventT]) -> PartitionRecords:
    """A batch's records per partition, in offset order.

    A null value (tombstone) becomes empty bytes: not an event, the handler sets it aside.
    """
    records: PartitionRecords = {}
    for event in events:
        message = event.message
        records.setdefault(message.partition, []).append((message.offset, message.value or b""))
    return {partition: sorted(items) for partition, items in records.items()}


class BatchLoop:
    """Runs agents' batch loops on one Faust app, with the worker's batch settings."""

    def __init__(self, app: faust.App, max_events: int, within_s: float) -> None:
        self.app = app
        self.max_events = max_events
        self.within_s = within_s

    async def run(self, stream: faust.StreamT[bytes], agent: str, handle: BatchHandler) -> None:
        """Hand ``stream``'s batches to ``handle`` one at a time; crash the app when one fails."""
        assert isinstance(stream, faust.Stream)  # take_events is missing from StreamT
        async for events in stream.take_events(self.max_events, within=self.within_s):
            try:
                await handle(events)
            except Exception as error:
                log.critical("%s batch failed; stopping the worker: %r", agent, error)
                fence(events)
                await self.app.crash(error)
                raise


def fence(events: Sequence[EventT]) -> None:
    """Keep the group's committed offsets below ``events`` for good in this process.

    The consumer only commits up to the first offset it never counted as acked.
    Setting ``acked`` directly turns every later ``ack`` of these messages, by
    this agent's ``finally`` or by another agent on the same topic, into a no-op
    that is never counted, so the next start re-reads them.
    """
    for event in events:
        event.message.acked = True
