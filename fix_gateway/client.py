"""A small asyncio FIX initiator on the same session core: used by the tests and the benchmark.

async with FixClient.connect("127.0.0.1", 9876, sender="CLIENT1") as c:
    await c.logged_on()
    c.send("V", [...])
    msg = await c.next_app()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import cast

from fix_gateway.codec import Message, Value
from fix_gateway.session import AppMessage, Closed, FixSession, LoggedOn, initiator
from fix_gateway.store import Store


class FixClient(asyncio.Protocol):
    def __init__(
        self, session: FixSession, on_app: Callable[[Message], None] | None = None
    ) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.app: asyncio.Queue[Message] = asyncio.Queue()
        self.on_app = on_app
        self.logged_on_evt = asyncio.Event()
        self.closed_evt = asyncio.Event()
        self.close_reason: str | None = None
        self.raw_in: list[bytes] = []
        self.keep_raw = False
        self._ticker: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        sender: str = "CLIENT1",
        target: str = "MDGW",
        heartbeat: int = 30,
        reset: bool = True,
        store: Store | None = None,
        logon_fields: Iterable[tuple[int, Value]] = (),
        on_app: Callable[[Message], None] | None = None,
    ) -> FixClient:
        sess = initiator(
            sender, target, heartbeat=heartbeat, reset=reset, store=store, logon_fields=logon_fields
        )
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(sess, on_app), host, port)
        return proto

    async def __aenter__(self) -> FixClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(
            asyncio.Transport, transport
        )  # uvloop's is no asyncio.Transport subclass
        self.session.connect()
        self._flush()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def data_received(self, data: bytes) -> None:
        if self.keep_raw:
            self.raw_in.append(data)
        self.session.receive_data(data)
        self._after()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.connection_lost()
        self._after()
        self.closed_evt.set()
        if self._ticker:
            self._ticker.cancel()

    async def _tick(self) -> None:
        while not self.session.closed:
            await asyncio.sleep(0.5)
            self.session.tick()
            self._after()

    def _after(self) -> None:
        for ev in self.session.events_received():
            if isinstance(ev, LoggedOn):
                self.logged_on_evt.set()
            elif isinstance(ev, AppMessage):
                if self.on_app is not None:
                    self.on_app(ev.msg)
                else:
                    self.app.put_nowait(ev.msg)
            elif isinstance(ev, Closed):
                self.close_reason = ev.reason
        self._flush()
        if self.session.closed and self.transport is not None:
            self.transport.close()
            self.closed_evt.set()

    def _flush(self) -> None:
        out = self.session.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def send(self, msg_type: str, fields: Iterable[tuple[int, Value]]) -> int:
        seq = self.session.send(msg_type, fields)
        self._flush()
        return seq

    def write_raw(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def logged_on(self, wait: float = 10) -> None:
        await asyncio.wait_for(self.logged_on_evt.wait(), wait)

    async def next_app(self, wait: float = 10) -> Message:
        return await asyncio.wait_for(self.app.get(), wait)

    async def logout(self, wait: float = 5) -> None:
        self.session.logout()
        self._flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed_evt.wait(), wait)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self._ticker:
            self._ticker.cancel()
