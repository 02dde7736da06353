"""REST level=3 answers per tier (issue 12): internal sees source order ids, pro per-day
pseudonyms, anonymous none; account fields are never in any answer."""

from __future__ import annotations

import dataclasses

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from core.cache_keys import CacheKeys
from core.settings import Settings
from gateway_rest.app import create_app
from gateway_rest.config import RestConfig

pytestmark = pytest.mark.integration
SYM = "AN-USD"
INFO = b'{"symbol":"AN-USD","base":"AN","quote":"USD","tick_size":"0.01","min_size":"0.1","status":"online","source":"simulator","channels":["l2","l3"],"seq":1}'
L3 = {
    "symbol": SYM,
    "seq": 3,
    "epoch": 1,
    "timestamp": "2026-12-06T10:00:00.000000Z",
    "level": 3,
    "bids": [["100", "1", "ord-A"], ["99", "2", "ord-B"]],
    "asks": [["101", "1", "ord-C"]],
    "account_id": "acct-1",
}


async def test_level3_per_tier(redis_settings: Settings) -> None:
    r = aioredis.Redis.from_url(redis_settings.redis_url)
    k = CacheKeys(redis_settings.redis_prefix)
    await r.hset(k.symbols, SYM, INFO)
    await r.set(k.l3(SYM), orjson.dumps(L3))
    await r.aclose()
    s = dataclasses.replace(
        redis_settings, extra={**redis_settings.extra, "MD_ANON_SECRET": "s" * 24}
    )
    cfg = RestConfig(api_keys={"kp-123": "pro", "ki-123": "internal"})
    app = create_app(s, config=cfg)
    transport = httpx.ASGITransport(app=app)
    url = f"/api/v1/market/{SYM}/orderbook?level=3&depth=5"
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        anon = (await c.get(url)).json()
        pro = (await c.get(url, headers={"X-API-Key": "kp-123"})).json()
        internal = (await c.get(url, headers={"X-API-Key": "ki-123"})).json()
    assert anon["bids"] == [["100", "1"], ["99", "2"]]
    assert [row[2] for row in internal["bids"]] == ["ord-A", "ord-B"]
    ids = [row[2] for row in pro["bids"]]
    assert all(i.startswith("o_") for i in ids) and len(set(ids)) == 2
    for body in (anon, pro, internal):
        assert "account_id" not in body and "acct-1" not in orjson.dumps(body).decode()
