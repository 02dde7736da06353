"""What the database writer's Python side costs per message, by Kafka client (issue 13 item 2's
per-core figures): aiokafka's ``getmany`` against confluent-kafka's (librdkafka) batch
``consume``, each alone and with the writer's row building and COPY payload.

    flock /tmp/md-bench.lock .venv/bin/python -m loadtests.bench_storage_consume \
        [--rows 300000] [--kinds trades,book]

Isolated: its own topic per kind (6 partitions, dropped afterwards). ``--rows`` messages
(loadtests/bench_storage.py shapes) are produced first; then each variant reads all of them from
the beginning in one process, and the process CPU time (user + system, librdkafka's threads
included) per message is measured. No database: the database's side is bench_storage's raw
COPY ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import resource
import sys
import time
import uuid
from typing import Any

from aiokafka import TopicPartition

from core.kafka import ensure_topics, make_consumer
from core.settings import Settings
from core.topics import Topics
from loadtests.bench_storage import KINDS, drop_topics, produce
from storage.db_rows import RowBatch, RowBuilder, TradeCopy, messages_copy
from storage.kafka_rd import rd_config


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rows(builder: RowBuilder | None, topic: str, recs: list[tuple[int, int, Any, Any]]) -> None:
    """The writer's per-batch work after the fetch: rows, then the COPY payloads."""
    if builder is None:
        return
    b = RowBatch()
    for part, off, key, value in recs:
        builder.add(b, topic, part, off, key, value)
    if b.messages:
        messages_copy(b.messages)
    if b.trades:
        TradeCopy().build(b.trades)


async def with_aiokafka(s: Settings, topic: str, n: int, build: bool) -> tuple[float, float]:
    c = make_consumer(s, group_id=None, max_partition_fetch_bytes=4 << 20)
    await c.start()
    builder = RowBuilder(snapshot_topic="-") if build else None
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        if not tps:
            await c._client.force_metadata_update()  # noqa: SLF001
            tps = [
                TopicPartition(topic, p)
                for p in sorted(c._client.cluster.partitions_for_topic(topic) or ())  # noqa: SLF001
            ]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        got, c0, t0 = 0, _cpu(), time.perf_counter()
        while got < n:
            batch = await c.getmany(timeout_ms=1000, max_records=5000)
            for tp, recs in batch.items():
                got += len(recs)
                _rows(builder, topic, [(tp.partition, r.offset, r.key, r.value) for r in recs])
        return got / (time.perf_counter() - t0), (_cpu() - c0) / got * 1e6
    finally:
        await c.stop()


def with_confluent(s: Settings, topic: str, n: int, build: bool) -> tuple[float, float]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer
    from confluent_kafka import TopicPartition as RdTp

    conf = rd_config(s, "bench-consume")
    conf["queued.max.messages.kbytes"] = 65536
    c = Consumer(conf)
    builder = RowBuilder(snapshot_topic="-") if build else None
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([RdTp(topic, p, OFFSET_BEGINNING) for p in parts])
        got, c0, t0 = 0, _cpu(), time.perf_counter()
        while got < n:
            msgs = c.consume(5000, 1.0)
            got += len(msgs)
            _rows(
                builder,
                topic,
                [(m.partition() or 0, m.offset() or 0, m.key(), m.value()) for m in msgs],
            )
        return got / (time.perf_counter() - t0), (_cpu() - c0) / got * 1e6
    finally:
        c.close()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=300_000, help="messages per kind")
    ap.add_argument("--kinds", default="trades,book")
    args = ap.parse_args()
    s = dataclasses.replace(Settings.from_env(), topic_prefix=f"bcons.{uuid.uuid4().hex[:8]}")
    out = []
    try:
        asyncio.run(ensure_topics(s, partitions=6))
        base = time.time_ns() - 3600 * 1_000_000_000
        for kind in [k for k in args.kinds.split(",") if k]:
            asyncio.run(produce(s, kind, args.rows, base))
            topic = Topics.from_settings(s).stream(KINDS[kind])
            for build in (False, True):
                what = "fetch + rows + COPY payload" if build else "fetch only"
                rate, us = asyncio.run(with_aiokafka(s, topic, args.rows, build))
                out.append((kind, "aiokafka getmany", what, rate, us))
                rate, us = with_confluent(s, topic, args.rows, build)
                out.append((kind, "confluent-kafka consume", what, rate, us))
    finally:
        asyncio.run(drop_topics(s))
    print(f"\n{args.rows:,} messages per kind, 6 partitions, one process\n")
    print(
        "| kind | client | work | messages/s (wall) | CPU µs per message | messages per core-second |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for kind, client, what, rate, us in out:
        print(f"| {kind} | {client} | {what} | {rate:,.0f} | {us:.1f} | {1e6 / us:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
