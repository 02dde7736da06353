"""Bursts of one client's requests on the cached reads: when a micro-cached body or the symbol
catalogue expires, one request reloads it from Redis and the others of the burst get the one
they had instead of waiting on (or repeating) that reload."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx
import pytest

from core.settings import Settings
from gateway_rest.app import create_app
from gateway_rest.config import RestConfig
from gateway_rest.middleware import GatewayApp
from gateway_rest.store import MarketStore
from tests.integration.test_rest_fastpath import SYM, _seed

pytestmark = pytest.mark.integration


async def test_an_expired_body_is_refreshed_once_and_the_burst_does_not_wait(
    redis_settings: Settings,
) -> None:
    await _seed(redis_settings)
    base = RestConfig.from_settings(Settings.from_env({"MD_REST_RATE_LIMIT": "0"}))
    app = create_app(redis_settings, config=dataclasses.replace(base, microcache_ms=50))
    assert isinstance(app, GatewayApp) and app.gateway is not None and app.gateway.fast
    store = app.gateway.fast.store
    reads: list[int] = []
    asked, release = asyncio.Event(), asyncio.Event()
    book = store.book

    async def slow_book(*a: Any, **kw: Any) -> bytes:
        reads.append(1)
        asked.set()
        await release.wait()  # the refresh stays in flight until the burst was answered
        return await book(*a, **kw)

    url = f"/api/v1/market/{SYM}/orderbook?depth=5"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        first = await c.get(url)  # fills the micro-cache
        assert first.status_code == 200
        store.book = slow_book  # type: ignore[method-assign]
        await asyncio.sleep(0.06)  # expired
        refresher = asyncio.create_task(c.get(url))
        await asyncio.wait_for(asked.wait(), 5)
        burst = await asyncio.wait_for(asyncio.gather(*(c.get(url) for _ in range(20))), 5)
        assert {r.status_code for r in burst} == {200}
        assert {r.content for r in burst} == {first.content}  # the body one refresh old
        assert len(reads) == 1  # nobody else asked Redis, nobody waited
        release.set()
        assert (await refresher).status_code == 200
    assert len(reads) == 1


async def test_the_symbol_catalogue_is_reloaded_by_one_request_at_a_time(
    redis_settings: Settings,
) -> None:
    """64 concurrent requests finding the catalogue expired make one Redis call, not 64 (which
    took the pool's 64 connections: "Too many connections", the circuit opened, 503s)."""
    await _seed(redis_settings)
    store = MarketStore(redis_settings)
    store.catalogue_ttl_s = 0.0  # expired at every call
    calls: list[int] = []
    hgetall = store.redis.hgetall

    async def slow_hgetall(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        await asyncio.sleep(0.02)
        return await hgetall(*a, **kw)

    store.redis.hgetall = slow_hgetall  # type: ignore[method-assign]
    try:
        for _ in range(2):  # empty: everyone waits for the load; then: stale while reloading
            calls.clear()
            cats = await asyncio.gather(*(store.catalogue() for _ in range(64)))
            assert len(calls) == 1
            assert all(SYM in c for c in cats)
    finally:
        await store.close()
