"""The ``ws-worker`` scenario of ``make chaos`` (loadtests/chaos.py) on isolated pieces.

``python -m gateway_ws`` with two workers on the test's topics and Redis prefix, fed by an
in-process simulator, aggregator (with its direct feed) and storage cache writer (which keeps
the Redis resume windows). The verifying client of the chaos run subscribes to l2, trades and
ticker of two symbols; the worker serving it is killed with SIGKILL twice (the second time it
is usually the survivor, so the client lands on the freshly restarted worker: the first seconds
of a gateway, exactly when its clients come back). Each time the client must reconnect and
resume every subscription with ``since_seq``: no gap, no duplicate, no resync, every l2
checksum right. How long the pause was is measured by ``make chaos``, not asserted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from aggregator.service import Aggregator
from aggregator.sources.simulator import run_simulator
from core.settings import Settings
from loadtests.chaos import VerifyingClient, children, wait_until, worker_serving
from storage.cache_writer import CacheWriter
from tests.conftest import free_port
from tests.helpers import stop_procs

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _start_gateway(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway_ws"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


async def _workers_ready(port: int, parent: int) -> bool:
    """Every worker of ``parent`` has answered /health 200 (the kernel picks who answers)."""
    want = set(children(parent))
    seen: set[int] = set()
    async with httpx.AsyncClient(timeout=1) as c:
        for _ in range(4 * len(want) + 4):
            try:
                r = await c.get(f"http://127.0.0.1:{port}/health")
            except httpx.HTTPError:
                return False
            if r.status_code == 200:
                seen.add(int(r.json()["pid"]))
            if want and want <= seen:
                return True
    return False


async def test_kill_9_of_the_clients_ws_worker_resumes_without_loss(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    s = dataclasses.replace(settings, sim_rate=100.0)
    feed_port, port = free_port(), free_port()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_simulator(s, stop, ops=False)),
        asyncio.create_task(Aggregator(s, feed_port=feed_port).run(stop)),
        asyncio.create_task(CacheWriter(s).run(stop)),
    ]
    env = dict(
        env_for,
        MD_WS_PORT=str(port),
        MD_WS_PROCESSES="2",
        MD_AGG_FEED=f"127.0.0.1:{feed_port}",
        MD_LOG_LEVEL="WARNING",
    )
    log = tmp_path / "gateway_ws.log"
    gw = _start_gateway(env, log)
    client = VerifyingClient(f"ws://127.0.0.1:{port}/ws")
    killed: list[int] = []
    try:
        ok, _ = await wait_until(lambda: _workers_ready(port, gw.pid), 30, 0.2)
        assert ok, f"gateway_ws workers not healthy:\n{log.read_text()[-2000:]}"
        client.start()
        ok, _ = await wait_until(client.synced, 15)
        assert ok, "the client never got every snapshot"
        await asyncio.sleep(1.0)
        for _round in range(2):
            victim = worker_serving(client.local_port, port, children(gw.pid))
            assert victim is not None, "cannot tell which worker serves the client"
            conns = client.connections
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            t_kill = time.monotonic()

            def resumed(c: int = conns, t: float = t_kill) -> bool:
                return client.connections > c and client.synced() and client.live_since(t)

            ok, _ = await wait_until(resumed, 15)
            assert ok, f"no reconnect and resume after killing {victim}"
            ok, _ = await wait_until(
                lambda: len([p for p in children(gw.pid) if p not in killed]) == 2, 15
            )
            assert ok, "gateway_ws did not restart its worker"
            await asyncio.sleep(1.0)
    finally:
        await client.close()
        stop.set()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 20)
        stop_procs([gw], 15)
    w = client.window
    assert w.reconnects == 2
    assert w.resumes == 2 * len(client.keys)  # every subscription resumed, twice
    assert w.messages > 0
    assert (w.gaps, w.missed, w.duplicates) == (0, 0, 0), w.timeline
    assert (w.resyncs, w.epoch_changes, w.checksum_errors) == (0, 0, 0), w.timeline
    assert w.protocol_errors == []
