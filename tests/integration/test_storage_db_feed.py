"""One Kafka fetch for both writers (storage/db_feed.py) on the real servers: the database writer
of a ``storage run`` process first reads its backlog with its own consumer, then takes its
records from the cache writer's fetches; every row is written once, the cache is written as
before, and a restarted process continues from the committed offsets; with either Kafka client
of the cache writer (``MD_STORAGE_KAFKA_CLIENT``)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from core.cache_keys import CacheKeys
from core.kafka import make_producer
from core.settings import Settings
from core.topics import Topics
from storage.cache_writer import CacheWriter
from storage.db_feed import Feed
from storage.db_writer import BatchWindow, DbWriter, DbWriterConfig
from storage.migrate import migrate
from testkit import fake_aggregator as T
from tests.helpers import eventually, run_until
from tests.integration.test_storage_db_outage import ThrowawayPostgres

# the database writers share a consumer group over the stream topics' partitions (compose, k8s)
pytestmark = [pytest.mark.integration, pytest.mark.stream_partitions(3)]


class Both:
    """The two writers wired as ``storage.service.main`` wires them (feed shared)."""

    def __init__(self, s: Settings, group: str) -> None:
        self.cache = CacheWriter(s)
        self.db = DbWriter(s, DbWriterConfig(group_id=group, batch_records=300, batch_ms=200))
        self.cache.tap = self.db
        self.db.shared_feed = True

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(self.cache.run(stop), self.db.run(stop))


async def _trades(s: Settings, sym: str, first: int, n: int) -> None:
    p = make_producer(s)
    await p.start()
    try:
        await T.produce_stream(
            p,
            Topics.from_settings(s),
            "trades",
            [
                (sym, T.trade(sym, i, f"f{i}", "100.5", "0.25", "buy"))
                for i in range(first, first + n)
            ],
        )
    finally:
        await p.stop()


async def _stored(dsn: str, sym: str) -> tuple[int, int]:
    c = await asyncpg.connect(dsn)
    try:
        t = await c.fetchval("SELECT count(*) FROM trades WHERE symbol = $1", sym)
        m = await c.fetchval("SELECT count(*) FROM stream_messages WHERE symbol = $1", sym)
        return int(t), int(m)
    finally:
        await c.close()


@pytest.mark.parametrize("client", ["confluent", "aiokafka"])
async def test_backlog_on_own_consumer_then_live_rows_through_the_shared_fetch(
    settings: Settings, pg_dsn: str, client: str
) -> None:
    await migrate(pg_dsn)
    extra = {**settings.extra, "MD_STORAGE_KAFKA_CLIENT": client}
    s = dataclasses.replace(settings, pg_dsn=pg_dsn, extra=extra)
    group = f"{s.topic_prefix}.feed"
    sym = f"FEED{client[:3].upper()}-USD"  # the module's database is shared by both runs
    await _trades(s, sym, 1, 500)  # a backlog before the process starts
    both = Both(s, group)
    db = both.db
    live = asyncio.Event()

    async def feed_live() -> None:
        # once every partition follows the shared feed, the live trades
        await eventually(lambda: db.routes.routes and db.routes.count(Feed.OWN) == 0, 30)
        await _trades(s, sym, 501, 400)
        live.set()

    producer = asyncio.create_task(feed_live())
    try:
        await run_until(
            both,
            lambda: live.is_set() and db.counters.trades_inserted == 900 and db.queue.empty(),
            40,
            lambda: f"{db.counters} routes={db.routes.routes}",
        )
    finally:
        producer.cancel()
    assert db.counters.trades_duplicate == 0 and db.counters.messages_duplicate == 0
    assert db.counters.records_shared >= 400  # every live record came through the one fetch
    # every assigned partition moved, the idle ones too (at the cache writer's start position)
    assert len(db.routes.routes) == len(db.topic_names) * 3 == db.routes.switches
    assert await _stored(pg_dsn, sym) == (900, 900)
    r = aioredis.Redis.from_url(s.redis_url)
    try:  # the cache writer did its own work meanwhile
        newest = await r.lindex(CacheKeys(s.redis_prefix).trades(sym), 0)
        assert newest is not None and b'"f900"' in newest
    finally:
        await r.aclose()

    # a restart continues from the committed offsets: the next trades once, nothing again
    await _trades(s, sym, 901, 50)
    again = Both(s, group)
    await run_until(
        again,
        lambda: again.db.counters.trades_inserted == 50 and again.db.queue.empty(),
        40,
        lambda: f"{again.db.counters}",
    )
    assert again.db.counters.trades_duplicate == 0
    assert await _stored(pg_dsn, sym) == (950, 950)


async def test_a_database_only_process_takes_its_share_of_the_group(
    settings: Settings, pg_dsn: str
) -> None:
    """Scale-out still works: a second, database-only writer joins the group of a process on
    the shared fetch; the partitions are split (the shared process drops what it loses) and
    every trade of many symbols is stored once."""
    await migrate(pg_dsn)
    s = dataclasses.replace(settings, pg_dsn=pg_dsn)
    group = f"{s.topic_prefix}.scale"
    syms = [f"SC{i}-USD" for i in range(12)]  # spread over the 3 partitions
    both = Both(s, group)
    other = DbWriter(s, DbWriterConfig(group_id=group, batch_records=300, batch_ms=200))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(both.run(stop))]
    try:
        await eventually(lambda: both.db.routes.routes and both.db.routes.count(Feed.OWN) == 0, 30)
        tasks.append(asyncio.create_task(other.run(stop)))
        await eventually(lambda: other.routes.routes, 60)  # the group rebalanced
        total = 0
        for sym in syms:
            await _trades(s, sym, 1, 50)
            total += 50

        async def stored() -> int:
            c = await asyncpg.connect(pg_dsn)
            try:
                return int(
                    await c.fetchval("SELECT count(*) FROM trades WHERE symbol = ANY($1)", syms)
                )
            finally:
                await c.close()

        await eventually(lambda: _stored_is(stored, total), 60, interval=0.3)
        assert set(both.db.routes.routes).isdisjoint(other.routes.routes)
        assert both.db.counters.trades_inserted > 0 and other.counters.trades_inserted > 0
        assert both.db.counters.trades_inserted + other.counters.trades_inserted == total
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)


async def _stored_is(count: Callable[[], Awaitable[int]], n: int) -> bool:
    return await count() == n


@pytest.fixture
def own_pg() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL of this test's own (test_storage_db_outage.py), to stop and start."""
    pg = ThrowawayPostgres()
    pg.start()
    yield pg
    pg.destroy()


async def test_database_outage_never_stalls_the_cache_and_loses_nothing(
    settings: Settings, own_pg: ThrowawayPostgres
) -> None:
    """With the shared fetch, a database that is down fills the writer's queue; the shared
    partitions go back to the writer's own consumer (Kafka holds the backlog) while the cache
    writer keeps going; when the database is back every trade is stored once and the
    partitions return to the shared fetch."""
    await migrate(own_pg.dsn)
    s = dataclasses.replace(settings, pg_dsn=own_pg.dsn)
    sym = "FOUT-USD"
    both = Both(s, f"{s.topic_prefix}.fout")
    db = both.db
    db.config = dataclasses.replace(db.config, batch_records=100)
    db._window = BatchWindow(100, 0.2)  # noqa: SLF001 - small batches: the queue fills soon
    keys = CacheKeys(s.redis_prefix)
    r = aioredis.Redis.from_url(s.redis_url)
    stop = asyncio.Event()
    task = asyncio.create_task(both.run(stop))
    try:
        await eventually(lambda: db.routes.routes and db.routes.count(Feed.OWN) == 0, 30)
        await _trades(s, sym, 1, 300)
        await eventually(lambda: db.counters.trades_inserted == 300, 30)

        own_pg.stop()
        for i in range(10):  # several fetches, each a batch: the queue fills, then the open one
            await _trades(s, sym, 301 + 200 * i, 200)
            await asyncio.sleep(0.3)

        async def cache_has(n: int) -> bool:
            newest = await r.lindex(keys.trades(sym), 0)
            return newest is not None and f'"f{n}"'.encode() in newest

        await eventually(lambda: cache_has(2300), 30)  # the cache did not wait
        await eventually(lambda: db.routes.fallbacks > 0, 30)
        assert db.counters.trades_inserted == 300

        own_pg.start()
        await eventually(lambda: db.counters.trades_inserted == 2300, 60)
        await eventually(lambda: db.routes.count(Feed.OWN) == 0, 30)  # back on the shared fetch
        shared_before = db.counters.records_shared
        await _trades(s, sym, 2301, 100)
        await eventually(lambda: db.counters.trades_inserted == 2400 and db.queue.empty(), 30)
        assert db.counters.records_shared >= shared_before + 100
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await r.aclose()
    c = await asyncpg.connect(own_pg.dsn)
    try:
        n, distinct = await c.fetchrow(
            "SELECT count(*), count(DISTINCT trade_id) FROM trades WHERE symbol = $1", sym
        )
        assert (n, distinct) == (2400, 2400)
    finally:
        await c.close()
