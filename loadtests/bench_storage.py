"""Storage writer benchmark: trades ingested per second, Kafka -> PostgreSQL.

    .venv/bin/python -m loadtests.bench_storage [--trades 200000] [--batch 5000] [--writers 1]

Isolated like a test: its own topics (3 partitions) and a fresh database (dropped afterwards).
Produces ``--trades`` trade messages (docs/aggregator.md shape) over 3 symbols, then starts
``--writers`` database writers in one consumer group and measures from the first fetched record
to the last trade committed. A second figure writes the same rows straight from memory (no
Kafka, no JSON): the database path's own ceiling. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
import uuid

import asyncpg

from core.codec import now_ns
from core.kafka import ensure_topics, make_producer
from core.settings import Settings
from core.topics import Topics
from storage import testing as T
from storage.db_rows import RowBatch, RowBuilder
from storage.db_writer import DbWriter, DbWriterConfig
from storage.migrate import migrate

SYMBOLS = ("BTC-USD", "ETH-USD", "LTC-USD")


async def produce(s: Settings, n: int) -> float:
    p = make_producer(s, linger_ms=20)
    await p.start()
    topic = Topics.from_settings(s).stream("trades")
    t0 = time.perf_counter()
    base = now_ns()
    try:
        futs = []
        for i in range(n):
            sym = SYMBOLS[i % 3]
            v = T.trade(
                sym,
                i // 3 + 1,
                f"b{i}",
                f"{50000 + i % 100}.25",
                "0.0100",
                "buy" if i % 2 else "sell",
                ts_ns=base + i * 1000,
            )
            futs.append(await p.send(topic, value=v, key=sym.encode()))
            if len(futs) >= 20000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
    finally:
        await p.stop()
    return n / (time.perf_counter() - t0)


async def run_writers(s: Settings, n: int, batch: int, writers: int) -> tuple[float, DbWriter]:
    group = f"{s.topic_prefix}.bench"
    ws = [DbWriter(s, DbWriterConfig(group_id=group, batch_records=batch)) for _ in range(writers)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in ws]
    while True:  # start the clock at the first fetched batch
        if any(w.counters.records or w.queue.qsize() for w in ws):
            break
        await asyncio.sleep(0.001)
    t0 = time.perf_counter()
    while sum(w.counters.trades_inserted for w in ws) < n:
        for t in tasks:
            if t.done():
                t.result()
        await asyncio.sleep(0.005)
    rate = n / (time.perf_counter() - t0)
    stop.set()
    await asyncio.gather(*tasks)
    return rate, ws[0]


async def db_only(s: Settings, n: int, batch: int) -> float:
    """Rows built in memory, written by the writer's transaction code: the database ceiling."""
    w = DbWriter(s, DbWriterConfig(group_id="unused", batch_records=batch))
    rb = RowBuilder(snapshot_topic="x")
    base = now_ns() + 10**12
    batches = []
    for start in range(0, n, batch):
        b = RowBatch()
        for i in range(start, min(n, start + batch)):
            sym = SYMBOLS[i % 3]
            rb.add(
                b,
                "t",
                0,
                i,
                None,
                T.trade(sym, i + 1, f"m{i}", "50000.25", "0.0100", ts_ns=base + i * 1000),
            )
        batches.append(b)
    t0 = time.perf_counter()
    for b in batches:
        await w.write(b)
    rate = n / (time.perf_counter() - t0)
    if w._pool is not None:  # noqa: SLF001
        await w._pool.close()  # noqa: SLF001
    return rate


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trades", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--writers", type=int, default=1)
    args = ap.parse_args()
    base = Settings.from_env()
    tag = uuid.uuid4().hex[:8]
    db = f"bench_{tag}"
    admin = base.pg_dsn.rsplit("/", 1)[0] + "/postgres"
    c = await asyncpg.connect(admin)
    await c.execute(f'CREATE DATABASE "{db}"')
    await c.close()
    s = dataclasses.replace(
        base,
        topic_prefix=f"bench.{tag}",
        redis_prefix=f"bench:{tag}",
        pg_dsn=base.pg_dsn.rsplit("/", 1)[0] + f"/{db}",
    )
    try:
        await migrate(s.pg_dsn)
        await ensure_topics(s, partitions=3)
        prod = await produce(s, args.trades)
        print(f"produced {args.trades} trades at {prod:.0f}/s", file=sys.stderr)
        rate, w = await run_writers(s, args.trades, args.batch, args.writers)
        print(f"kafka -> db: {rate:.0f} trades/s ({w.counters})", file=sys.stderr)
        ceiling = await db_only(s, min(args.trades, 100_000), args.batch)
        print(f"db only: {ceiling:.0f} trades/s", file=sys.stderr)
        print("\n| path | trades/s |\n| --- | --- |")
        print(
            f"| Kafka -> writer -> PostgreSQL ({args.writers} writer, batch {args.batch}) | {rate:.0f} |"
        )
        print(f"| rows from memory -> PostgreSQL (COPY + INSERT ON CONFLICT) | {ceiling:.0f} |")
        print(f"| (producing the input, for reference) | {prod:.0f} |")
    finally:
        c = await asyncpg.connect(admin)
        await c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await c.close()


if __name__ == "__main__":
    asyncio.run(main())
