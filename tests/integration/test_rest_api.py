"""Every REST endpoint against data that went through the real writers (Kafka -> Redis and
Kafka -> PostgreSQL), history paged across partitions, and every validation error."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from core.codec import iso_from_ns
from core.kafka import make_producer
from core.settings import Settings
from core.topics import Topics
from gateway_rest.app import create_app
from gateway_rest.models import (
    CandlesResponse,
    OrderBook,
    OrderBookL3,
    Stats,
    SymbolsResponse,
    Ticker,
    TradesResponse,
)
from storage.cache_writer import CacheWriter
from storage.db_writer import DbWriter
from storage.migrate import migrate
from testkit import fake_aggregator as T
from tests.helpers import eventually

pytestmark = pytest.mark.integration


SYM, L2ONLY = "RST-USD", "LTWO-USD"
N_TRADES = 300


def _ns(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


@pytest.fixture
async def pipeline(settings: Settings, pg_dsn: str) -> AsyncIterator[tuple[Settings, datetime]]:
    await migrate(pg_dsn)
    s = dataclasses.replace(settings, pg_dsn=pg_dsn)
    t = Topics.from_settings(s)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = midnight - timedelta(seconds=N_TRADES // 2)
    prev_min = iso_from_ns(_ns(midnight - timedelta(minutes=1)))
    cur_min = iso_from_ns(_ns(midnight))
    p = make_producer(s)
    await p.start()
    try:
        await T.produce(
            p,
            t.snapshot,
            [
                (f"status:{SYM}", T.status(SYM, 1)),
                (
                    f"status:{L2ONLY}",
                    T.status(L2ONLY, 1, channels=["ticker", "l2", "trades", "candles", "stats"]),
                ),
                (
                    f"l2:{SYM}",
                    T.l2_snapshot(
                        SYM,
                        5,
                        [["100.0", "1"], ["99.0", "2"]],
                        [["101.0", "1"], ["102.0", "2"]],
                        checksum=42,
                    ),
                ),
                (
                    f"l3:{SYM}",
                    T.msg(
                        "l3_snapshot",
                        "l3",
                        SYM,
                        3,
                        {"bids": [["100.0", "1", "o1"]], "asks": [["101.0", "1", "o2"]]},
                    ),
                ),
                (f"ticker:{SYM}", T.ticker(SYM, 7, last_price="100.5")),
                (f"stats:{SYM}", T.stats(SYM, 4)),
            ],
        )
        await T.produce_stream(
            p,
            t,
            "trades",
            [
                (
                    SYM,
                    T.trade(
                        SYM,
                        i + 1,
                        f"x{i:05d}",
                        "100.5",
                        "0.1",
                        ts_ns=_ns(first + timedelta(seconds=i)),
                    ),
                )
                for i in range(N_TRADES)
            ],
        )
        await T.produce_stream(
            p,
            t,
            "candles_1m",
            [
                (
                    SYM,
                    T.candle(SYM, "1m", 1, prev_min, "100", "101", "99", "100", "5", closed=True),
                ),
                (SYM, T.candle(SYM, "1m", 2, cur_min, "100", "102", "99", "101", "2")),
            ],
        )
    finally:
        await p.stop()
    cache, db = CacheWriter(s), DbWriter(s)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(cache.run(stop)), asyncio.create_task(db.run(stop))]

    async def written() -> bool:
        for task in tasks:
            if task.done():
                task.result()
        return (
            db.counters.trades_inserted >= N_TRADES
            and db.counters.candles_written >= 2
            and cache.model.trades_pos.get(SYM, (0, 0))[1] == N_TRADES
            and cache.redis_ok
        )

    await eventually(written, 20)
    yield s, midnight
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 15)


async def test_every_endpoint(pipeline: tuple[Settings, datetime]) -> None:
    s, midnight = pipeline
    app = create_app(s)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/api/v1/market/symbols")
        syms = SymbolsResponse.model_validate(r.json()).symbols
        assert [x.symbol for x in syms] == [L2ONLY, SYM]

        book = OrderBook.model_validate(
            (await c.get(f"/api/v1/market/{SYM}/orderbook?depth=1")).json()
        )
        assert (book.seq, book.checksum, book.bids, book.asks) == (
            5,
            42,
            [["100.0", "1"]],
            [["101.0", "1"]],
        )
        l3 = OrderBookL3.model_validate(
            (await c.get(f"/api/v1/market/{SYM}/orderbook?level=3")).json()
        )
        assert (
            l3.seq == 3 and l3.bids == [["100.0", "1", "o1"]] and l3.asks == [["101.0", "1", "o2"]]
        )
        r = await c.get(f"/api/v1/market/{L2ONLY}/orderbook?level=3")
        assert r.status_code == 422 and r.json()["parameter"] == "level"

        tick = Ticker.model_validate((await c.get(f"/api/v1/market/{SYM.lower()}/ticker")).json())
        assert tick.seq == 7 and tick.model_extra and tick.model_extra["last_price"] == "100.5"
        st = Stats.model_validate((await c.get(f"/api/v1/market/{SYM}/stats")).json())
        assert st.seq == 4

        recent = TradesResponse.model_validate(
            (await c.get(f"/api/v1/market/{SYM}/trades?limit=5")).json()
        )
        assert recent.seq == N_TRADES and [t.trade_id for t in recent.trades] == [
            f"x{i:05d}" for i in range(N_TRADES - 1, N_TRADES - 6, -1)
        ]  # newest first

        # history from the database, across the midnight partition boundary, paged
        start = iso_from_ns(_ns(midnight - timedelta(hours=1)))
        end = str(int((midnight + timedelta(hours=1)).timestamp()))  # Unix seconds work too
        got: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {"start": start, "end": end, "limit": "70"}
            if cursor:
                params["cursor"] = cursor
            page = TradesResponse.model_validate(
                (await c.get(f"/api/v1/market/{SYM}/trades", params=params)).json()
            )
            got += [t.trade_id for t in page.trades]
            pages += 1
            cursor = page.next_cursor
            if cursor is None:
                break
        assert got == [f"x{i:05d}" for i in range(N_TRADES)] and pages == 5
        mid = (
            await c.get(
                f"/api/v1/market/{SYM}/trades",
                params={
                    "start": iso_from_ns(_ns(midnight)),
                    "end": iso_from_ns(_ns(midnight + timedelta(seconds=10))),
                },
            )
        ).json()
        assert [t["trade_id"] for t in mid["trades"]] == [f"x{i:05d}" for i in range(150, 160)]

        cd = CandlesResponse.model_validate(
            (await c.get(f"/api/v1/market/{SYM}/candles?interval=1m")).json()
        )
        assert [(x.start, x.closed, x.close) for x in cd.candles] == [
            (iso_from_ns(_ns(midnight - timedelta(minutes=1))), True, "100"),
            (iso_from_ns(_ns(midnight)), False, "101"),
        ]
        assert cd.seq == 2
        only_prev = (
            await c.get(
                f"/api/v1/market/{SYM}/candles",
                params={
                    "interval": "1m",
                    "start": iso_from_ns(_ns(midnight - timedelta(minutes=5))),
                    "end": iso_from_ns(_ns(midnight)),
                },
            )
        ).json()
        assert len(only_prev["candles"]) == 1
        assert (await c.get(f"/api/v1/market/{SYM}/candles?interval=1h")).json()["candles"] == []

        spec = (await c.get("/openapi.json")).json()
        assert {
            "/api/v1/market/{symbol}/trades",
            "/api/v1/market/{symbol}/candles",
            "/api/v1/market/{symbol}/stats",
            "/api/v1/market/{symbol}/ticker",
        } <= set(spec["paths"])


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("orderbook?depth=0", "depth"),
        ("orderbook?depth=x", "depth"),
        ("orderbook?level=4", "level"),
        ("orderbook?level=1", "level"),
        ("trades?limit=0", "limit"),
        ("trades?limit=-3", "limit"),
        ("trades?limit=ten", "limit"),
        ("trades?limit=%2B5", "limit"),  # "+5": lax int parsing took it
        ("orderbook?seq=1&epoch=+200", "epoch"),  # " 200" once decoded (schemathesis found it)
        ("orderbook?depth=%2020", "depth"),
        ("trades?start=yesterday", "start"),
        ("trades?end=2026-13-45", "end"),
        ("trades?start=2026-11-24T10:00:00Z&end=2026-11-24T09:00:00Z", "start"),
        ("trades?cursor=abc", "cursor"),
        ("trades?cursor=99999999999999999999999:x", "cursor"),
        ("trades?start=99999999999999999", "start"),
        ("trades?end=0001-01-01T00:00:00Z", "end"),
        ("candles?interval=2m", "interval"),
        ("candles?interval=1m&limit=0", "limit"),
        ("candles?interval=1m&start=nope", "start"),
        ("candles?interval=1m&start=1700000001&end=1700000000", "start"),
    ],
)
async def test_validation_errors_name_the_parameter(
    redis_settings: Settings, path: str, param: str
) -> None:
    import redis.asyncio as aioredis

    from core.cache_keys import CacheKeys

    r = aioredis.Redis.from_url(redis_settings.redis_url)
    await r.hset(
        CacheKeys(redis_settings.redis_prefix).symbols,
        SYM,
        T.status(SYM).split(b'"data":', 1)[1][:-1],
    )
    await r.aclose()
    app = create_app(redis_settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        resp = await c.get(f"/api/v1/market/{SYM}/{path}")
        assert resp.status_code == 422, resp.text
        body = resp.json()
        assert body["error"] == "invalid_parameter" and body["parameter"] == param
        assert param in body["message"]
        for ep in ("orderbook", "ticker", "trades", "candles", "stats"):
            nf = await c.get(f"/api/v1/market/NOPE-USD/{ep}")
            assert nf.status_code == 404 and nf.json()["error"] == "unknown_symbol"
        bad = await c.get("/api/v1/market/!!!/ticker")
        assert bad.status_code == 404 and bad.json()["parameter"] == "symbol"
