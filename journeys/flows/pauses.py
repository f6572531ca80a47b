"""A flow's pauses, judged by event time.

A pause is an operator's act at a wall-clock instant; an input is judged by its own
stamp against it, not by when the worker consumed it: an entry stamped inside a
pause (in force, or ended) is refused (``Skipped`` paused), whenever it arrived; one
stamped before the pause that arrives during it is held and decided on resume, as
if it had arrived in time. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Ended pauses kept per flow: an input stamped before the oldest kept one ended is
# decided as unpaused (inputs that late are beyond the event-time skew of ingest).
PAUSES_KEPT = 100


@dataclass(frozen=True)
class FlowPause:
    """The pause in force (``since_ms``; None: running) and the ended ones, [from, to)."""

    since_ms: int | None = None
    ended: tuple[tuple[int, int], ...] = ()

    @property
    def in_force(self) -> bool:
        return self.since_ms is not None

    def covers(self, at_ms: int) -> bool:
        """Whether an instant lies inside a pause: an entry there is refused."""
        if self.since_ms is not None and at_ms >= self.since_ms:
            return True
        return any(start <= at_ms < end for start, end in self.ended)

    def holds(self, at_ms: int) -> bool:
        """Whether an input stamped ``at_ms`` waits for the resume: the pause is in force
        and the input is from before it (it would have entered, had it come in time)."""
        return self.since_ms is not None and at_ms < self.since_ms

    def paused(self, at_ms: int) -> FlowPause:
        """The same flow paused from ``at_ms`` (a pause in force stays as it was)."""
        return self if self.in_force else FlowPause(at_ms, self.ended)

    def resumed(self, at_ms: int) -> FlowPause:
        """The same flow resumed at ``at_ms``: its pause in force becomes an ended one."""
        if self.since_ms is None:
            return self
        ended = (*self.ended, (self.since_ms, max(at_ms, self.since_ms)))
        return FlowPause(None, ended[-PAUSES_KEPT:])

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"ended": [list(span) for span in self.ended]}
        if self.since_ms is not None:
            found["at_ms"] = self.since_ms
        return found

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowPause:
        since = data.get("at_ms")
        spans: Sequence[Sequence[int]] = data.get("ended") or ()
        return cls(
            None if since is None else int(since),
            tuple((int(start), int(end)) for start, end in spans),
        )
