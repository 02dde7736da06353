"""API keys, tiers and rate limits shared by two gateway instances through the real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from core.cache_keys import CacheKeys
from core.settings import Settings
from gateway_rest.app import create_app
from gateway_rest.config import DEFAULT_TIERS, RestConfig, Tier

pytestmark = pytest.mark.integration
SYM = "RL-USD"
INFO = b'{"symbol":"RL-USD","base":"RL","quote":"USD","tick_size":"0.01","min_size":"0.1","status":"online","source":"simulator","channels":["l2","l3"],"seq":1}'


def _cfg(**kw: object) -> RestConfig:
    tiers = dict(DEFAULT_TIERS)
    tiers["anonymous"] = Tier("anonymous", limit=5, window_s=60)
    tiers["basic"] = Tier("basic", limit=3, window_s=60, max_depth=1, level3=False)
    return RestConfig(tiers=tiers, api_keys={"kb": "basic", "kp": "pro"}, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def seeded(redis_settings: Settings) -> AsyncIterator[Settings]:
    r = aioredis.Redis.from_url(redis_settings.redis_url)
    k = CacheKeys(redis_settings.redis_prefix)
    book = b'{"symbol":"RL-USD","seq":1,"epoch":1,"timestamp":"","checksum":0,"depth":%d,"bids":[["1","1"],["0.9","1"]],"asks":[]}'
    await r.hset(k.symbols, SYM, INFO)
    await r.hset(k.book(SYM), mapping={f"d{d}": book % d for d in (1, 5, 10, 20, 50, 100)})
    await r.set(
        k.l3(SYM),
        b'{"symbol":"RL-USD","seq":1,"epoch":1,"timestamp":"","level":3,"bids":[],"asks":[]}',
    )
    await r.aclose()
    # keep the fixed 60 s window from rolling over in the middle of a test
    if time.time() % 60 > 50:
        await asyncio.sleep(60 - time.time() % 60 + 0.1)
    yield redis_settings


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")  # type: ignore[arg-type]


async def test_per_ip_limit_is_shared_across_instances(seeded: Settings) -> None:
    a, b = create_app(seeded, config=_cfg()), create_app(seeded, config=_cfg())
    url = f"/api/v1/market/{SYM}/orderbook"
    async with _client(a) as ca, _client(b) as cb:
        seen = []
        for c in (ca, ca, ca, cb, cb):
            r = await c.get(url)
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit"] == "5"
            seen.append(int(r.headers["x-ratelimit-remaining"]))
        assert seen == [4, 3, 2, 1, 0]
        r = await cb.get(url)
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-remaining"] == "0"
        r = await ca.get(url)
        assert r.status_code == 429
        # ops endpoints are never limited
        assert (await ca.get("/metrics")).status_code == 200
        assert "md_rest_rate_limited_total" in (await ca.get("/metrics")).text
        # a key has its own budget, independent of the IP's
        r = await ca.get(url, headers={"X-API-Key": "kp"})
        assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "1000"


async def test_keys_and_tiers(seeded: Settings) -> None:
    app = create_app(seeded, config=_cfg())
    url = f"/api/v1/market/{SYM}/orderbook"
    async with _client(app) as c:
        r = await c.get(url, headers={"X-API-Key": "nope"})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        r = await c.get(url + "?depth=50", headers={"X-API-Key": "kb"})
        assert r.status_code == 200 and r.json()["depth"] == 1  # tier cap
        r = await c.get(url + "?level=3", headers={"X-API-Key": "kb"})
        assert r.status_code == 403 and r.json()["parameter"] == "level"
        assert (await c.get(url, headers={"X-API-Key": "kb"})).status_code == 200
        r = await c.get(url + "?level=3", headers={"X-API-Key": "kb"})
        assert r.status_code == 429  # 3 per window for basic (the 401 did not count)
        r = await c.get(url + "?level=3", headers={"X-API-Key": "kp"})
        assert r.status_code == 200 and r.json()["level"] == 3
    strict = create_app(seeded, config=_cfg(require_key=True))
    async with _client(strict) as c:
        r = await c.get(url)
        assert r.status_code == 401 and "X-API-Key" in r.json()["message"]
        assert (await c.get(url, headers={"X-API-Key": "kp"})).status_code == 200
        assert (await c.get("/health")).status_code in (200, 503)  # never asks for a key


async def test_concurrent_requests_of_one_client_share_one_reservation(
    redis_settings: Settings,
) -> None:
    """64 concurrent requests of one client under a large limit cost one Redis reservation
    (a chunk of tokens), not 64 that overwrite each other (issue 17: the limiter was 18 % of
    the gateway's CPU at 64 connections)."""
    from gateway_rest.ratelimit import RateLimiter, chunk_for

    r = aioredis.Redis.from_url(redis_settings.redis_url)
    keys = CacheKeys(redis_settings.redis_prefix)
    limiter = RateLimiter(r, keys)
    limit = 1_000_000
    try:
        idx = int(time.time())
        ds = await asyncio.gather(*(limiter.hit("ip:sf", limit) for _ in range(64)))
        assert all(d.allowed for d in ds)
        # every request got its own token: remaining counts down without repeats
        assert len({d.remaining for d in ds}) == 64
        counted = 0
        for i in (idx, idx + 1):
            counted += int(await r.get(keys.ratelimit("ip:sf", i)) or 0)
        assert counted <= 2 * chunk_for(limit)  # one reservation (two if a window rolled over)
    finally:
        await r.aclose()


async def test_many_concurrent_requests_over_several_reservations_are_counted_exactly(
    redis_settings: Settings,
) -> None:
    """300 concurrent requests of one client under a limit of 100 (2 tokens per reservation):
    they queue behind one another's reservations, none fails (a third waiter used to overwrite
    the second's pending entry: KeyError, a 500), and exactly the limit is allowed."""
    from gateway_rest.ratelimit import RateLimiter

    r = aioredis.Redis.from_url(redis_settings.redis_url)
    limiter = RateLimiter(r, CacheKeys(redis_settings.redis_prefix))
    try:
        for _ in range(3):  # a run that straddles a window edge is retried in the next window
            idx = int(time.time())
            ds = await asyncio.gather(*(limiter.hit(f"ip:many{idx}", 100) for _ in range(300)))
            if int(time.time()) == idx:
                break
        assert sum(d.allowed for d in ds) == 100
        assert sorted(d.remaining for d in ds if d.allowed) == list(range(100))
        assert limiter.redis_failures == 0
    finally:
        await r.aclose()


async def test_large_limits_reserve_ahead_and_count_every_request_once(
    redis_settings: Settings,
) -> None:
    """Under a large limit the next reservation is made in the background once half of one is
    used: of 2,000 sequential requests only the first waits for Redis, each gets its own count
    (remaining counts down without a repeat or a gap), and Redis holds at most one and a half
    reservations more than were used."""
    from gateway_rest.ratelimit import PREFETCH_MIN_CHUNK, RateLimiter, chunk_for

    r = aioredis.Redis.from_url(redis_settings.redis_url)
    keys = CacheKeys(redis_settings.redis_prefix)
    limiter = RateLimiter(r, keys)
    script = limiter._script
    inline: list[bool] = []  # per Redis call: made by a request (True) or ahead (False)

    async def spy(**kw: Any) -> Any:
        inline.append(asyncio.current_task() not in limiter._background)
        return await script(**kw)

    limiter._script = spy  # type: ignore[assignment]
    limit = 1_000_000
    n = chunk_for(limit)
    assert n >= PREFETCH_MIN_CHUNK
    try:
        for _ in range(3):  # a run that straddles a window edge is retried in the next window
            idx = int(time.time())
            who, ds = f"ip:ahead{idx}", []
            inline.clear()
            for _ in range(2_000):
                ds.append(await limiter.hit(who, limit))
                await asyncio.sleep(0)  # a background reservation runs, as in a server
            if int(time.time()) == idx:
                break
        assert [d.remaining for d in ds] == list(range(limit - 1, limit - 2_001, -1))
        assert inline[0] and not any(inline[1:]) and len(inline) >= 2_000 // n
        counted = int(await r.get(keys.ratelimit(who, idx)) or 0)
        assert 2_000 <= counted <= 2_000 + n + n // 2
        assert limiter.redis_failures == 0
    finally:
        await r.aclose()
