"""Thin slice on the real servers: records in the test's Kafka topics -> cache writer -> Redis ->
REST (in-process ASGI), plus `python -m storage run` and `python -m gateway_rest` as processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from core.kafka import make_producer
from core.settings import Settings
from core.topics import Topics
from gateway_rest.app import create_app
from storage.cache_writer import CacheWriter
from testkit import fake_aggregator as T
from tests.conftest import free_port
from tests.helpers import eventually, stop_procs

pytestmark = pytest.mark.integration


@pytest.fixture
async def running_cache(settings: Settings) -> AsyncIterator[CacheWriter]:
    w = CacheWriter(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    yield w
    stop.set()
    await asyncio.wait_for(task, 10)


async def _seed(settings: Settings) -> None:
    t = Topics.from_settings(settings)
    p = make_producer(settings)
    await p.start()
    try:
        await T.produce(
            p,
            t.snapshot,
            [
                ("status:BTC-USD", T.status("BTC-USD")),
                (
                    "l2:BTC-USD",
                    T.l2_snapshot(
                        "BTC-USD",
                        10,
                        [["100.0", "1"], ["99.5", "2"], ["99.0", "3"]],
                        [["100.5", "1"], ["101.0", "2"], ["101.5", "3"]],
                    ),
                ),
            ],
        )
        await T.produce_stream(p, t, "status", [("ETH-USD", T.status("ETH-USD"))])
        await T.produce_stream(
            p,
            t,
            "l2",
            [
                (
                    "BTC-USD",
                    T.l2_update("BTC-USD", 10, [["buy", "100.0", "9"]]),
                ),  # already in snapshot
                (
                    "BTC-USD",
                    T.l2_update("BTC-USD", 11, [["buy", "100.2", "4"], ["sell", "100.5", "0"]]),
                ),
            ],
        )
    finally:
        await p.stop()


async def test_orderbook_and_symbols_from_cache(
    settings: Settings, running_cache: CacheWriter
) -> None:
    await asyncio.wait_for(running_cache.ready.wait(), 15)
    await _seed(settings)
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:

        async def book_at_11() -> bool:
            r = await c.get("/api/v1/market/BTC-USD/orderbook")
            return r.status_code == 200 and r.json()["seq"] == 11

        await eventually(book_at_11, 15)
        r = await c.get("/api/v1/market/btc-usd/orderbook", params={"depth": 2})
        b = r.json()
        assert r.status_code == 200 and b["symbol"] == "BTC-USD" and b["depth"] == 2
        assert b["bids"] == [["100.2", "4"], ["100.0", "1"]]  # descending, update at seq 10 dropped
        assert b["asks"] == [["101.0", "2"], ["101.5", "3"]]  # ascending, 100.5 removed
        assert r.headers["x-ratelimit-limit"] == "200"
        assert (await c.get("/api/v1/market/BTC%2FUSD/orderbook")).json()["seq"] == 11
        assert (await c.get("/api/v1/market/BTC/USD/orderbook?depth=1")).json()["bids"] == [
            ["100.2", "4"]
        ]

        async def both_listed() -> bool:
            r = await c.get("/api/v1/market/symbols")
            return [s["symbol"] for s in r.json()["symbols"]] == ["BTC-USD", "ETH-USD"]

        await eventually(both_listed, 15)
        sym = (await c.get("/api/v1/market/symbols")).json()["symbols"][0]
        assert sym["tick_size"] == "0.01" and sym["base"] == "BTC" and sym["status"] == "online"

        r = await c.get("/api/v1/market/DOGE-USD/orderbook")
        assert r.status_code == 404 and r.json()["error"] == "unknown_symbol"
        r = await c.get("/api/v1/market/ETH-USD/orderbook")
        assert r.status_code == 404 and r.json()["error"] == "no_data"
        for bad in ("0", "-1", "abc", "1.5"):
            r = await c.get("/api/v1/market/BTC-USD/orderbook", params={"depth": bad})
            assert r.status_code == 422, bad
            assert r.json()["parameter"] == "depth" and "depth" in r.json()["message"]
        big = (await c.get("/api/v1/market/BTC-USD/orderbook", params={"depth": 100000})).json()
        assert big["depth"] == 100 and len(big["bids"]) == 4  # capped at the cached depth

        h = await c.get("/health")
        assert h.status_code == 200 and h.json()["checks"]["redis"]["ok"] is True
        m = (await c.get("/metrics")).text
        assert (
            'md_rest_requests_total{method="GET",route="/api/v1/market/{symbol}/orderbook",status="200"}'
            in m
        )
        assert (
            'md_rest_request_seconds_bucket{le="0.005",route="/api/v1/market/{symbol}/orderbook"}'
            in m
        )
    assert running_cache.model.counters.bad_records == 0
    assert running_cache.model.counters.stale_dropped >= 1
    assert running_cache.counters.hist_added >= 2


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=os.getcwd(),
    )


async def test_processes_serve_health_and_orderbook(
    settings: Settings, env_for: dict[str, str], pg_dsn: str
) -> None:
    from storage.migrate import migrate

    await migrate(pg_dsn)
    ops, rest = free_port(), free_port()
    env = dict(env_for, MD_PG_DSN=pg_dsn, MD_STORAGE_HTTP_PORT=str(ops), MD_REST_PORT=str(rest))
    storage = _start(["storage", "run"], env)
    gw = _start(["gateway_rest"], env)
    try:
        await _seed(settings)
        async with httpx.AsyncClient(timeout=2) as c:

            async def healthy() -> bool:
                try:
                    a = await c.get(f"http://127.0.0.1:{ops}/health")
                    b = await c.get(f"http://127.0.0.1:{rest}/health")
                except httpx.TransportError:
                    return False
                return a.status_code == 200 and b.status_code == 200

            await eventually(healthy, 30)

            async def served() -> bool:
                r = await c.get(f"http://127.0.0.1:{rest}/api/v1/market/BTC-USD/orderbook?depth=5")
                return r.status_code == 200 and r.json()["seq"] == 11

            await eventually(served, 20)
            assert (await c.get(f"http://127.0.0.1:{rest}/openapi.json")).status_code == 200
            assert (await c.get(f"http://127.0.0.1:{rest}/docs")).status_code == 200
            m = (await c.get(f"http://127.0.0.1:{ops}/metrics")).text
            assert "md_storage_cache_events_total" in m
    finally:
        stop_procs((storage, gw), 15)
    assert storage.returncode == 0, storage.stderr.read().decode()[-2000:] if storage.stderr else ""
