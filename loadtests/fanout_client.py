"""A lean WebSocket client for the fan-out benchmark: thousands of connections per process.

A full client library spends tens of microseconds per message in Python, so the load generator
would measure itself. This one is an ``asyncio.Protocol`` that does the RFC 6455 minimum:
an HTTP/1.1 upgrade, masked client frames (§5.3; a zero masking key is a valid key), unmasked
server frames parsed by their 2/4/10-byte headers (§5.2), pong replies to pings (§5.5.2).
Per message it finds ``seq`` by byte search (no JSON parsing) and counts gaps; for messages
whose ``seq`` is a multiple of ``sample_every`` it takes receive time minus the message's own
``timestamp`` as a latency sample (every connection samples the same messages).

``centrifugo=True`` speaks Centrifugo's JSON protocol instead (for ``loadtests/bench_peer_ws.py``):
the first frame carries ``connect`` and ``subscribe`` commands, newline-delimited; a frame from
the server may hold several replies or pushes, one per line, each publication's ``data`` being
the gateway's message bytes unchanged; an empty ``{}`` (application ping) is answered ``{}``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import socket
import struct
import time
from array import array
from typing import Any

_TS = b'"timestamp":"'
_SEQ = b'"seq":'


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame with the all-zero key: the payload is unchanged by masking."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + b"\x00\x00\x00\x00" + payload


class Stats:
    """Shared by every connection of a process."""

    def __init__(self, cap: int = 3_000_000) -> None:
        self.lat = array("q")
        self.cap = cap
        self.measuring = False
        self.sample_every = 1  # latency of messages whose seq is a multiple (all by default)
        self.msgs = 0
        self.gaps = 0
        self.resyncs = 0
        self.closed = 0
        # close codes of the server's close frames, and "before_upgrade" (the connection ended
        # before its 101) / "no_close_frame" (ended without a close frame after the 101)
        self.close_reasons: dict[str, int] = {}
        self.connected = 0
        self.setup = array("q")  # ns from connect() to the first snapshot (or subscribe reply)
        self.upgrade = array("q")  # ns from connect() to the 101 response: the handshake part
        self._minute: dict[bytes, int] = {}

    def ts_ns(self, raw: bytes, i: int) -> int:
        i += len(_TS)
        minute = raw[i : i + 16]
        base = self._minute.get(minute)
        if base is None:
            d = dt.datetime.fromisoformat(minute.decode() + ":00+00:00")
            base = self._minute[minute] = int(d.timestamp()) * 1_000_000_000
        return base + int(raw[i + 17 : i + 19]) * 1_000_000_000 + int(raw[i + 20 : i + 26]) * 1000


class FanoutClient(asyncio.Protocol):
    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        subscribe: bytes,
        stats: Stats,
        centrifugo: bool = False,
        batched: bool = False,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.centrifugo = centrifugo
        self.batched = batched  # /ws?batch=1: a frame may hold several messages, one a line
        self.t_start = time.monotonic_ns()
        self.set_up = False
        self.subscribe = subscribe
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False
        self.close_code: int | None = None
        self.last = -1
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.closed += 1
        if not self.upgraded:
            why = "before_upgrade"
        elif self.close_code is None:
            why = "no_close_frame"
        else:
            why = str(self.close_code)
        self.stats.close_reasons[why] = self.stats.close_reasons.get(why, 0) + 1
        if not self.done.done():
            self.done.set_result(None)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before upgrade"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            self.stats.upgrade.append(time.monotonic_ns() - self.t_start)
            buf = buf[end + 4 :]
            assert self.transport is not None
            self.transport.write(client_frame(self.subscribe))
            self.stats.connected += 1
            self.ready.set_result(None)
        i, n = 0, len(buf)
        st = self.stats
        while n - i >= 2:
            b0, b1 = buf[i], buf[i + 1]
            ln = b1 & 0x7F
            hl = 2
            if ln == 126:
                if n - i < 4:
                    break
                ln = struct.unpack_from("!H", buf, i + 2)[0]
                hl = 4
            elif ln == 127:
                if n - i < 10:
                    break
                ln = struct.unpack_from("!Q", buf, i + 2)[0]
                hl = 10
            if n - i < hl + ln:
                break
            payload = buf[i + hl : i + hl + ln]
            i += hl + ln
            op = b0 & 0x0F
            if op == 0x1 or op == 0x2:
                self._data(payload, st)
            elif op == 0x9:  # ping -> pong with the same payload
                assert self.transport is not None
                self.transport.write(client_frame(payload, 0xA))
            elif op == 0x8:
                self.close_code = (
                    struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1005
                )
                assert self.transport is not None
                self.transport.close()
                return
        self.buf = buf[i:]

    def _data(self, payload: bytes, st: Stats) -> None:
        if self.centrifugo:
            self._centrifugo(payload, st)
        elif self.batched and b"\n" in payload:
            for line in payload.split(b"\n"):
                self._message(line, st)
        else:
            self._message(payload, st)

    def _centrifugo(self, frame: bytes, st: Stats) -> None:
        if not self.set_up and b'"id":2' in frame:  # the subscribe reply: subscribed
            self.set_up = True
            st.setup.append(time.monotonic_ns() - self.t_start)
        for line in frame.split(b"\n"):
            if line == b"{}":  # application-level ping (Centrifugo protocol v2): answer it
                assert self.transport is not None
                self.transport.write(client_frame(b"{}"))
                continue
            k = line.find(b'{"type":"l2_update"')
            if k >= 0:
                self._message(line, st, k)

    def _message(self, raw: bytes, st: Stats, start: int = 0) -> None:
        if raw.startswith(b'{"type":"l2_update"', start):
            j = raw.find(_SEQ, start + 20) + 6
            seq = int(raw[j : raw.find(b",", j)])
            if self.last >= 0 and seq != self.last + 1:
                st.gaps += 1
            self.last = seq
            if st.measuring:
                st.msgs += 1
                if seq % st.sample_every == 0 and len(st.lat) < st.cap:
                    k = raw.find(_TS, start)
                    if k > 0:
                        st.lat.append(time.time_ns() - st.ts_ns(raw, k))
        elif raw.startswith(b'{"type":"l2_snapshot"'):
            if not self.set_up:
                self.set_up = True
                st.setup.append(time.monotonic_ns() - self.t_start)
            if b'"resync":true' in raw:
                st.resyncs += 1
            j = raw.find(_SEQ) + 6
            self.last = int(raw[j : raw.find(b",", j)])


# Linux's IP_BIND_ADDRESS_NO_PORT (4.2+; not in Python's socket module): bind() takes the
# address only and the port is chosen at connect(). A bind() to port 0 searches the bound ports
# of the address, which with tens of thousands of sockets cost the 100,000-connection run's
# clients ~2 ms of CPU per connection (py-spy: all of it in create_connection)
IP_BIND_ADDRESS_NO_PORT = 24


def _bound_socket(source: str) -> socket.socket:
    """A non-blocking TCP socket bound to ``source`` (port chosen at connect)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_client(
    host: str,
    port: int,
    path: str,
    subscribe: dict[str, Any] | bytes,
    stats: Stats,
    centrifugo: bool = False,
    source: str | None = None,
    batched: bool = False,
) -> FanoutClient:
    """One connection, upgraded; ``source``: the local address to connect from (a loopback
    address other than 127.0.0.1 gives another ~28,000 ephemeral ports towards one server
    port, what 100,000 connections on one machine need)."""
    import orjson

    loop = asyncio.get_running_loop()
    body = subscribe if isinstance(subscribe, bytes) else orjson.dumps(subscribe)
    sock = None
    if source:
        sock = _bound_socket(source)
        try:
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise

    def factory() -> FanoutClient:
        return FanoutClient(host, port, path, body, stats, centrifugo, batched)

    if sock is not None:
        _, proto = await loop.create_connection(factory, sock=sock)
    else:
        _, proto = await loop.create_connection(factory, host, port)
    await asyncio.wait_for(proto.ready, 30)
    return proto
