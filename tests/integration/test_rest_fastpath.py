"""The orderbook/ticker fast path answers exactly what the FastAPI routes answer, and falls
through to them for everything unusual."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
import redis.asyncio as aioredis

from core.cache_keys import CacheKeys
from core.settings import Settings
from gateway_rest.app import create_app
from gateway_rest.config import RestConfig
from gateway_rest.middleware import GatewayApp
from storage.cache_model import CacheModel
from testkit import fake_aggregator as T
from tests.helpers import put_cache_writes

pytestmark = pytest.mark.integration
SYM = "FP-USD"


async def _seed(s: Settings) -> None:
    m = CacheModel(book_depth=100)
    m.on_snapshot_record(b"status:FP-USD", T.status(SYM, 1))
    m.on_snapshot_record(
        b"l2:FP-USD",
        T.l2_snapshot(
            SYM,
            9,
            [[str(100 - i), "1"] for i in range(30)],
            [[str(101 + i), "2"] for i in range(30)],
            checksum=7,
        ),
    )
    m.on_snapshot_record(b"ticker:FP-USD", T.ticker(SYM, 4))
    w = m.take_writes()
    k = CacheKeys(s.redis_prefix)
    r = aioredis.Redis.from_url(s.redis_url)
    try:
        await put_cache_writes(r, k, w)
    finally:
        await r.aclose()


@pytest.mark.parametrize(
    "path",
    [
        "orderbook",
        "orderbook?depth=1",
        "orderbook?depth=7",
        "orderbook?depth=20&level=2",
        "orderbook?depth=500",
        "orderbook?depth=0",
        "orderbook?depth=x",
        "orderbook?level=3",
        "orderbook?foo=1",
        "ticker",
        "ticker?x=1",
    ],
)
async def test_fast_path_equals_route(redis_settings: Settings, path: str) -> None:
    await _seed(redis_settings)
    base = RestConfig.from_settings(Settings.from_env({"MD_REST_RATE_LIMIT": "0"}))
    fast = create_app(redis_settings, config=dataclasses.replace(base, microcache_ms=50))
    slow = create_app(redis_settings, config=dataclasses.replace(base, fast_path=False))
    out = []
    for app in (fast, slow):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            for sym in (SYM, "fp/usd", "NOPE-USD"):
                r = await c.get(f"/api/v1/market/{sym}/{path}")
                out.append((r.status_code, r.content))
    assert out[:3] == out[3:]


async def test_concurrent_reads_share_one_redis_call(redis_settings: Settings) -> None:
    import asyncio

    await _seed(redis_settings)
    cfg = RestConfig.from_settings(
        Settings.from_env({"MD_REST_RATE_LIMIT": "0", "MD_REST_MICROCACHE_MS": "0"})
    )
    app = create_app(redis_settings, config=cfg)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        rs = await asyncio.gather(
            *(c.get(f"/api/v1/market/{SYM}/orderbook?depth=5") for _ in range(50))
        )
    assert {r.status_code for r in rs} == {200} and len({r.content for r in rs}) == 1
    assert isinstance(app, GatewayApp) and app.gateway is not None
    assert app.gateway.fast is not None
    assert app.gateway.fast.shared > 0
