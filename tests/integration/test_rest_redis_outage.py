"""Redis down, then back empty: REST answers from the database or 503 with the reason and
recovers by itself; the cache writer refills the restarted Redis. Uses a throwaway redis-server
on a free port (never the shared one)."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from core.cache_keys import CacheKeys
from core.kafka import make_producer
from core.settings import Settings
from core.topics import Topics
from gateway_rest.app import create_app
from storage.cache_writer import CacheWriter
from storage.db_writer import DbWriter
from storage.migrate import migrate
from testkit import fake_aggregator as T
from tests.conftest import free_port
from tests.helpers import eventually

pytestmark = pytest.mark.integration
SYM = "RDS-USD"


class OwnRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    r = OwnRedis()
    r.start()
    yield r
    r.stop()


@pytest.fixture
async def stack(
    settings: Settings, pg_dsn: str, own_redis: OwnRedis
) -> AsyncIterator[tuple[Settings, CacheWriter]]:
    await migrate(pg_dsn)
    s = dataclasses.replace(settings, pg_dsn=pg_dsn, redis_url=own_redis.url)
    t = Topics.from_settings(s)
    p = make_producer(s)
    await p.start()
    await T.produce(
        p,
        t.snapshot,
        [
            (f"status:{SYM}", T.status(SYM, 1)),
            (f"l2:{SYM}", T.l2_snapshot(SYM, 3, [["10", "1"]], [["11", "2"]])),
            (f"ticker:{SYM}", T.ticker(SYM, 2)),
        ],
    )
    await T.produce_stream(
        p, t, "trades", [(SYM, T.trade(SYM, i, f"r{i}", "10.5", "1")) for i in (1, 2, 3)]
    )
    await p.stop()
    cache, db = CacheWriter(s), DbWriter(s)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(cache.run(stop)), asyncio.create_task(db.run(stop))]

    r = aioredis.Redis.from_url(own_redis.url)

    async def ready() -> bool:
        # the cache must hold the trades too (its fetches are paced, the database writer's
        # insert count says nothing about it)
        return (
            cache.redis_ok
            and db.counters.trades_inserted == 3
            and db.counters.snapshots_inserted == 1
            and await r.llen(CacheKeys(s.redis_prefix).trades(SYM)) == 3
        )

    try:
        await eventually(ready, 20)
    finally:
        await r.aclose()
    yield s, cache
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 15)


async def test_redis_down_then_back_empty(
    stack: tuple[Settings, CacheWriter], own_redis: OwnRedis
) -> None:
    s, cache = stack
    app = create_app(s)
    url = f"/api/v1/market/{SYM}"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get(f"{url}/orderbook")).json()["seq"] == 3
        assert (await c.get("/health")).status_code == 200

        own_redis.stop()
        h = await c.get("/health")
        assert h.status_code == 503 and h.json()["checks"]["redis"]["ok"] is False
        assert h.json()["checks"]["database"]["ok"] is True
        await asyncio.sleep(1.1)  # let the in-process catalogue cache expire
        # catalogue and book come from the database; trades too; ticker cannot: 503 + reason
        r = await c.get(f"{url}/orderbook")
        assert r.status_code == 200 and r.json()["source"] == "database" and r.json()["seq"] == 3
        assert [x["symbol"] for x in (await c.get("/api/v1/market/symbols")).json()["symbols"]] == [
            SYM
        ]
        r = await c.get(f"{url}/trades")
        assert r.status_code == 200 and [t["trade_id"] for t in r.json()["trades"]] == [
            "r3",
            "r2",
            "r1",
        ]
        r = await c.get(f"{url}/ticker")
        assert (
            r.status_code == 503
            and r.json()["error"] == "unavailable"
            and "redis" in r.json()["message"]
        )
        assert r.headers["retry-after"] == "1"
        r = await c.get(f"{url}/candles?interval=1m")  # database only: still answers
        assert r.status_code == 200

        async def writer_noticed() -> bool:
            return not cache.redis_ok

        await eventually(writer_noticed, 20)
        rebuilds = cache.counters.rebuilds

        own_redis.start()  # same port, empty

        async def back() -> bool:
            r = await c.get(f"{url}/ticker")
            return r.status_code == 200

        await eventually(back, 20)
        assert cache.counters.rebuilds > rebuilds
        assert (await c.get(f"{url}/orderbook")).json().get("source") is None  # from Redis again
        assert (await c.get("/health")).status_code == 200
        assert len((await c.get(f"{url}/trades")).json()["trades"]) == 3
    rc = aioredis.Redis.from_url(own_redis.url)
    try:
        assert await rc.exists(CacheKeys(s.redis_prefix).sentinel)
    finally:
        await rc.aclose()


async def test_writer_refills_redis_flushed_while_running(
    stack: tuple[Settings, CacheWriter], own_redis: OwnRedis
) -> None:
    s, cache = stack
    k = CacheKeys(s.redis_prefix)
    r = aioredis.Redis.from_url(own_redis.url)
    try:
        assert await r.exists(k.book(SYM))
        rebuilds = cache.counters.rebuilds
        await r.flushall()

        async def refilled() -> bool:
            return bool(await r.exists(k.book(SYM))) and bool(await r.exists(k.ticker(SYM)))

        await eventually(refilled, 20)
        assert cache.counters.rebuilds == rebuilds + 1
        assert await r.llen(k.trades(SYM)) == 3
        assert await r.hexists(k.symbols, SYM)
    finally:
        await r.aclose()


async def test_known_symbol_is_not_unknown_while_redis_is_empty(
    stack: tuple[Settings, CacheWriter],
) -> None:
    """A Redis that answers but holds nothing yet (restarted empty, before the cache writer has
    rebuilt it) is treated like a Redis that is down: the database serves what it can, and a
    known symbol is never answered with 404 "unknown symbol" (chaos redis-restart)."""
    s, _ = stack
    empty = OwnRedis()
    empty.start()
    try:
        app = create_app(dataclasses.replace(s, redis_url=empty.url))
        url = f"/api/v1/market/{SYM}"
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:

            async def answers() -> bool:
                return (await c.get(f"{url}/orderbook")).status_code != 500

            await eventually(answers, 10)  # the empty server is up
            r = await c.get(f"{url}/orderbook")
            assert r.status_code == 200 and r.json()["source"] == "database", r.text
            r = await c.get(f"{url}/ticker")
            assert r.status_code == 503 and r.json()["error"] == "unavailable"
    finally:
        empty.stop()
