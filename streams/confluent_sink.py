"""The gateway's producer on librdkafka (confluent-kafka), for the event loop.

librdkafka produces from its own threads and reports deliveries through
``poll()``; a thread of ours polls and resolves each request's future on the
event loop. ``publish`` returns once every event of the request is acked
(acks=all), as :class:`streams.producer.KafkaEventSink` does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from events import TrackedEvent
from streams.outcomes import keyed_producer_config
from streams.producer import dead_letter_record


class _Acks:
    """Counts one request's delivery reports; resolves ``future`` on the loop at the last."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expected: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = expected
        self.error: KafkaError | None = None
        # Where each record landed, in report order (the journal keeps the highest per partition).
        self.deliveries: list[tuple[int, int] | None] = []

    def delivered(self, error: KafkaError | None, message: Message) -> None:
        # Runs on the poll thread, one report at a time (poll is not re-entered).
        partition, offset = message.partition(), message.offset()
        if error is not None or partition is None or offset is None:
            if error is not None and self.error is None:
                self.error = error
            self.deliveries.append(None)
        else:
            self.deliveries.append((partition, offset))
        self.remaining -= 1
        if self.remaining == 0:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(KafkaException(self.error))
        else:
            self.future.set_result(None)


class ConfluentEventSink:
    """Produces accepted events keyed by customer, acks=all, through librdkafka."""

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
        self._producer: Producer | None = None
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None
        # Told where each published event landed (the node's backlog, streams/backlog.py).
        self.on_delivered: Callable[[Sequence[tuple[int, int] | None]], None] | None = None

    async def start(self) -> None:
        """Create the producer and the thread that delivers its reports."""
        self._producer = Producer(self.config())
        self._stopping.clear()
        self._poller = threading.Thread(target=self._poll, name="confluent-sink", daemon=True)
        self._poller.start()

    def config(self) -> dict[str, Any]:
        """The producer's librdkafka settings."""
        return keyed_producer_config(self._bootstrap_servers, self._idempotence)

    def _poll(self) -> None:
        producer = self._producer
        assert producer is not None
        while not self._stopping.is_set():
            producer.poll(0.05)

    async def stop(self) -> None:
        """Deliver what is in flight, then stop polling."""
        if self._producer is None:
            return
        producer = self._producer
        await asyncio.to_thread(producer.flush, 15)
        self._stopping.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join)
        self._producer = None

    @property
    def _started(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("the event sink is not started")
        return self._producer

    async def _produce(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes]]
    ) -> list[tuple[int, int] | None]:
        produce = self._started.produce
        acks = _Acks(asyncio.get_running_loop(), len(records))
        # One callback per delivery report, one future per request (not per event).
        delivered = acks.delivered
        for key, value in records:
            while True:
                try:
                    produce(topic, value, key, on_delivery=delivered)
                    break
                except BufferError:
                    # librdkafka's queue is full: let the poll thread drain it.
                    await asyncio.sleep(0.005)
        await acks.future
        return acks.deliveries

    async def publish(self, events: Sequence[TrackedEvent]) -> None:
        """Produce every event and wait for all acknowledgements."""
        if events:
            deliveries = await self._produce(
                self._events_topic, [(e.customer_key.encode(), e.to_json()) for e in events]
            )
            if self.on_delivered is not None:
                self.on_delivered(deliveries)

    async def produce_events(
        self, records: Sequence[tuple[bytes, bytes]]
    ) -> list[tuple[int, int] | None]:
        """Produce keyed records as they are (a journal replay); where each landed."""
        if not records:
            return []
        return await self._produce(self._events_topic, records)

    async def dead_letter(
        self, payload: bytes, reasons: Sequence[dict[str, Any]], source: str = ""
    ) -> None:
        """Keep the rejected payload, its reasons, its source and when it was rejected."""
        record = dead_letter_record(payload, reasons, source)
        await self._produce(self._dead_letter_topic, [(None, record)])

    async def connected(self) -> bool:
        """True when the broker answers a metadata request."""
        try:
            await asyncio.to_thread(self._started.list_topics, None, 3)
        except Exception:
            return False
        return True
