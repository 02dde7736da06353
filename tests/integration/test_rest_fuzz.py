"""Never a 500 for bad input: random query strings and symbols on every endpoint (hypothesis)."""

from __future__ import annotations

import asyncio
import dataclasses
from urllib.parse import quote

import httpx
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.cache_keys import CacheKeys
from core.settings import Settings
from gateway_rest.app import create_app
from gateway_rest.config import RestConfig
from storage.migrate import migrate

pytestmark = pytest.mark.integration
SYM = "FZ-USD"
INFO = b'{"symbol":"FZ-USD","base":"FZ","quote":"USD","tick_size":"0.01","min_size":"0.1","status":"online","source":"simulator","channels":["l2","l3"],"seq":1}'


PARAMS = ["depth", "level", "limit", "start", "end", "cursor", "interval", "x"]
values = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(
        [
            "1m",
            "2026-11-24T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "1:a",
            "99999999999999999999999:x",
            "1e3",
            "NaN",
            "",
            "%00",
            "3",
        ]
    ),
)
queries = st.dictionaries(st.sampled_from(PARAMS), values, max_size=4)
endpoints = st.sampled_from(["orderbook", "ticker", "trades", "candles", "stats"])
symbols = st.one_of(st.just(SYM), st.just("fz/usd"), st.text(min_size=1, max_size=10))


async def test_no_500_for_any_input(redis_settings: Settings, pg_dsn: str) -> None:
    await migrate(pg_dsn)
    s = dataclasses.replace(redis_settings, pg_dsn=pg_dsn)
    r = aioredis.Redis.from_url(s.redis_url)
    await r.hset(CacheKeys(s.redis_prefix).symbols, SYM, INFO)
    await r.aclose()
    cfg = RestConfig.from_settings(Settings.from_env({"MD_REST_RATE_LIMIT": "0"}))
    app = create_app(s, config=cfg)
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, int]] = []

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:

        async def one(sym: str, ep: str, q: dict[str, str]) -> None:
            r = await c.get(f"/api/v1/market/{quote(sym, safe='')}/{ep}", params=q)
            seen.append((ep, r.status_code))
            assert r.status_code < 500 or r.status_code == 503, (sym, ep, q, r.text)
            assert r.headers["content-type"].startswith("application/json")
            body = r.json()
            if r.status_code >= 400:
                assert body["error"] and body["message"]

        @hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(symbols, endpoints, queries)
        def run(sym: str, ep: str, q: dict[str, str]) -> None:
            fut = asyncio.run_coroutine_threadsafe(one(sym, ep, q), loop)
            fut.result(30)

        await loop.run_in_executor(None, run)
    assert len(seen) >= 150 and all(code != 500 for _, code in seen)
