"""Produce rates of aiokafka and confluent-kafka against a local Tansu, /v1/batch-sized loads.

Each round produces one batch of ``--batch`` events (about 300 bytes, keyed by
customer) with acks=all and waits for every acknowledgement, as the gateway
does before answering 200. Run: ``python scripts/bench_gateway_producers.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from confluent_kafka import Producer

from stack.broker import EmbeddedBroker
from streams.topics import ensure_topics


def _payloads(count: int) -> list[tuple[bytes, bytes]]:
    return [
        (
            f"customer-{i % 997}".encode(),
            orjson.dumps(
                {
                    "event_id": f"m-{i}",
                    "customer_key": f"customer-{i % 997}",
                    "call_type": "track",
                    "event_type": "cart",
                    "event_name": "Product Added",
                    "timestamp": "2026-03-01T12:00:00+00:00",
                    "received_at": "2026-03-01T12:00:00+00:00",
                    "properties": {"product_id": f"p-{i % 50}", "price": 19.99, "quantity": 1},
                    "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
                }
            ),
        )
        for i in range(count)
    ]


async def _aiokafka(
    servers: str, topic: str, batch: list[tuple[bytes, bytes]], rounds: int
) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=servers, acks="all", linger_ms=2, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        start = time.perf_counter()
        for _ in range(rounds):
            sends = [await producer.send(topic, value=v, key=k) for k, v in batch]
            await asyncio.gather(*sends)
        return rounds * len(batch) / (time.perf_counter() - start)
    finally:
        await producer.stop()


class _Round:
    """Counts a round's delivery reports; ``done`` is set by the last one."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.lock = threading.Lock()
        self.done = threading.Event()

    def delivered(self, error: object, _message: object) -> None:
        if error is not None:
            raise RuntimeError(str(error))
        with self.lock:
            self.remaining -= 1
            if self.remaining == 0:
                self.done.set()


def _confluent(servers: str, topic: str, batch: list[tuple[bytes, bytes]], rounds: int) -> float:
    producer = Producer(
        {"bootstrap.servers": servers, "acks": "all", "linger.ms": 2, "enable.idempotence": False}
    )
    stop = threading.Event()

    def poll() -> None:  # delivery callbacks run on this thread, as a gateway would do it
        while not stop.is_set():
            producer.poll(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        start = time.perf_counter()
        for _ in range(rounds):
            round_ = _Round(len(batch))
            for key, value in batch:
                producer.produce(topic, value=value, key=key, on_delivery=round_.delivered)
            round_.done.wait()
        return rounds * len(batch) / (time.perf_counter() - start)
    finally:
        stop.set()
        poller.join()
        producer.flush()


def main() -> None:
    """Print events/s for each client and batch size."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        broker = EmbeddedBroker(Path(folder) / "broker.log")
        broker.start()
        try:
            servers = broker.bootstrap_servers
            ensure_topics(servers, ["bench.a", "bench.c"], 4, 1)
            for size in (1, 100, 500, 2500):
                batch = _payloads(size)
                rounds = max(1, min(args.events // size, 2000))
                a = asyncio.run(_aiokafka(servers, "bench.a", batch, rounds))
                c = _confluent(servers, "bench.c", batch, rounds)
                print(
                    f"batch {size:5d} x {rounds:5d} rounds: aiokafka {a:10.0f} ev/s   "
                    f"confluent-kafka {c:10.0f} ev/s   ({c / a:.1f}x)",
                    flush=True,
                )
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
