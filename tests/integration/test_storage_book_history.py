"""The book at a past moment, against the live stream, on both storage backends.

Simulator -> aggregator -> md.l2 / md.l3 / md.snapshot -> database writer -> stream_messages +
book_snapshots; then the book rebuilt for many random ``seq`` (and times) must equal the book a
client following the live stream held right after that message: same levels, same ``seq``, the
checksum the message carried. REST answers the same through ``/orderbook?seq=`` / ``?at=``, and
404 outside the stored history.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from aggregator.service import Aggregator, ServiceConfig
from aggregator.sources.simulator import run_simulator
from aggregator.testing import StreamCheck, read_topic
from core.book import L2Book
from core.history.book import HistoryError, book_at
from core.settings import Settings
from core.topics import Topics
from gateway_rest.app import create_app
from storage.cache_writer import CacheWriter
from storage.db_writer import DbWriter, DbWriterConfig
from storage.migrate import migrate, timescale_status
from tests.conftest import BASE, unique

pytestmark = pytest.mark.integration

SAMPLES = 25  # random points per symbol and channel


@pytest.fixture(params=["timescale", "native"])
async def backend_dsn(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str]]:
    """A fresh database migrated with the requested backend."""
    name = unique("test_hist_")
    admin = BASE.pg_dsn.rsplit("/", 1)[0] + "/postgres"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = BASE.pg_dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        if request.param == "timescale":
            c = await asyncpg.connect(dsn)
            ok, why = await timescale_status(c)
            await c.close()
            assert ok, f"the local cluster must run TimescaleDB (make infra): {why}"
        result = await migrate(dsn, mode=request.param)
        assert result.backend == request.param
        yield request.param, dsn
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


def _l3_checksum(body: dict[str, Any]) -> int:
    """The aggregated (L2) checksum of an L3 body: what an l3 client verifies."""
    sums: dict[tuple[str, str], Decimal] = {}
    for side, rows in (("buy", body["bids"]), ("sell", body["asks"])):
        for price, size, _ in rows:
            sums[(side, price)] = sums.get((side, price), Decimal(0)) + Decimal(size)
    b = L2Book()
    for (side, price), size in sums.items():
        b.set(side, price, format(size, "f"))
    return b.checksum(10)


async def _stored(dsn: str, channel: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM stream_messages WHERE channel = $1", channel)
        )
    finally:
        await conn.close()


async def test_book_at_seq_and_time_equals_the_live_book(
    settings: Settings, backend_dsn: tuple[str, str]
) -> None:
    backend, dsn = backend_dsn
    # a few seconds of flow at a modest rate: many consumed batches, so many book messages
    s = dataclasses.replace(settings, pg_dsn=dsn, sim_rate=200.0)
    cfg = dataclasses.replace(ServiceConfig.from_settings(s), snapshot_ms=100)
    stop = asyncio.Event()
    agg = Aggregator(s, cfg)
    db = DbWriter(
        s,
        dataclasses.replace(DbWriterConfig.from_settings(s), book_snapshot_s=0.05),
    )
    cache = CacheWriter(s)
    tasks = [asyncio.create_task(x.run(stop)) for x in (agg, db, cache)]
    t = Topics.from_settings(s)
    try:
        await run_simulator(s, asyncio.Event(), steps=800, ops=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while True:  # until every l2/l3 message the aggregator published is stored
            for task in tasks:
                if task.done():
                    task.result()
            l2 = await read_topic(s, t.stream("l2"), limit_s=10)
            l3 = await read_topic(s, t.stream("l3"), limit_s=10)
            if l2 and (await _stored(dsn, "l2"), await _stored(dsn, "l3")) == (len(l2), len(l3)):
                await asyncio.sleep(1.0)
                if len(await read_topic(s, t.stream("l2"), limit_s=10)) == len(l2):
                    break
            assert loop.time() < deadline, f"writer did not catch up: {db.counters}"
            await asyncio.sleep(0.3)
        assert db.counters.book_snapshots_inserted > 0

        # the live client: every l2/l3 message in order, the book after each one remembered
        check = StreamCheck(depth=s.book_checksum_depth)
        live: dict[tuple[str, str, int], tuple[Any, ...]] = {}
        msgs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in l2 + l3:
            m = check.feed(r.value)
            k = (m["channel"], m["symbol"])
            msgs.setdefault(k, []).append(m)
            if m["channel"] == "l2":
                b = check.books[m["symbol"]]
                live[("l2", m["symbol"], m["seq"])] = (b.top_bids(), b.top_asks(), m["checksum"])
            else:
                live[("l3", m["symbol"], m["seq"])] = (m["checksum"],)
        assert not check.errors, check.errors[:5]

        rng = random.Random(13)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            for (channel, sym), ms in sorted(msgs.items()):
                # from the first snapshot the writer stored on: earlier messages precede history
                first = await pool.fetchval(
                    "SELECT min(seq) FROM book_snapshots WHERE channel = $1 AND symbol = $2",
                    channel,
                    sym,
                )
                assert first is not None, f"no {channel} snapshot of {sym} stored"
                pts = [m for m in ms if m["seq"] >= first]
                # how many messages there are depends on the aggregator's batching (load)
                assert len(pts) >= 5, (channel, sym, len(pts))
                for m in [*rng.sample(pts, min(SAMPLES, len(pts))), pts[-1]]:
                    level = 3 if channel == "l3" else 2
                    got = await book_at(pool, sym, level=level, depth=10_000, seq=m["seq"])
                    assert (got["seq"], got["epoch"], got["timestamp"]) == (
                        m["seq"],
                        m["epoch"],
                        m["timestamp"],
                    )
                    assert got["checksum"] == m["checksum"]
                    want = live[(channel, sym, m["seq"])]
                    if channel == "l2":
                        assert [tuple(x) for x in got["bids"]] == want[0], (sym, m["seq"])
                        assert [tuple(x) for x in got["asks"]] == want[1], (sym, m["seq"])
                    else:
                        assert _l3_checksum(got) == want[0], (sym, m["seq"])
                # ?at=: the book as of the last message at or before that time
                for m in rng.sample(pts, min(8, len(pts))):
                    from core.codec import ns_from_iso

                    at_ns = ns_from_iso(m["timestamp"])
                    expect = max(x["seq"] for x in pts if x["timestamp"] <= m["timestamp"])
                    got = await book_at(pool, sym, level=level, depth=5, at_ns=at_ns)
                    assert got["seq"] == expect
                with pytest.raises(HistoryError):
                    await book_at(pool, sym, level=level, seq=ms[-1]["seq"] + 10)
                with pytest.raises(HistoryError):
                    await book_at(pool, sym, level=level, at_ns=1_000_000_000)
        finally:
            await pool.close()

        app = create_app(s)
        m = msgs[("l2", "BTC-USD")][-5]
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            u = "/api/v1/market/btc/usd/orderbook"
            r = await c.get(u, params={"seq": m["seq"], "depth": 3})
            assert r.status_code == 200, r.text
            body = r.json()
            want = live[("l2", "BTC-USD", m["seq"])]
            assert body["seq"] == m["seq"] and body["checksum"] == m["checksum"]
            assert body["bids"] == [list(x) for x in want[0][:3]] and body["depth"] == 3
            assert body["source"] == "history"
            r = await c.get(u, params={"at": m["timestamp"]})
            assert r.status_code == 200 and r.json()["seq"] >= m["seq"]
            r3 = await c.get(u, params={"seq": msgs[("l3", "BTC-USD")][-1]["seq"], "level": 3})
            assert r3.status_code == 200 and r3.json()["level"] == 3
            for params, status, err in (
                ({"seq": 10**9}, 404, "no_history"),
                ({"at": "2001-01-01T00:00:00Z"}, 404, "no_history"),
                ({"at": "yesterday"}, 422, "invalid_parameter"),
                ({"seq": -1}, 422, "invalid_parameter"),
                ({"seq": 5, "at": m["timestamp"]}, 422, "invalid_parameter"),
            ):
                r = await c.get(u, params=params)
                assert r.status_code == status, (params, r.text)
                assert r.json()["error"] == err, (params, r.text)
            # the live book still answers as before
            live_r = await c.get(u, params={"depth": 3})
            assert live_r.status_code == 200 and "source" not in live_r.json()
        if backend == "timescale":
            conn = await asyncpg.connect(dsn)
            try:
                n = await conn.fetchval(
                    "SELECT count(*) FROM timescaledb_information.hypertables "
                    "WHERE hypertable_name IN ('stream_messages', 'book_snapshots')"
                )
                assert n == 2
            finally:
                await conn.close()
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 20)
