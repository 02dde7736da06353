"""loadtests/faultproxy.py: a cut holds bytes both ways (a partition, not a reset); heal delivers
them in order; reset closes. Pure asyncio against an echo server on loopback."""

from __future__ import annotations

import asyncio

from loadtests.faultproxy import FaultProxy
from testkit.ports import free_port


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_cut_holds_both_ways_and_heal_delivers_in_order() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[1]
    proxy = FaultProxy(free_port(), "127.0.0.1", target)
    await proxy.start()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        w.write(b"a")
        assert await asyncio.wait_for(r.readexactly(1), 5) == b"a"
        proxy.cut()
        w.write(b"bc")
        await w.drain()
        try:
            got = await asyncio.wait_for(r.read(10), 0.5)
        except TimeoutError:
            got = b""
        assert got == b""  # nothing crosses a partition
        # a connection opened during the cut waits for the heal, it is not refused
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        w2.write(b"x")
        proxy.heal()
        assert await asyncio.wait_for(r.readexactly(2), 5) == b"bc"
        assert await asyncio.wait_for(r2.readexactly(1), 5) == b"x"
        proxy.reset()
        assert await asyncio.wait_for(r.read(10), 5) == b""  # closed
        w.close()
        w2.close()
    finally:
        await proxy.stop()
        server.close()
