"""Secrets never reach Redis key names: a request with an API key leaves only its fingerprint."""

from __future__ import annotations

import httpx
import pytest
import redis.asyncio as aioredis

from core.security import fingerprint
from core.settings import Settings
from gateway_rest.app import create_app
from gateway_rest.config import RestConfig

pytestmark = pytest.mark.integration
API_KEY = "sk_live_9f8e7d6c5b4a"


async def test_api_key_is_hashed_in_rate_limit_keys(redis_settings: Settings) -> None:
    app = create_app(redis_settings, config=RestConfig(api_keys={API_KEY: "basic"}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/api/v1/market/symbols", headers={"X-API-Key": API_KEY})
        assert "x-ratelimit-limit" in r.headers  # the limiter counted it in Redis
    r2 = aioredis.Redis.from_url(redis_settings.redis_url)
    try:
        names = [k.decode() async for k in r2.scan_iter(f"{redis_settings.redis_prefix}:*")]
    finally:
        await r2.aclose()
    assert any(fingerprint(API_KEY) in n for n in names), names
    assert not any(API_KEY in n for n in names), names
