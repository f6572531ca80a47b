"""The embedded broker's resident memory under sustained load, with retention set.

    python -m bench.broker_memory --events 2000000   # the issue's size (about a minute)
    python -m bench.broker_memory --events 3000      # tiny, as the test suite runs it
    python -m bench.broker_memory --stack --events 2000000 --max-rss-mib 256
                                                     # through `journeys up`, rolled

Starts the embedded broker (Tansu, ``memory://``) as ``journeys up`` does, creates
the events topic with the platform's configuration and a short retention
(``--retention-s``, ``--retention-mib`` per partition, small segments), and produces
storefront events through a raw librdkafka producer (acks=all) as fast as the
broker takes them. Every ``--events / --samples`` events it prints the broker's
RSS beside the bytes produced so far (keys and values, the raw size the broker
must hold at the least) and the RSS growth per byte produced, and the run's
produce rate. Then it checks what could
bound the memory, each beside the RSS it leaves:

- time and size retention: waits past ``--retention-s`` and reads the earliest
  offset still served (0: nothing was deleted);
- DeleteRecords (what an explicit trim past processed positions would send);
- deleting the topic;
- a new broker (what ``journeys up`` does after a broker crash: a new epoch), whose
  RSS with the same topics is the floor.

With ``--stack`` it runs ``journeys up`` instead (gateway, journal, worker, the
supervisor's broker roll at ``--max-rss-mib``, draining for at most
``--drain-s``) and sends storefront calls to
``/v1/batch`` (100 a request) from ``--senders`` SDK-like threads that re-send until
they get a 200; it prints the broker's RSS beside the events acknowledged and the
bytes sent, the rolls so far, and at the end the highest RSS seen, the sender's
longest wait for a 200 and the ingest rate.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from aiokafka.structs import TopicPartition as AioTopicPartition
from confluent_kafka import KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.run import storefront_events
from bench.stack_load import RunningStack, Senders, journeys_up, stack_env
from stack.broker import EmbeddedBroker
from stack.processes import free_port, rss_mib
from stack.settings import Settings
from streams.outcomes import keyed_producer_config
from streams.topics import ensure_topics

MIB = 1024 * 1024
# Longer than the supervisor's RSS check interval (stack/cli.py: BROKER_RSS_CHECK_S).
SETTLE_S = 5.0
# A roll begun by then is waited for (a standby node and a broker start, the node
# drains): on a loaded machine it outlasts the settle, and would go uncounted.
ROLL_WAIT_S = 120.0
# Distinct storefront events cycled with a fresh id each: realistic sizes and keys
# without the load generator's own cost in the measurement.
DISTINCT_EVENTS = 5_000


def earliest_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """The first offset the broker still serves in each partition (ListOffsets earliest)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def read() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            wanted = [AioTopicPartition(topic, p) for p in range(partitions)]
            offsets = await consumer.beginning_offsets(wanted)
            return {tp.partition: offset for tp, offset in offsets.items()}
        finally:
            await consumer.stop()

    return asyncio.run(read())


def topic_settings(args: argparse.Namespace, topic_prefix: str) -> tuple[Settings, dict[str, str]]:
    settings = Settings(topic_prefix=topic_prefix, topic_partitions=args.partitions)
    config = dict(settings.topic_configs[settings.events_topic])
    config.update(
        {
            "retention.ms": str(int(args.retention_s * 1000)),
            "retention.bytes": str(args.retention_mib * MIB),
            "segment.ms": str(int(args.retention_s * 1000)),
            "segment.bytes": str(max(1, args.retention_mib // 4) * MIB),
        }
    )
    return settings, config


def start_broker(folder: Path, name: str) -> EmbeddedBroker:
    broker = EmbeddedBroker(folder / f"{name}.log")
    broker.start()
    return broker


def produce(args: argparse.Namespace, broker: EmbeddedBroker, topic: str, idle: float) -> None:
    """Produce ``args.events`` events; print RSS beside the bytes produced at each sample."""
    assert broker.process is not None
    pid = broker.process.pid
    base = storefront_events(min(DISTINCT_EVENTS, args.events), seed=7)
    producer = Producer(
        {**keyed_producer_config(broker.bootstrap_servers), "linger.ms": 5}
        | {"queue.buffering.max.messages": 500_000}
    )
    every = max(1, args.events // args.samples)
    produced_bytes = 0
    failures: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    print(f"{'events':>12} {'MiB produced':>13} {'broker RSS MiB':>15} {'growth / produced':>18}")
    started = time.perf_counter()
    for index, (key, value) in enumerate(itertools.islice(itertools.cycle(base), args.events)):
        # A fresh id per record, the same length, so no two records are alike.
        value = value.replace(b'"event_id":"', b'"event_id":"%012d-' % index, 1)
        while True:
            try:
                producer.produce(topic, value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.01)
        produced_bytes += len(key) + len(value)
        if (index + 1) % every == 0 or index + 1 == args.events:
            producer.flush(120)
            rss = rss_mib(pid)
            mib = produced_bytes / MIB
            growth = (rss - idle) / mib
            print(f"{index + 1:>12,} {mib:>13,.1f} {rss:>15,.1f} {growth:>18.2f}", flush=True)
    if producer.flush(120):
        raise RuntimeError("events not acknowledged")
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} produce failures, first: {failures[0]}")
    print(
        f"produced {args.events:,} events ({produced_bytes / MIB:,.1f} MiB) "
        f"at {args.events / elapsed:,.0f} events/s, acks=all"
    )


def through_stack(args: argparse.Namespace) -> int:
    """``journeys up`` under sustained load: the broker's RSS, bounded by the roll."""
    folder = Path(tempfile.mkdtemp(prefix="bench-broker-roll-"))
    env = stack_env(
        free_port(),
        JOURNEYS_BROKER_MAX_RSS_MIB=str(args.max_rss_mib),
        JOURNEYS_BROKER_ROLL_DRAIN_S=str(args.drain_s),
        JOURNEYS_INGEST_RATE_PER_S="0",
        # The backlog the worker may fall behind by (else 503): it must fit well under
        # the bound, as the defaults' 1M events (~1.2 GiB) do under 2 GiB, or each roll's
        # replay carries more than the bound into the next broker.
        JOURNEYS_INGEST_MAX_LAG_EVENTS=str(args.max_lag_events),
        JOURNEYS_TOPIC_PARTITIONS=str(args.partitions),
    )
    with journeys_up(folder, env) as stack:
        return _drive(args, stack)


def _broker_pid(up: subprocess.Popen[bytes]) -> int | None:
    for child in psutil.Process(up.pid).children(recursive=True):
        try:
            if "tansu" in " ".join(child.cmdline()):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    return None


def _rolling(stack: RunningStack) -> bool:
    """A broker roll the supervisor began has not ended (rolled, or given up)."""
    said = stack.output.read_text(errors="replace")
    return said.count("): rolling it") > said.count("broker rolled") + said.count("not rolling now")


def _drive(args: argparse.Namespace, stack: RunningStack) -> int:
    senders = Senders(stack, args.events, args.senders, seed=11)
    started = time.perf_counter()
    senders.start()
    every = max(1, args.events // args.samples)
    peak = 0.0
    printed = 0
    print(
        f"journeys up, JOURNEYS_BROKER_MAX_RSS_MIB={args.max_rss_mib}, "
        f"JOURNEYS_BROKER_ROLL_DRAIN_S={args.drain_s:g}, "
        f"JOURNEYS_INGEST_MAX_LAG_EVENTS={args.max_lag_events}, {args.senders} senders"
    )
    print(f"{'events acked':>12} {'MiB sent':>9} {'broker RSS MiB':>15} {'rolls':>6}")
    settled: float | None = None
    finished = started
    while True:
        # Sampled a little past the last 200, so a roll the load called for is seen,
        # and until a roll under way has ended.
        if settled is None and not senders.alive():
            settled = time.monotonic() + SETTLE_S
            finished = time.perf_counter()
        alive = (
            settled is None
            or time.monotonic() < settled
            or (_rolling(stack) and time.monotonic() < settled + ROLL_WAIT_S)
        )
        pid = _broker_pid(stack.process)
        rss = rss_mib(pid) if pid else 0.0
        peak = max(peak, rss)
        with senders.lock:
            acked, sent = senders.acked, senders.bytes
        if acked - printed >= every or not alive:
            printed = acked
            rolls = stack.output.read_text(errors="replace").count("broker rolled")
            print(f"{acked:>12,} {sent / MIB:>9,.1f} {rss:>15,.1f} {rolls:>6}", flush=True)
        if not alive:
            break
        time.sleep(0.5)
    elapsed = finished - started
    rolls = stack.output.read_text(errors="replace").count("broker rolled")
    print(
        f"acknowledged {senders.acked:,} events in {elapsed:,.0f} s "
        f"({senders.acked / elapsed:,.0f} events/s, rolls included); broker RSS peak "
        f"{peak:,.1f} MiB (bound {args.max_rss_mib} MiB, sampled every 0.5 s); {rolls} rolls; "
        f"longest wait for a 200: {senders.longest:.1f} s"
    )
    for line in stack.output.read_text(errors="replace").splitlines():
        if line.startswith("broker rolled"):
            print(f"  {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--retention-s", type=float, default=10.0)
    parser.add_argument("--retention-mib", type=int, default=16)
    parser.add_argument("--stack", action="store_true", help="through `journeys up`")
    parser.add_argument("--max-rss-mib", type=int, default=256)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--drain-s", type=float, default=Settings().broker_roll_drain_s)
    parser.add_argument("--max-lag-events", type=int, default=100_000)
    args = parser.parse_args(argv)
    if args.stack:
        return through_stack(args)

    folder = Path(tempfile.mkdtemp(prefix="bench-broker-memory-"))
    prefix = f"bench{int(time.time())}"
    settings, config = topic_settings(args, prefix)
    topic = settings.events_topic
    broker = start_broker(folder, "broker")
    try:
        assert broker.process is not None
        pid = broker.process.pid
        ensure_topics(broker.bootstrap_servers, [topic], args.partitions, 1, {topic: config})
        idle = rss_mib(pid)
        print(
            f"Tansu memory://, topic {topic}: {args.partitions} partitions, retention.ms "
            f"{config['retention.ms']}, retention.bytes {config['retention.bytes']} per partition"
        )
        print(f"broker RSS, idle with the topic:            {idle:,.1f} MiB")
        produce(args, broker, topic, idle)
        loaded = rss_mib(pid)

        time.sleep(args.retention_s + 5)
        earliest = earliest_offsets(broker.bootstrap_servers, topic, args.partitions)
        after_retention = rss_mib(pid)
        kept = "nothing deleted" if not any(earliest.values()) else "records deleted"
        print(
            f"after retention.ms passed (+5 s):           {after_retention:,.1f} MiB; "
            f"earliest offsets {sorted(earliest.items())} ({kept})"
        )

        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        try:
            futures = admin.delete_records(
                [TopicPartition(topic, p, 1) for p in range(args.partitions)],
                request_timeout=10,
            )
            for future in futures.values():
                future.result(timeout=15)
            outcome = "accepted"
        except KafkaException as error:
            outcome = f"failed: {error.args[0].str()}"
        alive = broker.process.poll() is None
        print(
            f"DeleteRecords (offset 1 of each partition): {outcome}; broker "
            f"{'still running' if alive else 'exited'}, RSS "
            f"{rss_mib(pid) if alive else 0:,.1f} MiB"
        )
        if alive:
            for future in admin.delete_topics([topic], operation_timeout=10).values():
                future.result(timeout=15)
            time.sleep(2)
            print(f"after deleting the topic (+2 s):            {rss_mib(pid):,.1f} MiB")
    finally:
        broker.stop()

    fresh = start_broker(folder, "fresh")
    try:
        assert fresh.process is not None
        ensure_topics(fresh.bootstrap_servers, [topic], args.partitions, 1, {topic: config})
        print(
            f"a new broker (new epoch), idle with the topic: {rss_mib(fresh.process.pid):,.1f} MiB"
        )
    finally:
        fresh.stop()
    print(f"peak while loaded: {loaded:,.1f} MiB; idle floor {idle:,.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
