"""The asyncio shell's task bookkeeping (gateway_ws/hub.py): resumes are cancelled when their
subscription is replaced, dropped or closed (issue 12: replaced replays kept running), and a
resume on a worker still reading its streams waits for it instead of answering "ahead".

The Redis reader is a stand-in whose read never returns, so a resume stays in flight; what is
tested is the shell's tasks, not Redis (tests/integration/test_ws_resume.py has those).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from core.follower import StreamJoin
from gateway_ws import hub as hub_mod
from gateway_ws.config import WsConfig
from gateway_ws.fanout import Conn
from gateway_ws.hub import Hub
from gateway_ws.protocol import SubRequest


class Follower:
    def __init__(self) -> None:
        self.join = StreamJoin()
        self.connected = True
        self.ready = asyncio.Event()
        self.ready.set()
        self.at = 10  # the follower is at seq 10: a resume from 5 replays

    def add_callback(self, cb: Any) -> None: ...

    def add_reset_callback(self, cb: Any) -> None: ...

    def current(self, channel: str, symbol: str, **kw: Any) -> None:
        return None

    def seq_of(self, channel: str, symbol: str) -> tuple[int, int, int | None]:
        return (self.at, 1, None)

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


def _fast_clock() -> Any:
    """A clock that moves 0.25 s per read: the hub's one-second wait for a key is over after
    a few of its 20 ms polls, so a test sees at once what a resume does once it has waited."""
    ticks = itertools.count()
    return lambda: next(ticks) * 0.25


async def test_a_resume_on_a_worker_still_reading_its_streams_waits_for_it() -> None:
    follower, history = Follower(), StuckHistory()
    follower.ready.clear()
    follower.at = 3  # behind the client's 5 until it has read its streams
    hub = Hub(WsConfig(), follower, history, clock=_fast_clock())  # type: ignore[arg-type]
    c = Sock()
    hub.add_client(c)  # type: ignore[arg-type]
    hub.subscribe(c, RESUME)  # type: ignore[arg-type]
    (task,) = hub.resumes.values()
    await asyncio.sleep(0.2)  # many times the key's wait on this clock
    assert not task.done() and history.reads == 0  # neither "ahead" nor a replay yet
    follower.at = 12
    follower.ready.set()
    await _in_flight(hub, history, 1)  # caught up: the replay from Redis runs
    assert not task.done()
    await hub.stop()


async def test_a_worker_that_never_gets_ready_answers_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_mod, "RESUME_READY_WAIT_S", 0.05)
    follower, history = Follower(), StuckHistory()
    follower.ready.clear()
    follower.at = 3
    hub = Hub(WsConfig(), follower, history, clock=_fast_clock())  # type: ignore[arg-type]
    c = Sock()
    hub.add_client(c)  # type: ignore[arg-type]
    hub.subscribe(c, RESUME)  # type: ignore[arg-type]
    (task,) = hub.resumes.values()
    async with asyncio.timeout(2):
        await task
    assert history.reads == 0 and not hub.resumes  # resynced ("ahead"), nothing replayed
    await hub.stop()
