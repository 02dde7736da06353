"""REST answers of a gateway with MD_SIGNING_KEY carry ``X-MD-Signature`` over their exact body
(fast path, routes and the middleware's own refusals alike), verifiable with the keys of its
``GET /keys``; without the key nothing is signed (issue 12, docs/security.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from core.cache_keys import CacheKeys
from core.settings import Settings
from core.signing import HEADER, Verifier, write_keypair
from gateway_rest.app import create_app
from gateway_rest.config import RestConfig

pytestmark = pytest.mark.integration
SYM = "SG-USD"
INFO = b'{"symbol":"SG-USD","base":"SG","quote":"USD","tick_size":"0.01","min_size":"0.1","status":"online","source":"simulator","channels":["l2","l3"],"seq":1}'
TICKER = b'{"symbol":"SG-USD","seq":3,"epoch":1,"timestamp":"2026-12-06T10:00:00.000000Z","bid":"100","ask":"101","last":"100.5"}'
L3 = {
    "symbol": SYM,
    "seq": 3,
    "epoch": 1,
    "timestamp": "2026-12-06T10:00:00.000000Z",
    "level": 3,
    "bids": [["100", "1", "ord-A"]],
    "asks": [["101", "1", "ord-C"]],
}


async def _seed(s: Settings) -> None:
    r = aioredis.Redis.from_url(s.redis_url)
    k = CacheKeys(s.redis_prefix)
    await r.hset(k.symbols, SYM, INFO)
    await r.set(k.ticker(SYM), TICKER)
    await r.set(k.l3(SYM), orjson.dumps(L3))
    await r.aclose()


def _client(s: Settings) -> httpx.AsyncClient:
    app = create_app(s, config=RestConfig(api_keys={"ki-123": "internal"}))
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def test_every_api_answer_is_signed(redis_settings: Settings, tmp_path: Path) -> None:
    await _seed(redis_settings)
    key, _ = write_keypair(str(tmp_path / "k"))
    s = dataclasses.replace(
        redis_settings, extra={**redis_settings.extra, "MD_SIGNING_KEY": str(key)}
    )
    async with _client(s) as c:
        verifier = Verifier.from_document((await c.get("/keys")).json())
        answers = [
            await c.get(f"/api/v1/market/{SYM}/ticker"),  # fast path
            await c.get(f"/api/v1/market/{SYM}/ticker"),  # fast path, cached signature
            await c.get(
                f"/api/v1/market/{SYM}/orderbook?level=3&depth=5", headers={"X-API-Key": "ki-123"}
            ),  # a route
            await c.get("/api/v1/market/NOPE-USD/ticker"),  # 404 error body
            await c.get("/api/v1/market/symbols", headers={"X-API-Key": "wrong"}),  # 401 refusal
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 404, 401]
    assert answers[0].content == TICKER
    for a in answers:
        assert verifier.verify_detached(a.content, a.headers.get(HEADER)) is None, a.text
    tampered = answers[0].content.replace(b'"bid":"100"', b'"bid":"99"')
    assert verifier.verify_detached(tampered, answers[0].headers[HEADER]) == "bad signature"


async def test_unsigned_without_a_key(redis_settings: Settings) -> None:
    await _seed(redis_settings)
    async with _client(redis_settings) as c:
        r = await c.get(f"/api/v1/market/{SYM}/ticker")
        keys = (await c.get("/keys")).json()
    assert r.status_code == 200 and HEADER not in r.headers and keys == {"keys": []}
