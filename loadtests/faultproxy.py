"""A fault-injecting TCP proxy for chaos runs: pass bytes through, or hold them as a partition does.

Like the proxies of asyncpg's and Toxiproxy's test harnesses, but the fault this platform needs
is a *partition*, not a reset: while cut, the proxy stops moving bytes in both directions and
stops reading (the kernel buffers fill, the peers' writes block), and new connections are
accepted but not connected upstream. Nothing is dropped mid-stream, because TCP would not
drop it either: what a real partition loses is time, until the peers' own timeouts close the
connections. ``heal()`` moves everything that waited. ``reset()`` closes every connection (RST
semantics), for the harsher case.

Used by ``loadtests/chaos.py`` ("ws-kafka-cut") in front of Kafka's ``CHAOS`` listener, whose
advertised address is this proxy (``deploy/local/kafka.sh``), so that every connection of one
client, bootstrap and brokers, goes through it.
"""

from __future__ import annotations

import asyncio
import contextlib


class _Pipe:
    """One client connection and its upstream connection."""

    def __init__(
        self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ):
        self.proxy = proxy
        self.client = (reader, writer)
        self.tasks: list[asyncio.Task[None]] = []
        self.upstream: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        await self.proxy.healthy.wait()  # a connection made during a cut waits for the heal
        try:
            ur, uw = await asyncio.open_connection(self.proxy.target_host, self.proxy.target_port)
        except OSError:
            self.client[1].close()
            return
        self.upstream = uw
        self.tasks = [
            asyncio.create_task(self._copy(self.client[0], uw)),
            asyncio.create_task(self._copy(ur, self.client[1])),
        ]
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.close()

    async def _copy(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while True:
            await self.proxy.healthy.wait()
            data = await src.read(65536)
            if not data:
                break
            await self.proxy.healthy.wait()  # read before the cut: hold it until the heal
            dst.write(data)
            await dst.drain()
            self.proxy.bytes += len(data)
        with contextlib.suppress(OSError):
            dst.write_eof()

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for w in (self.client[1], self.upstream):
            if w is not None:
                w.close()


class FaultProxy:
    def __init__(self, listen_port: int, target_host: str, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_host = target_host
        self.target_port = target_port
        self.healthy = asyncio.Event()
        self.healthy.set()
        self.pipes: set[_Pipe] = set()
        self.bytes = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pipe = _Pipe(self, reader, writer)
        self.pipes.add(pipe)
        try:
            await pipe.run()
        finally:
            self.pipes.discard(pipe)

    def cut(self) -> None:
        """Partition: no byte moves either way until :meth:`heal`."""
        self.healthy.clear()

    def heal(self) -> None:
        self.healthy.set()

    def reset(self) -> None:
        """Close every connection now (the peers see a reset/EOF and reconnect)."""
        for p in list(self.pipes):
            p.close()

    async def stop(self) -> None:
        self.heal()
        self.reset()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
