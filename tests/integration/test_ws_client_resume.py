"""Resume by client_id across two gateway processes on the real Kafka + Redis.

One gateway runs in the test process, the other is ``python -m gateway_ws`` in its own process:
the client's subscription set must travel through Redis (core/cache_keys.CacheKeys.client), not
through any memory the two share.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from core.cache_keys import CacheKeys
from core.codec import iso_from_ns
from core.settings import Settings
from gateway_ws.client_ids import owner_of
from tests.conftest import free_port
from tests.integration.ws_helpers import (
    ClientBook,
    Feed,
    drop_topics,  # noqa: F401 - autouse: topics deleted after each test
    fill_resume_window,
    recv_until,
    running_gateway,
    send,
    url,
)
from tests.unit.test_follower_join import T0

pytestmark = pytest.mark.integration


@pytest.fixture
async def r(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def other_process(env_for: dict[str, str]) -> AsyncIterator[int]:
    """``python -m gateway_ws`` (one process) on a free port; yields the port once healthy."""
    port = free_port()
    env = dict(env_for, MD_WS_PORT=str(port), MD_WS_PROCESSES="1", MD_LOG_LEVEL="WARNING")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway_ws", env=env, cwd=os.getcwd()
    )
    try:
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)


async def _connect_when_up(port: int, query: str = "") -> ClientConnection:
    async with asyncio.timeout(30):
        while True:
            try:
                return await connect(f"ws://127.0.0.1:{port}/ws{query}")
            except OSError:
                await asyncio.sleep(0.2)


def _updates(msgs: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for m in msgs:
        assert m["type"] == "l2_update", m
        out.setdefault(m["symbol"], []).append(m["seq"])
    return out


async def test_resume_by_client_id_on_another_process_gets_every_channel_it_had(
    settings: Settings, r: aioredis.Redis, other_process: int
) -> None:
    async with Feed(settings) as feed:
        for sym in ("BTC-USD", "ETH-USD"):
            await feed.snapshot(sym)
            await fill_resume_window(r, settings, await feed.updates(sym, 10))
        books = {"BTC-USD": ClientBook(), "ETH-USD": ClientBook()}
        async with running_gateway(settings) as gw1, connect(url(gw1, "client_id=desk-1")) as ws:
            await send(ws, {"type": "subscribe", "channels": ["l2:BTC-USD", "l2:ETH-USD"], "id": 1})
            await recv_until(ws, lambda m: m["type"] == "subscribed")
            for _ in range(2):
                snap = await recv_until(ws, lambda m: m["type"] == "l2_snapshot")
                books[snap["symbol"]].on(snap)
            assert {s: b.seq for s, b in books.items()} == {"BTC-USD": 10, "ETH-USD": 10}
            ws.transport.abort()  # gone without a closing handshake
        # the set is in Redis, under the anonymous owner, whatever process wrote it
        stored = await r.get(CacheKeys(settings.redis_prefix).client(owner_of(None), "desk-1"))
        assert stored is not None and orjson.loads(stored)["subs"] == [
            {"channel": "l2", "symbol": "BTC-USD"},
            {"channel": "l2", "symbol": "ETH-USD"},
        ]
        assert await r.pttl(CacheKeys(settings.redis_prefix).client("anon", "desk-1")) > 0
        # missed while away: seq 11..15 of both (published at T0 + seq µs)
        for sym in ("BTC-USD", "ETH-USD"):
            await fill_resume_window(r, settings, await feed.updates(sym, 5, start=10))
        since_s = f"{(T0 + 11_000) // 10**9}.{(T0 + 11_000) % 10**9:09d}"  # Unix seconds
        ws = await _connect_when_up(other_process)
        try:
            await send(ws, {"type": "resume", "client_id": "desk-1", "since": since_s, "id": 2})
            ack = await recv_until(ws, lambda m: True, limit=10)
            assert ack["type"] == "resumed" and ack["id"] == 2, ack
            assert ack["changed"] == ["l2:BTC-USD", "l2:ETH-USD"]
            assert ack["since"] == iso_from_ns(T0 + 11_000)
            assert ack["beyond_window"] == []
            got = [await recv_until(ws, lambda m: True, limit=10) for _ in range(10)]
            assert _updates(got) == {
                "BTC-USD": [11, 12, 13, 14, 15],
                "ETH-USD": [11, 12, 13, 14, 15],
            }
            for m in got:
                books[m["symbol"]].on(m)  # continuous, checksums valid
            # then live, on both
            for sym in ("BTC-USD", "ETH-USD"):
                await feed.updates(sym, 1, start=15)
            live = [await recv_until(ws, lambda m: True, limit=10) for _ in range(2)]
            assert sorted(_updates(live).items()) == [("BTC-USD", [16]), ("ETH-USD", [16])]
        finally:
            await ws.close()


async def test_resume_beyond_the_window_and_unknown_ids_answer_clearly(
    settings: Settings, r: aioredis.Redis, other_process: int
) -> None:
    async with Feed(settings) as feed:
        await feed.snapshot("BTC-USD")
        ups = await feed.updates("BTC-USD", 30)
        await fill_resume_window(r, settings, ups[20:])  # the window holds 21..30 only
        ws = await _connect_when_up(other_process, "?client_id=desk-2")
        try:
            await send(ws, {"type": "resume", "since": 0})
            err = await recv_until(ws, lambda m: True, limit=10)
            assert err["type"] == "error" and err["code"] == "unknown_client_id", err
            await send(ws, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD"})
            await recv_until(ws, lambda m: m["type"] == "l2_snapshot")
        finally:
            await ws.close()
        async with running_gateway(settings) as gw, connect(url(gw)) as ws:
            # 5 µs after seq 0: seqs 5..20 are no longer retained
            await send(
                ws, {"type": "resume", "client_id": "desk-2", "since": iso_from_ns(T0 + 5_000)}
            )
            ack = await recv_until(ws, lambda m: True)
            assert ack["type"] == "resumed", ack
            assert ack["beyond_window"] == [
                {"target": "l2:BTC-USD", "window_start": orjson.loads(ups[20])["timestamp"]}
            ]
            note = await recv_until(ws, lambda m: True)
            assert note["type"] == "resync" and note["reason"] == "resume_too_old"
            snap = await recv_until(ws, lambda m: True)
            assert snap["type"] == "l2_snapshot" and snap["resync"] is True and snap["seq"] == 30
