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
A receiver may write one kind of frame, same framing: ``{"type":"feed_interest","keys":
["<channel>:<symbol>", ...]}`` (or ``"keys": null``, the default: every key), the keys someone in
its process reads now. It changes when a receiver is written, never what: every receiver still
gets every message, each key's in order. A write that carries none of a receiver's keys is held
for it (at most until the next heartbeat, which releases everything held, or ``hold_s``), so a
gateway whose clients read one symbol wakes for that symbol and ~10 times a second, not once per
input record (issue 10: on this host a wake-up costs a receiver more than the frame it brings).
The write that releases held data goes ahead of it when no key is in both and it carries no
heartbeat, so the receiver handles what its clients wait for first. A bad
interest frame is logged and ignored (the receiver keeps what it had); an oversized one closes
the connection.
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
from core.channels import is_data_channel

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
FEED_HELD = Counter(
    "md_feed_held_writes_total",
    "direct feed writes held for a receiver none of whose keys they carry",
)
FEED_BAD_INTEREST = Counter(
    "md_feed_bad_interest_total", "interest frames from receivers refused (malformed or oversized)"
)

FEED_INTEREST = "feed_interest"
MAX_INTEREST_FRAME = 1 << 20  # ~40,000 keys; a larger length is a corrupt or hostile frame

Key = tuple[str, str]


def take_frames(buf: bytearray, max_frame: int) -> tuple[list[bytes], bool]:
    """Remove the whole frames at the start of ``buf`` and return them, and whether a length
    over ``max_frame`` came next (a corrupt stream: ``buf`` is cleared, the caller closes)."""
    frames: list[bytes] = []
    pos, n = 0, len(buf)
    while n - pos >= 4:
        (size,) = HEADER.unpack_from(buf, pos)
        if size > max_frame:
            buf.clear()
            return frames, True
        if n - pos - 4 < size:
            break
        frames.append(bytes(buf[pos + 4 : pos + 4 + size]))
        pos += 4 + size
    if pos:
        del buf[:pos]
    return frames, False


def interest_frame(keys: list[str] | None) -> bytes:
    """A receiver's interest, framed (``keys`` = ``<channel>:<symbol>`` strings; None: all)."""
    raw = orjson.dumps({"type": FEED_INTEREST, "keys": keys})
    return HEADER.pack(len(raw)) + raw


def parse_interest(raw: bytes) -> frozenset[Key] | None:
    """An interest frame's body -> the keys (None: every key); ValueError when malformed."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"interest is not JSON: {exc}") from None
    if not isinstance(d, dict) or d.get("type") != FEED_INTEREST or "keys" not in d:
        raise ValueError("not a feed_interest frame")
    keys = d["keys"]
    if keys is None:
        return None
    if not isinstance(keys, list):
        raise ValueError("keys must be a list or null")
    out: set[Key] = set()
    for k in keys:
        if not isinstance(k, str) or ":" not in k:
            raise ValueError(f"key {k!r} is not <channel>:<symbol>")
        channel, _, symbol = k.partition(":")
        out.add((channel, symbol))
    return frozenset(out)


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
        self.hot: frozenset[Key] | None = None  # keys read behind this receiver; None: all
        self.held: list[bytes] = []  # writes held for it, in order
        self.held_bytes = 0
        self.held_keys: set[Key] = set()  # the keys of those writes
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server.receivers.add(self)
        self.server.watched_changed()
        FEED_RECEIVERS.set(len(self.server.receivers))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.receivers.discard(self)
        self.server.watched_changed()
        self.held.clear()
        self.held_bytes = 0
        self.held_keys.clear()
        FEED_RECEIVERS.set(len(self.server.receivers))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        frames, oversized = take_frames(self._buf, MAX_INTEREST_FRAME)
        for raw in frames:
            try:
                hot = parse_interest(raw)
            except ValueError as exc:
                FEED_BAD_INTEREST.inc()
                log.warning(
                    "direct feed receiver sent a bad interest frame", extra={"error": str(exc)}
                )
                continue
            self.hot = hot
            self.server.watched_changed()
            self.release()  # what was held may now be read: it goes at once
        if oversized:
            FEED_BAD_INTEREST.inc()
            log.warning("direct feed receiver sent an oversized frame, closed")
            if self.transport is not None:
                self.transport.abort()

    def release(self) -> None:
        """Write what is held for this receiver (a heartbeat, a new interest, the hold limit)."""
        if not self.held:
            return
        data = b"".join(self.held)
        self.held.clear()
        self.held_bytes = 0
        self.held_keys.clear()
        self.server.write_to(self, data)


class FeedServer:
    """Push side, in the aggregator: ``publish`` frames messages, ``flush`` writes them to every
    receiver at once (the aggregator flushes after each input record: one syscall per record
    and receiver, not one per message), except to a receiver that reads none of the write's keys:
    that one gets it with its next write, a heartbeat at the latest (module docstring).

    A receiver whose socket buffer holds more than ``high_water`` bytes is closed (counted): it
    reconnects and gets what it missed from Kafka, and the leader never waits for anyone. Closing
    rather than skipping keeps every open connection gapless, which the heartbeat's heads rely on.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        high_water: int = 4 << 20,
        beat_ride_s: float = 0.02,
        hold_s: float = 0.25,
        hold_max: int = 256 << 10,
    ) -> None:
        self.host, self.port = host, port
        self.high_water = high_water
        # a heartbeat waits this long for the next data write to carry it (see heartbeat())
        self.beat_ride_s = beat_ride_s
        # a write none of whose keys a receiver reads waits for the next heartbeat, at most
        # hold_s (heartbeats stopped: a leader that lost its lease) or hold_max bytes
        self.hold_s, self.hold_max = hold_s, hold_max
        self._beat_timer: asyncio.TimerHandle | None = None
        self._hold_timer: asyncio.TimerHandle | None = None
        self.receivers: set[_Receiver] = set()
        self._pending: list[bytes] = []
        self._keys: set[Key] = set()  # keys of the queued messages
        self._release = False  # the queued write goes to every receiver (a heartbeat is in it)
        self._server: asyncio.base_events.Server | None = None
        self.heads: dict[tuple[str, str], tuple[int, int]] = {}  # (channel, symbol) -> (epoch, seq)
        self._watched: frozenset[bytes] | None = frozenset()
        self._watched_stale = False

    def watched_changed(self) -> None:
        self._watched_stale = True

    def watched_symbols(self) -> frozenset[bytes] | None:
        """The symbols (UTF-8, as input record keys) of which some receiver reads a data channel
        now; None when a receiver reads every key (it declared no interest). Status keys do not
        count: a FIX gateway reads every symbol's status, which changes a few times a day.

        The leader derives the records of these symbols first when one read brings several
        (aggregator/service.py ``_watched_first``): their messages are what a client waits for,
        while a symbol nobody reads through a gateway goes only to Kafka, whose consumers read
        in batches. With every symbol read, nothing is reordered."""
        if self._watched_stale:
            self._watched_stale = False
            syms: set[bytes] = set()
            every = False
            for r in self.receivers:
                if r.hot is None:
                    every = True
                    break
                syms.update(sym.encode() for ch, sym in r.hot if is_data_channel(ch))
            self._watched = None if every else frozenset(syms)
        return self._watched

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
            if head is not None:
                self._keys.add(head[0])
            else:
                self._release = True  # not a keyed data message: everyone gets it now

    def flush(self) -> None:
        if self._beat_timer is not None:
            self._beat_timer.cancel()  # a waiting heartbeat leaves with this write
            self._beat_timer = None
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        keys, self._keys = self._keys, set()
        release, self._release = self._release, False
        held = False
        for r in self.receivers:
            hot = r.hot
            if (
                not release
                and hot is not None
                and hot.isdisjoint(keys)
                and r.held_bytes + len(data) <= self.hold_max
            ):
                r.held.append(data)
                r.held_bytes += len(data)
                r.held_keys |= keys
                held = True
                FEED_HELD.inc()
                continue
            if r.held:
                if not release and r.held_keys.isdisjoint(keys):
                    # what it reads first, then what was held for it: no key is in both, so each
                    # key's messages stay in order, and the held writes carry no heartbeat (a
                    # heartbeat releases everything), so none arrives before data it covers
                    r.held.insert(0, data)
                else:
                    r.held.append(data)
                r.release()
            else:
                self.write_to(r, data)
        if release:
            if self._hold_timer is not None:
                self._hold_timer.cancel()
                self._hold_timer = None
        elif held and self._hold_timer is None:
            self._hold_timer = asyncio.get_running_loop().call_later(self.hold_s, self._release_all)

    def _release_all(self) -> None:
        self._hold_timer = None
        for r in list(self.receivers):
            r.release()

    def write_to(self, r: _Receiver, data: bytes) -> None:
        t = r.transport
        if t is None or t.is_closing():
            return
        if t.get_write_buffer_size() > self.high_water:
            FEED_DROPPED.inc()
            log.warning("direct feed receiver lagged, closed", extra={"feed": self.port})
            t.abort()  # close() would wait for a reader that does not read
            return
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
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        self._release_all()
        if self._server is not None:
            self._server.close()
            for r in list(self.receivers):
                if r.transport is not None:
                    r.transport.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


class _Reader(asyncio.Protocol):
    def __init__(
        self,
        on_message: Callable[[bytes], None],
        name: str,
        on_chunk: Callable[[], None] | None = None,
        delivered: Callable[[], int] | None = None,
    ) -> None:
        self.on_message = on_message
        self.on_chunk = on_chunk  # once per read that brought messages (not per message)
        self.delivered = delivered  # how many messages reached a reader so far (see _deliver)
        self.name = name
        self.received = FEED_RECEIVED.labels(name)
        self.buf = bytearray()
        self.closed = asyncio.get_running_loop().create_future()
        self._rest: list[bytes] = []  # frames left for the next loop turn, in order

    def data_received(self, data: bytes) -> None:
        self.buf += data
        frames, oversized = take_frames(self.buf, MAX_FRAME)
        if frames:
            self.received.inc(len(frames))
            if self._rest:
                self._rest += frames  # behind what an earlier read left for this turn
            else:
                self._deliver(frames)
        if oversized:
            log.warning("direct feed frame too large, reconnecting", extra={"feed": self.name})
            if self.transport is not None:
                self.transport.close()

    def _deliver(self, frames: list[bytes]) -> None:
        """Hand the frames over in order. The frames of the keys this process reads come first
        in a write (``FeedServer.flush``); once one of them reached a reader (``delivered``
        moved) and a frame does not, the rest of the read waits for the next loop turn, so the
        writes to clients that the delivery scheduled (``call_soon``) go before the ~10 µs each
        of the other symbols' frames. One turn more per such read, no write more."""
        on_message, count = self.on_message, self.delivered
        if count is None:
            for raw in frames:
                on_message(raw)
        else:
            hot = False
            for i, raw in enumerate(frames):
                before = count()
                on_message(raw)
                if count() != before:
                    hot = True
                elif hot and i + 1 < len(frames):
                    self._rest = frames[i + 1 :]
                    asyncio.get_running_loop().call_soon(self._resume)
                    break
        if self.on_chunk is not None:
            self.on_chunk()

    def _resume(self) -> None:
        rest, self._rest = self._rest, []
        if rest:
            self._deliver(rest)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.BaseTransport | None = transport

    def send(self, frame: bytes) -> None:
        t = cast(asyncio.Transport | None, self.transport)  # uvloop's is not a subclass
        if t is not None and not t.is_closing():
            t.write(frame)  # a connection lost meanwhile: the reconnect sends it again

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)


class FeedClient:
    """Receive side, in a gateway: one connection per aggregator instance (only the leader
    pushes), each reconnected with exponential backoff and full jitter."""

    def __init__(
        self,
        addresses: list[tuple[str, int]],
        on_message: Callable[[bytes], None],
        delivered: Callable[[], int] | None = None,
    ):
        self.addresses = addresses
        self.on_message = on_message
        self.delivered = delivered  # see _Reader._deliver
        self.connected: dict[str, bool] = {f"{h}:{p}": False for h, p in addresses}
        self.last_message_at = 0.0  # monotonic time of the last message from any feed
        self._tasks: list[asyncio.Task[None]] = []
        self._readers: dict[str, _Reader] = {}
        self._interest: bytes | None = None  # the last interest frame; None: never told (all)

    def set_interest(self, keys: list[str] | None) -> None:
        """Tell every aggregator instance which keys this process reads now (see the module
        docstring); sent again on each reconnect."""
        self._interest = interest_frame(keys)
        for r in self._readers.values():
            r.send(self._interest)

    def _touch(self) -> None:
        self.last_message_at = time.monotonic()

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
                    lambda: _Reader(self.on_message, name, self._touch, self.delivered),
                    host,
                    port,
                )
            except OSError:
                await asyncio.sleep(backoff.next())
                continue
            FEED_RECONNECTS.inc()
            self.connected[name] = True
            self._readers[name] = proto
            if self._interest is not None:
                proto.send(self._interest)
            backoff.reset()
            try:
                await proto.closed
            finally:
                self.connected[name] = False
                self._readers.pop(name, None)
            await asyncio.sleep(backoff.next())

    async def stop(self) -> None:
        # closed here, not left to the tasks' cancellation: a connection outlived stop() and the
        # server went on writing to a receiver that no longer read (a leader that stood down
        # kept its sources pushing into its socket until the high water closed it)
        for proto in list(self._readers.values()):
            if proto.transport is not None:
                proto.transport.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
