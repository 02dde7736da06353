"""The asyncio shell's task bookkeeping (gateway_ws/hub.py): resumes are cancelled when their
subscription is replaced, dropped or closed (issue 12: replaced replays kept running).

The Redis reader is a stand-in whose read never returns, so a resume stays in flight; what is
tested is the shell's tasks, not Redis (tests/integration/test_ws_resume.py has those).
"""

from __future__ import annotations

import asyncio
from typing import Any

from core.follower import StreamJoin
from gateway_ws.config import WsConfig
from gateway_ws.fanout import Conn
from gateway_ws.hub import Hub
from gateway_ws.protocol import SubRequest


class Follower:
    def __init__(self) -> None:
        self.join = StreamJoin()
        self.connected = True

    def add_callback(self, cb: Any) -> None: ...

    def add_reset_callback(self, cb: Any) -> None: ...

    def current(self, channel: str, symbol: str, **kw: Any) -> None:
        return None

    def seq_of(self, channel: str, symbol: str) -> tuple[int, int, int | None]:
        return (10, 1, None)  # the follower is at seq 10: a resume from 5 replays

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"ready": True}


class StuckHistory:
    def __init__(self) -> None:
        self.reads = 0

    async def after(self, channel: str, symbol: str, seq: int, count: int) -> list[Any]:
        self.reads += 1
        await asyncio.Event().wait()  # never answers
        return []

    stored = None  # no stored history (gateway_ws/history_resume.py)

    async def chunk(
        self, channel: str, symbol: str, last: int, epoch: int | None, count: int, head: int | None
    ) -> tuple[list[Any], bool]:
        return await self.after(channel, symbol, last, count), False


class Sock(Conn):
    __slots__ = ()

    def buffered(self) -> int:
        return 0


RESUME = SubRequest("trades", "BTC-USD", since_seq=5)


async def _in_flight(hub: Hub, history: StuckHistory, reads: int) -> None:
    async with asyncio.timeout(2):
        while history.reads < reads:  # noqa: ASYNC110 - a counter, polled briefly
            await asyncio.sleep(0.01)


async def test_replaced_and_dropped_resumes_are_cancelled() -> None:
    history = StuckHistory()
    hub = Hub(WsConfig(), Follower(), history)  # type: ignore[arg-type]
    c = Sock()
    hub.add_client(c)  # type: ignore[arg-type]
    hub.subscribe(c, RESUME)  # type: ignore[arg-type]
    (first,) = hub.resumes.values()
    await _in_flight(hub, history, 1)
    hub.subscribe(c, RESUME)  # type: ignore[arg-type]  # the same target again: replaces
    await asyncio.sleep(0)
    assert first.cancelled()
    (second,) = hub.resumes.values()
    assert second is not first
    await _in_flight(hub, history, 2)
    hub.unsubscribe(c, [RESUME.key])  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert second.cancelled() and not hub.resumes
    hub.subscribe(c, RESUME)  # type: ignore[arg-type]
    (third,) = hub.resumes.values()
    await _in_flight(hub, history, 3)
    hub.remove_client(c)  # type: ignore[arg-type]  # the connection went away
    await asyncio.sleep(0)
    assert third.cancelled() and not hub.resumes
    await hub.stop()
