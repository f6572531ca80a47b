"""The Faust app: topics and the journey agent.

The agent takes events in batches (one event-store transaction and one
ClickHouse insert per partition per batch) and does the blocking work in a
thread, so the event loop (and, in the embedded node, the API) stays free.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import faust
import orjson
from faust.types import EventT

from projections.dead_letters import DeadLetterLog
from stack.settings import Settings
from streams.batches import BatchLoop, by_partition
from streams.dead_letters import DeadLetterRecord, store_dead_letters
from streams.pipeline import JourneyPipeline, PartitionBatch, PreparedBatch, source_name

log = logging.getLogger(__name__)


class JourneyStreams:
    """The Faust app of the worker, with its topics and the journey agent."""

    def __init__(
        self,
        settings: Settings,
        pipeline: JourneyPipeline,
        dead_letters: DeadLetterLog | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.dead_letters = dead_letters
        self.app = faust.App(
            settings.worker_group,
            broker=[f"kafka://{host}" for host in settings.kafka_bootstrap_servers.split(",")],
            store="memory://",
            datadir=str(settings.data_dir / "faust"),
            web_enabled=False,
            autodiscover=False,
            # Faust's leader topic and changelogs are unused: state lives in the event store.
            topic_disable_leader=True,
            topic_partitions=settings.topic_partitions,
            topic_replication_factor=settings.topic_replication_factor,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=settings.kafka_session_timeout_s,
            broker_heartbeat_interval=settings.kafka_heartbeat_interval_s,
            producer_acks=-1,
        )
        # Every agent on this app (the outreach ones too) runs this loop: fail fast.
        self.batches = BatchLoop(self.app, settings.batch_max_events, settings.batch_within_s)
        self.events_topic = self.app.topic(
            settings.events_topic, key_serializer="raw", value_serializer="raw"
        )
        self.stage_changes_topic = self.app.topic(
            settings.stage_changes_topic, key_serializer="raw", value_serializer="raw"
        )
        self.dead_letter_topic = self.app.topic(
            settings.dead_letter_topic, key_serializer="raw", value_serializer="raw"
        )
        self.app.agent(self.events_topic, name="journey")(self._journey_agent)
        if dead_letters is not None:
            self.app.agent(self.dead_letter_topic, name="dead-letters")(self._dead_letter_agent)

    async def _journey_agent(self, stream: faust.StreamT[bytes]) -> None:
        await self.batches.run(stream, "journey", self._journey_batch)

    async def _journey_batch(self, events: Sequence[EventT]) -> None:
        batches = self._by_partition(events)
        prepared = await asyncio.to_thread(self.pipeline.prepare_many, batches)
        # Published before the commit: at least once, never lost.
        for one in prepared:
            await self._publish_outcomes(one)
        await asyncio.to_thread(self.pipeline.commit_many, prepared)

    async def _dead_letter_agent(self, stream: faust.StreamT[bytes]) -> None:
        """Keep every dead letter in ClickHouse so the API can list it (at least once)."""
        await self.batches.run(stream, "dead-letters", self._dead_letter_batch)

    async def _dead_letter_batch(self, events: Sequence[EventT]) -> None:
        assert self.dead_letters is not None
        records = [
            DeadLetterRecord(
                partition=event.message.partition,
                offset=event.message.offset,
                value=event.message.value or b"",
                timestamp=event.message.timestamp,
            )
            for event in events
        ]
        await asyncio.to_thread(
            store_dead_letters, self.dead_letters, records, self.settings.kafka_epoch
        )

    def _by_partition(self, events: Sequence[EventT]) -> list[PartitionBatch]:
        return [
            PartitionBatch(
                source=source_name(
                    self.settings.events_topic, partition, self.settings.kafka_epoch
                ),
                records=records,
            )
            for partition, records in by_partition(events).items()
        ]

    async def _publish_outcomes(self, prepared: PreparedBatch) -> None:
        pending: list[Any] = []
        for change in prepared.update.stage_changes:
            record: dict[str, Any] = {
                "customer_key": change.customer_key,
                "stage": change.stage.value,
                "previous_stage": change.previous.value if change.previous else None,
                "reason": change.reason,
                "event_id": change.at_event_id,
                "at": change.at,
            }
            pending.append(
                await self.stage_changes_topic.send(
                    key=change.customer_key.encode(), value=orjson.dumps(record)
                )
            )
        # Identity: link requests, merged histories and re-keyed events, keyed by customer.
        for message in prepared.update.forwards:
            pending.append(
                await self.events_topic.send(
                    key=message.customer_key.encode(), value=message.to_json()
                )
            )
        for refusal in prepared.update.refusals:
            log.warning(
                "identity merge refused: %s cannot merge into %s (message %s)",
                refusal.customer_key,
                refusal.requested_by,
                refusal.event_id,
            )
        for payload, reasons in prepared.rejected:
            rejected: dict[str, Any] = {
                "reasons": reasons,
                "payload": payload.decode("utf-8", "replace"),
            }
            pending.append(await self.dead_letter_topic.send(value=orjson.dumps(rejected)))
        if pending:
            await asyncio.gather(*pending)

    def status(self) -> dict[str, Any]:
        """What the worker is doing, for the health endpoint."""
        consumer = self.app.consumer if self.app.started else None
        # The journey agent's partitions: the app's consumer also holds the other
        # agents' topics, whose offsets are not comparable with these positions.
        topic = self.settings.events_topic
        assignment = {
            tp for tp in (consumer.assignment() if consumer else set()) if tp.topic == topic
        }
        assigned = sorted(tp.partition for tp in assignment)
        # Lag: what the broker has (highwater, as last fetched) beyond what is committed.
        committed = self.consumed_positions(assigned)
        lag = 0
        for tp in assignment:
            highwater = consumer.highwater(tp) if consumer else None
            if highwater is not None:
                lag += max(0, highwater - committed[tp.partition])
        return {
            "ok": bool(assigned) and not self.app.rebalancing,
            "assigned_partitions": assigned,
            "rebalancing": bool(self.app.rebalancing),
            "lag": lag,
        }

    def consumed_positions(self, partitions: Sequence[int]) -> dict[int, int]:
        """The committed position of each partition, from the event store's tracking."""
        topic, epoch = self.settings.events_topic, self.settings.kafka_epoch
        return {
            partition: self.pipeline.journeys.consumed_position(
                source_name(topic, partition, epoch)
            )
            for partition in partitions
        }
