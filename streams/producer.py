"""The gateway's Kafka producer: accepted events and dead letters."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from events import TrackedEvent


def dead_letter_record(payload: bytes, reasons: Sequence[dict[str, Any]], source: str) -> bytes:
    """The dead-letter topic's record for a rejected payload (both gateway producers write it).

    ``streams/dead_letters.py`` reads it back into a ``dead_letters`` row.
    """
    record = {
        # The id makes the dead-letter agent's at-least-once inserts idempotent.
        "id": str(uuid.uuid4()),
        "source": source,
        "rejected_at": datetime.now(UTC).isoformat(),
        "reasons": list(reasons),
        "payload": payload.decode("utf-8", errors="replace"),
    }
    return orjson.dumps(record)


class KafkaEventSink:
    """Produces accepted events keyed by customer, so one customer's events stay in order."""

    def __init__(
        self,
        bootstrap_servers: str,
        events_topic: str,
        dead_letter_topic: str,
        idempotence: bool = False,
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._idempotence = idempotence
        self._events_topic = events_topic
        self._dead_letter_topic = dead_letter_topic
        self._producer: AIOKafkaProducer | None = None
        # Told where each published event landed (the node's backlog, streams/backlog.py).
        self.on_delivered: Callable[[Sequence[tuple[int, int] | None]], None] | None = None

    async def start(self) -> None:
        """Connect to the broker (aiokafka binds to the running loop, so not before)."""
        self._producer = AIOKafkaProducer(**self.config())
        await self._producer.start()

    def config(self) -> dict[str, Any]:
        """The producer's settings. acks="all": a 200 is only sent once the broker has the event."""
        return dict(
            bootstrap_servers=self._bootstrap_servers,
            acks="all",
            enable_idempotence=self._idempotence,
            linger_ms=2,
            max_batch_size=256 * 1024,
            request_timeout_ms=15000,
        )

    async def stop(self) -> None:
        """Flush what is in flight and disconnect."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    @property
    def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the event sink is not started")
        return self._producer

    async def publish(self, events: Sequence[TrackedEvent]) -> None:
        """Produce every event and wait for all acknowledgements."""
        sends = [
            await self._started.send(
                self._events_topic, value=event.to_json(), key=event.customer_key.encode()
            )
            for event in events
        ]
        metas = await asyncio.gather(*sends)
        if self.on_delivered is not None:
            self.on_delivered([(meta.partition, meta.offset) for meta in metas])

    async def produce_events(
        self, records: Sequence[tuple[bytes, bytes]]
    ) -> list[tuple[int, int] | None]:
        """Produce keyed records as they are (a journal replay); where each landed."""
        sends = [
            await self._started.send(self._events_topic, value=value, key=key)
            for key, value in records
        ]
        return [(meta.partition, meta.offset) for meta in await asyncio.gather(*sends)]

    async def dead_letter(
        self, payload: bytes, reasons: Sequence[dict[str, Any]], source: str = ""
    ) -> None:
        """Keep the rejected payload, its reasons, its source and when it was rejected."""
        record = dead_letter_record(payload, reasons, source)
        await self._started.send_and_wait(self._dead_letter_topic, record)

    async def connected(self) -> bool:
        """True when the broker answers a metadata request."""
        try:
            await asyncio.wait_for(self._started.client.fetch_all_metadata(), timeout=3)
        except Exception:
            return False
        return True
