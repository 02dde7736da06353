"""Connection storms (issue 16 item 4): thousands of clients connecting at once.

A gateway restart brings every client back together. The kernel completes TCP handshakes on
its own and queues them for ``accept`` up to the listen backlog; beyond it, it drops the SYN
and the client retries after 1, 3, 7 s. asyncio's default backlog of 100 made a 5,000-client
storm take seconds per connection (docs/benchmarks.md); ``MD_WS_BACKLOG`` (4096) holds it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from core.errors import ConfigError
from core.settings import Settings
from gateway_ws.config import WsConfig
from tests.integration.ws_helpers import (
    drop_topics,  # noqa: F401 - autouse: topics deleted after each test
    running_gateway,
)

pytestmark = pytest.mark.integration

STORM = 300  # three times asyncio's default backlog
BUSY_S = 2.5  # the gateway's loop does not accept for this long (a flush, a GC pause)
CONNECT_TIMEOUT_S = 0.8  # under the kernel's first SYN retry (1 s): a dropped SYN times out


def _storm(port: int, started: threading.Event) -> int:
    """Open STORM TCP connections while the gateway's loop is busy; returns how many timed out."""
    started.wait(5)
    socks, failed = [], 0
    try:
        for _ in range(STORM):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), CONNECT_TIMEOUT_S))
            except OSError:
                failed += 1
    finally:
        for s in socks:
            s.close()
    return failed


async def _storm_while_busy(port: int) -> int:
    loop = asyncio.get_running_loop()
    started = threading.Event()
    result = loop.run_in_executor(None, _storm, port, started)

    def busy() -> None:
        started.set()
        time.sleep(BUSY_S)  # blocks the gateway's loop: nothing is accepted meanwhile

    loop.call_soon(busy)
    failed = await result
    # let the gateway take the storm's (already closed) sockets through its handshake before
    # the test stops it: a stop in the middle of 300 handshakes leaves their handler tasks
    # waiting (seen with websockets 15 on Python 3.11; not what this test is about)
    await asyncio.sleep(1.0)
    return failed


async def test_a_storm_queues_in_the_kernel_while_the_loop_is_busy(settings: Settings) -> None:
    async with running_gateway(settings) as gw:
        assert gw.cfg.backlog == 4096
        assert await _storm_while_busy(gw.cfg.port) == 0


async def test_the_old_backlog_drops_a_storm(settings: Settings) -> None:
    """The control: with asyncio's default of 100 the same storm loses SYNs (the cause of
    the seconds of setup time measured before), so the test above can tell the two apart."""
    async with running_gateway(settings, backlog=100) as gw:
        assert await _storm_while_busy(gw.cfg.port) > 0


def test_the_backlog_is_a_setting_and_a_bad_value_names_it() -> None:
    assert WsConfig.from_settings(Settings.from_env({"MD_WS_BACKLOG": "512"})).backlog == 512
    with pytest.raises(ConfigError, match="MD_WS_BACKLOG"):
        WsConfig.from_settings(Settings.from_env({"MD_WS_BACKLOG": "0"}))
