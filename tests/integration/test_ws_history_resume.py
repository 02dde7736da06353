"""Resume older than the Redis window, served from stored history (issue 15 item 4), on the
real Kafka, Redis and PostgreSQL: the storage writer stores the stream, Redis keeps only its
tail (a small window), and a client resuming from before the window gets every message gapless
(database, then Redis, then live); with the database down, today's answer (resync).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import string
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from core.codec import iso_from_ns
from core.settings import Settings
from storage.db_writer import DbWriter, DbWriterConfig
from storage.migrate import migrate
from tests.conftest import free_port
from tests.helpers import run_until
from tests.integration.ws_helpers import (
    ClientBook,
    Feed,
    drop_topics,  # noqa: F401 - autouse: topics deleted after each test
    fill_resume_window,
    recv_until,
    running_gateway,
    send,
    url,
)
from tests.unit.test_follower_join import T0

pytestmark = pytest.mark.integration

N = 40  # updates published; Redis keeps only the last WINDOW of them
WINDOW = 10


@pytest.fixture
async def r(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def _symbol() -> str:
    """A symbol of the test's own: the module's tests share one database."""
    return "H" + "".join(random.choices(string.ascii_uppercase, k=4)) + "-USD"


async def _stored_stream(
    settings: Settings, r: aioredis.Redis, feed: Feed, sym: str
) -> tuple[Settings, list[bytes]]:
    """Snapshot + N updates of ``sym`` on Kafka, stored by the real writer; Redis holds only
    the last WINDOW updates (the window a resume older than them cannot be served from)."""
    pg = settings.pg_dsn
    await migrate(pg)
    await feed.snapshot(sym)
    ups = await feed.updates(sym, N)
    await fill_resume_window(r, settings, ups[-WINDOW:])
    w = DbWriter(settings, dataclasses.replace(DbWriterConfig.from_settings(settings), batch_ms=50))

    async def stored() -> bool:
        conn = await asyncpg.connect(pg)
        try:
            n = await conn.fetchval(
                "SELECT count(*) FROM stream_messages WHERE channel = 'l2' AND symbol = $1", sym
            )
            b = await conn.fetchval(
                "SELECT count(*) FROM book_snapshots WHERE channel = 'l2' AND symbol = $1", sym
            )
        finally:
            await conn.close()
        return n == N and b >= 1

    await run_until(w, stored, 30, lambda: f"writer did not store {sym}: {w.counters}")
    return settings, ups


@pytest.fixture
def hsettings(settings: Settings, pg_dsn: str) -> Settings:
    return dataclasses.replace(settings, pg_dsn=pg_dsn)


async def _updates_to(ws: ClientConnection, cb: ClientBook, seq: int) -> list[int]:
    """Receive l2 updates up to ``seq``, applying each to the client's book (which checks
    seq continuity and every checksum); anything else (a resync) fails."""
    seen: list[int] = []
    while cb.seq != seq:
        msg = await recv_until(ws, lambda m: m["type"] in ("l2_update", "l2_snapshot", "resync"))
        assert msg["type"] == "l2_update", msg
        cb.on(msg)
        seen.append(msg["seq"])
    return seen


async def test_resume_since_seq_older_than_the_window_is_served_from_history(
    hsettings: Settings, r: aioredis.Redis
) -> None:
    sym = _symbol()
    async with Feed(hsettings) as feed:
        s, ups = await _stored_stream(hsettings, r, feed, sym)
        async with running_gateway(s) as gw:
            # the client's own book at seq 5: it followed the stream live until then (the
            # testkit's book starts empty at seq 0)
            cb = ClientBook()
            cb.seq = 0
            for raw in ups[:5]:
                cb.on(orjson.loads(raw))
            async with connect(url(gw)) as ws:
                # the window holds 31..40: 6..30 come from the database
                await send(
                    ws,
                    {
                        "type": "subscribe",
                        "channel": "l2",
                        "symbol": sym,
                        "since_seq": 5,
                        "epoch": 1,
                    },
                )
                assert (await recv_until(ws, lambda m: True))["type"] == "subscribed"
                assert await _updates_to(ws, cb, N) == list(range(6, N + 1))
                live = await feed.updates(sym, 5, start=N)
                await fill_resume_window(r, s, live)
                assert await _updates_to(ws, cb, N + 5) == list(range(N + 1, N + 6))  # then live
            assert gw.history.stored is not None and gw.history.stored.failures == 0


async def test_resume_since_time_older_than_the_window_gets_the_book_then_every_update(
    hsettings: Settings, r: aioredis.Redis
) -> None:
    sym = _symbol()
    async with Feed(hsettings) as feed:
        s, _ups = await _stored_stream(hsettings, r, feed, sym)
        async with running_gateway(s) as gw, connect(url(gw)) as ws:
            # the testkit stamps seq n at T0 + n µs: since seq 25's time -> the book after 24
            since = iso_from_ns(T0 + 25_000)
            await send(ws, {"type": "subscribe", "channel": "l2", "symbol": sym, "since": since})
            assert (await recv_until(ws, lambda m: True))["type"] == "subscribed"
            snap = await recv_until(ws, lambda m: True)
            assert snap["type"] == "l2_snapshot" and snap["seq"] == 24, snap
            assert not snap.get("resync")
            cb = ClientBook()
            cb.on(snap)  # checks the rebuilt book's checksum against the one published
            assert await _updates_to(ws, cb, N) == list(range(25, N + 1))


async def test_client_id_resume_beyond_the_window_is_not_beyond_history(
    hsettings: Settings, r: aioredis.Redis
) -> None:
    sym = _symbol()
    async with Feed(hsettings) as feed:
        s, ups = await _stored_stream(hsettings, r, feed, sym)
        async with running_gateway(s) as gw:
            async with connect(url(gw, "client_id=hist-1")) as ws:
                await send(ws, {"type": "subscribe", "channel": "l2", "symbol": sym})
                await recv_until(ws, lambda m: m["type"] == "l2_snapshot")
            async with connect(url(gw)) as ws:
                since = iso_from_ns(T0 + 25_000)
                await send(ws, {"type": "resume", "client_id": "hist-1", "since": since})
                ack = await recv_until(ws, lambda m: m["type"] == "resumed")
                assert ack["beyond_window"] == [], ack
                snap = await recv_until(ws, lambda m: m["type"] != "subscribed")
                assert (snap["type"], snap["seq"]) == ("l2_snapshot", 24), snap
                cb = ClientBook()
                cb.on(snap)
                assert await _updates_to(ws, cb, N) == list(range(25, N + 1))
            assert orjson.loads(ups[-1])["seq"] == N


async def test_database_down_falls_back_to_the_resync_at_once(
    settings: Settings, r: aioredis.Redis
) -> None:
    """No database (nothing listens on its port): the resume answers as without history
    (resume_too_old, a flagged snapshot, beyond_window), and the next resumes do not try the
    database again while it is marked down (no error loop)."""
    down = dataclasses.replace(
        settings, pg_dsn=f"postgresql://md:md@127.0.0.1:{free_port()}/nothing"
    )
    sym = _symbol()
    async with Feed(down) as feed:
        await feed.snapshot(sym)
        ups = await feed.updates(sym, N)
        await fill_resume_window(r, down, ups[-WINDOW:])
        async with running_gateway(down) as gw:
            stored = gw.history.stored
            assert stored is not None
            async with connect(url(gw, "client_id=hist-down")) as ws:
                await send(ws, {"type": "subscribe", "channel": "l2", "symbol": sym})
                await recv_until(ws, lambda m: m["type"] == "l2_snapshot")
            for _ in range(3):
                async with connect(url(gw)) as ws:
                    await send(
                        ws, {"type": "subscribe", "channel": "l2", "symbol": sym, "since_seq": 5}
                    )
                    note = await recv_until(ws, lambda m: m["type"] == "resync")
                    assert note["reason"] == "resume_too_old"
                    snap = await recv_until(ws, lambda m: True)
                    assert snap["type"] == "l2_snapshot" and snap["resync"] is True
                    assert snap["seq"] == N
            assert stored.failures == 1  # tried once, then left alone for DOWN_S
            async with connect(url(gw)) as ws:
                since = iso_from_ns(T0 + 25_000)
                await send(ws, {"type": "resume", "client_id": "hist-down", "since": since})
                ack = await recv_until(ws, lambda m: m["type"] == "resumed")
                assert [b["target"] for b in ack["beyond_window"]] == [f"l2:{sym}"]
                note = await recv_until(ws, lambda m: m["type"] == "resync")
                assert note["reason"] == "resume_too_old"


async def test_trades_resume_older_than_the_window_then_live(
    hsettings: Settings, r: aioredis.Redis
) -> None:
    """Trades have no book: the stored trades after ``since_seq``, the window, then live."""
    sym = _symbol()
    await migrate(hsettings.pg_dsn)
    async with Feed(hsettings) as feed:
        trades_topic = feed.t.stream("trades")
        p = feed.book(sym)
        raws = [p.trade(f"{100 + i % 7}.5", "0.1") for i in range(N)]
        for raw in raws:
            await feed.raw(trades_topic, raw, sym)
        await fill_resume_window(r, hsettings, raws[-WINDOW:])
        w = DbWriter(
            hsettings, dataclasses.replace(DbWriterConfig.from_settings(hsettings), batch_ms=50)
        )

        async def stored() -> bool:
            conn = await asyncpg.connect(hsettings.pg_dsn)
            try:
                n = await conn.fetchval(
                    "SELECT count(*) FROM stream_messages WHERE channel = 'trades' AND symbol = $1",
                    sym,
                )
            finally:
                await conn.close()
            return n == N

        await run_until(w, stored, 30, lambda: f"writer did not store {sym}: {w.counters}")
        async with running_gateway(hsettings) as gw, connect(url(gw)) as ws:
            await send(
                ws, {"type": "subscribe", "channel": "trades", "symbol": sym, "since_seq": 5}
            )
            assert (await recv_until(ws, lambda m: True))["type"] == "subscribed"
            got: list[dict[str, Any]] = []
            while not got or got[-1]["seq"] < N:
                got.append(await recv_until(ws, lambda m: True))
            assert [m["type"] for m in got] == ["trade"] * (N - 5), got[:3]
            assert [m["seq"] for m in got] == list(range(6, N + 1))
            assert [orjson.loads(raw)["data"] for raw in raws[5:]] == [m["data"] for m in got]
            live = p.trade("101.5", "0.2")
            await feed.raw(trades_topic, live, sym)
            msg = await recv_until(ws, lambda m: True)
            assert (msg["type"], msg["seq"]) == ("trade", N + 1)


async def test_a_resume_storm_from_history_stays_within_the_pool(
    hsettings: Settings, r: aioredis.Redis
) -> None:
    """Many clients resuming from history at once: every one gapless, and the gateway never
    holds more than MD_WS_HISTORY_DB_POOL database connections for them."""
    sym = _symbol()
    clients = 12
    async with Feed(hsettings) as feed:
        s, ups = await _stored_stream(hsettings, r, feed, sym)
        async with running_gateway(s) as gw:
            stored = gw.history.stored
            assert stored is not None and stored.cfg.db_pool == 2
            sizes: list[int] = []

            async def one(since: int) -> list[int]:
                cb = ClientBook()
                cb.seq = 0
                for raw in ups[:since]:
                    cb.on(orjson.loads(raw))
                async with connect(url(gw)) as ws:
                    req = {"type": "subscribe", "channel": "l2", "symbol": sym}
                    await send(ws, {**req, "since_seq": since, "epoch": 1})
                    await recv_until(ws, lambda m: m["type"] == "subscribed")
                    return await _updates_to(ws, cb, N)

            async def sample(done: asyncio.Event) -> None:
                """The database's own count of this database's client sessions (the writer
                has stopped: every other one is the gateway's; TimescaleDB's job scheduler
                is a background worker, not counted)."""
                conn = await asyncpg.connect(s.pg_dsn)
                try:
                    while not done.is_set():
                        sizes.append(
                            await conn.fetchval(
                                "SELECT count(*) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                                "AND backend_type = 'client backend'"
                            )
                        )
                        await asyncio.sleep(0.005)
                finally:
                    await conn.close()

            done = asyncio.Event()
            sampler = asyncio.create_task(sample(done))
            await asyncio.sleep(0.05)
            results = await asyncio.gather(*(one(i) for i in range(clients)))
            done.set()
            await sampler
            for since, got in enumerate(results):
                assert got == list(range(since + 1, N + 1))
            assert sizes and max(sizes) <= 2, sizes
            assert stored.failures == 0


async def test_only_what_history_lacks_is_answered_with_a_resync(
    hsettings: Settings, r: aioredis.Redis
) -> None:
    """Retention dropped seq 1..10 and a hole lost 20: a resume from before the dropped part
    is resume_too_old, one across the hole resume_gap (never a wrong book), one after it is
    served gapless."""
    sym = _symbol()
    async with Feed(hsettings) as feed:
        s, ups = await _stored_stream(hsettings, r, feed, sym)
        conn = await asyncpg.connect(s.pg_dsn)
        try:
            await conn.execute(
                "DELETE FROM stream_messages WHERE channel = 'l2' AND symbol = $1 "
                "AND (seq <= 10 OR seq = 20)",
                sym,
            )
        finally:
            await conn.close()
        async with running_gateway(s) as gw:
            for since, reason in ((5, "resume_too_old"), (12, "resume_gap")):
                async with connect(url(gw)) as ws:
                    req = {"type": "subscribe", "channel": "l2", "symbol": sym}
                    await send(ws, {**req, "since_seq": since, "epoch": 1})
                    note = await recv_until(ws, lambda m: m["type"] == "resync")
                    assert note["reason"] == reason, (since, note)
                    snap = await recv_until(ws, lambda m: True)
                    assert snap["type"] == "l2_snapshot" and snap["resync"] is True
                    assert snap["seq"] == N
            cb = ClientBook()
            cb.seq = 0
            for raw in ups[:20]:
                cb.on(orjson.loads(raw))
            async with connect(url(gw)) as ws:
                req = {"type": "subscribe", "channel": "l2", "symbol": sym}
                await send(ws, {**req, "since_seq": 20, "epoch": 1})
                assert await _updates_to(ws, cb, N) == list(range(21, N + 1))
