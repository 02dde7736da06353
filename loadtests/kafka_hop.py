"""The floor under the md.in append -> aggregator publish hop: how long Kafka itself takes.

``python -m loadtests.kafka_hop [--mode roundtrip|input|ack] [--duration 15]
[--client aiokafka|librdkafka]``

Why: that hop is the largest of `bench_e2e`'s on a slow host (docs/benchmarks.md "seventh
session"), and it holds three things: the broker's produce and fetch path, the source's burst
reaching the leader, and the leader's apply. Two probes split them, with the stack running:

- ``roundtrip``: one producer and one consumer (the platform's own settings, ``core.kafka``) in
  this process, one small record every 20 ms to a topic of its own (``bench.hop.<run>``,
  deleted at exit): send -> receipt, ``perf_counter``, the broker's part alone;
- ``input``: a consumer of ``<prefix>.in`` from its end, as the leader reads it: receipt minus
  each record's append timestamp (milliseconds: Kafka's resolution), the source's records as
  they arrive, without the leader's work;
- ``ack``: the source's side of the source feed, which pushes a record to the leader once Kafka
  acknowledged it: three records (``--size`` bytes each, one per partition) every 20 ms, as the
  simulator's tick sends them, idempotent with ``acks=all``; send -> acknowledgement in the
  event loop. ``--client librdkafka`` does the same with confluent-kafka (its delivery callback
  handed to the loop), to tell the client library from the broker (docs/benchmarks.md
  "eleventh session": 1.2-1.4 ms either way with the stack running, 1.0-1.1 ms without).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import uvloop
from aiokafka import TopicPartition

from core.kafka import delete_prefix_topics, make_consumer, make_producer, partitions_of
from core.kafka_auth import kafka_security_options, rdkafka_security_config
from core.settings import Settings
from core.topics import Topics
from loadtests.fanout_stats import percentiles

PCTS = (50.0, 90.0, 99.0)


def report(name: str, ms: Sequence[float]) -> str:
    if not ms:
        return f"{name}: no records"
    p = percentiles([round(x * 1000) for x in ms], (*PCTS, 100))  # in µs, nearest rank
    cells = " ".join(f"p{k:g} {p[f'p{k:g}'] / 1000:.2f} ms" for k in PCTS)
    return f"{name}: n={len(ms)} {cells} max {p['max'] / 1000:.2f} ms"


async def roundtrip(s: Settings, duration: float, interval: float = 0.02) -> list[float]:
    run = replace(s, topic_prefix=f"bench.hop.{uuid.uuid4().hex[:8]}")
    topic = f"{run.topic_prefix}.probe"
    producer = make_producer(run)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"-1", partition=0)  # creates the topic
        consumer = make_consumer(run, group_id=None)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_end(tp)
            sent: dict[int, float] = {}
            got: list[float] = []

            async def produce() -> None:
                i = 0
                end = time.monotonic() + duration
                while time.monotonic() < end:
                    sent[i] = time.perf_counter()
                    await producer.send(topic, str(i).encode(), partition=0)
                    i += 1
                    await asyncio.sleep(interval)

            task = asyncio.create_task(produce())
            while not task.done() or len(got) < len(sent):
                batch = await consumer.getmany(timeout_ms=500)
                now = time.perf_counter()
                for recs in batch.values():
                    for r in recs:
                        i = int(r.value or b"-1")
                        if i in sent:
                            got.append((now - sent[i]) * 1000)
                if task.done() and not batch:
                    break
            return got
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
        await delete_prefix_topics(run)


async def input_lag(s: Settings, duration: float) -> list[float]:
    topic = Topics.from_settings(s).input
    consumer = make_consumer(s, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        got: list[float] = []
        end = time.monotonic() + duration
        while time.monotonic() < end:
            batch = await consumer.getmany(timeout_ms=500)
            now_ms = time.time() * 1000
            got += [now_ms - r.timestamp for recs in batch.values() for r in recs]
        return got
    finally:
        await consumer.stop()


async def acks(
    s: Settings,
    duration: float,
    *,
    partitions: int = 3,
    size: int = 3000,
    client: str = "aiokafka",
    interval: float = 0.02,
) -> list[float]:
    """Send -> acknowledgement, ms, of ``partitions`` records every ``interval``."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    run = replace(s, topic_prefix=f"bench.hop.{uuid.uuid4().hex[:8]}")
    topic = f"{run.topic_prefix}.ack"
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, **kafka_security_options(s))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    loop = asyncio.get_running_loop()
    value = os.urandom(size)
    got: list[float] = []

    def done(t0: float) -> None:
        got.append((time.perf_counter() - t0) * 1000)

    try:
        if client == "aiokafka":
            producer = make_producer(run)
            await producer.start()
            try:
                for p in range(partitions):  # metadata and connections before the clock runs
                    await producer.send_and_wait(topic, b"warm", partition=p)
                end = time.monotonic() + duration
                while time.monotonic() < end:
                    for p in range(partitions):
                        t0 = time.perf_counter()
                        fut = await producer.send(topic, value, partition=p)
                        fut.add_done_callback(lambda _f, t0=t0: done(t0))
                    await asyncio.sleep(interval)
                await producer.flush()
            finally:
                await producer.stop()
        else:
            from confluent_kafka import Producer

            rd = Producer(
                {
                    "bootstrap.servers": s.kafka_bootstrap,
                    "acks": "all",
                    "enable.idempotence": True,
                    "linger.ms": 0,
                    **rdkafka_security_config(s),
                }
            )
            stop = threading.Event()

            def poll() -> None:
                while not stop.is_set():
                    rd.poll(0.05)

            def delivered(t0: float, _err: object, _msg: object) -> None:
                loop.call_soon_threadsafe(done, t0)  # librdkafka's thread: to the loop

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            try:
                for p in range(partitions):
                    rd.produce(topic, b"warm", partition=p)
                await asyncio.to_thread(rd.flush, 10)
                end = time.monotonic() + duration
                while time.monotonic() < end:
                    for p in range(partitions):
                        t0 = time.perf_counter()
                        rd.produce(
                            topic,
                            value,
                            partition=p,
                            on_delivery=partial(delivered, t0),
                        )
                    await asyncio.sleep(interval)
                await asyncio.to_thread(rd.flush, 10)
                await asyncio.sleep(0.05)  # the last callbacks reach the loop
            finally:
                stop.set()
                poller.join(1)
        return got
    finally:
        await delete_prefix_topics(run)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("roundtrip", "input", "both", "ack"), default="both")
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--client", choices=("aiokafka", "librdkafka"), default="aiokafka")
    ap.add_argument("--partitions", type=int, default=3, help="ack: records per tick")
    ap.add_argument("--size", type=int, default=3000, help="ack: bytes per record")
    args = ap.parse_args(argv)
    s = Settings.from_env()
    if args.mode == "ack":
        got = uvloop.run(
            acks(s, args.duration, partitions=args.partitions, size=args.size, client=args.client)
        )
        print(report(f"send -> acknowledgement, {args.client}", got))
        return
    if args.mode in ("roundtrip", "both"):
        print(report("produce -> consume, one process", uvloop.run(roundtrip(s, args.duration))))
    if args.mode in ("input", "both"):
        print(report("md.in append -> plain consumer", uvloop.run(input_lag(s, args.duration))))


if __name__ == "__main__":
    main()
