"""The worker's Faust app: topics, the journey consumer and the dead-letter agent.

The journey consumer takes events in batches (one event-store transaction per
partition and one ClickHouse insert per table per batch) and does the blocking
work in a thread, so the event loop (and, in the embedded node, the API) stays
free. It reads with aiokafka directly rather than as a Faust agent: Faust's
per-message path cost more than the pipeline itself (streams/consumer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import faust
import orjson
from faust.types import EventT

from projections.dead_letters import DeadLetterLog
from streams.backlog import Backlog
from streams.batches import BatchLoop
from streams.consumer import BatchConsumer, TopicRecords, worker_consumer
from streams.dead_letters import DeadLetterRecord, store_dead_letters
from streams.journal import Journal
from streams.metrics import WorkerMetrics
from streams.outcomes import OutcomePublisher, OutcomeRecord
from streams.pipeline import JourneyPipeline, PartitionBatch, PreparedBatch, source_name
from streams.projection_feed import ProjectionFeed
from streams.segment_timers import SegmentTimers
from streams.segments import segment_record, traits_record
from streams.settings import JourneyWorkerSettings

log = logging.getLogger(__name__)


class JourneyStreams:
    """The Faust app of the worker, with its topics and the journey agent."""

    def __init__(
        self,
        settings: JourneyWorkerSettings,
        pipeline: JourneyPipeline,
        dead_letters: DeadLetterLog | None = None,
        journal: Journal | None = None,
        metrics: WorkerMetrics | None = None,
        feed: ProjectionFeed | None = None,
    ) -> None:
        self.settings = settings
        # Set in the node when journey workers run in processes of their own: it applies
        # their projection records to ClickHouse instead of consuming journey events.
        self.feed = feed
        self.pipeline = pipeline
        self.metrics = metrics
        if metrics is not None:
            pipeline.on_inserted = metrics.clickhouse_insert_seconds.observe
        self.dead_letters = dead_letters
        # What the worker has yet to process, in memory (the gateway reports its writes).
        self.backlog = Backlog()
        # Held by a batch from its first effect to its commit, and by a backup: a backup
        # sees the stores between two batches, at one tracked position.
        self._batch_lock = threading.Lock()
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
        # Every Faust agent on this app (the outreach one too) runs this loop: fail fast.
        self.batches = BatchLoop(self.app, settings.batch_max_events, settings.batch_within_s)
        self.dead_letter_topic = self.app.topic(
            settings.dead_letter_topic, key_serializer="raw", value_serializer="raw"
        )
        self.outcomes = OutcomePublisher(
            settings.kafka_bootstrap_servers,
            journal=journal,
            events_topic=settings.events_topic,
            idempotence=settings.kafka_idempotence,
        )
        self.journey_consumer = worker_consumer(
            settings,
            name="journey",
            group="journeys",
            topics=[settings.events_topic],
            stored_position=lambda _topic, partition: self.consumed_position(partition),
            handle=self._journey_batch,
            on_failure=self.app.crash,
            on_progress=self._progressed,
            on_fetched=lambda _topic, partition, produced_at: self.backlog.handling(
                partition, produced_at
            ),
        )
        if dead_letters is not None:
            self.app.agent(self.dead_letter_topic, name="dead-letters")(self._dead_letter_agent)
        self.feed_consumer = None
        if feed is not None:
            self.feed_consumer = worker_consumer(
                settings,
                name="projections",
                group="projections",
                topics=[settings.projections_topic],
                stored_position=lambda _topic, p: feed.position(self._feed_source(p)),
                handle=self._feed_batch,
                on_failure=self.app.crash,
            )
        # Time passing alone changes segment membership (rolling windows): a timer loop,
        # where the journeys' partitions are (not in a node whose workers run apart).
        self.segment_timers: SegmentTimers | None = None
        if feed is None and pipeline is not None and pipeline.segments is not None:
            self.segment_timers = SegmentTimers(
                pipeline.segments,
                self.ready_partitions,
                self._batch_lock,
                self.outcomes.publish,
                settings.segments_topic,
                rfm_scan_s=settings.rfm_scan_s,
            )
            self.segment_timers.register(self.app, settings.segment_tick_s)

    def _progressed(self, _topic: str, partition: int, position: int, end: int | None) -> None:
        self.backlog.fetched(partition, end)
        self.backlog.processed(partition, position)

    async def _journey_batch(self, records: TopicRecords) -> None:
        batches = [
            PartitionBatch(source=self._source(partition), records=items)
            for partition, items in sorted(records[self.settings.events_topic].items())
        ]
        started = time.perf_counter()
        await asyncio.to_thread(self._apply_journey_batch, batches)
        if self.metrics is not None:
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_events.observe(sum(len(b.records) for b in batches))

    async def _feed_batch(self, records: TopicRecords) -> None:
        started = time.perf_counter()
        await asyncio.to_thread(self._apply_feed_batch, records[self.settings.projections_topic])
        if self.metrics is not None:
            self.metrics.clickhouse_insert_seconds.observe(time.perf_counter() - started)

    def _apply_feed_batch(self, by_partition: dict[int, list[tuple[int, bytes]]]) -> None:
        assert self.feed is not None
        with self._batch_lock:  # a backup sees ClickHouse between two applications
            for partition, items in sorted(by_partition.items()):
                self.feed.applier.apply([value for _, value in items])
                self.feed.save(self._feed_source(partition), items[-1][0] + 1)

    def _feed_source(self, partition: int) -> str:
        return source_name(self.settings.projections_topic, partition, self.settings.kafka_epoch)

    def feed_positions(self, partitions: Sequence[int]) -> dict[int, int]:
        """How far the projection records are applied, per partition (the node's drain)."""
        assert self.feed is not None
        return {p: self.feed.position(self._feed_source(p)) for p in partitions}

    def _apply_journey_batch(self, batches: Sequence[PartitionBatch]) -> None:
        with self._batch_lock:
            early = self.pipeline.stages.in_flight is not None
            # Where this process's stage view serves the rows in flight (the node), a
            # stage change goes out once decided, not after the ClickHouse inserts: the
            # view already shows it, and a replay decides it again.
            prepared = self.pipeline.prepare_many(
                batches, decided=self._publish_stage_changes if early else None
            )
            # Published before the commit: at least once, never lost.
            self.outcomes.publish(
                [
                    record
                    for one in prepared
                    for record in (self._after_stages(one) if early else self._outcomes(one))
                ]
            )
            self.pipeline.commit_many(prepared)

    def _publish_stage_changes(self, prepared: Sequence[PreparedBatch]) -> None:
        self.outcomes.publish([record for one in prepared for record in self._stage_changes(one)])

    @contextlib.contextmanager
    def between_batches(self) -> Iterator[None]:
        """Hold the journey worker between two batches (blocking: call from a thread).

        Meanwhile no batch writes ClickHouse or commits, so the event store's tracked
        positions and the projections describe the same moment.
        """
        with self._batch_lock:
            yield

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

    def _source(self, partition: int) -> str:
        return source_name(self.settings.events_topic, partition, self.settings.kafka_epoch)

    def _outcomes(self, prepared: PreparedBatch) -> list[OutcomeRecord]:
        return [*self._stage_changes(prepared), *self._after_stages(prepared)]

    def _stage_changes(self, prepared: PreparedBatch) -> list[OutcomeRecord]:
        outcomes: list[OutcomeRecord] = []
        for change in prepared.update.stage_changes:
            if change.restated:
                continue  # already published; only the projections take the new revision
            record: dict[str, Any] = {
                "customer_key": change.customer_key,
                "stage": change.stage.value,
                "previous_stage": change.previous.value if change.previous else None,
                "reason": change.reason,
                "event_id": change.at_event_id,
                "at": change.at,
            }
            if change.revised:
                # A revision moved this stage (into the past): triggers do not fire for it.
                record["revised"] = True
            key = change.customer_key.encode()
            outcomes.append((self.settings.stage_changes_topic, key, orjson.dumps(record)))
        return outcomes

    def _after_stages(self, prepared: PreparedBatch) -> list[OutcomeRecord]:
        """Everything but the stage changes: segment changes, identity, dead letters."""
        settings = self.settings
        outcomes: list[OutcomeRecord] = []
        if prepared.segments is not None:
            for customer_key, membership in prepared.segments.changes:
                value = orjson.dumps(segment_record(customer_key, membership))
                outcomes.append((settings.segments_topic, customer_key.encode(), value))
            for customer_key, membership, backfill in prepared.segments.revised:
                value = orjson.dumps(segment_record(customer_key, membership, backfill, True))
                outcomes.append((settings.segments_topic, customer_key.encode(), value))
            for customer_key, at_ms, event_id, values in prepared.segments.traits:
                value = orjson.dumps(traits_record(customer_key, at_ms, event_id, values))
                outcomes.append((settings.segments_topic, customer_key.encode(), value))
        # Identity: link requests, merged histories and re-keyed events, keyed by customer.
        for message in prepared.update.forwards:
            key = message.customer_key.encode()
            outcomes.append((settings.events_topic, key, message.to_json()))
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
            outcomes.append((settings.dead_letter_topic, None, orjson.dumps(rejected)))
        return outcomes

    def status(self) -> dict[str, Any]:
        """What the worker is doing, for the health endpoint."""
        if self.feed_consumer is not None:
            return self._feed_status(self.feed_consumer)
        consumer = self.journey_consumer
        assigned = consumer.assigned_partitions()
        # Lag: what the broker has (highwater, as last fetched) beyond what is committed.
        committed = self.consumed_positions(assigned)
        lag = 0
        for partition in assigned:
            highwater = consumer.highwater(self.settings.events_topic, partition)
            if highwater is not None:
                lag += max(0, highwater - committed[partition])
        return {
            "ok": bool(assigned) and not consumer.rebalancing and consumer.failed is None,
            "assigned_partitions": assigned,
            "rebalancing": consumer.rebalancing,
            "lag": lag,
        }

    def _feed_status(self, consumer: BatchConsumer) -> dict[str, Any]:
        # The journeys' lag is the backlog's (fed from the event store's positions);
        # the projections' is what this node has yet to apply to ClickHouse.
        assert self.feed is not None
        pending = 0
        for partition in consumer.assigned_partitions():
            end = consumer.highwater(self.settings.projections_topic, partition)
            if end is not None:
                pending += max(0, end - self.feed.position(self._feed_source(partition)))
        return {
            "ok": bool(consumer.assigned_partitions())
            and not consumer.rebalancing
            and consumer.failed is None,
            "journey_workers": "apart",
            "lag": self.backlog.events(),
            "projection_records_pending": pending,
        }

    @property
    def consuming(self) -> bool:
        """False once the journey consumer (the feed's, in a node whose journey workers
        run apart) stopped for good (a failure, a crash, a stop)."""
        consumer = self.feed_consumer or self.journey_consumer
        return not consumer.should_stop and consumer.failed is None

    def ready_partitions(self) -> list[int]:
        """Partitions owned here and consumed up to the high-water mark (timers may fire)."""
        return self.journey_consumer.caught_up(self.settings.events_topic, self.consumed_position)

    def consumed_position(self, partition: int) -> int:
        """The committed position of ``partition``, from the event store's tracking."""
        return self.pipeline.journeys.consumed_position(self._source(partition))

    def consumed_positions(self, partitions: Sequence[int]) -> dict[int, int]:
        """The committed position of each partition, from the event store's tracking."""
        return {partition: self.consumed_position(partition) for partition in partitions}
