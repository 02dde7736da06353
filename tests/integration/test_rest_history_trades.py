"""Trades from the database (gateway_rest/store.py over core/history/sql.py) carry the strings
the trade messages carried: prices and sizes as the stored digits (never ``1E-8``), times in the
messages' ISO form with microseconds, pages chained by a cursor that resumes exactly after the
last trade, including trades that share a timestamp."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest

from core.codec import iso_from_ns
from gateway_rest.store import MarketStore
from storage.migrate import migrate
from tests.conftest import BASE

pytestmark = pytest.mark.integration
SYM = "HT-USD"
T0 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
T0_NS = int(T0.timestamp()) * 1_000_000_000
# (trade_id, µs after T0, price, size): whole seconds, µs, tiny and large values, trailing zeros
TRADES = [
    ("a", 0, "50000.25", "0.0100"),
    ("b", 1, "0.00000001", "12345678.90000000"),
    ("c", 1, "100", "1"),  # same time as b: ordered by trade_id
    ("d", 999_999, "1.5", "0.5"),
    ("e", 2_000_000, "99999999999.99999999", "0.00000100"),
]


async def test_database_trades_render_the_published_strings(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    conn = await asyncpg.connect(pg_dsn)
    try:
        for i, (tid, us, price, size) in enumerate(TRADES):
            await conn.execute(
                "INSERT INTO trades VALUES ($1, $2, $3::timestamptz + $4 * interval '1 microsecond',"
                " $5::numeric, $6::numeric, 'buy', $7, 1)",
                SYM,
                tid,
                T0,
                us,
                price,
                size,
                i + 1,
            )
    finally:
        await conn.close()
    store = MarketStore(dataclasses.replace(BASE, pg_dsn=pg_dsn))
    try:
        got = []
        cursor = None
        pages = 0
        while True:
            body = orjson.loads(await store.trades_range(SYM, T0_NS, T0_NS + 10**10, 2, cursor))
            got += body["trades"]
            pages += 1
            if body["next_cursor"] is None:
                break
            ns, tid = body["next_cursor"].split(":", 1)
            cursor = (int(ns), tid)
        assert pages == 3
        assert got == [
            {
                "trade_id": tid,
                "price": price,
                "size": size,
                "side": "buy",
                "time": iso_from_ns(T0_NS + us * 1000),
                "seq": i + 1,
            }
            for i, (tid, us, price, size) in enumerate(TRADES)
        ]
        newest = orjson.loads(await store.trades_range(SYM, None, None, 2, None, newest_first=True))
        assert [t["trade_id"] for t in newest["trades"]] == ["e", "d"]
        assert newest["seq"] == 5 and newest["next_cursor"] is None
    finally:
        await store.close()
