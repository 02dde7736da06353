"""The gateway's own WebSocket server (gateway_ws/listener.py) on real sockets.

Where a behaviour was python-websockets' before, the test runs against both servers
(``MD_WS_SERVER``): a client sees the same statuses and close codes from either.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

import gateway_ws.listener as listener_mod
from core.settings import Settings
from tests.integration.ws_helpers import (
    drop_topics,  # noqa: F401 - autouse: topics deleted after each test
    recv_until,
    running_gateway,
    send,
    url,
)
from tests.unit.test_ws_frames import masked

pytestmark = pytest.mark.integration

SERVERS = ["native", "websockets"]


class Raw:
    """A hand-made client: the bytes we choose, the server's frames parsed back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def upgrade(cls, port: int, path: str = "/ws") -> Raw:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        w.write(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(r, w)

    async def frame(self, limit: float = 5.0) -> tuple[int, bytes]:
        b0, b1 = await asyncio.wait_for(self.r.readexactly(2), limit)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.r.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.r.readexactly(8))
        return b0 & 0x0F, await self.r.readexactly(n)

    async def close_code(self, limit: float = 5.0) -> int:
        """The code of the server's close frame (data frames before it skipped)."""
        while True:
            op, payload = await self.frame(limit)
            if op == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])

    async def json(self, pred: Any, limit: float = 5.0) -> dict[str, Any]:
        while True:
            op, payload = await self.frame(limit)
            if op == 0x1:
                msg = orjson.loads(payload)
                if pred(msg):
                    return msg


async def http(port: int, raw: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(raw)
    data = await asyncio.wait_for(r.read(), 5)  # the server closes after its answer
    w.close()
    return data


@pytest.mark.parametrize("server", SERVERS)
async def test_protocol_violations_close_with_the_same_codes(
    settings: Settings, server: str
) -> None:
    async with running_gateway(settings, server=server, hard_max_frame=4096) as gw:
        port = gw.cfg.port
        cases = [
            (bytes((0x81, 0x02)) + b"{}", 1002),  # unmasked client frame
            (masked(b"\xff\xfe"), 1007),  # text that is not UTF-8
            (masked(b"x" * 5000), 1009),  # over the message size limit
            (masked(b"", 0x3), 1002),  # reserved opcode
        ]
        for raw, code in cases:
            c = await Raw.upgrade(port)
            c.w.write(raw)
            assert await c.close_code() == code, (server, raw[:2])
            assert await asyncio.wait_for(c.r.read(), 5) == b""  # and the server closed TCP
        # the gateway serves on: a well-behaved client after them all
        c = await Raw.upgrade(port)
        c.w.write(masked(b'{"type":"ping","id":7}'))
        assert (await c.json(lambda m: m.get("type") == "pong"))["id"] == 7


@pytest.mark.parametrize("server", SERVERS)
async def test_plain_http_on_the_port(settings: Settings, server: str) -> None:
    async with running_gateway(settings, server=server) as gw:
        port = gw.cfg.port
        health = await http(port, b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert health.startswith(b"HTTP/1.1 200")
        assert orjson.loads(health.partition(b"\r\n\r\n")[2])["connections"] == 0
        no_upgrade = await http(port, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        assert no_upgrade.startswith(b"HTTP/1.1 426"), no_upgrade
        missing = await http(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404")
        bad_option = await http(
            port,
            b"GET /ws?encoding=xml HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
        )
        assert (
            bad_option.startswith(b"HTTP/1.1 400") and b"encoding is json or msgpack" in bad_option
        )


async def test_the_native_server_refuses_a_bad_head_and_a_body(settings: Settings) -> None:
    async with running_gateway(settings) as gw:
        port = gw.cfg.port
        assert (await http(port, b"POST /ws HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 405"
        )
        huge = b"GET /ws HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        assert (await http(port, huge)).startswith(b"HTTP/1.1 431")


async def test_fragmented_requests_pings_and_a_clean_close(settings: Settings) -> None:
    async with running_gateway(settings, heartbeat_s=0) as gw:
        c = await Raw.upgrade(gw.cfg.port)
        c.w.write(
            masked(b'{"type":', 0x1, fin=False)
            + masked(b"probe", 0x9)  # a ping between the fragments
            + masked(b'"ping","id":1}', 0x0)
        )
        assert await c.frame() == (0xA, b"probe")  # pong with the ping's payload
        assert (await c.json(lambda m: True))["type"] == "pong"
        c.w.write(masked(struct.pack("!H", 1000) + b"done", 0x8))
        op, payload = await c.frame()
        assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == 1000  # echoed (§5.5.1)
        assert await asyncio.wait_for(c.r.read(), 5) == b""
        await asyncio.sleep(0.05)
        assert not gw.hub.clients  # the connection left the hub


@pytest.mark.parametrize("server", SERVERS)
async def test_keepalive_closes_a_peer_that_never_answers_pings(
    settings: Settings, server: str
) -> None:
    async with running_gateway(
        settings, server=server, ping_interval_s=1.0, ping_timeout_s=1.0, heartbeat_s=0
    ) as gw:
        mute = await Raw.upgrade(gw.cfg.port)  # reads, never answers a ping
        async with connect(url(gw)) as alive:  # websockets' client answers pings itself
            seen_ping = False
            async with asyncio.timeout(8):
                while True:
                    op, payload = await mute.frame()
                    seen_ping = seen_ping or op == 0x9
                    if op == 0x8:
                        assert struct.unpack("!H", payload[:2])[0] == 1011
                        break
            assert seen_ping
            await send(alive, {"type": "ping", "id": 2})  # the answering client is still open
            assert (await recv_until(alive, lambda m: m.get("type") == "pong"))["id"] == 2


async def test_a_connection_that_never_completes_its_upgrade_is_dropped(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slowloris: a half-sent request holds a descriptor only until the open timeout."""
    monkeypatch.setattr(listener_mod, "OPEN_TIMEOUT_S", 0.5)
    async with running_gateway(settings) as gw:
        r, w = await asyncio.open_connection("127.0.0.1", gw.cfg.port)
        w.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        assert await asyncio.wait_for(r.read(), 5) == b""
        assert gw.listener is not None and not gw.listener.conns


async def test_requests_keep_their_order_while_one_waits_on_redis(settings: Settings) -> None:
    """A ``resume`` reads Redis in a task; the ping sent right behind it in the same packet is
    answered after the resume's answer (here: nothing stored under the id), never before."""
    async with running_gateway(settings, heartbeat_s=0) as gw:
        c = await Raw.upgrade(gw.cfg.port)
        c.w.write(
            masked(b'{"type":"resume","client_id":"never-stored-1","since":1700000000}')
            + masked(b'{"type":"ping","id":9}')
        )
        answers: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            while not answers or answers[-1]["type"] != "pong":
                op, payload = await c.frame()
                if op == 0x1:
                    answers.append(orjson.loads(payload))
        assert [a.get("code", a["type"]) for a in answers] == ["unknown_client_id", "pong"]
