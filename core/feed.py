"""The direct feed: the aggregator leader's messages pushed to gateways over TCP, ahead of Kafka.

Kafka is the durable copy of every stream, but one produce + fetch round trip costs ~2 ms on a
busy host and a message crosses two of them. Exchanges solve this with two feeds of the same
sequenced messages and arbitration at the receiver (CME MDP 3.0 A/B feeds): here feed "A" is
this direct push, feed "B" is Kafka, and the receiver (``core/follower.py``) takes each
``seq`` from whichever feed brings it first.

The direct feed may lose anything (a slow receiver, a reconnect, a leader crash): a receiver
applies a direct message only when it is exactly the next ``seq`` of a key already in sync, and
Kafka delivers everything else. It can never show a message that Kafka will not carry too,
because every instance derives the same message for the same ``seq`` (aggregator/service.py):
if the leader dies after pushing ``seq`` N but before Kafka has it, the next leader writes the
same N.

A receiver's connection carries every message in order or is closed: the server closes a
receiver that lags by more than ``high_water`` bytes instead of skipping messages for it, and the
leader sends a heartbeat frame (``FEED_HEARTBEAT``) every ``MD_AGG_HEARTBEAT_MS`` with the last
``(epoch, seq)`` it pushed for each stream. A receiver that is at or past every head has lost
nothing and may stop reading Kafka until the feed breaks (``core/follower.py``).

Wire format (the contract): a stream of frames, each a 4-byte big-endian length followed by
one data message exactly as published to Kafka (UTF-8 JSON), or a heartbeat
``{"type":"feed_heartbeat","ts_ms":<leader wall clock>,"heads":{"<channel>:<symbol>":[epoch,seq]}}``.
The server never reads from a receiver; a receiver never writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable
from typing import cast

import orjson
from prometheus_client import Counter, Gauge

from core.backoff import Backoff

log = logging.getLogger(__name__)

HEADER = struct.Struct("!I")
FEED_HEARTBEAT = "feed_heartbeat"
HEARTBEAT_PREFIX = b'{"type":"feed_heartbeat"'  # how a receiver tells one from a data message
MAX_FRAME = 4 << 20  # a receiver refuses larger frames (a corrupt length, not a message)

FEED_DROPPED = Counter(
    "md_feed_dropped_total", "direct feed receivers closed because they lagged (Kafka fills in)"
)
FEED_RECEIVERS = Gauge("md_feed_receivers", "receivers connected to this direct feed")
FEED_RECEIVED = Counter("md_feed_received_total", "direct feed messages received", ["source"])
FEED_RECONNECTS = Counter("md_feed_reconnects_total", "direct feed connections (re)opened")


def parse_addresses(raw: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` -> [(host, port)]; a bad entry is a configuration error."""
    out: list[tuple[str, int]] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"feed address {part!r} is not host:port")
        out.append((host, int(port)))
    return out


class _Receiver(asyncio.Protocol):
    def __init__(self, server: FeedServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server.receivers.add(self)
        FEED_RECEIVERS.set(len(self.server.receivers))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.receivers.discard(self)
        FEED_RECEIVERS.set(len(self.server.receivers))

    def data_received(self, data: bytes) -> None:
        pass  # receivers never write; anything sent is ignored


class FeedServer:
    """Push side, in the aggregator: ``publish`` frames messages, ``flush`` writes them to every
    receiver at once (the aggregator flushes after each input record: one syscall per record
    and receiver, not one per message).

    A receiver whose socket buffer holds more than ``high_water`` bytes is closed (counted): it
    reconnects and gets what it missed from Kafka, and the leader never waits for anyone. Closing
    rather than skipping keeps every open connection gapless, which the heartbeat's heads rely on.
    """

    def __init__(
        self, host: str, port: int, *, high_water: int = 4 << 20, beat_ride_s: float = 0.02
    ) -> None:
        self.host, self.port = host, port
        self.high_water = high_water
        # a heartbeat waits this long for the next data write to carry it (see heartbeat())
        self.beat_ride_s = beat_ride_s
        self._beat_timer: asyncio.TimerHandle | None = None
        self.receivers: set[_Receiver] = set()
        self._pending: list[bytes] = []
        self._server: asyncio.base_events.Server | None = None
        self.heads: dict[tuple[str, str], tuple[int, int]] = {}  # (channel, symbol) -> (epoch, seq)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Receiver(self), self.host, self.port)
        log.info("direct feed listening", extra={"host": self.host, "port": self.port})

    def publish(self, raw: bytes, head: tuple[tuple[str, str], int, int] | None = None) -> None:
        """Queue one message; :meth:`flush` sends what is queued (one write per receiver).
        ``head`` = ((channel, symbol), epoch, seq) of a data message, for the heartbeats."""
        if head is not None:
            self.heads[head[0]] = (head[1], head[2])
        if self.receivers:
            self._pending.append(HEADER.pack(len(raw)))
            self._pending.append(raw)

    def flush(self) -> None:
        if self._beat_timer is not None:
            self._beat_timer.cancel()  # a waiting heartbeat leaves with this write
            self._beat_timer = None
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        for r in self.receivers:
            t = r.transport
            if t is None or t.is_closing():
                continue
            if t.get_write_buffer_size() > self.high_water:
                FEED_DROPPED.inc()
                log.warning("direct feed receiver lagged, closed", extra={"feed": self.port})
                t.abort()  # close() would wait for a reader that does not read
                continue
            t.write(data)

    def heartbeat(self, ts_ms: int) -> None:
        """Send the heads (the leader only): what every receiver must have by now.

        The heartbeat is queued and rides the next data write if one comes within
        ``beat_ride_s`` (under input there is one every poll), else it is written alone. A write
        of its own would wake every receiver once more per heartbeat period: 10 of a gateway's
        ~80 wake-ups a second at the default rate, and on this host a wake-up costs a receiver
        more than parsing the frame it brings. The heads are those of the heartbeat's time; the
        data queued after it only has higher seqs."""
        if not self.receivers:
            return
        heads = {f"{c}:{s}": [e, q] for (c, s), (e, q) in self.heads.items()}
        self.publish(orjson.dumps({"type": FEED_HEARTBEAT, "ts_ms": ts_ms, "heads": heads}))
        if self.beat_ride_s <= 0:
            self.flush()
        elif self._beat_timer is None:
            self._beat_timer = asyncio.get_running_loop().call_later(self.beat_ride_s, self.flush)

    async def stop(self) -> None:
        self.flush()
        if self._server is not None:
            self._server.close()
            for r in list(self.receivers):
                if r.transport is not None:
                    r.transport.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


class _Reader(asyncio.Protocol):
    def __init__(self, on_message: Callable[[bytes], None], name: str) -> None:
        self.on_message = on_message
        self.name = name
        self.buf = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        on_message = self.on_message
        count = 0
        while n - pos >= 4:
            (size,) = HEADER.unpack_from(buf, pos)
            if size > MAX_FRAME:
                log.warning("direct feed frame too large, reconnecting", extra={"feed": self.name})
                self.buf.clear()
                if self.transport is not None:
                    self.transport.close()
                return
            if n - pos - 4 < size:
                break
            on_message(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
            count += 1
        if pos:
            del buf[:pos]
        if count:
            FEED_RECEIVED.labels(self.name).inc(count)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.BaseTransport | None = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class FeedClient:
    """Receive side, in a gateway: one connection per aggregator instance (only the leader
    pushes), each reconnected with exponential backoff and full jitter."""

    def __init__(self, addresses: list[tuple[str, int]], on_message: Callable[[bytes], None]):
        self.addresses = addresses
        self.on_message = on_message
        self.connected: dict[str, bool] = {f"{h}:{p}": False for h, p in addresses}
        self.last_message_at = 0.0  # monotonic time of the last message from any feed
        self._tasks: list[asyncio.Task[None]] = []

    def _received(self, raw: bytes) -> None:
        self.last_message_at = time.monotonic()
        self.on_message(raw)

    def live(self, within_s: float = 1.0) -> bool:
        """A leader is pushing: something arrived within ``within_s``."""
        return time.monotonic() - self.last_message_at < within_s

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(h, p), name=f"feed-{h}:{p}") for h, p in self.addresses
        ]

    async def _run(self, host: str, port: int) -> None:
        name = f"{host}:{port}"
        backoff = Backoff(initial=0.1, maximum=5.0)
        loop = asyncio.get_running_loop()
        while True:
            try:
                _, proto = await loop.create_connection(
                    lambda: _Reader(self._received, name), host, port
                )
            except OSError:
                await asyncio.sleep(backoff.next())
                continue
            FEED_RECONNECTS.inc()
            self.connected[name] = True
            backoff.reset()
            try:
                await proto.closed
            finally:
                self.connected[name] = False
            await asyncio.sleep(backoff.next())

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
