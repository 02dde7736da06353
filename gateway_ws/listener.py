"""The gateway's own WebSocket server (``MD_WS_SERVER=native``, the default): one
``asyncio.Protocol`` per connection driving the sans-I/O parts, no task per connection.

Why: in a connection storm (a gateway restart brings every client back at once) python-
websockets spent most of the gateway's ~314 us of CPU per connection on its HTTP parser,
its connection and protocol objects and the two tasks it starts per connection
(docs/benchmarks.md, issue 16 item 4). Here a connection is this protocol object, a
:class:`~gateway_ws.frames.FrameReader`, the :class:`~gateway_ws.protocol.Session` and the
hub's :class:`NativeClient`; a request is handled inside ``data_received`` unless it needs
Redis (``resume``, a named client's stored set), which runs in a task while the
connection's reading is paused, so requests keep their order (as they did when the
websockets handler awaited them before reading the next one).

Everything the websockets server did stays (the same ``Gateway.admit`` checks before the
upgrade: health, metrics and keys on the port, capacity, token, per-IP/per-user limits,
query options); RFC 6455 rules and close codes are in gateway_ws/frames.py; keepalive
(a ping every ``MD_WS_PING_INTERVAL_S``, close 1011 without a pong within
``MD_WS_PING_TIMEOUT_S``) and the opening handshake's timeout (``OPEN_TIMEOUT_S``) run from
one timer per process over FIFO queues, not one timer per connection. permessage-deflate
is not implemented here: with ``MD_WS_DEFLATE=1`` the gateway serves with websockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from gateway_ws.client import CLOSE_WAIT_S, ShellClient
from gateway_ws.fanout import frame
from gateway_ws.frames import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    OP_PING,
    OP_PONG,
    CloseFrame,
    FrameError,
    FrameReader,
    Message,
    Ping,
    Pong,
    close_frame,
    control_frame,
)
from gateway_ws.protocol import Session
from gateway_ws.upgrade import (
    Admitted,
    HttpError,
    Reply,
    accept_key,
    error_response,
    parse_head,
    response,
    switching,
)

if TYPE_CHECKING:
    from gateway_ws.server import Gateway

log = logging.getLogger(__name__)

# a client has this long from TCP connect to a complete upgrade request (python-websockets'
# open_timeout): half-open or slowloris connections do not hold a descriptor for ever
OPEN_TIMEOUT_S = 10.0
# the close handshake of a close the client caused (abuse, protocol error): websockets' 2 s
CLOSE_TIMEOUT_S = 2.0
SWEEP_S = 1.0  # keepalive and open timeouts are checked once a second

# connection states
HTTP, OPEN, CLOSING, CLOSED = 0, 1, 2, 3


class NativeClient(ShellClient):
    """The hub's view of a connection of this server: frames go straight to the transport."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection, session: Session, adm: Admitted, **kw: Any) -> None:
        super().__init__(
            binary=adm.binary,
            batch=adm.batch,
            user=adm.principal.user,
            expires_at=adm.principal.expires_at,
            **kw,
        )
        self.conn = conn
        self.session = session
        self.transport = conn.transport
        self.close_task = None

    def write_out(self, chunks: list[bytes]) -> None:
        """One loop turn's bytes for this connection, in one ``transport.write``."""
        conn = self.conn
        if conn.state != OPEN:
            return  # never a data frame after a close frame (RFC 6455 §5.5.1)
        if not self.framed:  # MD_WS_PREFRAMED=0: framed per connection (benchmark switch)
            chunks = [frame(p, self.binary) for p in chunks]
        assert conn.transport is not None
        conn.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    async def aclose(self, code: int, reason: str) -> None:
        """Close with ``code``; the close frame waits behind what the transport holds (a slow
        consumer's full buffer), so the peer gets CLOSE_WAIT_S to read it before the abort."""
        self.conn.start_close(code, reason, CLOSE_WAIT_S)
        await self.conn.wait_closed(CLOSE_WAIT_S + 1)


class Connection(asyncio.Protocol):
    """One TCP connection: an HTTP request, then (upgraded) WebSocket frames."""

    __slots__ = (
        "listener",
        "gw",
        "transport",
        "ip",
        "state",
        "buf",
        "reader",
        "client",
        "busy",
        "queued",
        "ping_sent",
        "close_code",
        "abort_at",
        "lost",
    )

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.gw = listener.gw
        self.transport: asyncio.Transport | None = None
        self.ip = "?"
        self.state = HTTP
        self.buf = b""
        self.reader: FrameReader | None = None
        self.client: NativeClient | None = None
        self.busy: asyncio.Task[None] | None = None  # a request waiting on Redis
        self.queued: deque[str | bytes] | None = None  # requests read meanwhile, in order
        self.ping_sent = 0.0  # monotonic time of the unanswered keepalive ping, 0 = none
        self.close_code: int | None = None
        self.abort_at: asyncio.TimerHandle | None = None
        self.lost: asyncio.Future[None] | None = None

    # ----------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else "?"
        self.listener.opening(self)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state in (OPEN, CLOSING):
            self._frames(data)
        elif state == HTTP:
            self._http(data)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        if self.abort_at is not None:
            self.abort_at.cancel()
        if self.busy is not None:
            self.busy.cancel()
        self.listener.forget(self)
        if self.client is not None:
            self.client.closed = True
            self.gw.disconnected(self.client, "peer closed", self.close_code)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    # ----------------------------------------------------------------- HTTP

    def _http(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        try:
            head = parse_head(buf)
            if head is None:
                self.buf = buf
                return
            req, n = head
            adm = self.gw.admit(req.target, self.ip)
            if isinstance(adm, Reply):
                self._reply(response(adm.status, adm.ctype, adm.body))
                return
            key = accept_key(req)
        except HttpError as exc:
            self._reply(error_response(exc))
            return
        self.buf = b""
        self._open(adm, key)
        if len(buf) > n:  # frames sent right behind the request
            self._frames(buf[n:])

    def _reply(self, raw: bytes) -> None:
        assert self.transport is not None
        self.state = CLOSED
        self.buf = b""
        self.transport.write(raw)
        self.transport.close()

    def _open(self, adm: Admitted, key: str) -> None:
        gw, t = self.gw, self.transport
        assert t is not None
        if gw.cfg.sndbuf:
            sock = t.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, gw.cfg.sndbuf)
        t.write(switching(key))
        now = time.monotonic()
        session = gw.new_session(adm, now)
        self.client = NativeClient(
            self,
            session,
            adm,
            framed=gw.cfg.preframed,
            conn_id=gw.next_id(),
            ip=self.ip,
            now=now,
        )
        self.reader = FrameReader(gw.cfg.hard_max_frame)
        self.state = OPEN
        self.listener.opened(self, now)
        gw.connected(self.client)

    # ----------------------------------------------------------------- WebSocket

    def _frames(self, data: bytes) -> None:
        assert self.reader is not None and self.transport is not None
        try:
            events = self.reader.feed(data)
        except FrameError as exc:
            self.fail(exc.code, exc.reason)
            return
        for ev in events:
            if self.state == CLOSED:
                return
            if isinstance(ev, Message):
                if self.state != OPEN:
                    continue  # after our close frame: data is discarded (§5.5.1)
                if self.busy is not None:
                    assert self.queued is not None
                    self.queued.append(ev.payload)
                else:
                    self._request(ev.payload)
            elif isinstance(ev, Ping):
                if self.state == OPEN:
                    self.transport.write(control_frame(OP_PONG, ev.payload))
            elif isinstance(ev, Pong):
                self.ping_sent = 0.0
            else:
                self._peer_close(ev)

    def _request(self, data: str | bytes) -> None:
        client = self.client
        assert client is not None
        try:
            pending = self.gw.on_request(client, data, time.monotonic())
        except Exception:
            log.exception("request failed", extra={"conn": client.conn_id})
            self.fail(CLOSE_INTERNAL, "internal error")
            return
        if pending is not None:
            assert self.transport is not None
            self.transport.pause_reading()  # the next request waits for this one
            if self.queued is None:
                self.queued = deque()
            self.busy = asyncio.get_running_loop().create_task(self._finish(pending))
            return
        self._after(client)

    async def _finish(self, pending: Coroutine[Any, Any, None]) -> None:
        """The part of a request that needs Redis; then the requests read meanwhile."""
        client = self.client
        assert client is not None and self.queued is not None
        try:
            await pending
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request failed", extra={"conn": client.conn_id})
            self.busy = None
            self.fail(CLOSE_INTERNAL, "internal error")
            return
        self.busy = None
        if self.state != OPEN:
            return
        self._after(client)
        while self.queued and self.busy is None and self.state == OPEN:
            self._request(self.queued.popleft())
        if self.busy is None and self.state == OPEN and self.transport is not None:
            self.transport.resume_reading()

    def _after(self, client: NativeClient) -> None:
        """A close the request caused: the session's (abuse) or the hub's (a refused auth)."""
        closing = client.session.closing
        if closing is not None:
            self.gw.hub.flush()
            client.closed = True
            self.start_close(closing.code, closing.reason, CLOSE_TIMEOUT_S)
        elif client.closed:
            self.gw.hub.flush()  # writes what is queued; the hub starts the close with its code

    def _peer_close(self, ev: CloseFrame) -> None:
        """The client's close frame: answered with the same code (§5.5.1) if we had not sent
        ours, and the server closes TCP first (§7.1.1)."""
        assert self.transport is not None
        if self.state == OPEN:
            self.close_code = ev.code
            self.transport.write(close_frame(ev.code, ev.reason))
        self.state = CLOSED
        self.transport.close()

    def start_close(self, code: int, reason: str, wait: float) -> None:
        """Send our close frame (behind what the transport holds); abort after ``wait``."""
        if self.state != OPEN or self.transport is None:
            return
        self.state = CLOSING
        self.close_code = code
        self.transport.write(close_frame(code, reason))
        self.transport.resume_reading()  # to read the peer's close frame
        self.abort_at = asyncio.get_running_loop().call_later(wait, self.transport.abort)

    def fail(self, code: int, reason: str) -> None:
        """The peer broke the protocol (or the keepalive): close frame, then TCP, no wait."""
        t = self.transport
        if t is None or self.state == CLOSED:
            return
        if self.state == OPEN:
            self.close_code = code
            t.write(close_frame(code, reason))
        self.state = CLOSED
        t.close()
        self.abort_at = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, t.abort)

    def ping(self, now: float) -> None:
        assert self.transport is not None
        self.ping_sent = now
        self.transport.write(control_frame(OP_PING, struct.pack("!d", now)))

    async def wait_closed(self, limit: float) -> None:
        if self.state == CLOSED and self.lost is None:
            return
        if self.lost is None:
            self.lost = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.lost), limit)
        if self.transport is not None:
            self.transport.abort()


class Listener:
    """The listening socket, its connections, and the once-a-second keepalive sweep."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        cfg = gw.cfg
        self.ping_interval = cfg.ping_interval_s
        self.ping_timeout = cfg.ping_timeout_s
        self.conns: set[Connection] = set()
        self._opening: deque[tuple[float, Connection]] = deque()  # deadlines of upgrades
        self._keepalive: deque[tuple[float, Connection]] = deque()  # next keepalive check
        self.server: asyncio.Server | None = None
        self._sweep_at: asyncio.TimerHandle | None = None
        self._empty: asyncio.Event | None = None  # set when the last connection is gone (stop)

    async def start(self, ssl_ctx: ssl.SSLContext | None) -> None:
        cfg = self.gw.cfg
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Connection(self),
            cfg.host,
            cfg.port,
            reuse_port=True,
            backlog=cfg.backlog,
            ssl=ssl_ctx,
        )
        self._sweep_at = loop.call_later(SWEEP_S, self._sweep)

    async def stop(self, limit: float = 5.0) -> None:
        """Stop accepting; close every connection with 1001 (going away), abort the rest."""
        if self._sweep_at is not None:
            self._sweep_at.cancel()
        if self.server is not None:
            self.server.close()
        for c in list(self.conns):
            if c.state == OPEN:
                c.start_close(CLOSE_GOING_AWAY, "", CLOSE_TIMEOUT_S)
            elif c.state == HTTP and c.transport is not None:
                c.transport.abort()
        if self.conns:
            self._empty = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), limit)
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()
        await asyncio.sleep(0)  # connection_lost callbacks run

    def opening(self, c: Connection) -> None:
        self.conns.add(c)
        self._opening.append((time.monotonic() + OPEN_TIMEOUT_S, c))

    def opened(self, c: Connection, now: float) -> None:
        if self.ping_interval > 0:
            self._keepalive.append((now + self.ping_interval, c))

    def forget(self, c: Connection) -> None:
        self.conns.discard(c)  # the queues drop it when they reach it
        if self._empty is not None and not self.conns:
            self._empty.set()

    def _sweep(self) -> None:
        now = time.monotonic()
        self._sweep_at = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)
        q = self._opening
        while q and q[0][0] <= now:
            _, c = q.popleft()
            if c.state == HTTP and c.transport is not None:
                c.transport.abort()
        ka, interval, timeout = self._keepalive, self.ping_interval, self.ping_timeout
        while ka and ka[0][0] <= now:
            _, c = ka.popleft()
            if c.state != OPEN:
                continue
            if c.ping_sent:
                if timeout <= 0:
                    c.ping(now)
                elif now - c.ping_sent >= timeout:
                    c.fail(CLOSE_INTERNAL, "keepalive ping timeout")
                    continue
                else:
                    ka.append((c.ping_sent + timeout, c))
                    continue
            else:
                c.ping(now)
            ka.append((now + interval, c))
