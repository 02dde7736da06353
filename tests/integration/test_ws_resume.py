"""Resume on the real Kafka + Redis: since_seq / since from the Redis window, too-old fallback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from core.codec import iso_from_ns
from core.settings import Settings
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


async def _hist(r: aioredis.Redis, settings: Settings, raws: list[bytes]) -> None:
    await fill_resume_window(r, settings, raws, maxlen=10_000)


@pytest.fixture
async def r(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A Redis client for the test; deletes the test's keys (its resume windows) afterwards."""
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{settings.redis_prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def _subscribe_l2(ws: ClientConnection, symbol: str, **resume: object) -> None:
    """Subscribe to ``symbol``'s l2, with resume fields (since_seq, since, epoch) when given."""
    await send(ws, {"type": "subscribe", "channel": "l2", "symbol": symbol, **resume})


async def _drain_to(ws: ClientConnection, cb: ClientBook, seq: int) -> list[int]:
    seen: list[int] = []
    while cb.seq != seq:
        msg = await recv_until(ws, lambda m: m["type"] in ("l2_update", "l2_snapshot", "resync"))
        assert msg["type"] == "l2_update", msg
        cb.on(msg)
        seen.append(msg["seq"])
    return seen


async def test_resume_after_forced_disconnect_on_another_instance_misses_nothing(
    settings: Settings,
    r: aioredis.Redis,
) -> None:
    async with Feed(settings) as feed:
        await feed.snapshot("BTC-USD")
        await _hist(r, settings, await feed.updates("BTC-USD", 10))
        async with running_gateway(settings) as gw1, running_gateway(settings) as gw2:
            cb = ClientBook()
            async with connect(url(gw1)) as ws:
                await _subscribe_l2(ws, "BTC-USD")
                cb.on(await recv_until(ws, lambda m: m["type"] == "l2_snapshot"))
                assert cb.seq == 10
                await _hist(r, settings, await feed.updates("BTC-USD", 10, start=10))
                await _drain_to(ws, cb, 20)
                ws.transport.abort()  # forced disconnect, no closing handshake
            # missed while away
            await _hist(r, settings, await feed.updates("BTC-USD", 20, start=20))
            async with connect(url(gw2)) as ws:
                await _subscribe_l2(ws, "BTC-USD", since_seq=20, epoch=1)
                ack = await recv_until(ws, lambda m: True)
                assert ack["type"] == "subscribed"
                assert await _drain_to(ws, cb, 40) == list(range(21, 41))
                await _hist(r, settings, await feed.updates("BTC-USD", 10, start=40))
                assert await _drain_to(ws, cb, 50) == list(range(41, 51))  # then live
                # resume from "now": nothing replayed, straight to live
            async with connect(url(gw1)) as ws:
                await _subscribe_l2(ws, "BTC-USD", since_seq=50)
                await recv_until(ws, lambda m: m["type"] == "subscribed")
                await feed.updates("BTC-USD", 1, start=50)
                msg = await recv_until(ws, lambda m: m["type"] != "subscribed")
                assert (msg["type"], msg["seq"]) == ("l2_update", 51)


async def test_resume_from_too_far_back_gets_a_flagged_snapshot(
    settings: Settings, r: aioredis.Redis
) -> None:
    async with Feed(settings) as feed:
        await feed.snapshot("ETH-USD")
        ups = await feed.updates("ETH-USD", 30)
        await _hist(r, settings, ups[20:])  # the window holds 21..30 only
        async with running_gateway(settings) as gw, connect(url(gw)) as ws:
            await _subscribe_l2(ws, "ETH-USD", since_seq=5)
            await recv_until(ws, lambda m: m["type"] == "subscribed")
            note = await recv_until(ws, lambda m: True)
            assert note["type"] == "resync" and note["reason"] == "resume_too_old"
            snap = await recv_until(ws, lambda m: True)
            assert snap["type"] == "l2_snapshot" and snap["resync"] is True and snap["seq"] == 30
            cb = ClientBook()
            cb.on(snap)
            await feed.updates("ETH-USD", 5, start=30)
            await _drain_to(ws, cb, 35)
            # a different epoch than the stream's: snapshot too
            await _subscribe_l2(ws, "ETH-USD", since_seq=30, epoch=99)
            note = await recv_until(ws, lambda m: m["type"] == "resync")
            assert note["reason"] == "resume_epoch"


async def test_resume_since_timestamp(settings: Settings, r: aioredis.Redis) -> None:
    async with Feed(settings) as feed:
        await feed.snapshot("BTC-USD")
        await _hist(r, settings, await feed.updates("BTC-USD", 40))
        async with running_gateway(settings) as gw, connect(url(gw)) as ws:
            # Producer stamps message seq s at T0 + s µs: "since" seq 25's time gives 25..40
            await _subscribe_l2(ws, "BTC-USD", since=iso_from_ns(T0 + 25_000))
            await recv_until(ws, lambda m: m["type"] == "subscribed")
            got: list[int] = []
            while not got or got[-1] != 40:
                msg = await recv_until(ws, lambda m: True)
                assert msg["type"] == "l2_update", msg
                got.append(msg["seq"])
            assert got == list(range(25, 41))
            await _subscribe_l2(ws, "BTC-USD", since=iso_from_ns(T0 - 10**9))
            note = await recv_until(ws, lambda m: m["type"] == "resync")
            assert note["reason"] == "resume_too_old"


async def test_resume_ahead_of_this_gateway_waits_for_it_instead_of_resyncing(
    settings: Settings, r: aioredis.Redis
) -> None:
    """A client back from a gateway that died can hold messages this one has not applied yet
    (the direct feed is ahead of Kafka; a restarted worker is still catching up): the resume
    waits for this gateway to get there, it does not resync to an older snapshot."""
    async with Feed(settings) as feed:
        await feed.snapshot("BTC-USD")
        await _hist(r, settings, await feed.updates("BTC-USD", 10))
        async with running_gateway(settings) as gw, connect(url(gw)) as ws:
            cb = ClientBook()
            await _subscribe_l2(ws, "BTC-USD")
            cb.on(await recv_until(ws, lambda m: m["type"] == "l2_snapshot"))
            await _drain_to(ws, cb, 10)
            await send(ws, {"type": "unsubscribe", "channel": "l2", "symbol": "BTC-USD"})
            await recv_until(ws, lambda m: m["type"] == "unsubscribed")
            # the client saw 11 and 12 elsewhere; this gateway has not had them yet
            await _subscribe_l2(ws, "BTC-USD", since_seq=12, epoch=1)
            await recv_until(ws, lambda m: m["type"] == "subscribed")
            ahead = await feed.updates("BTC-USD", 2, start=10)
            for raw in ahead:
                cb.on(orjson.loads(raw))
            await _hist(r, settings, ahead)
            await _hist(r, settings, await feed.updates("BTC-USD", 3, start=12))
            assert await _drain_to(ws, cb, 15) == [13, 14, 15]
