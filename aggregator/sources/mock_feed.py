"""What every mock feed server shares: the connection plumbing and the transport faults.

A mock (``coinbase_mock.MockExchange``, ``coinbase_at_mock.AdvancedTradeMock``) decides what a
feed says; this base owns how it reaches the clients, the same for every protocol:

- one :class:`Conn` per client with a bounded send queue (``queue_max``: a client that falls that
  far behind is disconnected, as Coinbase does) and its subscriptions as ``(product, channel)``;
- :meth:`MockFeedServer.handler`: JSON requests in (a frame that is not JSON gets the mock's
  error reply), one writer task per connection;
- :meth:`MockFeedServer._writer`: sends the queue in order through the mock's
  :meth:`~MockFeedServer.deliver`, then applies the faults the connectors' tests inject, counted
  deterministically: a garbage frame after every ``malformed_every`` messages, silence from the
  ``stall_every``-th message over all connections on, a close after ``disconnect_every``
  messages (a clean close and an abrupt abort, alternating);
- :func:`serve`: the websockets server and the playback task.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

log = logging.getLogger("aggregator.mock_feed")


class FaultConfig(Protocol):
    @property
    def malformed_every(self) -> int: ...
    @property
    def disconnect_every(self) -> int: ...
    @property
    def stall_every(self) -> int: ...
    @property
    def queue_max(self) -> int: ...


@dataclass(eq=False)
class Conn:
    ws: Any
    subs: set[tuple[str, str]] = field(default_factory=set)  # (product, channel)
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    sent: int = 0
    closing: bool = False


class MockFeedServer:
    """The base of a mock feed; subclasses give the protocol (see the module docstring)."""

    def __init__(self, cfg: FaultConfig) -> None:
        self.fault_cfg = cfg
        self.conns: set[Any] = set()  # the subclass's Conn type
        self.started = asyncio.Event()  # set by the first subscribe: playback starts
        self.sent_total = 0  # over all connections: stalls interleave with per-connection faults
        self._disconnects = 0

    # ---------------------------------------------------------------- what a mock says
    def new_conn(self, ws: Any) -> Conn:
        return Conn(ws)

    def request(self, c: Any, req: Any) -> None:
        """One decoded client request."""
        raise NotImplementedError

    def bad_json_reply(self) -> Any:
        """Queued (as an item for :meth:`deliver`) when a client frame is not JSON."""
        raise NotImplementedError

    async def deliver(self, c: Any, item: Any) -> None:
        """Send one queued item (and count it in ``c.sent``)."""
        raise NotImplementedError

    def garbage(self, c: Any, n: int) -> bytes:
        """The ``n``-th garbage frame of ``malformed_every``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- plumbing
    def _broadcast(self, product: str, channel: str, data: Any) -> None:
        for c in list(self.conns):
            if (product, channel) in c.subs:
                self._enqueue(c, data)

    def _enqueue(self, c: Conn, data: Any) -> None:
        if c.closing:
            return
        if c.queue.qsize() >= self.fault_cfg.queue_max:
            c.closing = True
            c.queue.put_nowait(None)
            return
        c.queue.put_nowait(data)

    async def handler(self, ws: Any) -> None:
        c = self.new_conn(ws)
        self.conns.add(c)
        writer = asyncio.create_task(self._writer(c))
        try:
            async for raw in ws:
                try:
                    req = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    self._enqueue(c, self.bad_json_reply())
                    continue
                self.request(c, req)
        except Exception as exc:  # noqa: BLE001 - a client vanishing is routine for a feed
            log.debug("connection ended", extra={"error": repr(exc)})
        finally:
            self.conns.discard(c)
            c.queue.put_nowait(None)
            await asyncio.gather(writer, return_exceptions=True)

    async def _writer(self, c: Conn) -> None:
        cfg = self.fault_cfg
        while True:
            item = await c.queue.get()
            if item is None:
                break
            await self.deliver(c, item)
            if cfg.malformed_every and c.sent % cfg.malformed_every == 0:
                await c.ws.send(self.garbage(c, c.sent // cfg.malformed_every))
            self.sent_total += 1
            if cfg.stall_every and self.sent_total % cfg.stall_every == 0:
                c.closing = True  # silent from now on; the connection stays open
                break
            if cfg.disconnect_every and c.sent % cfg.disconnect_every == 0:
                self._disconnects += 1
                if self._disconnects % 2:
                    await c.ws.close(1011, "mock disconnect")
                else:
                    c.ws.transport.abort()
                break


class Playable(Protocol):
    async def handler(self, ws: Any) -> None: ...

    async def play(self) -> None: ...


async def serve(mock: Playable, host: str, port: int) -> Any:
    """Listen for ``mock`` and start its playback (``mock.play_task``); returns the websockets
    server (close it to stop)."""
    from websockets.asyncio.server import serve as ws_serve

    server = await ws_serve(mock.handler, host, port, max_size=1 << 20, compression=None)
    mock.play_task = asyncio.create_task(mock.play())  # type: ignore[attr-defined]
    return server
