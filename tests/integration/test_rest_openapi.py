"""The OpenAPI document is accurate: real responses (success and errors) validate against the
schema it declares for that path and status, and no undocumented status is answered."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from jsonschema import Draft202012Validator

from core.cache_keys import CacheKeys
from core.settings import Settings
from gateway_rest.app import create_app
from storage.cache_model import CacheModel
from storage.db_rows import RowBatch, RowBuilder
from storage.db_writer import DbWriter, DbWriterConfig
from storage.migrate import migrate
from testkit import fake_aggregator as T
from tests.helpers import put_cache_writes

pytestmark = pytest.mark.integration
SYM = "OAS-USD"


async def _seed(s: Settings) -> None:
    m = CacheModel(book_depth=100)
    m.on_snapshot_record(b"status:OAS-USD", T.status(SYM, 1))
    m.on_snapshot_record(
        b"l2:OAS-USD", T.l2_snapshot(SYM, 9, [["100", "1"]], [["101", "2"]], checksum=7)
    )
    m.on_snapshot_record(
        b"l3:OAS-USD", T.msg("l3_snapshot", "l3", SYM, 3, {"bids": [["100", "1", "a"]], "asks": []})
    )
    m.on_snapshot_record(b"ticker:OAS-USD", T.ticker(SYM, 4))
    m.on_snapshot_record(b"stats:OAS-USD", T.stats(SYM, 4))
    m.on_stream_record(T.trade(SYM, 1, "q1", "100", "1"))
    m.on_stream_record(
        T.candle(SYM, "1m", 1, "2026-11-24T07:00:00.000000Z", "1", "2", "1", "2", "3")
    )
    w = m.take_writes()
    k = CacheKeys(s.redis_prefix)
    r = aioredis.Redis.from_url(s.redis_url)
    try:
        await put_cache_writes(r, k, w)
        await r.lpush(k.trades(SYM), *w.trades[SYM])
        await r.set(k.trades_seq(SYM), "1:1")
    finally:
        await r.aclose()
    b = RowBatch()
    rb = RowBuilder(snapshot_topic="x")
    for i in range(5):
        rb.add(
            b,
            "t",
            0,
            i,
            None,
            T.trade(SYM, i + 1, f"h{i}", "100", "1", ts_ns=1_795_000_000_000_000_000 + i),
        )
    rb.add(
        b,
        "t",
        0,
        9,
        None,
        T.candle(SYM, "1m", 1, "2026-11-20T07:00:00.000000Z", "1", "2", "1", "2", "3"),
    )
    dbw = DbWriter(s, DbWriterConfig(group_id="unused"))
    assert await dbw.write(b)
    if dbw._pool is not None:  # noqa: SLF001
        await dbw._pool.close()  # noqa: SLF001


def _validator(
    spec: dict[str, Any], path: str, status: int, ctype: str = "application/json"
) -> Draft202012Validator:
    op = spec["paths"][path]["get"]
    assert str(status) in op["responses"], f"{path} answered undocumented {status}"
    schema = op["responses"][str(status)]["content"][ctype]["schema"]
    return Draft202012Validator({**schema, "components": spec["components"]})


CASES = [
    ("/api/v1/market/symbols", "/api/v1/market/symbols", 200),
    ("/api/v1/market/{symbol}/orderbook", f"/api/v1/market/{SYM}/orderbook?depth=5", 200),
    ("/api/v1/market/{symbol}/orderbook", f"/api/v1/market/{SYM}/orderbook?level=3", 200),
    ("/api/v1/market/{symbol}/orderbook", "/api/v1/market/NO-PE/orderbook", 404),
    ("/api/v1/market/{symbol}/orderbook", f"/api/v1/market/{SYM}/orderbook?depth=-1", 422),
    ("/api/v1/market/{symbol}/ticker", f"/api/v1/market/{SYM}/ticker", 200),
    ("/api/v1/market/{symbol}/stats", f"/api/v1/market/{SYM}/stats", 200),
    ("/api/v1/market/{symbol}/trades", f"/api/v1/market/{SYM}/trades?limit=3", 200),
    (
        "/api/v1/market/{symbol}/trades",
        f"/api/v1/market/{SYM}/trades?start=2020-01-01T00:00:00Z&limit=2",
        200,
    ),
    ("/api/v1/market/{symbol}/trades", f"/api/v1/market/{SYM}/trades?start=x", 422),
    (
        "/api/v1/market/{symbol}/candles",
        f"/api/v1/market/{SYM}/candles?interval=1m&start=2026-11-01T00:00:00Z",
        200,
    ),
    ("/api/v1/market/{symbol}/candles", f"/api/v1/market/{SYM}/candles?interval=7m", 422),
    ("/health", "/health", 200),
    ("/health/ready", "/health/ready", 200),
    ("/health/live", "/health/live", 200),
]


async def test_responses_match_the_openapi_document(settings: Settings, pg_dsn: str) -> None:
    await migrate(pg_dsn)
    s = dataclasses.replace(settings, pg_dsn=pg_dsn)
    await _seed(s)
    app = create_app(s)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        spec = (await c.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.")
        for template, url, status in CASES:
            r = await c.get(url)
            assert r.status_code == status, (url, r.text)
            errors = list(_validator(spec, template, status).iter_errors(r.json()))
            assert not errors, (url, [e.message for e in errors])
        hist = (
            await c.get(f"/api/v1/market/{SYM}/trades?start=2020-01-01T00:00:00Z&limit=2")
        ).json()
        assert hist["next_cursor"] and len(hist["trades"]) == 2
        both = (
            await c.get(f"/api/v1/market/{SYM}/candles?interval=1m&start=2026-11-01T00:00:00Z")
        ).json()
        assert [x["start"][:10] for x in both["candles"]] == ["2026-11-20", "2026-11-24"]
        for p in ("depth", "level"):
            names = [
                x["name"]
                for x in spec["paths"]["/api/v1/market/{symbol}/orderbook"]["get"]["parameters"]
            ]
            assert p in names
