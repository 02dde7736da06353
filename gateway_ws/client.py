"""One client connection as the asyncio shell holds it: the core's :class:`Conn` plus its socket.

The fan-out core (:mod:`gateway_ws.fanout`) decides what goes into ``out``; this class adds
what only the shell touches: the websockets connection, its transport and the protocol
:class:`~gateway_ws.protocol.Session`, and the one write per loop turn (:meth:`Client.write_out`).
"""

from __future__ import annotations

import asyncio
import contextlib

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State as WsState

from gateway_ws.fanout import Conn, Mode, Sub, frame
from gateway_ws.protocol import Session

__all__ = ["Client", "Mode", "ShellClient", "Sub", "frame"]

CLOSE_WAIT_S = 10.0  # bounded: the buffer behind the close frame is at most 2 x buffer_high


class ShellClient(Conn):
    """What the hub needs of a connection, whichever server accepted it: the session, the
    transport's backlog, one write per loop turn and a close with a code."""

    __slots__ = ("session", "transport", "close_task")

    session: Session
    transport: asyncio.Transport | None
    close_task: asyncio.Task[None] | None

    def buffered(self) -> int:
        t = self.transport
        return t.get_write_buffer_size() if t is not None else 0

    def write_out(self, chunks: list[bytes]) -> None:
        raise NotImplementedError

    async def aclose(self, code: int, reason: str) -> None:
        raise NotImplementedError


class Client(ShellClient):
    """One connection of the websockets server (``MD_WS_SERVER=websockets``, or permessage-
    deflate): its websockets object, protocol session and transport.

    A connection that negotiated permessage-deflate compresses per connection, so its payloads
    go through the websockets protocol object; every other one gets the core's shared frames.
    """

    __slots__ = ("ws", "proto")

    def __init__(
        self,
        ws: ServerConnection,
        session: Session,
        ip: str,
        *,
        binary: bool,
        batch: bool = False,
        conn_id: int,
        user: str | None,
        now: float,
        preframed: bool = True,
    ) -> None:
        super().__init__(
            binary=binary,
            framed=preframed and not ws.protocol.extensions,
            batch=batch,
            conn_id=conn_id,
            ip=ip,
            user=user,
            now=now,
            expires_at=session.principal.expires_at,
        )
        self.ws = ws
        self.session = session
        self.proto = ws.protocol  # cached: written once per connection per loop turn
        self.transport = ws.transport
        self.close_task = None

    def write_out(self, chunks: list[bytes]) -> None:
        """One loop turn's bytes for this connection, in one ``transport.write``."""
        if self.proto.state is not WsState.OPEN:
            return  # never a data frame after a close frame (RFC 6455 §5.5.1)
        try:
            if self.framed:
                self.ws.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                return
            send = self.proto.send_binary if self.binary else self.proto.send_text
            for payload in chunks:
                send(payload)  # our payloads are UTF-8 JSON already
            self.ws.send_data()
        except Exception:  # noqa: BLE001 - the peer vanished mid-write: the reader cleans up
            self.closed = True

    async def aclose(self, code: int, reason: str) -> None:
        """Close with ``code``; the close frame waits behind what the transport holds (a slow
        consumer's full buffer), so the peer gets CLOSE_WAIT_S to read it before the abort."""
        self.ws.close_timeout = CLOSE_WAIT_S  # the library's own wait (2 s by default here)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason), CLOSE_WAIT_S + 1)
        with contextlib.suppress(Exception):
            self.ws.transport.abort()
