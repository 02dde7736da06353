"""What a resume older than the Redis window costs: the database part against the Redis part.

    flock /tmp/md-bench.lock .venv/bin/python -m loadtests.bench_history_resume --messages 30000

A fresh database gets ``--messages`` l2 updates of one symbol stored as the storage writer
stores them (``stream_messages``, binary COPY), Kafka gets the same stream (so the gateway's
follower is at its head), Redis keeps the last ``--window`` of them. One ``python -m gateway_ws``
process (defaults: history pool 2) serves one client that reads as fast as it can, three times:

- ``redis``: ``since_seq`` = head - window: every message from Redis (today's resume);
- ``history+redis``: ``since_seq`` = head - 2 x window: one window from the database, then Redis;
- ``history``: ``since_seq`` = 0: everything before the window from the database.

Prints, per run, messages, wall time, messages/s and the gateway's CPU per message
(``/proc/<pid>/stat`` before and after; the client runs in this process).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from core.codec import now_ns
from core.kafka import ensure_topics, make_producer
from core.settings import Settings
from core.topics import Topics
from gateway_ws.resume import hist_key
from loadtests.fanout import _delete_topics
from loadtests.fanout_abuse import _stop, _wait_healthy
from loadtests.fanout_stats import cpu_seconds
from storage.migrate import migrate
from testkit.fake_aggregator import Platform
from testkit.ports import free_port

SYMBOL = "BTC-USD"


def _stream(n: int, t0: int) -> tuple[bytes, list[bytes]]:
    p = Platform(SYMBOL, 1, t0=t0)
    snap = p.snapshot()
    ups = []
    for i in range(n):
        side = "buy" if i % 2 else "sell"
        px = f"{(99 - i % 10) if side == 'buy' else (101 + i % 10)}.{i % 100:02d}"
        ups.append(p.update([[side, px, str(1 + i % 3) if i % 5 else "0"]]))
    return snap, ups


async def _store(dsn: str, ups: list[bytes]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = []
        for raw in ups:
            m = orjson.loads(raw)
            ts = datetime.fromisoformat(m["timestamp"].replace("Z", "+00:00")).astimezone(UTC)
            rows.append(("l2", SYMBOL, m["epoch"], m["seq"], ts, raw))
        await conn.copy_records_to_table(
            "stream_messages",
            records=rows,
            columns=["channel", "symbol", "epoch", "seq", "ts", "msg"],
        )
    finally:
        await conn.close()


async def _resume(port: int, pid: int, since: int, head: int) -> dict[str, Any]:
    async with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        c0, t0 = cpu_seconds(pid), time.perf_counter()
        req = {"type": "subscribe", "channel": "l2", "symbol": SYMBOL}
        await ws.send(orjson.dumps({**req, "since_seq": since, "epoch": 1}).decode())
        n, last = 0, since
        while last < head:
            m = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
            if m["type"] == "l2_update":
                if m["seq"] != last + 1:
                    raise RuntimeError(f"gap: {last} -> {m['seq']}")
                last, n = m["seq"], n + 1
            elif m["type"] in ("resync", "error", "l2_snapshot"):
                raise RuntimeError(f"not served: {m}")
        wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - c0
    return {
        "messages": n,
        "wall_s": round(wall, 3),
        "msgs_per_s": round(n / wall),
        "gateway_cpu_us_per_msg": round(cpu / n * 1e6, 1),
    }


async def run(a: argparse.Namespace) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    base = Settings.from_env()
    db = f"bench_hist_resume_{tag}"
    admin = base.pg_dsn.rsplit("/", 1)[0] + "/postgres"
    dsn = base.pg_dsn.rsplit("/", 1)[0] + f"/{db}"
    s = dataclasses.replace(
        base, topic_prefix=f"bench.hres.{tag}", redis_prefix=f"bench:hres:{tag}", pg_dsn=dsn
    )
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{db}"')
    await conn.close()
    await ensure_topics(s, partitions=3)
    r = aioredis.Redis.from_url(s.redis_url)
    key = hist_key(s.redis_prefix, "l2", SYMBOL)
    gw = None
    try:
        await migrate(dsn)
        snap, ups = _stream(a.messages, now_ns() - 3600 * 10**9)
        await _store(dsn, ups)
        t = Topics.from_settings(s)
        prod = make_producer(s)
        await prod.start()
        try:
            await prod.send_and_wait(t.snapshot, snap, key=f"l2:{SYMBOL}".encode())
            for raw in ups:
                await prod.send(t.stream("l2"), raw, key=SYMBOL.encode())
            await prod.flush()
        finally:
            await prod.stop()
        pipe = r.pipeline(transaction=False)
        for raw in ups[-a.window :]:
            m = orjson.loads(raw)
            pipe.xadd(key, {"m": raw, "e": m["epoch"]}, id=f"{m['seq']}-0")
        await pipe.execute()
        port = free_port()
        env = dict(
            os.environ,
            MD_TOPIC_PREFIX=s.topic_prefix,
            MD_REDIS_PREFIX=s.redis_prefix,
            MD_PG_DSN=dsn,
            MD_WS_PORT=str(port),
            MD_WS_PROCESSES="1",
            MD_LOG_LEVEL="ERROR",
            MD_WS_PING_INTERVAL_S="0",
            MD_WS_RESUME_MAX=str(a.window),
            MD_WS_PENDING_MAX=str(a.messages),
        )
        gw = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway_ws", env=env)
        await _wait_healthy(port, 60)
        head = a.messages
        await _resume(port, gw.pid, head - 100, head)  # warm-up: connections, pool, imports
        out: dict[str, Any] = {}
        for name, since in (
            ("redis", head - a.window),
            ("history+redis", head - 2 * a.window),
            ("history", 0),
        ):
            out[name] = await _resume(port, gw.pid, since, head)
        return out
    finally:
        if gw is not None:
            await _stop(gw)
        await r.delete(key)
        await r.aclose()
        await _delete_topics(s)
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=30_000)
    ap.add_argument("--window", type=int, default=5_000)
    a = ap.parse_args()
    if a.messages < 2 * a.window:
        ap.error("--messages must be at least twice --window")
    res = asyncio.run(run(a))
    print(f"load average before the end: {os.getloadavg()[0]:.1f}")
    for k, v in res.items():
        print(f"{k:>14}: {v}")


if __name__ == "__main__":
    main()
