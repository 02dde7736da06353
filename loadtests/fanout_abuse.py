"""Resume abuse against a real gateway process (issue 12): memory growth and another client's wait.

    .venv/bin/python -m loadtests.fanout_abuse --sockets 5

Fills a 10,000-message trades resume window in Redis (~250 B per message, what the storage
cache writer keeps), starts ``python -m gateway_ws`` (one process) on a free port, then opens
``--sockets`` connections that never read (4 KiB receive buffer, reading paused) and sends on
each one ``subscribe`` naming ``trades:BTC-USD`` 200 times with ``since_seq: 0``, then 20 more
single resubscribes. Meanwhile a normal client sends a ``ping`` every 100 ms. Prints the
gateway's RSS growth (peak, sampled every 50 ms), the longest ping round trip, and how long
until the gateway dropped the abusers. Bounded: ``--seconds`` of observation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from core.kafka import ensure_topics
from core.settings import Settings
from loadtests.fanout import _delete_topics, _healthy
from loadtests.fanout_stats import rss_kib
from testkit.ports import free_port
from testkit.ws_abuse import attack, fill_window, never_reading


def _connections(port: int) -> int:
    """The gateway's open connections, from its /health body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return int(orjson.loads(resp.read())["connections"])
    except urllib.error.HTTPError as exc:  # 503 still has the body
        return int(orjson.loads(exc.read())["connections"])


async def _wait_healthy(port: int, within_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + within_s
    while not await loop.run_in_executor(None, _healthy, port):
        if time.monotonic() > deadline:
            raise RuntimeError("gateway did not become healthy")
        await asyncio.sleep(0.1)


async def _stop(gw: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        gw.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(gw.wait(), 15)
    except TimeoutError:
        gw.kill()


async def run(a: argparse.Namespace) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    s = dataclasses.replace(
        Settings.from_env(), topic_prefix=f"bench.abuse.{tag}", redis_prefix=f"bench:abuse:{tag}"
    )
    await ensure_topics(s, partitions=3)
    r = aioredis.Redis.from_url(s.redis_url)
    key = await fill_window(r, s.redis_prefix)
    port = free_port()
    env = dict(
        os.environ,
        MD_TOPIC_PREFIX=s.topic_prefix,
        MD_REDIS_PREFIX=s.redis_prefix,
        MD_WS_PORT=str(port),
        MD_WS_PROCESSES="1",
        MD_LOG_LEVEL="ERROR",
        MD_WS_PING_INTERVAL_S="0",
    )
    gw = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway_ws", env=env)
    abusers: list[ClientConnection] = []
    try:
        loop = asyncio.get_running_loop()
        await _wait_healthy(port)
        await asyncio.sleep(0.5)
        base = rss_kib(gw.pid)
        peak = base
        worst = 0.0
        stop = asyncio.Event()
        async with connect(f"ws://127.0.0.1:{port}/ws") as fast:

            async def probe() -> None:
                nonlocal worst
                i = 0
                while not stop.is_set():
                    i += 1
                    t0 = time.monotonic()
                    await fast.send(orjson.dumps({"type": "ping", "id": i}).decode())
                    while orjson.loads(await fast.recv()).get("id") != i:
                        pass
                    worst = max(worst, time.monotonic() - t0)
                    await asyncio.sleep(0.1)

            async def sample() -> None:
                nonlocal peak
                while not stop.is_set():
                    peak = max(peak, rss_kib(gw.pid))
                    await asyncio.sleep(0.05)

            tasks = [asyncio.create_task(probe()), asyncio.create_task(sample())]
            t0 = time.monotonic()
            abusers = [await never_reading(port) for _ in range(a.sockets)]
            await attack(abusers, lambda: None)
            dropped_after = None
            while time.monotonic() - t0 < a.seconds:
                await asyncio.sleep(0.25)
                if (
                    dropped_after is None
                    and await loop.run_in_executor(None, _connections, port) == 1
                ):
                    dropped_after = time.monotonic() - t0  # only the probing client is left
            stop.set()
            await asyncio.gather(*tasks)
        return {
            "sockets": a.sockets,
            "gateway_rss_base_mib": round(base / 1024, 1),
            "gateway_rss_growth_mib": round((peak - base) / 1024, 1),
            "other_client_worst_wait_s": round(worst, 3),
            "abusers_dropped_after_s": round(dropped_after, 1) if dropped_after else None,
            "seconds": a.seconds,
        }
    finally:
        for ws in abusers:
            ws.transport.abort()
        await _stop(gw)
        await r.delete(key)
        await r.aclose()
        await _delete_topics(s)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sockets", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=25.0)
    a = ap.parse_args()
    res = asyncio.run(run(a))
    for k, v in res.items():
        print(f"{k:>28}: {v}")


if __name__ == "__main__":
    main()
