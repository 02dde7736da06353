"""Issue 12 on a real gateway, Kafka and Redis: resume abuse by sockets that never read.

Before the fix one anonymous ``subscribe`` naming ``trades:<symbol>`` 200 times with
``since_seq`` started 200 replays of the 10,000-message Redis window on one socket (118-426 MB
queued, +292 MB RSS, a 1.2 s event-loop stall). Now: duplicate targets collapse, a replaced
resume is cancelled, replays are read in chunks as the client drains and stop at the bound,
so five such sockets grow the gateway by well under 64 MiB and another client is answered
promptly throughout. The numbers on this machine: docs/benchmarks.md "WebSocket abuse".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from core.settings import Settings
from gateway_ws.hub import RESUME_DRAIN_S
from gateway_ws.resume import hist_key
from testkit.ws_abuse import WINDOW, attack, fill_window, never_reading, trade
from tests.integration.ws_helpers import (
    drop_topics,  # noqa: F401 - autouse: topics deleted after each test
    recv_until,
    running_gateway,
    send,
    url,
)
from tests.unit.test_follower_join import T0

pytestmark = pytest.mark.integration


def _rss() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture
async def window(settings: Settings) -> AsyncIterator[None]:
    """10,000 trades in the resume window, as the storage cache writer keeps them."""
    r = aioredis.Redis.from_url(settings.redis_url)
    key = hist_key(settings.redis_prefix, "trades", "BTC-USD")
    try:
        await fill_window(r, settings.redis_prefix, lambda seq: trade(seq, T0 + seq * 1000, T0))
        yield
    finally:
        await r.delete(key)
        await r.aclose()


async def test_five_never_reading_resume_abusers_bound_memory_and_latency(
    settings: Settings, window: None
) -> None:
    # ``fast``: another client, reading normally, answered throughout
    async with running_gateway(settings, ping_interval_s=0) as gw, connect(url(gw)) as fast:
        await send(fast, {"type": "ping", "id": 0})
        await recv_until(fast, lambda m: m["type"] == "pong")
        base = _rss()
        peak = base
        worst = 0.0
        stop = asyncio.Event()

        async def probe() -> None:
            nonlocal peak, worst
            i = 0
            while not stop.is_set():
                i += 1
                t0 = time.monotonic()
                await send(fast, {"type": "ping", "id": i})
                await recv_until(fast, lambda m, i=i: m.get("id") == i, limit=10)
                worst = max(worst, time.monotonic() - t0)
                peak = max(peak, _rss())
                await asyncio.sleep(0.1)  # 10 requests/s: under the anonymous rate

        probing = asyncio.create_task(probe())
        abusers = [await never_reading(gw.cfg.port) for _ in range(5)]
        most_resumes = 0

        def count_resumes() -> None:
            nonlocal most_resumes
            most_resumes = max(most_resumes, len(gw.hub.resumes))

        await attack(abusers, count_resumes)
        # the replays stop at the bound; after RESUME_DRAIN_S without reading each
        # never-reading socket is a slow consumer: served nothing more, its close frame
        # queued (it is dropped CLOSE_WAIT_S later)
        deadline = time.monotonic() + RESUME_DRAIN_S + 20

        def served() -> int:
            return sum(1 for c in gw.hub.clients if not c.closed)

        while served() > 1 and time.monotonic() < deadline:
            most_resumes = max(most_resumes, len(gw.hub.resumes))
            await asyncio.sleep(0.1)
        stop.set()
        await probing
        assert served() == 1, "the never-reading sockets are still served"
        assert not gw.hub.resumes
        for ws in abusers:
            ws.transport.abort()
        grown = peak - base
        assert most_resumes <= len(abusers), most_resumes  # one resume per socket at most
        assert grown < 64 * 2**20, f"gateway grew by {grown / 2**20:.1f} MiB"
        assert worst < 1.5, f"another client waited {worst:.2f} s"
        await send(fast, {"type": "ping", "id": "after"})
        assert (await recv_until(fast, lambda m: m["type"] == "pong"))["id"] == "after"


async def test_a_reading_client_gets_the_whole_window_in_order(
    settings: Settings, window: None
) -> None:
    """The chunked replay still serves a client that reads: exactly seqs 1..10,000."""
    async with running_gateway(settings) as gw, connect(url(gw), max_size=None) as ws:
        await send(
            ws, {"type": "subscribe", "channel": "trades", "symbol": "BTC-USD", "since_seq": 0}
        )
        seqs: list[int] = []
        try:
            async with asyncio.timeout(30):
                while len(seqs) < WINDOW:
                    msg = orjson.loads(await ws.recv())
                    if msg.get("channel") == "trades" and "seq" in msg:
                        assert msg["type"] == "trade", msg
                        seqs.append(msg["seq"])
        except ConnectionClosed:
            pytest.fail(f"closed after {len(seqs)} messages: code {ws.close_code}")
        assert seqs == list(range(1, WINDOW + 1))
