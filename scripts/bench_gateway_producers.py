"""Produce rates of the gateway's two sinks against a local Tansu, /v1/batch-sized loads.

``KafkaEventSink`` (aiokafka) and ``ConfluentEventSink`` (librdkafka) are run
through their real ``publish``: each "request" produces a batch of envelopes
(acks=all) and waits for every ack, as the gateway does before answering 200;
``concurrency`` requests are in flight at once, as from many storefronts.
Run: ``python scripts/bench_gateway_producers.py``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from events import EventType, TrackedEvent
from stack.broker import EmbeddedBroker
from streams.confluent_sink import ConfluentEventSink
from streams.producer import KafkaEventSink
from streams.topics import ensure_topics

# (concurrent requests, events per request, total events)
LOADS = [(1, 1, 1_000), (32, 1, 10_000), (1, 100, 20_000), (8, 100, 40_000),
         (1, 500, 40_000), (4, 500, 60_000), (1, 2500, 60_000)]  # fmt: skip


def _events(count: int) -> list[TrackedEvent]:
    now = datetime.now(UTC)
    return [
        TrackedEvent(
            event_id=f"m-{i}",
            customer_key=f"customer-{i % 997}",
            call_type="track",
            event_type=EventType.CART,
            event_name="Product Added",
            timestamp=now,
            received_at=now,
            user_id=f"customer-{i % 997}",
            properties={"product_id": f"p-{i % 50}", "price": 19.99, "quantity": 1},
            context={"library": {"name": "analytics-python", "version": "2.4.0"}},
            source="bench",
        )
        for i in range(count)
    ]


async def _rate(sink: Any, concurrency: int, size: int, total: int) -> float:
    batch = _events(size)
    requests = max(1, total // size)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)

    async def client() -> None:
        while not queue.empty():
            queue.get_nowait()
            await sink.publish(batch)

    await sink.start()
    try:
        await sink.publish(batch[:1])  # connected and warm
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return requests * size / (time.perf_counter() - start)
    finally:
        await sink.stop()


def main() -> None:
    """Print events/s of each sink per load."""
    with tempfile.TemporaryDirectory() as folder:
        broker = EmbeddedBroker(Path(folder) / "broker.log")
        broker.start()
        try:
            servers = broker.bootstrap_servers
            ensure_topics(servers, ["bench.events", "bench.dlq"], 4, 1)
            for concurrency, size, total in LOADS:
                rates = []
                for kind in (KafkaEventSink, ConfluentEventSink):
                    sink = kind(servers, "bench.events", "bench.dlq")
                    rates.append(asyncio.run(_rate(sink, concurrency, size, total)))
                aio, confluent = rates
                print(
                    f"{concurrency:3d} concurrent x {size:5d} events: aiokafka {aio:9.0f} ev/s"
                    f"   confluent-kafka {confluent:9.0f} ev/s   ({confluent / aio:.1f}x)",
                    flush=True,
                )
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
