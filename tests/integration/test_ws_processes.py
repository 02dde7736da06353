"""``python -m gateway_ws`` as `make run` starts it: several processes on one port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from core.settings import Settings
from tests.conftest import free_port
from tests.integration.ws_helpers import (
    Feed,
    drop_topics,  # noqa: F401 - autouse: topics deleted after each test
    recv_until,
    send,
)

pytestmark = pytest.mark.integration


async def _health(port: int) -> tuple[int, dict[str, Any]]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(r.read(), 5)
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body)


async def test_two_processes_share_the_port_and_stop_on_sigterm(
    settings: Settings, env_for: dict[str, str]
) -> None:
    port = free_port()
    env = dict(env_for, MD_WS_PORT=str(port), MD_WS_PROCESSES="2", MD_LOG_LEVEL="WARNING")
    async with Feed(settings) as feed:
        await feed.snapshot("BTC-USD")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway_ws", env=env, cwd=os.getcwd()
        )
        try:
            async with asyncio.timeout(20):
                while True:
                    try:
                        status, body = await _health(port)
                        if status == 200:
                            break
                    except OSError:
                        pass
                    await asyncio.sleep(0.2)
            for _ in range(6):  # connections spread over both workers; each one serves fully
                async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                    await send(ws, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD"})
                    snap = await recv_until(ws, lambda m: m["type"] == "l2_snapshot", limit=10)
                    assert snap["seq"] == 0
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 15)
        assert code == 0
