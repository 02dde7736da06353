"""Candles: the stored candles table (written from the aggregator's candle stream) against
TimescaleDB continuous aggregates over the trades hypertable (issue 13 item 3).

    flock /tmp/md-bench.lock .venv/bin/python -m loadtests.bench_storage_candles \
        [--trades-per-s 5] [--queries 300]

A fresh TimescaleDB database (dropped afterwards) holds one day of one symbol's trades (yesterday,
``--trades-per-s`` evenly spread, prices a random walk) and, as the database writer stores them,
that day's candles of every interval. Measured on the same data:

- the REST candles query (``core.history.sql.candles_query``, 300 candles from a random start)
  on the candles table, and the same page from a continuous aggregate (``1m`` over trades, ``1h``
  a hierarchical aggregate over the ``1m`` one), materialized; and with real-time aggregation
  (``materialized_only = false``) when the page's last hour is not materialized yet;
- what keeping them costs the database: today's upsert of one second's candle updates at the
  default rate (6 symbols x 6 intervals, ``storage.db_writer.SQL_CANDLES``), against refreshing
  the aggregates' last 2 minutes (what a ``add_continuous_aggregate_policy`` job does each
  minute) and a whole day at once.

Prints Markdown tables (statement wall times on this machine's server; other work shares it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from core.history.sql import candles_query
from storage.db_writer import SQL_CANDLES
from storage.migrate import migrate

SYM = "CA-USD"
INTERVALS = {"1m": "1 minute", "5m": "5 minutes", "15m": "15 minutes", "1h": "1 hour"}
INTERVALS |= {"4h": "4 hours", "1d": "1 day"}

FILL_TRADES = """
INSERT INTO trades (symbol, trade_id, ts, price, size, side, seq, epoch)
SELECT $1, 't' || i, $2::timestamptz + i * $3::interval,
       round((100 + 5 * sin(i / 5000.0) + random())::numeric, 2),
       round((0.01 + random())::numeric, 4), CASE WHEN i % 2 = 0 THEN 'buy' ELSE 'sell' END, i + 1, 1
FROM generate_series(0, $4 - 1) AS i"""

# the candles the database writer would have stored for the day (every interval, closed)
FILL_CANDLES = """
INSERT INTO candles (symbol, interval, bucket, open, high, low, close, volume, trades, closed,
                     seq, epoch, vwap)
SELECT symbol, $2, time_bucket($3::interval, ts) AS b, first(price, ts), max(price), min(price),
       last(price, ts), sum(size), count(*), true, max(seq), 1, sum(price * size) / sum(size)
FROM trades WHERE symbol = $1 GROUP BY symbol, b"""

CAGG_1M = """
CREATE MATERIALIZED VIEW {name} WITH (timescaledb.continuous) AS
SELECT symbol, time_bucket('1 minute', ts) AS bucket, first(price, ts) AS open, max(price) AS high,
       min(price) AS low, last(price, ts) AS close, sum(size) AS volume, count(*) AS trades,
       sum(price * size) AS notional
FROM trades GROUP BY symbol, bucket WITH NO DATA"""
CAGG_1H = """
CREATE MATERIALIZED VIEW candles_1h_cagg WITH (timescaledb.continuous) AS
SELECT symbol, time_bucket('1 hour', bucket) AS bucket, first(open, bucket) AS open,
       max(high) AS high, min(low) AS low, last(close, bucket) AS close, sum(volume) AS volume,
       sum(trades) AS trades, sum(notional) AS notional
FROM candles_1m_cagg GROUP BY symbol, time_bucket('1 hour', bucket) WITH NO DATA"""
CAGG_PAGE = """
SELECT bucket, open, high, low, close, volume, trades, notional / NULLIF(volume, 0) AS vwap
FROM {view} WHERE symbol = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket LIMIT $4"""


async def _timed(n: int, call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """p50, p99 in ms of ``n`` calls."""
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        ts.append((time.perf_counter() - t) * 1000)
    ts.sort()
    return statistics.median(ts), ts[min(len(ts) - 1, int(len(ts) * 0.99))]


async def _once(call: Callable[[], Awaitable[Any]]) -> float:
    t = time.perf_counter()
    await call()
    return (time.perf_counter() - t) * 1000


async def run(dsn: str, per_s: float, queries: int) -> None:
    await migrate(dsn, mode="timescale")
    conn = await asyncpg.connect(dsn)
    try:
        day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        day -= timedelta(days=1)
        n = int(86_400 * per_s)
        fill = await _once(
            lambda: conn.execute(FILL_TRADES, SYM, day, timedelta(seconds=1 / per_s), n)
        )
        for name, width in INTERVALS.items():
            await conn.execute(FILL_CANDLES, SYM, name, timedelta(seconds=_seconds(width)))
        print(f"\n{n:,} trades of {SYM} on {day:%Y-%m-%d} ({per_s:g}/s), filled in {fill:.0f} ms")

        await conn.execute(CAGG_1M.format(name="candles_1m_cagg"))
        await conn.execute(CAGG_1H)
        day_1m = await _once(
            lambda: conn.execute(
                "CALL refresh_continuous_aggregate('candles_1m_cagg', $1::timestamptz, $2::timestamptz)",
                day,
                day + timedelta(days=1),
            )
        )
        day_1h = await _once(
            lambda: conn.execute(
                "CALL refresh_continuous_aggregate('candles_1h_cagg', $1::timestamptz, $2::timestamptz)",
                day,
                day + timedelta(days=1),
            )
        )
        rng = random.Random(7)

        def start(width_s: int) -> datetime:
            return day + timedelta(seconds=width_s * rng.randrange(0, 86_400 // width_s - 300))

        def table_page(interval: str, width_s: int) -> Callable[[], Awaitable[Any]]:
            def call() -> Awaitable[Any]:
                s = start(width_s)
                q, args = candles_query(SYM, interval, _ns(s), _ns(s + timedelta(days=1)), 300)
                return conn.fetch(q, *args)

            return call

        def cagg_page(view: str, width_s: int) -> Callable[[], Awaitable[Any]]:
            def call() -> Awaitable[Any]:
                s = start(width_s)
                return conn.fetch(CAGG_PAGE.format(view=view), SYM, s, s + timedelta(days=1), 300)

            return call

        # 1h pages hold at most 24 candles of the day: the start is any hour
        rows = [
            ("candles table, 1m", await _timed(queries, table_page("1m", 60))),
            (
                "continuous aggregate, 1m (materialized)",
                await _timed(queries, cagg_page("candles_1m_cagg", 60)),
            ),
            ("candles table, 1h", await _timed(queries, table_page("1h", 60))),
            (
                "continuous aggregate, 1h over 1m (materialized)",
                await _timed(queries, cagg_page("candles_1h_cagg", 60)),
            ),
        ]
        # real time: a second 1m aggregate materialized up to the day's last hour only (as
        # between two policy runs): the page's newest 60 candles are computed from trades
        await conn.execute(CAGG_1M.format(name="candles_1m_rt"))
        await conn.execute(
            "ALTER MATERIALIZED VIEW candles_1m_rt SET (timescaledb.materialized_only = false)"
        )
        last = day + timedelta(hours=23)
        await conn.execute(
            "CALL refresh_continuous_aggregate('candles_1m_rt', $1::timestamptz, $2::timestamptz)",
            day,
            last,
        )

        async def realtime() -> Any:
            s = last - timedelta(minutes=240)
            return await conn.fetch(
                CAGG_PAGE.format(view="candles_1m_rt"), SYM, s, s + timedelta(days=1), 300
            )

        rows.append(
            (
                "continuous aggregate, 1m, real time (last 60 of 300 not materialized)",
                await _timed(queries, realtime),
            )
        )
        print("\n| page of 300 candles (REST query, in process, asyncpg) | p50 ms | p99 ms |")
        print("| --- | ---: | ---: |")
        for name, (p50, p99) in rows:
            print(f"| {name} | {p50:.2f} | {p99:.2f} |")

        # write cost: one second of candle updates at the default rate vs a policy refresh
        now_bucket = day + timedelta(hours=12)
        batch = [
            (f"S{i}-USD", iv, now_bucket, 100, 101, 99, 100.5, 3, 7, False, 0, 1, 100.2)
            for i in range(6)
            for iv in INTERVALS
        ]
        cols = [[r[j] for r in batch] for j in range(13)]
        k = [0]

        async def upsert() -> None:
            k[0] += 1
            cols[10] = [k[0]] * len(batch)
            await conn.execute(SQL_CANDLES, *cols)

        up50, up99 = await _timed(200, upsert)
        tail = day + timedelta(hours=20)

        refresh_ms: list[float] = []
        for _ in range(20):
            # new trades in the window invalidate it (as live inserts do); only the refresh is timed
            await conn.execute(
                "UPDATE trades SET size = size WHERE symbol = $1 AND ts >= $2 AND ts < $3",
                SYM,
                tail,
                tail + timedelta(minutes=2),
            )
            refresh_ms.append(
                await _once(
                    lambda: conn.execute(
                        "CALL refresh_continuous_aggregate('candles_1m_cagg', "
                        "$1::timestamptz, $2::timestamptz)",
                        tail,
                        tail + timedelta(minutes=2),
                    )
                )
            )
        refresh_ms.sort()
        rf50, rf99 = statistics.median(refresh_ms), refresh_ms[-1]
        print("\n| keeping candles | p50 ms | p99 ms | how often |")
        print("| --- | ---: | ---: | --- |")
        print(
            f"| upsert of one second's candle updates (36 rows, SQL_CANDLES) | {up50:.2f} | {up99:.2f} | every second (MD_STORAGE_BATCH_MS) |"
        )
        print(
            f"| refresh of the 1m aggregate's last 2 minutes ({int(120 * per_s)} trades; p99: the max of 20) | {rf50:.2f} | {rf99:.2f} | per policy run (per aggregate) |"
        )
        print(
            f"| refresh of a whole day: 1m / 1h over 1m | {day_1m:.0f} / {day_1h:.0f} | | once (backfill) |"
        )
    finally:
        await conn.close()


def _seconds(width: str) -> int:
    n, unit = width.split()
    return int(n) * {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400}[unit]


def _ns(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000


async def _admin(server: str, sql: str) -> None:
    c = await asyncpg.connect(f"{server}/postgres")
    try:
        await c.execute(sql)
    finally:
        await c.close()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trades-per-s", type=float, default=5.0)
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    base = os.environ.get("MD_PG_DSN", "postgresql://postgres@127.0.0.1:15432/marketdata")
    server = base.rsplit("/", 1)[0]
    db = f"bcandles_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(server, f'CREATE DATABASE "{db}"'))
    try:
        asyncio.run(run(f"{server}/{db}", args.trades_per_s, args.queries))
    finally:
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
