"""Storage ingest benchmark: rows per second Kafka -> database, beside raw COPY of the same rows.

    flock /tmp/md-bench.lock .venv/bin/python -m loadtests.bench_storage \
        [--rows 300000] [--batch 5000] [--writers 2] [--kinds trades,book]

Isolated like a test: its own topics (6 partitions) and a fresh database (the default backend:
TimescaleDB where it is preloaded; dropped afterwards). For each kind it produces ``--rows``
messages (docs/aggregator.md shapes, 3 symbols):

- ``trades``: ``trade`` messages -> the ``trades`` table (and, with the default
  ``MD_STORAGE_HISTORY_CHANNELS``, each message kept whole in ``stream_messages`` for replay);
- ``book``: ``l2_update`` messages -> ``stream_messages``.

Then ``--writers`` database writer *processes* (``storage/db_writer.py``, one consumer group)
consume them; the clock runs from the first record fetched to the last row committed. Beside it,
in the same run, the same rows written from memory with one raw asyncpg COPY per batch into a
fresh table of the same schema (no Kafka, no JSON, no conflict handling), over as many
connections as writer processes: the ceiling. Prints a
Markdown table. Last, the query side: a day of one symbol's trades read through the REST app
(p50/p99, before and after TimescaleDB compresses the day).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing as mp
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from core.codec import now_ns
from core.kafka import ensure_topics, make_producer
from core.settings import Settings
from core.topics import Topics
from storage.migrate import migrate
from testkit import fake_aggregator as T

SYMBOLS = ("BTC-USD", "ETH-USD", "LTC-USD")
KINDS = {"trades": "trades", "book": "l2"}  # kind -> channel


def message(kind: str, i: int, base: int) -> tuple[str, bytes]:
    sym = SYMBOLS[i % 3]
    seq = i // 3 + 1
    ts = base + i * 1000
    if kind == "trades":
        side = "buy" if i % 2 else "sell"
        return sym, T.trade(sym, seq, f"b{i}", f"{50000 + i % 100}.25", "0.0100", side, ts_ns=ts)
    changes = [["buy", f"{50000 + i % 50}.10", f"{i % 7}.5000"], ["sell", "50101.00", "0"]]
    return sym, T.l2_update(sym, seq, changes, ts_ns=ts, checksum=123456789)


async def produce(s: Settings, kind: str, n: int, base: int) -> float:
    p = make_producer(s, linger_ms=20)
    await p.start()
    topic = Topics.from_settings(s).stream(KINDS[kind])
    t0 = time.perf_counter()
    try:
        futs = []
        for i in range(n):
            sym, v = message(kind, i, base)
            futs.append(await p.send(topic, value=v, key=sym.encode()))
            if len(futs) >= 20000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
    finally:
        await p.stop()
    return n / (time.perf_counter() - t0)


def _writer_process(env: dict[str, str], batch: int, rows: Any, first: Any, stop: Any) -> None:
    """One writer process of the consumer group; reports rows written and its first fetch."""
    os.environ.update(env)
    from storage.db_writer import DbWriter, DbWriterConfig

    async def run() -> None:
        s = Settings.from_env()
        w = DbWriter(s, dataclasses.replace(DbWriterConfig.from_settings(s), batch_records=batch))
        halt = asyncio.Event()
        task = asyncio.create_task(w.run(halt))
        while not stop.is_set():
            c = w.counters
            if c.records and not first.value:
                first.value = time.time()
            rows.value = c.trades_inserted + c.messages_inserted
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        halt.set()
        await task

    asyncio.run(run())


def run_writers(s: Settings, group: str, history: str, n_rows: int, batch: int, k: int) -> float:
    env = {
        "MD_TOPIC_PREFIX": s.topic_prefix,
        "MD_PG_DSN": s.pg_dsn,
        "MD_STORAGE_DB_GROUP": group,
        "MD_STORAGE_HISTORY_CHANNELS": history,
        "MD_DB_FETCH_WAIT_MS": "0",
        "MD_LOG_LEVEL": "WARNING",
    }
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    rows = [ctx.Value("q", 0) for _ in range(k)]
    first = [ctx.Value("d", 0.0) for _ in range(k)]
    procs = [
        ctx.Process(target=_writer_process, args=(env, batch, rows[i], first[i], stop))
        for i in range(k)
    ]
    for p in procs:
        p.start()
    try:
        deadline = time.time() + 600
        while sum(r.value for r in rows) < n_rows:
            if any(not p.is_alive() for p in procs):
                raise RuntimeError("a writer process died")
            if time.time() > deadline:
                raise TimeoutError(f"writers stalled at {sum(r.value for r in rows)} rows")
            time.sleep(0.002)
        end = time.time()
        start = min(f.value for f in first if f.value)
    finally:
        stop.set()
        for p in procs:
            p.join(30)
    return n_rows / (end - start)


async def raw_copy(
    s: Settings, kind: str, n: int, batch: int, base: int, connections: int = 1
) -> float:
    """The same rows from memory, one asyncpg COPY per batch into a fresh table like the
    writer's target: what the database takes with no Kafka, no parsing, no conflict check;
    over ``connections`` connections at once (as many as writer processes), each its share."""
    conn = await asyncpg.connect(s.pg_dsn)
    others = [await asyncpg.connect(s.pg_dsn) for _ in range(connections - 1)]
    target = "trades" if kind == "trades" else "stream_messages"
    table = f"ceiling_{kind}"
    try:
        await conn.execute(f"CREATE TABLE {table} (LIKE {target} INCLUDING ALL)")
        if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
            await conn.execute(
                f"SELECT create_hypertable('{table}', 'ts', chunk_time_interval => interval '1 day')"
            )
        e0 = datetime(1970, 1, 1, tzinfo=UTC)
        recs: list[tuple[Any, ...]] = []
        for i in range(n):
            sym, v = message(kind, i + n, base)
            ts = e0 + timedelta(microseconds=(base + (i + n) * 1000) // 1000)
            if kind == "trades":
                recs.append((sym, f"c{i}", ts, Decimal("50000.25"), Decimal("0.0100"), "buy", i, 1))
            else:
                recs.append(("l2", sym, 1, i + 1, ts, v))
        cols = (
            ["symbol", "trade_id", "ts", "price", "size", "side", "seq", "epoch"]
            if kind == "trades"
            else ["channel", "symbol", "epoch", "seq", "ts", "msg"]
        )

        async def copy(c: asyncpg.Connection, part: list[tuple[Any, ...]]) -> None:
            for i in range(0, len(part), batch):
                async with c.transaction():
                    await c.copy_records_to_table(table, records=part[i : i + batch], columns=cols)

        conns = [conn, *others]
        t0 = time.perf_counter()
        await asyncio.gather(*(copy(c, recs[j :: len(conns)]) for j, c in enumerate(conns)))
        return n / (time.perf_counter() - t0)
    finally:
        for c in (conn, *others):
            await c.close()


async def query_latency(s: Settings, n: int, requests: int) -> list[tuple[str, float, float]]:
    """A day of one symbol's trades (``n`` rows, 3 days ago) read through the REST app in
    process (``GET /trades?start=&end=&limit=1000`` at random cursors, the first page
    included), before and after the day's chunk is compressed (TimescaleDB). p50/p99 in ms."""
    import random

    import httpx

    from gateway_rest.app import create_app

    sym = "QRY-USD"
    day = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    conn = await asyncpg.connect(s.pg_dsn)
    try:
        await conn.execute(
            "INSERT INTO symbols (symbol, base, quote, tick_size, min_size, status, source, "
            "channels, seq) VALUES ($1, 'QRY', 'USD', 0.01, 0.0001, 'online', 'bench', "
            "'{trades}', 1) ON CONFLICT DO NOTHING",
            sym,
        )
        step = 86_400_000_000 // n
        recs = [
            (
                sym,
                f"q{i}",
                day + timedelta(microseconds=i * step),
                Decimal("100.25"),
                Decimal("0.5"),
                "buy",
                i + 1,
                1,
            )
            for i in range(n)
        ]
        for i in range(0, n, 50_000):
            await conn.copy_records_to_table(
                "trades",
                records=recs[i : i + 50_000],
                columns=["symbol", "trade_id", "ts", "price", "size", "side", "seq", "epoch"],
            )
        await conn.execute("ANALYZE trades")
        timescale = bool(
            await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
        )
        start = day.isoformat().replace("+00:00", "Z")
        end = (day + timedelta(days=1)).isoformat().replace("+00:00", "Z")
        out: list[tuple[str, float, float]] = []
        rng = random.Random(1)
        for phase in ("uncompressed", "compressed"):
            if phase == "compressed":
                if not timescale:
                    break
                await conn.execute(
                    "SELECT compress_chunk(c) FROM show_chunks('trades', older_than => "
                    "interval '2 days') c"
                )
            app = create_app(s)
            times: list[float] = []
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://bench"
            ) as c:
                url = f"/api/v1/market/{sym}/trades"
                for k in range(requests + 20):
                    params = {"start": start, "end": end, "limit": "1000"}
                    if k % 10:
                        r = recs[rng.randrange(n)]
                        ns = int(r[2].timestamp()) * 1_000_000_000 + r[2].microsecond * 1000
                        params["cursor"] = f"{ns}:{r[1]}"
                    t0 = time.perf_counter()
                    resp = await c.get(url, params=params)
                    dt = time.perf_counter() - t0
                    assert resp.status_code == 200, resp.text
                    if k >= 20:  # warm-up: pool, plans
                        times.append(dt * 1000)
            times.sort()
            out.append((phase, times[len(times) // 2], times[int(len(times) * 0.99) - 1]))
        return out
    finally:
        await conn.close()


async def setup(s: Settings) -> str:
    return (await migrate(s.pg_dsn)).backend


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=300_000, help="messages per kind")
    ap.add_argument("--batch", type=int, default=5000, help="records per fetch = transaction")
    ap.add_argument("--writers", type=int, default=2, help="writer processes (one group)")
    ap.add_argument("--kinds", default="trades,book")
    ap.add_argument("--day-trades", type=int, default=400_000, help="0: no query phase")
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    base_s = Settings.from_env()
    tag = uuid.uuid4().hex[:8]
    db = f"bench_{tag}"
    admin = base_s.pg_dsn.rsplit("/", 1)[0] + "/postgres"

    async def admin_sql(sql: str) -> None:
        c = await asyncpg.connect(admin)
        try:
            await c.execute(sql)
        finally:
            await c.close()

    asyncio.run(admin_sql(f'CREATE DATABASE "{db}"'))
    s = dataclasses.replace(
        base_s,
        topic_prefix=f"bench.{tag}",
        redis_prefix=f"bench:{tag}",
        pg_dsn=base_s.pg_dsn.rsplit("/", 1)[0] + f"/{db}",
    )
    out: list[str] = []
    try:
        backend = asyncio.run(setup(s))
        asyncio.run(ensure_topics(s, partitions=6))
        base = now_ns() - 3600 * 1_000_000_000
        for kind in kinds:
            prod = asyncio.run(produce(s, kind, args.rows, base))
            print(f"produced {args.rows} {kind} messages at {prod:.0f}/s", file=sys.stderr)
            # trades: the default history channels (each trade message kept for replay too)
            history = "l2,l3,trades" if kind == "trades" else "l2,l3"
            rows_per_msg = 2 if kind == "trades" else 1
            rate = run_writers(
                s,
                f"{s.topic_prefix}.{kind}",
                history,
                args.rows * rows_per_msg,
                args.batch,
                args.writers,
            )
            msgs = rate / rows_per_msg
            ceiling = asyncio.run(raw_copy(s, kind, args.rows, args.batch, base, args.writers))
            print(
                f"{kind}: {msgs:.0f} msg/s via Kafka, ceiling {ceiling:.0f} rows/s", file=sys.stderr
            )
            out.append(
                f"| {kind} ({'trade' if kind == 'trades' else 'l2_update'} messages) | "
                f"{msgs:,.0f} | {rate:,.0f} | {ceiling:,.0f} | {msgs / ceiling:.0%} | {prod:,.0f} |"
            )
        print(
            f"\nbackend {backend}, {args.rows} messages per kind, {args.writers} writer "
            f"process(es), ceiling over {args.writers} connection(s), batch {args.batch}, "
            f"load average {os.getloadavg()[0]:.1f}\n"
        )
        print(
            "| kind | messages/s Kafka -> database | rows/s written | raw COPY of the same rows, "
            "rows/s | ratio | produce/s |\n| --- | ---: | ---: | ---: | ---: | ---: |"
        )
        print("\n".join(out))
        if args.day_trades:
            lat = asyncio.run(query_latency(s, args.day_trades, args.requests))
            print(
                f"\nA day of one symbol's trades ({args.day_trades:,} rows), REST in process, "
                f"`trades?start=&end=&limit=1000` at random cursors, {args.requests} requests\n"
            )
            print("| chunk | p50 ms | p99 ms |\n| --- | ---: | ---: |")
            for phase, p50, p99 in lat:
                print(f"| {phase} | {p50:.1f} | {p99:.1f} |")
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        asyncio.run(drop_topics(s))


async def drop_topics(s: Settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(s.topic_prefix + ".")]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


if __name__ == "__main__":
    main()
