"""Where the gateway sends accepted and rejected events: one small interface.

Kafka implements it in production (``streams.producer``); anything that keeps
the promise (durable before returning) can stand in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from events.envelope import TrackedEvent


class EventSink(Protocol):
    """Durable destination of tracking events."""

    async def publish(self, events: Sequence[TrackedEvent]) -> None:
        """Return only once every event is durably stored (the broker acknowledged)."""

    async def dead_letter(
        self, payload: bytes, reasons: Sequence[dict[str, Any]], source: str = ""
    ) -> None:
        """Keep a rejected payload with the reasons it was rejected and its source (key id)."""
