"""How far the journey worker is behind what the gateway accepted, known in memory.

In the node the gateway and the journey consumer share a process, so neither
number needs the broker: the gateway's delivery reports give the end of each
partition it wrote to (with when), the consumer's fetches give the broker's
high-water mark (which also counts the worker's own identity messages), and the
consumer's handled batches give the processed position. Reading the backlog is
a few dict lookups: the ingest routes ask it on every request.

Seconds: the age of the oldest unprocessed event *this gateway accepted*. Each
partition keeps marks ``[last offset, first accepted at]``, at most one per
``resolution_s``, so the age is exact to that resolution (never younger than
the truth). Records the gateway did not write (identity messages, a journal
replay) count in events, not in seconds, here.

Where the gateways are other processes (``journeys up``), the worker's own
process accepts nothing, so it has no marks; its consumer tells it instead when
the oldest record not yet processed was produced (the Kafka timestamp of the
first record of the batch in hand, :meth:`handling`): the age is then that of
the batch being handled, whoever produced it, exact to the fetch wait (a record
not yet fetched while the worker is idle counts from when it is).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

# Where a record landed: (partition, offset), or None when it was not acknowledged.
Delivery = tuple[int, int] | None

# Marks kept per partition: past this, the two oldest merge (the age can only grow).
MAX_MARKS = 10_000


class Backlog:
    """Events accepted and not yet processed by the journey worker, per partition."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        resolution_s: float = 0.05,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self.resolution_s = resolution_s
        # The next offset after the highest record known to exist, per partition.
        self._ends: dict[int, int] = {}
        # The next offset the worker will process (its committed position), per partition.
        self._positions: dict[int, int] = {}
        self._marks: dict[int, deque[list[float]]] = {}
        # When the first record of the batch in hand was produced (wall clock), per partition.
        self._handling: dict[int, float] = {}

    def delivered(self, deliveries: Sequence[Delivery]) -> None:
        """The gateway's records were acknowledged here (called on the event loop)."""
        now = self._clock()
        for delivery in deliveries:
            if delivery is None:
                continue
            partition, offset = delivery
            if offset + 1 > self._ends.get(partition, 0):
                self._ends[partition] = offset + 1
            marks = self._marks.setdefault(partition, deque())
            if marks and now - marks[-1][1] < self.resolution_s:
                marks[-1][0] = max(marks[-1][0], offset)
            else:
                marks.append([offset, now])
                if len(marks) > MAX_MARKS:
                    oldest = marks.popleft()
                    marks[0][1] = oldest[1]

    def fetched(self, partition: int, highwater: int | None) -> None:
        """The broker's end of ``partition`` as the consumer last saw it."""
        if highwater is not None and highwater > self._ends.get(partition, 0):
            self._ends[partition] = highwater

    def processed(self, partition: int, position: int) -> None:
        """The worker's position of ``partition`` (after a seek, or a committed batch)."""
        self._positions[partition] = position
        self._handling.pop(partition, None)
        marks = self._marks.get(partition)
        while marks and marks[0][0] < position:
            marks.popleft()

    def handling(self, partition: int, produced_at: float) -> None:
        """The worker took a batch of ``partition`` whose first record was produced at
        ``produced_at`` (seconds since the epoch): unprocessed until :meth:`processed`."""
        self._handling[partition] = produced_at

    def partitions(self) -> dict[int, int]:
        """Events behind, per partition the worker holds a position of."""
        ends = self._ends
        return {p: max(0, ends.get(p, 0) - at) for p, at in sorted(self._positions.items())}

    def events(self) -> int:
        """Events behind, all partitions."""
        ends = self._ends
        return sum(max(0, ends.get(p, 0) - at) for p, at in self._positions.items())

    def seconds(self) -> float:
        """Age of the oldest accepted event not yet processed (0 when none)."""
        now = self._clock()
        oldest = now
        for partition in self._positions:
            marks = self._marks.get(partition)
            if marks:
                oldest = min(oldest, marks[0][1])
        accepted = now - oldest
        if not self._handling:
            return max(0.0, accepted)
        # The clocks differ (monotonic marks, the producers' wall-clock timestamps).
        in_hand = self._wall_clock() - min(self._handling.values())
        return max(0.0, accepted, in_hand)
