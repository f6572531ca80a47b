"""Publishing what a journey batch produced: stage changes, identity messages, dead letters.

With librdkafka rather than Faust's producer: Faust's ``Topic.send`` cost
more of the worker's event loop per stage change than the whole journey batch
did on it (py-spy, docs/performance.md). Every record of a batch must be
acknowledged before the batch commits (at least once, never lost), so a batch
is produced and flushed as one, from the worker's thread, off the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.journal import Delivery, Journal

# (topic, key, value)
OutcomeRecord = tuple[str, bytes | None, bytes]


def keyed_producer_config(bootstrap_servers: str, idempotence: bool = False) -> dict[str, Any]:
    """librdkafka settings for records keyed by customer, acknowledged by every in-sync replica.

    Either way a retry cannot reorder one customer's records: idempotence (the broker
    drops a retried batch it has and keeps sequence order) allows 5 requests in flight,
    without it only one is.
    """
    return {
        "bootstrap.servers": bootstrap_servers,
        "acks": "all",
        # Java's partitioner (murmur2), as aiokafka and Faust use: one customer's
        # records must land on one partition whichever client produced them
        # (librdkafka's default, CRC32, put them on different partitions).
        "partitioner": "murmur2_random",
        "linger.ms": 2,
        "message.timeout.ms": 15000,
        "enable.idempotence": idempotence,
        "max.in.flight.requests.per.connection": 5 if idempotence else 1,
    }


class OutcomePublisher:
    """Produces a batch's records and returns once the broker acknowledged all of them.

    Blocking: call it from a worker thread. One batch at a time (the journey
    consumer's), so flushing the producer waits for exactly this batch.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        timeout_s: float = 30.0,
        journal: Journal | None = None,
        events_topic: str = "",
        idempotence: bool = False,
    ) -> None:
        self.config = keyed_producer_config(bootstrap_servers, idempotence)
        self._producer = Producer(self.config)
        self.timeout_s = timeout_s
        # Identity messages to ``events_topic`` are journaled like the gateway's events:
        # a broker that dies before their receiver processed them must not take them.
        self._journal = journal
        self._events_topic = events_topic

    def publish(self, records: Sequence[OutcomeRecord]) -> None:
        """Produce ``records`` and wait for every acknowledgement; raise on any failure."""
        if not records:
            return
        failures: list[KafkaError] = []
        landed: list[Delivery] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error)

        def journaled(error: KafkaError | None, message: Message) -> None:
            partition, offset = message.partition(), message.offset()
            if error is not None or partition is None or offset is None:
                failures.extend([error] if error is not None else [])
                landed.append(None)
            else:
                landed.append((partition, offset))

        ticket = None
        if self._journal is not None:
            keep = [(k or b"", v) for topic, k, v in records if topic == self._events_topic]
            # Unbounded: refusing the worker's own messages would stall it, not ingest.
            ticket = self._journal.write(keep, bounded=False) if keep else None
        for topic, key, value in records:
            report = journaled if ticket is not None and topic == self._events_topic else delivered
            while True:
                try:
                    self._producer.produce(topic, value=value, key=key, on_delivery=report)
                    break
                except BufferError:
                    self._producer.poll(0.01)  # librdkafka's queue is full: deliver some
        unacknowledged = self._producer.flush(self.timeout_s)
        if ticket is not None and self._journal is not None:
            self._journal.resolve(ticket, landed + [None] * (ticket.count - len(landed)))
        if failures:
            raise KafkaException(failures[0])
        if unacknowledged:
            raise TimeoutError(f"{unacknowledged} outcome records unacknowledged")
