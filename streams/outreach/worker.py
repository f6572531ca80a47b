"""The trigger and outreach agents, on the worker's Faust app.

- trigger consumer: ``<prefix>.events``, ``<prefix>.stage-changes`` and
  ``<prefix>.segments`` (for the flows only), read
  with aiokafka in a group of its own like the journey consumer (every event
  passes here; the topics are co-partitioned, so one worker owns all of a
  customer's facts) → customer facts (journeys/triggers.py) and the flows'
  states, saved with the consumed position in one transaction.
- timer loop: every ``trigger_tick_s``, the flows of the partitions this worker
  owns *and has consumed up to the broker's high-water mark* are advanced to
  now; their messages are recorded, then published on ``<prefix>.triggers``.
- outreach agent: ``<prefix>.triggers`` → one delivery per subscribed endpoint
  (and the e-mail channel), saved with the consumed position.
- segment loop: every ``rfm_scan_s``, the customers' RFM segments (computed
  over all buyers, by the read side) are brought into the facts of the
  customers this worker owns, and their edges into the flows that enter on
  one (``rfm:champions``: the high-value welcome).
- delivery loop: claims due deliveries and attempts each in its own task, so
  one slow or failing endpoint holds up nobody; retries with exponential
  backoff and jitter until the retry horizon, then ``<prefix>.triggers.dlq``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import faust
import httpx
import orjson
from faust.types import EventT

from events import EventType
from journeys.flows.conditions import SegmentTrigger
from journeys.flows.inputs import (
    RFM_PREFIX,
    FlowInput,
    SegmentInput,
    StageInput,
    TraitsInput,
    rfm_segment_inputs,
    to_ms,
    tracked_input,
)
from journeys.flows.templates import RenderFailed
from journeys.triggers import CustomerFacts
from projections.privacy.vault import Vault, is_sealed
from streams.batches import BatchLoop, by_partition
from streams.consumer import TopicRecords, worker_consumer
from streams.outreach.channels import Attempt, post_webhook, send_email
from streams.outreach.flows import FlowRunner
from streams.outreach.store import Delivery, Endpoint, FlowWrite, OutreachStore
from streams.outreach.trigger_events import TriggerEvent
from streams.pipeline import source_name
from streams.settings import OutreachWorkerSettings

log = logging.getLogger(__name__)

EMAIL_ENDPOINT = "email"
DELIVERY_LEASE_MARGIN_S = 30.0
# Segment changes applied per lock hold, so consumption is not held up for long.
SEGMENT_CHUNK = 500

# (customer key, RFM segment) of every buyer as of a moment.
SegmentReader = Callable[[datetime], Sequence[tuple[str, str]]]


class OutreachWorker:
    """Registers the trigger and outreach agents and their loops on a Faust app."""

    def __init__(
        self,
        settings: OutreachWorkerSettings,
        batches: BatchLoop,
        store: OutreachStore,
        segments: SegmentReader | None = None,
        lateness: Callable[[float], None] | None = None,
        vault: Vault | None = None,
        flows: Callable[[OutreachWorker], FlowRunner] | None = None,
        unsubscribe_url: Callable[[str, str], str] | None = None,
    ) -> None:
        self.settings = settings
        # (customer key, channel) → the signed one-click unsubscribe link every message
        # carries (e-mail: List-Unsubscribe; flows: {{ unsubscribe_url }}); None: none.
        self._unsubscribe_url = unsubscribe_url
        # Opens sealed personal fields where the facts or a delivery need the value
        # (a birthday's month and day, the recipient's address); None: as stored.
        self._vault = vault
        # Told how late each flow send went out, in seconds (a metric), when set.
        self._lateness = lateness
        # The worker app's batch loop: a failed batch stops the worker, as for journeys.
        self.batches = batches
        self.app = app = batches.app
        self.store = store
        # Event consumption and timer firing change the same customers: one at a time.
        self._lock = asyncio.Lock()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._segments = segments
        # Segments already in the facts (or another worker's), so a scan only loads
        # customers that changed; forgotten when the assignment changes.
        self._segments_known: dict[str, str] = {}
        self._segments_assigned: list[int] = []

        def raw(name: str) -> faust.TopicT:
            return app.topic(name, key_serializer="raw", value_serializer="raw")

        self.trigger_consumer = worker_consumer(
            settings,
            name="triggers",
            group="triggers",
            # Segment changes only feed the flows (a flow may enter on one).
            topics=[settings.events_topic, settings.stage_changes_topic, settings.segments_topic],
            stored_position=self._position_when_assigned,
            handle=self._trigger_batch,
            on_failure=app.crash,
            on_progress=self._progressed,
        )
        # (topic, partition) -> [processed position, high-water mark last fetched], for /metrics.
        self._progress: dict[tuple[str, int], list[int]] = {}
        self.triggers_topic = raw(settings.triggers_topic)
        self.dlq_topic = raw(settings.triggers_dead_letter_topic)
        app.agent(self.triggers_topic, name="outreach")(self._outreach_agent)
        app.timer(settings.trigger_tick_s, name="trigger-timers")(self._fire_due)
        app.timer(settings.trigger_tick_s, name="outreach-deliveries")(self._deliver_due)
        if segments is not None:
            app.timer(settings.rfm_scan_s, name="trigger-segments")(self._observe_segments)
        # Journey flows (streams/outreach/flows.py): the outreach engine; made with this
        # worker, as their messages are delivered to its endpoints and channels.
        self._flow_runner = flows(self) if flows is not None else None

    @property
    def flows(self) -> FlowRunner | None:
        """The flow runner while any flow is known (none: no flow work at all)."""
        runner = self._flow_runner
        return runner if runner is not None and runner.active else None

    def _progressed(self, topic: str, partition: int, position: int, end: int | None) -> None:
        known = self._progress.setdefault((topic, partition), [position, position])
        known[0] = position
        known[1] = max(known[1], position, end if end is not None else 0)

    def consumer_lag(self) -> dict[tuple[str, int], int]:
        """Records the trigger consumer has not handled, per (topic, partition), as last fetched.

        aiokafka's high-water mark moves with every fetch, prefetches during a batch too.
        """
        lag = {}
        for (topic, partition), (at, end) in sorted(self._progress.items()):
            fetched = self.trigger_consumer.highwater(topic, partition) or 0
            lag[topic, partition] = max(end, fetched) - at
        return lag

    # --- consuming facts --------------------------------------------------------------

    def _unconsumed(
        self, topic: str, partition: int, records: list[tuple[int, bytes]]
    ) -> tuple[str, list[tuple[int, bytes]]]:
        """The position's source name and the records at or past its stored position.

        Records below it were applied in the transaction that stored the position
        (a redelivery after a crash or rebalance): applying them again would count twice.
        """
        source = source_name(topic, partition, self.settings.kafka_epoch)
        start = self.store.position(source)
        if not records or records[0][0] >= start:
            return source, records  # the usual case: nothing of it was applied yet
        return source, [(offset, value) for offset, value in records if offset >= start]

    def _position(self, topic: str, partition: int) -> int:
        return self.store.position(source_name(topic, partition, self.settings.kafka_epoch))

    def _position_when_assigned(self, topic: str, partition: int) -> int:
        # Another worker may have had the partition since: its customers' facts in
        # memory may be older than the stored ones.
        self.store.forget_kept_facts()
        return self._position(topic, partition)

    async def _trigger_batch(self, records: TopicRecords) -> None:
        # Events first: a stage change is caused by an event of the same customer.
        for topic, apply in (
            (self.settings.events_topic, self._apply_events),
            (self.settings.stage_changes_topic, self._apply_stages),
            (self.settings.segments_topic, self._apply_segment_changes),
        ):
            for partition, items in sorted(records.get(topic, {}).items()):
                async with self._lock:
                    await asyncio.to_thread(apply, partition, items)

    def _apply_events(self, partition: int, records: list[tuple[int, bytes]]) -> None:
        source, fresh = self._unconsumed(self.settings.events_topic, partition, records)
        if not fresh:
            return
        touches: list[TriggerEvent] = []
        for _, value in fresh:
            try:
                touch = TriggerEvent.from_json(value)
            except (ValueError, TypeError, KeyError):
                continue  # the journey pipeline dead-letters it; nothing to trigger on
            touches.append(self._birthday_opened(touch))
        customers = self._facts_of(touch.customer_key for touch in touches)
        for touch in touches:
            customers[touch.customer_key].observe(touch)
        flows = None
        if self.flows is not None:
            inputs = [(touch.customer_key, tracked_input(touch)) for touch in touches]
            flows = self.flows.observe(partition, inputs, _now_ms())
        self._save_batch(customers, partition, source, fresh[-1][0] + 1, flows)

    def _birthday_opened(self, touch: TriggerEvent) -> TriggerEvent:
        """An identify event with its sealed birthday opened: the facts keep only its
        month and day (journeys/triggers.py), which the birthday flow's anchor needs."""
        birthday = touch.properties.get("birthday")
        if self._vault is None or touch.event_type is not EventType.IDENTIFY:
            return touch
        if not is_sealed(birthday):
            return touch
        properties = {**touch.properties, "birthday": self._vault.open_value(birthday)}
        return touch._replace(properties=properties)

    def _apply_stages(self, partition: int, records: list[tuple[int, bytes]]) -> None:
        source, fresh = self._unconsumed(self.settings.stage_changes_topic, partition, records)
        if not fresh:
            return
        # (customer, stage, at, (causing event id, revised))
        changes: list[tuple[str, str, datetime, tuple[str, bool]]] = []
        for _, value in fresh:
            try:
                # A revised change ("revised": true) is folded in the same way: the
                # facts keep the latest stage by event time, so one moved into the past
                # changes nothing.
                change = orjson.loads(value)
                key, stage = str(change["customer_key"]), str(change["stage"])
                at = datetime.fromisoformat(change["at"])
            except (ValueError, TypeError, KeyError):
                continue
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
            # A revised stage lies in the past: flows take it as history (no new run).
            cause = (str(change.get("event_id") or ""), change.get("revised") is True)
            changes.append((key, stage, at, cause))
        customers = self._facts_of(key for key, _, _, _ in changes)
        for key, stage, at, _ in changes:
            customers[key].observe_stage(stage, at)
        flows = None
        if self.flows is not None:
            inputs: list[tuple[str, FlowInput]] = [
                (key, StageInput(event_id, to_ms(at), stage, historical=revised))
                for key, stage, at, (event_id, revised) in changes
            ]
            flows = self.flows.observe(partition, inputs, _now_ms())
        self._save_batch(customers, partition, source, fresh[-1][0] + 1, flows)

    def _apply_segment_changes(self, partition: int, records: list[tuple[int, bytes]]) -> None:
        """``journey.segments`` records into the flows; the consumed position saved with them.

        An entry a backfill found, or one a revision derived again (an identity
        merge, a late event), lies in the past: flows take it as history, so it
        starts no run (as a revised stage change).
        """
        source, fresh = self._unconsumed(self.settings.segments_topic, partition, records)
        if not fresh:
            return
        inputs: list[tuple[str, FlowInput]] = []
        for _, value in fresh:
            traits = traits_input(value)
            if traits is not None:
                inputs.append(traits)
                continue
            try:
                change = orjson.loads(value)
                key, segment = str(change["customer_key"]), str(change["segment"])
                entered = change["type"] == "SegmentEntered"
                at_ms = int(change["at_ms"])
            except (ValueError, TypeError, KeyError):
                continue
            past = change.get("backfill") is True or change.get("revised") is True
            event_id = str(change.get("event_id") or "")
            inputs.append((key, SegmentInput(event_id, at_ms, segment, entered, historical=past)))
        flows = self.flows.observe(partition, inputs, _now_ms()) if self.flows else None
        self._save_batch({}, partition, source, fresh[-1][0] + 1, flows)

    def _facts_of(self, customer_keys: Iterable[str]) -> dict[str, CustomerFacts]:
        """Each customer's facts (new ones for customers not seen before), one read in all."""
        keys = dict.fromkeys(customer_keys)
        found = self.store.facts_of(keys)
        return {key: found.get(key) or CustomerFacts(key) for key in keys}

    def _save_batch(
        self,
        customers: dict[str, CustomerFacts],
        partition: int,
        source: str,
        position: int,
        flows: FlowWrite | None = None,
    ) -> None:
        self.store.save_batch(
            [(facts, partition) for facts in customers.values()], source, position, flows
        )

    async def _observe_segments(self, *_: Any) -> None:
        try:
            if self._segments is None or self.trigger_consumer.rebalancing:
                return
            if not self._watches_rfm():
                return  # nothing watches segments: spare ClickHouse the ranking of all buyers
            assigned = await asyncio.to_thread(self.assigned_partitions)
            if assigned != self._segments_assigned:
                self._segments_known.clear()  # another worker may have written them
                self._segments_assigned = assigned
            scores = await asyncio.to_thread(self._segments, datetime.now(UTC))
            changed = [
                (key, segment)
                for key, segment in scores
                if self._segments_known.get(key) != segment
            ]
            for start in range(0, len(changed), SEGMENT_CHUNK):
                # Facts of ready partitions hold every order ClickHouse may count, so an
                # entry is always stamped with an order the facts know.
                ready = await asyncio.to_thread(self.ready_partitions)
                async with self._lock:
                    await asyncio.to_thread(
                        self._apply_segments, changed[start : start + SEGMENT_CHUNK], ready
                    )
        except Exception:
            log.exception("segment loop failed; retrying on the next scan")

    def _watches_rfm(self) -> bool:
        """A flow in force (an ``rfm:<segment>`` entry) watches RFM segments."""
        if self.flows is None:
            return False
        catalog = self.flows.engine.catalog
        current = (catalog.current(flow_id) for flow_id in catalog.flow_ids())
        return any(
            isinstance(entry.trigger, SegmentTrigger)
            and entry.trigger.segment.startswith(RFM_PREFIX)
            for flow in current
            if flow is not None and flow.enabled
            for entry in flow.entries
        )

    def _apply_segments(self, scores: Sequence[tuple[str, str]], ready: Sequence[int]) -> None:
        customers: list[tuple[CustomerFacts, int]] = []
        # partition → (customer, segment input) for the flows (journeys/flows/inputs.py)
        flow_inputs: dict[int, list[tuple[str, FlowInput]]] = {}
        known: dict[str, str] = {}
        for key, segment in scores:
            partition = self._partition_of(key)
            if partition is None:
                continue  # its events are not here yet: looked at again next scan
            if partition in ready:
                facts = self.store.facts(key)
                if facts is None:
                    continue
                previous = facts.segment
                if facts.observe_segment(segment):
                    customers.append((facts, partition))
                    edges = rfm_segment_inputs(previous, segment, facts.latest_order())
                    flow_inputs.setdefault(partition, []).extend((key, i) for i in edges)
            elif partition in self._segments_assigned:
                continue  # ours, but not caught up: looked at again next scan
            # Another worker's customer is remembered until the assignment changes.
            known[key] = segment
        if self.flows is not None:
            # The flows first: a crash before the facts are saved observes the change
            # again on the next scan, and the same input (same key) is taken once.
            for partition, inputs in sorted(flow_inputs.items()):
                self.store.save_flows(self.flows.observe(partition, inputs, _now_ms()))
        self.store.save_customers(customers)
        self._segments_known.update(known)

    # --- firing -------------------------------------------------------------------------

    def assigned_partitions(self) -> list[int]:
        """Partitions of the events topic assigned to this worker's trigger consumer."""
        return self.trigger_consumer.assigned_partitions()

    def ready_partitions(self) -> list[int]:
        """Partitions owned here whose events were consumed up to the high-water mark.

        Until then a flow's due step could overtake an accepted event that ends
        it (a purchase waiting in the backlog), so it waits.
        """
        events = self.settings.events_topic
        return self.trigger_consumer.caught_up(events, lambda p: self._position(events, p))

    async def _fire_due(self, *_: Any) -> None:
        # A tick that outlasts trigger_tick_s makes mode log "Timer ... is overlapping":
        # runs never overlap (the next one waits), it only sends later. Each thread hop
        # waits for the GIL behind the agents' batches, so a tick makes two at most.
        try:
            unpublished, ready = await asyncio.to_thread(self._tick_reads)
            await self._publish(unpublished)
            if self.flows is None or not ready:
                return
            async with self._lock:
                sent = await asyncio.to_thread(self._advance_flows, ready)
            # One round of acknowledgements for the tick's messages, not one per message.
            await self._publish(sent)
        except Exception:
            log.exception("trigger timer loop failed; retrying on the next tick")

    def _tick_reads(self) -> tuple[list[dict[str, Any]], list[int]]:
        """Messages recorded but not yet published, and the ready partitions."""
        if self._flow_runner is not None:
            self._flow_runner.reload()  # stored flows changed over the API: taken here
        return self.store.unpublished(), self.ready_partitions()

    def _advance_flows(self, ready: Sequence[int]) -> list[dict[str, Any]]:
        """Flows of caught-up partitions, advanced to now; their messages, recorded first
        (the outbox), for the topic."""
        assert self.flows is not None
        now_ms = _now_ms()
        write = self.flows.advance_due(ready, now_ms)
        if not write:
            return []
        self.store.save_flows(write)
        if self._lateness is not None:
            for message, _ in write.sends:
                self._lateness(max(0.0, now_ms / 1000 - message["due_ts"]))
        return [message for message, _ in write.sends]

    def _partition_of(self, customer_key: str) -> int | None:
        return self.store.partition_of(customer_key)

    async def _publish(self, triggers: list[dict[str, Any]]) -> None:
        # Recorded first, published second, marked third: a crash in between
        # republishes (the outbox below), and the outreach agent keys
        # deliveries by trigger id, so a second copy delivers nothing twice.
        if not triggers:
            return
        pending = [
            await self.triggers_topic.send(
                key=str(trigger["customer_id"]).encode(), value=orjson.dumps(trigger)
            )
            for trigger in triggers
        ]
        await asyncio.gather(*pending)
        ids = [str(trigger["trigger_id"]) for trigger in triggers]
        await asyncio.to_thread(self.store.mark_published, ids)

    # --- delivering ---------------------------------------------------------------------

    async def _outreach_agent(self, stream: faust.StreamT[bytes]) -> None:
        await self.batches.run(stream, "outreach", self._outreach_batch)

    async def _outreach_batch(self, events: Sequence[EventT]) -> None:
        for partition, records in by_partition(events).items():
            await asyncio.to_thread(self._plan_deliveries, partition, records)

    def _plan_deliveries(self, partition: int, records: list[tuple[int, bytes]]) -> None:
        source, fresh = self._unconsumed(self.settings.triggers_topic, partition, records)
        if not fresh:
            return
        endpoints = self.store.endpoints()
        planned: list[tuple[str, list[tuple[str, str, str]]]] = []
        for offset, value in fresh:
            try:
                trigger = orjson.loads(value)
                trigger_id, rule_id = str(trigger["trigger_id"]), str(trigger["rule"])
                channels = trigger.get("channels", ["webhook"])
            except (ValueError, TypeError, KeyError):
                log.warning("not a trigger at %s (partition %s); skipped", offset, partition)
                continue
            planned.append((trigger_id, self._targets(rule_id, channels, trigger, endpoints)))
        # The whole batch and its consumed position in one transaction.
        self.store.add_deliveries(planned, source, fresh[-1][0] + 1)

    def delivery_targets(
        self, rule_id: str, channels: Sequence[str], message: dict[str, Any]
    ) -> list[tuple[str, str, str]]:
        """A flow message's deliveries to the endpoints subscribed now (and e-mail)."""
        return self._targets(rule_id, channels, message, self.store.endpoints())

    def _targets(
        self,
        rule_id: str,
        channels: Sequence[str],
        trigger: dict[str, Any],
        endpoints: Sequence[Endpoint],
    ) -> list[tuple[str, str, str]]:
        """A trigger's deliveries: (endpoint id, channel, initial state)."""
        targets: list[tuple[str, str, str]] = []
        if "webhook" in channels:
            targets += [
                (e.endpoint_id, "webhook", "pending") for e in endpoints if e.wants(rule_id)
            ]
        if "email" in channels:
            # No relay configured, or no address known: recorded, never attempted.
            reachable = self.settings.smtp_host and trigger.get("email")
            targets.append((EMAIL_ENDPOINT, "email", "pending" if reachable else "skipped"))
        return targets

    async def _deliver_due(self, *_: Any) -> None:
        try:
            if self._http is None:
                self._http = httpx.AsyncClient()
            lease = self.settings.outreach_timeout_s + DELIVERY_LEASE_MARGIN_S
            limit = max(0, self.settings.outreach_concurrency - len(self._in_flight))
            if not limit:
                return
            claimed, endpoints = await asyncio.to_thread(self._claim_due, lease, limit)
            for delivery in claimed:
                task = asyncio.ensure_future(self._attempt(delivery, endpoints))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        except Exception:
            log.exception("delivery loop failed; retrying on the next tick")

    def _claim_due(self, lease: float, limit: int) -> tuple[list[Delivery], dict[str, Endpoint]]:
        claimed = self.store.claim_due_deliveries(time.time(), lease, limit)
        endpoints = {e.endpoint_id: e for e in self.store.endpoints()} if claimed else {}
        return claimed, endpoints

    async def _attempt(self, delivery: Delivery, endpoints: dict[str, Endpoint]) -> None:
        try:
            if delivery.body is None:
                await asyncio.to_thread(
                    self.store.record_attempt, delivery, "dead", "trigger not found"
                )
                return
            trigger = orjson.loads(delivery.body)
            if self._vault is not None:
                # Opened only now, for this attempt: stored and published sealed.
                trigger = await asyncio.to_thread(self._vault.open_tree, trigger)
            if self._unsubscribe_url is not None:
                customer = str(trigger.get("customer_id", ""))
                trigger["unsubscribe_url"] = self._unsubscribe_url(customer, delivery.channel)
            if trigger.get("trigger") == "flow":
                # A flow's message is rendered only now, from its opened variables.
                try:
                    if self.flows is None:
                        raise RenderFailed("flows do not run in this worker any more")
                    trigger = self.flows.rendered(trigger)
                except RenderFailed as error:
                    failed = f"template: {error}"
                    await asyncio.to_thread(self.store.record_attempt, delivery, "dead", failed)
                    return
            outcome = await self._send(delivery, trigger, endpoints.get(delivery.endpoint_id))
            await self._record(delivery, trigger, outcome)
        except Exception:
            log.exception("delivery of %s to %s failed", delivery.trigger_id, delivery.endpoint_id)

    async def _send(
        self, delivery: Delivery, trigger: dict[str, Any], endpoint: Endpoint | None
    ) -> Attempt:
        settings = self.settings
        if delivery.channel == "email":
            return await send_email(
                settings.smtp_host,
                settings.smtp_port,
                settings.smtp_sender,
                trigger,
                settings.outreach_timeout_s,
            )
        if endpoint is None:
            return Attempt(False, False, "the endpoint was removed")
        assert self._http is not None
        return await post_webhook(
            self._http,
            endpoint.url,
            endpoint.secret,
            trigger,
            delivery.attempts + 1,
            settings.outreach_timeout_s,
        )

    async def _record(self, delivery: Delivery, trigger: dict[str, Any], outcome: Attempt) -> None:
        settings = self.settings
        if outcome.ok:
            await asyncio.to_thread(self.store.record_attempt, delivery, "delivered", None)
            return
        backoff = retry_delay(
            delivery.attempts,
            settings.outreach_backoff_base_s,
            settings.outreach_backoff_max_s,
            outcome.retry_after_s,
        )
        horizon = delivery.created_ts + settings.outreach_retry_horizon_s
        next_attempt = time.time() + backoff
        if outcome.retryable and next_attempt <= horizon:
            await asyncio.to_thread(
                self.store.record_attempt, delivery, "pending", outcome.error, next_attempt
            )
            return
        # Out of retries (or a refusal no retry will change): dead letter, then mark dead,
        # so a crash in between retries rather than loses the dead letter.
        letter = {
            "dead_at": datetime.now(UTC).isoformat(),
            "trigger_id": delivery.trigger_id,
            "endpoint_id": delivery.endpoint_id,
            "channel": delivery.channel,
            "attempts": delivery.attempts + 1,
            "last_error": outcome.error,
            "trigger": trigger,
        }
        sent = await self.dlq_topic.send(
            key=delivery.trigger_id.encode(), value=orjson.dumps(letter)
        )
        await sent
        await asyncio.to_thread(self.store.record_attempt, delivery, "dead", outcome.error)
        log.warning(
            "trigger %s to %s dead-lettered after %d attempts: %s",
            delivery.trigger_id,
            delivery.endpoint_id,
            delivery.attempts + 1,
            outcome.error,
        )

    async def close(self) -> None:
        """Let attempts in flight finish, then close the HTTP client."""
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=self.settings.outreach_timeout_s)
        if self._http is not None:
            await self._http.aclose()


def _now_ms() -> int:
    return int(time.time() * 1000)


def retry_delay(
    attempts_before: int, base_s: float, max_s: float, retry_after_s: float | None
) -> float:
    """Exponential backoff with full jitter; a receiver's Retry-After is a floor."""
    ceiling = min(max_s, base_s * (2**attempts_before))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_s))
    return delay


def traits_input(value: bytes) -> tuple[str, TraitsInput] | None:
    """A ``TraitsChanged`` record of ``journey.segments`` as (customer, input); None for
    any other record (membership changes) or a record that does not parse."""
    try:
        record = orjson.loads(value)
        if record.get("type") != "TraitsChanged":
            return None
        key, values = str(record["customer_key"]), record["traits"]
        at_ms, event_id = int(record["at_ms"]), str(record.get("event_id") or "")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not isinstance(values, dict):
        return None
    return key, TraitsInput(event_id, at_ms, values)
