"""One client connection as the hub sees it: its subscriptions and its outgoing frames.

:func:`frame` builds a server data frame once per message (RFC 6455 §5.2); :class:`Client`
queues frames and writes them with one ``transport.write`` per loop turn; :class:`Sub` is one
subscription's delivery state (:class:`Mode`), enforcing ``seq == last + 1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State as WsState

from gateway_ws.protocol import Key, Session, SubRequest

if TYPE_CHECKING:
    from gateway_ws.conflation import Conflator
    from gateway_ws.hub import Hub


class Mode(Enum):
    WAIT = "wait"  # no state for the key yet: the first Reset sends the snapshot
    LIVE = "live"
    PENDING = "pending"  # resume replay from Redis in progress: live messages are held
    STALE = "stale"  # slow consumer on a book: paused until the buffer drains


@dataclass(eq=False, slots=True)
class Sub:
    client: Client
    req: SubRequest
    mode: Mode = Mode.WAIT
    last: int = -1
    epoch: int | None = None
    held: deque[tuple[int, bytes, dict[str, Any]]] = field(default_factory=deque)
    had_data: bool = False
    group: Conflator | None = None
    fast: bool = False  # eligible for the hot path: JSON, preframed, no group, no conversion
    sent: int = -1  # conflated: seq of the last message actually sent (what heartbeats report)


def frame(payload: bytes, binary: bool) -> bytes:
    """An unmasked, unfragmented WebSocket data frame (RFC 6455 §5.2): FIN + opcode, length.

    A server never masks (§5.1), so one message has the same frame bytes on every
    uncompressed connection: the hub builds it once per message and encoding.
    """
    b0 = 0x82 if binary else 0x81
    n = len(payload)
    if n < 126:
        head = bytes((b0, n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, 126, n)
    else:
        head = struct.pack("!BBQ", b0, 127, n)
    return head + payload


class Client:
    """One connection: its websockets object, protocol session and subscriptions.

    Data frames are appended to ``out`` and written with one ``transport.write`` per loop turn
    (``Hub.flush``), so a burst costs one syscall per connection, not one per message. A
    connection that negotiated permessage-deflate compresses per connection and goes through
    the websockets protocol object instead.
    """

    __slots__ = (
        "ws",
        "session",
        "ip",
        "binary",
        "subs",
        "closed",
        "next_hb",
        "high",
        "stale",
        "connected_at",
        "conn_id",
        "user",
        "out",
        "out_bytes",
        "raw_ok",
        "hub",
        "proto",
        "transport",
    )

    def __init__(
        self,
        ws: ServerConnection,
        session: Session,
        ip: str,
        *,
        binary: bool,
        high: int,
        conn_id: int,
        user: str | None,
    ) -> None:
        self.ws = ws
        self.session = session
        self.ip = ip
        self.binary = binary
        self.subs: dict[Key, Sub] = {}
        self.closed = False
        self.next_hb = 0.0
        self.high = high
        self.stale = False
        self.connected_at = time.monotonic()
        self.conn_id = conn_id
        self.user = user
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.raw_ok = not ws.protocol.extensions  # no per-connection transform of frames
        self.hub: Hub | None = None
        self.proto = ws.protocol  # cached: flush runs once per connection per loop turn
        self.transport = ws.transport

    def buffered(self) -> int:
        t = self.ws.transport
        return (t.get_write_buffer_size() if t is not None else 0) + self.out_bytes

    def write(self, payload: bytes, force: bool = False, framed: bytes | None = None) -> bool:
        """Queue one WebSocket message; False (and nothing queued) when over the bound."""
        if self.closed:
            return True
        ws = self.ws
        if ws.protocol.state is not WsState.OPEN:
            return True
        if not force and ws.transport.get_write_buffer_size() + self.out_bytes > self.high:
            return False
        if self.raw_ok:
            f = framed if framed is not None else frame(payload, self.binary)
            if not self.out and self.hub is not None:
                self.hub.dirty.append(self)
                self.hub.schedule_flush()
            self.out.append(f)
            self.out_bytes += len(f)
            return True
        try:
            if self.binary:
                ws.protocol.send_binary(payload)
            else:
                ws.protocol.send_text(payload)  # our payloads are UTF-8 JSON already
            ws.send_data()
        except Exception:  # the peer vanished mid-write: the reader task will clean up
            self.closed = True
        return True

    def flush(self) -> bool:
        """Write the queued frames; False (frames dropped) when the socket buffer is over the bound.

        The bound is checked once per loop turn here, so the per-message path only appends:
        a connection holds at most ``high`` bytes plus one loop turn's messages.
        """
        out = self.out
        if not out:
            return True
        self.out = []
        self.out_bytes = 0
        if self.closed or self.proto.state is not WsState.OPEN:
            return True  # never a data frame after a close frame (RFC 6455 §5.5.1)
        t = self.transport
        if t.get_write_buffer_size() > self.high:
            return False
        try:
            t.write(out[0] if len(out) == 1 else b"".join(out))
        except Exception:
            self.closed = True
        return True

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason), 2)
        with contextlib.suppress(Exception):
            self.ws.transport.abort()
