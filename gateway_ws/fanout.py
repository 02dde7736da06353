"""The fan-out core, sans I/O: which bytes each connection gets, decided on plain data.

Everything that affects what a client receives lives here: the subscription table, each
subscription's state machine (:class:`Mode`), ``seq`` continuity, conflation groups, the
slow-consumer policy, the per-process memory bound and the contents of heartbeats. It owns
no socket, no task and no timer: the asyncio shell (:mod:`gateway_ws.hub`) feeds it the
follower's messages and the clock, and takes out what to write, the shape of
``websockets.protocol.Protocol`` (``receive_data`` / ``data_to_send``):

- inputs: :meth:`FanoutCore.on_message` / :meth:`~FanoutCore.on_reset` (the follower),
  :meth:`~FanoutCore.subscribe` / :meth:`~FanoutCore.unsubscribe` (a client's requests),
  :meth:`~FanoutCore.tick` and :meth:`~FanoutCore.poll_timers` with an explicit ``now``,
  :meth:`~FanoutCore.report_backlog` (what a transport still holds after a write) and the
  resume steps (:meth:`~FanoutCore.replay`, :meth:`~FanoutCore.resume_done`,
  :meth:`~FanoutCore.resume_failed`) once the shell has read Redis;
- outputs: :meth:`~FanoutCore.data_to_send` (one joined buffer per connection per loop turn,
  so several frames cost one ``transport.write``) and :meth:`~FanoutCore.closes_to_send`.

Per-subscription state machine (all transitions are in this module)::

    subscribe ─┬─▶ LIVE     the snapshot was queued; then seq == last + 1 or a flagged snapshot
               ├─▶ WAIT     the follower has no state for the key yet: the next reset snapshots
               └─▶ PENDING  resume requested: live messages are held (at most pending_max) until
                            resume_done() releases them in order, or resume_failed() snapshots
    PENDING ── held overflow or a reset ──▶ WAIT (resume_failed then sends the snapshot)
    LIVE ── send buffer full, book channel ──▶ STALE ── drained below 1/4 (tick) ──▶ LIVE (flagged)
    LIVE ── send buffer full, other channel ──▶ the connection is closed 4001 (slow consumer)

Bounds (docs/websocket.md "Slow consumers"): live data is queued only while the transport
holds at most ``buffer_high`` bytes (checked once per loop turn, in :meth:`data_to_send`);
snapshots, replayed messages and control replies ("forced" writes) may take a connection to
``2 * buffer_high`` and no further; and when all connections together hold more than
``process_high`` bytes, every connection holding more than a quarter of its own bound is
treated as slow, so a handful of sockets that never read cannot grow the process without
limit. Prometheus counters are updated here (memory only, no I/O).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import msgpack
import orjson

from core.codec import iso_from_ns
from core.follower import Current
from gateway_ws import metrics as m
from gateway_ws.conflation import Conflator
from gateway_ws.protocol import (
    BOOK_CHANNELS,
    CLOSE_AUTH,
    CLOSE_IDLE,
    CLOSE_SLOW,
    STATUS,
    Key,
    SubRequest,
)
from gateway_ws.rates import CrossRates


class Source(Protocol):
    """What the core reads from :class:`core.follower.StreamFollower` (in-memory state)."""

    connected: bool
    join: Any

    def current(self, channel: str, symbol: str, **kw: Any) -> Current | None: ...

    def seq_of(self, channel: str, symbol: str) -> tuple[int, int, int | None] | None: ...

    def health(self) -> tuple[bool, dict[str, Any]]: ...


class Mode(Enum):
    WAIT = "wait"  # no state for the key yet: the first Reset sends the snapshot
    LIVE = "live"
    PENDING = "pending"  # resume replay from Redis in progress: live messages are held
    STALE = "stale"  # slow consumer on a book: paused until the buffer drains


def frame(payload: bytes, binary: bool) -> bytes:
    """An unmasked, unfragmented WebSocket data frame (RFC 6455 §5.2): FIN + opcode, length.

    A server never masks (§5.1), so one message has the same frame bytes on every
    uncompressed connection: the core builds it once per message and encoding.
    """
    return _head(len(payload), binary) + payload


def _head(n: int, binary: bool) -> bytes:
    b0 = 0x82 if binary else 0x81
    if n < 126:
        return bytes((b0, n))
    if n < 1 << 16:
        return struct.pack("!BBH", b0, 126, n)
    return struct.pack("!BBQ", b0, 127, n)


# payload bytes per batched frame (``/ws?batch=1``): large enough to carry a loop turn's
# messages of a busy connection (~250 B each) in a few frames, small enough for clients that
# cap a message's size (browsers do not; websockets' client default is 1 MiB)
BATCH_MAX_BYTES = 64 * 1024


def payload_of(f: bytes) -> memoryview:
    """The payload of a frame built by :func:`frame` (no copy)."""
    n = f[1]
    return memoryview(f)[2 if n < 126 else 4 if n == 126 else 10 :]


def batch_frames(payloads: Sequence[bytes | memoryview], binary: bool, framed: bool) -> list[bytes]:
    """A loop turn's messages of one batching connection as few WebSocket messages.

    JSON: the messages of one frame are joined by ``\\n`` (NDJSON, as Centrifugo does; a
    JSON text from orjson never holds a raw newline, so splitting on it is exact); one message
    alone is the same frame an unbatched client gets. MessagePack: the objects are concatenated
    (a MessagePack stream; any unpacker reads them in order). Frames are built here when the
    core frames for the connection, else the shell frames (and compresses) each batch.
    """
    sep = b"" if binary else b"\n"
    batches: list[bytes] = []
    parts: list[bytes | memoryview] = []  # [header], payload, sep, payload, ...: one join each
    size = 0  # payload bytes in parts, separators included
    for p in payloads:
        if parts and size + len(sep) + len(p) > BATCH_MAX_BYTES:
            batches.append(_joined(parts, size, binary, framed))
            parts, size = [], 0
        if parts and sep:
            parts.append(sep)
            size += len(sep)
        parts.append(p)
        size += len(p)
    if parts:
        batches.append(_joined(parts, size, binary, framed))
    return batches


def _joined(parts: list[bytes | memoryview], size: int, binary: bool, framed: bool) -> bytes:
    return b"".join([_head(size, binary), *parts]) if framed else b"".join(parts)


class Conn:
    """One connection as the core sees it: its subscriptions and the bytes queued for it.

    ``framed``: the core builds the WebSocket frames (uncompressed connections); False means
    ``out`` holds payloads that the shell frames per connection (permessage-deflate).
    ``batch``: the client asked for batched frames (:func:`batch_frames`): ``out`` is queued
    as for everyone (the shared frames, on the hot path), and a turn's frames are unwrapped and
    joined into as few messages as fit at :meth:`FanoutCore.data_to_send`; a lone frame goes
    out as it is.
    ``backlog``: bytes the transport still held after the last write, as the shell reported.
    ``expires_at``: the token's ``exp`` (Unix seconds), enforced by :meth:`FanoutCore.tick`.
    """

    __slots__ = (
        "binary",
        "framed",
        "batch",
        "subs",
        "out",
        "out_bytes",
        "backlog",
        "stale",
        "closed",
        "next_hb",
        "connected_at",
        "last_request",
        "expires_at",
        "conn_id",
        "ip",
        "user",
    )

    def __init__(
        self,
        *,
        binary: bool = False,
        framed: bool = True,
        batch: bool = False,
        conn_id: int = 0,
        ip: str = "?",
        user: str | None = None,
        now: float = 0.0,
        expires_at: float | None = None,
    ) -> None:
        self.binary = binary
        self.framed = framed
        self.batch = batch
        self.subs: dict[Key, Sub] = {}
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.backlog = 0
        self.stale = False
        self.closed = False
        self.next_hb = 0.0
        self.connected_at = now
        self.last_request = now
        self.expires_at = expires_at
        self.conn_id = conn_id
        self.ip = ip
        self.user = user


@dataclass(eq=False, slots=True)
class Sub:
    """One subscription's delivery state; ``last`` is the seq the client is at."""

    conn: Conn
    req: SubRequest
    mode: Mode = Mode.WAIT
    last: int = -1
    epoch: int | None = None
    held: deque[tuple[int, bytes, dict[str, Any]]] = field(default_factory=deque)
    had_data: bool = False
    group: Group | None = None
    fast: bool = False  # eligible for the hot path: JSON, preframed, no group, no conversion
    sent: int = -1  # conflated: seq of the last message actually sent (what heartbeats report)
    replay_last: int = -1  # resume: seq of the last replayed message
    replay_since: int = -1
    replay_epoch: int | None = None


@dataclass(eq=False, slots=True)
class Group:
    """A conflation group: one ``(channel, symbol, interval)``, one message per interval."""

    merge: Conflator
    due: float
    subs: dict[Sub, None] = field(default_factory=dict)

    @property
    def interval_s(self) -> float:
        return self.merge.interval_ms / 1000


@dataclass(frozen=True, slots=True)
class CloseConn:
    """The shell must close ``conn`` with ``code``; ``event`` names the audit event."""

    conn: Conn
    code: int
    reason: str
    event: str


class FanoutCore:
    """The subscriptions of every connection of one process and what each must receive."""

    def __init__(
        self,
        source: Source,
        *,
        buffer_high: int = 256 * 1024,
        process_high: int = 256 * 1024 * 1024,
        pending_max: int = 10_000,
        heartbeat_s: float = 5.0,
        idle_s: float = 60.0,
        resume: bool = True,
        wall_ns: Callable[[], int] | None = None,
    ) -> None:
        import time

        self.source = source
        self.high = buffer_high
        self.forced_high = 2 * buffer_high
        self.process_high = process_high
        self.pending_max = pending_max
        self.heartbeat_s = heartbeat_s
        self.idle_s = idle_s
        self.resume = resume
        self.wall_ns = wall_ns or time.time_ns
        self.index: dict[Key, dict[Sub, None]] = {}
        self.groups: dict[tuple[Key, int], Group] = {}
        self.groups_by_key: dict[Key, list[Group]] = {}
        self.conns: dict[Conn, None] = {}
        self.rates = CrossRates(source)  # type: ignore[arg-type]
        self.feed_ok = True
        self.backlog_total = 0  # sum of the reported transport backlogs
        self.out_total = 0  # bytes queued in the connections' out lists
        self._dirty: list[Conn] = []
        self._closes: list[CloseConn] = []

    def reads(self, channel: str, symbol: str) -> bool:
        """Whether any subscription here reads the key: the follower keeps the others cold
        (``core.follower.StreamJoin.interest``) and warms them when a subscriber asks."""
        key = (channel, symbol)
        return bool(
            self.index.get(key)
            or key in self.groups_by_key
            or (channel == STATUS and self.index.get((STATUS, "*")))
        )

    # ----------------------------------------------------------------- outputs

    def data_to_send(self) -> list[tuple[Conn, list[bytes]]]:
        """Every connection's queued bytes of this loop turn; the shell writes each list once.

        Live data was queued without a check (the hot path only appends); a connection whose
        transport already held more than the bound at the last write loses this turn's bytes
        and goes through the slow-consumer policy instead, as does one holding more than a
        quarter of the bound while the whole process is over ``process_high``.
        """
        dirty, self._dirty = self._dirty, []
        over = self.backlog_total > self.process_high
        low = self.high // 4
        out: list[tuple[Conn, list[bytes]]] = []
        for c in dirty:
            chunks, c.out = c.out, []
            self.out_total -= c.out_bytes
            c.out_bytes = 0
            if c.closed and not chunks:
                continue
            if c.backlog > self.high or (over and c.backlog > low):
                if not c.closed:
                    self.slow(c)
                continue
            if c.batch and len(chunks) > 1:
                # the shared frames were queued as for everyone: unwrapped and joined here
                chunks = batch_frames(
                    [payload_of(f) for f in chunks] if c.framed else chunks, c.binary, c.framed
                )
            out.append((c, chunks))
        return out

    def closes_to_send(self) -> list[CloseConn]:
        closes, self._closes = self._closes, []
        return closes

    @property
    def has_output(self) -> bool:
        """Whether the shell has something to write or close (it schedules a flush)."""
        return bool(self._dirty or self._closes)

    def report_backlog(self, c: Conn, nbytes: int) -> None:
        """What ``c``'s transport still holds (after a write, or polled while it drains)."""
        self.backlog_total += nbytes - c.backlog
        c.backlog = nbytes

    # ----------------------------------------------------------------- connections

    def add(self, c: Conn, now: float) -> None:
        self.conns[c] = None
        c.next_hb = now + self.heartbeat_s
        m.CONNECTIONS.set(len(self.conns))
        m.CONNECTIONS_ACTIVE.set(len(self.conns))

    def remove(self, c: Conn) -> list[Sub]:
        """Forget a connection; returns its subscriptions (the shell cancels their resumes)."""
        c.closed = True
        dropped = [s for k in list(c.subs) if (s := self._drop(c, k)) is not None]
        self.conns.pop(c, None)
        self.report_backlog(c, 0)
        self.out_total -= c.out_bytes
        c.out, c.out_bytes = [], 0
        m.CONNECTIONS.set(len(self.conns))
        m.CONNECTIONS_ACTIVE.set(len(self.conns))
        return dropped

    def close(self, c: Conn, code: int, reason: str, event: str) -> None:
        """Nothing more is queued for ``c``; the shell closes it after writing what is queued."""
        if c.closed:
            return
        c.closed = True
        self._closes.append(CloseConn(c, code, reason, event))

    # ----------------------------------------------------------------- writing

    def _queue(self, c: Conn, data: bytes) -> None:
        if not c.out:
            self._dirty.append(c)
        c.out.append(data)
        n = len(data)
        c.out_bytes += n
        self.out_total += n

    def room(self, c: Conn, limit: int | None = None) -> bool:
        """Whether ``c`` may take more bytes: its backlog plus this turn's under ``limit``."""
        return c.backlog + c.out_bytes <= (self.high if limit is None else limit)

    def encode(self, c: Conn, msg: dict[str, Any]) -> bytes:
        return msgpack.packb(msg) if c.binary else orjson.dumps(msg)

    def control(self, c: Conn, msg: dict[str, Any] | bytes) -> bool:
        """Queue a control reply (ack, error, heartbeat, resync notice) within the forced bound.

        A connection that does not even read its replies is closed as a slow consumer: the
        replies must not pile up without limit (issue 12)."""
        if c.closed:
            return False
        if not self.room(c, self.forced_high):
            self._close_slow(c)
            return False
        payload = msg if isinstance(msg, bytes) else self.encode(c, msg)
        self._queue(c, frame(payload, c.binary) if c.framed else payload)
        return True

    def _payload(self, c: Conn, raw: bytes, cache: list[bytes | None]) -> bytes:
        if not c.binary:
            return raw
        packed = cache[0]
        if packed is None:
            packed = cache[0] = msgpack.packb(orjson.loads(raw))
        return packed

    def _send(self, c: Conn, raw: bytes, cache: list[bytes | None], limit: int) -> bool:
        """Queue one data message, its payload and frame built once per message and encoding.

        ``cache`` is ``[msgpack payload, json frame, msgpack frame]`` for the current message.
        False (nothing queued) when ``c`` holds more than ``limit`` bytes.
        """
        if c.closed:
            return True
        if c.backlog + c.out_bytes > limit:
            return False
        if not c.framed:
            self._queue(c, self._payload(c, raw, cache))
            return True
        i = 2 if c.binary else 1
        f = cache[i]
        if f is None:
            f = cache[i] = frame(self._payload(c, raw, cache), c.binary)
        self._queue(c, f)
        return True

    # ----------------------------------------------------------------- subscriptions

    def subscribe(self, c: Conn, req: SubRequest) -> Sub:
        """Add (or replace) a subscription; its snapshot is queued unless it resumes (PENDING).

        A replaced subscription is dropped first: the shell cancels its resume, if any."""
        self._drop(c, req.key)
        sub = Sub(c, req)
        sub.fast = c.framed and not c.binary and not req.interval_ms and not req.currencies
        c.subs[req.key] = sub
        self.index.setdefault(req.key, {})[sub] = None
        if req.interval_ms:
            gk = (req.key, req.interval_ms)
            g = self.groups.get(gk)
            if g is None:
                g = self.groups[gk] = Group(Conflator(req.key, req.interval_ms), due=0.0)
                g.due = -1.0  # armed by the next poll_timers(now)
                self.groups_by_key.setdefault(req.key, []).append(g)
            g.subs[sub] = None
            sub.group = g
        m.SUBSCRIPTIONS.inc()
        if req.channel == STATUS and req.symbol == "*":
            self._status_snapshot(sub)
        elif self.resume and (req.since_seq is not None or req.since_ns is not None):
            sub.mode = Mode.PENDING
        else:
            self._send_snapshot(sub, resync=False)
        return sub

    def unsubscribe(self, c: Conn, keys: Iterable[Key]) -> list[Sub]:
        return [s for k in keys if (s := self._drop(c, k)) is not None]

    def _drop(self, c: Conn, key: Key) -> Sub | None:
        sub = c.subs.pop(key, None)
        if sub is None:
            return None
        subs = self.index.get(key)
        if subs is not None:
            subs.pop(sub, None)
            if not subs:
                del self.index[key]
        g = sub.group
        if g is not None:
            g.subs.pop(sub, None)
            if not g.subs:
                self.groups.pop((g.merge.key, g.merge.interval_ms), None)
                lst = self.groups_by_key.get(g.merge.key, [])
                if g in lst:
                    lst.remove(g)
                if not lst:
                    self.groups_by_key.pop(g.merge.key, None)
        sub.held.clear()
        m.SUBSCRIPTIONS.dec()
        return sub

    def _send_snapshot(self, sub: Sub, *, resync: bool, reason: str | None = None) -> None:
        req, c = sub.req, sub.conn
        if c.closed:
            return
        if req.channel == STATUS and req.symbol == "*":
            self._status_snapshot(sub)
            return
        cur = self.source.current(
            req.channel,
            req.symbol,
            depth=req.depth,
            resync=resync,
            last=req.limit if req.channel == "trades" else None,
        )
        if cur is None:
            sub.mode = Mode.WAIT
            return
        if resync and reason:
            notice = {
                "type": "resync",
                "channel": req.channel,
                "symbol": req.symbol,
                "reason": reason,
                "seq": cur.seq,
                "epoch": cur.epoch,
            }
            if not self.control(c, notice):
                return
        for raw in cur.messages:
            if not self._send(c, raw, [None, None, None], self.forced_high):
                self._full(sub)
                return
        if req.currencies and cur.messages:
            self._converted(c, req, orjson.loads(cur.messages[-1]))
        sub.last, sub.epoch, sub.mode, sub.had_data = cur.seq, cur.epoch, Mode.LIVE, True
        sub.sent = cur.seq

    def _full(self, sub: Sub) -> None:
        """A snapshot did not fit: books wait for the drain (STALE), others close the conn."""
        if sub.req.channel in BOOK_CHANNELS:
            sub.mode = Mode.STALE
            sub.conn.stale = True
            m.SLOW_RESYNC.inc()
        else:
            self._close_slow(sub.conn)

    def _status_snapshot(self, sub: Sub) -> None:
        """All symbols' status messages, then the gateway's own feed state."""
        c = sub.conn
        for ch, sym in list(self.source.join.keys):
            if ch != STATUS:
                continue
            cur = self.source.current(STATUS, sym)
            if cur is not None:
                for raw in cur.messages:
                    if not self._send(c, raw, [None, None, None], self.forced_high):
                        self._close_slow(c)
                        return
        self.control(c, self.gateway_status(self.wall_ns()))
        sub.mode, sub.had_data = Mode.LIVE, True

    def gateway_status(self, wall_ns: int) -> dict[str, Any]:
        ok, detail = self.source.health()
        return {
            "type": "gateway_status",
            "channel": STATUS,
            "feed": "ok" if self.source.connected else "lost",
            "ready": detail["ready"],
            "timestamp": iso_from_ns(wall_ns),
        }

    def _converted(self, c: Conn, req: SubRequest, parsed: dict[str, Any]) -> None:
        for cur in req.currencies:
            conv = self.rates.convert(parsed, cur)
            if conv is not None:
                payload = self.encode(c, conv)
                self._send(c, payload, [payload, None, None], self.high)

    # ----------------------------------------------------------------- stream input

    def on_message(
        self, channel: str, symbol: str, seq: int, raw: bytes, parsed: dict[str, Any]
    ) -> int:
        """One new in-order message from the follower; returns how many sockets got it.

        The hot path of the gateway: a JSON, preframed, unconflated LIVE subscription costs a
        few appends; the frame is built once per message and shared by every subscriber.
        """
        subs = self.index.get((channel, symbol))
        status_all = self.index.get((STATUS, "*")) if channel == STATUS else None
        if not subs and not status_all:
            return 0
        cache: list[bytes | None] = [None, None, None]
        slow: list[Conn] = []
        n = 0
        fr: bytes | None = None
        dirty = self._dirty
        live = Mode.LIVE
        queued = 0
        for sub in list(subs or ()):
            mode = sub.mode
            if mode is live and sub.fast and seq == sub.last + 1:
                sub.last = seq
                c = sub.conn
                if c.closed:
                    continue
                if fr is None:
                    fr = cache[1] = frame(raw, False)
                if not c.out:
                    dirty.append(c)
                c.out.append(fr)
                c.out_bytes += len(fr)
                queued += len(fr)
                n += 1
                continue
            if mode is Mode.LIVE:
                n += self._deliver_live(sub, seq, raw, parsed, cache, slow)
            elif mode is Mode.PENDING:
                if len(sub.held) >= self.pending_max:
                    sub.held.clear()
                    sub.mode = Mode.WAIT  # resume sees it and resnapshots
                else:
                    sub.held.append((seq, raw, parsed))
        self.out_total += queued
        for sub in list(status_all or ()):
            if sub.mode is Mode.LIVE and not self._send(sub.conn, raw, cache, self.high):
                slow.append(sub.conn)
        for g in self.groups_by_key.get((channel, symbol), ()):
            g.merge.add(seq, raw, parsed)
        for c in slow:
            self.slow(c)
        if n:
            m.SENT.inc(n)
            m.SENT_BYTES.inc(n * len(raw))
        return n

    def _deliver_live(
        self,
        sub: Sub,
        seq: int,
        raw: bytes,
        parsed: dict[str, Any],
        cache: list[bytes | None],
        slow: list[Conn],
    ) -> int:
        """A LIVE subscription off the fast path (conflated, grouped, converted, or after a
        gap): 1 when its socket got the message; a full socket goes to ``slow``."""
        if seq != sub.last + 1:
            if seq > sub.last:
                self._send_snapshot(sub, resync=True, reason="gap")
            return 0
        sub.last = seq
        if sub.group is not None:
            return 0  # the group was fed once by on_message
        c = sub.conn
        if not self._send(c, raw, cache, self.high):
            slow.append(c)
            return 0
        if sub.req.currencies:
            self._converted(c, sub.req, parsed)
        return 1

    def on_reset(self, channel: str, symbol: str, reason: str) -> None:
        """The follower rebuilt a key: every subscriber gets a fresh snapshot (flagged)."""
        m.RESETS.labels(reason).inc()
        for g in self.groups_by_key.get((channel, symbol), ()):
            g.merge.reset()
        if channel == STATUS:  # "status:*" subscribers follow every symbol's latest state
            cur = self.source.current(STATUS, symbol)
            for sub in list(self.index.get((STATUS, "*"), ())):
                if cur is not None and sub.mode is Mode.LIVE:
                    for raw in cur.messages:
                        if not self._send(sub.conn, raw, [None, None, None], self.forced_high):
                            self._close_slow(sub.conn)
                            break
        for sub in list(self.index.get((channel, symbol), ())):
            if sub.mode is Mode.PENDING:
                sub.held.clear()
                sub.mode = Mode.WAIT  # the resume sees WAIT and falls back to a snapshot
                continue
            if sub.mode is Mode.STALE:
                continue
            self._send_snapshot(sub, resync=sub.had_data, reason=reason if sub.had_data else None)

    # ----------------------------------------------------------------- slow consumers

    def slow(self, c: Conn) -> None:
        """``c``'s buffer is full: pause its books (resnapshot on drain) or close it (4001)."""
        if c.closed:
            return
        if any(s.req.channel not in BOOK_CHANNELS for s in c.subs.values()):
            self._close_slow(c)
            return
        for s in c.subs.values():
            if s.mode is Mode.LIVE:
                s.mode = Mode.STALE
                m.SLOW_RESYNC.inc()
        c.stale = True

    def _close_slow(self, c: Conn) -> None:
        if c.closed:
            return
        m.SLOW_DISCONNECT.inc()
        self.close(c, CLOSE_SLOW, "slow consumer: send buffer full", "slow_disconnect")

    def _unstale(self, c: Conn) -> None:
        if c.backlog + c.out_bytes > self.high // 4:
            return
        c.stale = False
        for s in list(c.subs.values()):
            if s.mode is Mode.STALE:
                self._send_snapshot(s, resync=True, reason="slow_consumer")

    # ----------------------------------------------------------------- timers

    def poll_timers(self, now: float) -> float | None:
        """Send every conflation group that is due; returns when the next one is due."""
        nxt: float | None = None
        for g in list(self.groups.values()):
            if g.due < 0:
                g.due = now + g.interval_s
            elif g.due <= now:
                g.due = max(g.due + g.interval_s, now + g.interval_s / 2)
                self._flush_group(g)
            if nxt is None or g.due < nxt:
                nxt = g.due
        return nxt

    def _flush_group(self, g: Group) -> None:
        item = g.merge.take()
        if item is None:
            return
        seq, raw, parsed = item
        cache: list[bytes | None] = [None, None, None]
        slow: list[Conn] = []
        for sub in list(g.subs):
            c = sub.conn
            if sub.mode is not Mode.LIVE or c.closed:
                continue
            if not self._send(c, raw, cache, self.high):
                slow.append(c)
                continue
            sub.sent = seq
            if sub.req.currencies:
                self._converted(c, sub.req, parsed)
        for c in slow:
            self.slow(c)

    def tick(self, now: float, wall_ns: int) -> None:
        """Twice a second: feed state changes, expired tokens, drained slow clients, idle
        connections and heartbeats. ``now`` is monotonic seconds, ``wall_ns`` Unix ns."""
        ok = self.source.connected
        m.KAFKA_UP.set(1 if ok else 0)
        if ok != self.feed_ok:
            self.feed_ok = ok
            msg = self.gateway_status(wall_ns)
            for sub in list(self.index.get((STATUS, "*"), ())):
                self.control(sub.conn, msg)
        wall_s = wall_ns / 1e9
        for c in list(self.conns):
            if c.closed:
                continue
            if c.expires_at is not None and wall_s >= c.expires_at:
                self.control(
                    c,
                    {"type": "error", "code": "token_expired", "message": "the token expired"},
                )
                self.close(c, CLOSE_AUTH, "token expired", "token_expired")
                continue
            if c.stale:
                self._unstale(c)
            if self.idle_s and not c.subs and now - c.last_request > self.idle_s:
                self.close(c, CLOSE_IDLE, "idle: no subscription", "idle_close")
                continue
            if self.heartbeat_s and now >= c.next_hb:
                c.next_hb = now + self.heartbeat_s
                self.control(c, self.heartbeat(c, wall_ns))

    def heartbeat(self, c: Conn, wall_ns: int) -> dict[str, Any]:
        """Every subscription's seq, epoch and (books, when the client is at the head) checksum."""
        subs = []
        for s in c.subs.values():
            item: dict[str, Any] = {
                "channel": s.req.channel,
                "symbol": s.req.symbol,
                "seq": None,
                "epoch": s.epoch,
            }
            shown = s.sent if s.group is not None else s.last  # what this client has received
            if s.mode is Mode.LIVE:
                item["seq"] = shown
                if s.req.channel in BOOK_CHANNELS:
                    st = self.source.seq_of(s.req.channel, s.req.symbol)
                    if st is not None and st[0] == shown:
                        item["checksum"] = st[2]
            subs.append(item)
        return {
            "type": "heartbeat",
            "timestamp": iso_from_ns(wall_ns),
            "feed": "ok" if self.source.connected else "lost",
            "subscriptions": subs,
        }

    # ----------------------------------------------------------------- resume steps

    def resume_start(self, sub: Sub, since: int, epoch: int | None) -> None:
        sub.replay_since = sub.replay_last = since
        sub.replay_epoch = epoch

    def resuming(self, sub: Sub) -> bool:
        """Whether the shell's resume of ``sub`` should go on (not replaced, reset or closed)."""
        return (
            sub.mode is Mode.PENDING
            and not sub.conn.closed
            and sub.conn.subs.get(sub.req.key) is sub
        )

    def replay(
        self, sub: Sub, entries: list[tuple[int, int, bytes]], resume_max: int
    ) -> str | None:
        """Queue replayed ``(seq, epoch, bytes)`` entries; None to go on, or why it stopped.

        Reasons: ``too_old`` (the window starts after ``since``), ``gap``, ``epoch``,
        ``too_far`` (more than ``resume_max`` messages), ``reset`` (no longer resuming) and
        ``slow`` (the connection's buffer is over the forced bound)."""
        if not self.resuming(sub):
            return "reset"
        c = sub.conn
        last, since = sub.replay_last, sub.replay_since
        if entries and entries[0][0] != last + 1:
            return "too_old" if last == since else "gap"
        for seq, e, raw in entries:
            if seq != last + 1:
                return "gap"
            if sub.replay_epoch is None:
                sub.replay_epoch = e
            elif e != sub.replay_epoch:
                return "epoch"
            if not self._send(c, raw, [None, None, None], self.forced_high):
                return "slow"
            last = sub.replay_last = seq
            if last - since > resume_max:
                return "too_far"
        return None

    def caught_up(self, sub: Sub) -> bool:
        """Whether the replay reached the held live messages (or the follower's head)."""
        last = sub.replay_last
        while sub.held and sub.held[0][0] <= last:
            sub.held.popleft()
        if sub.held:
            return sub.held[0][0] == last + 1
        cur = self.source.seq_of(sub.req.channel, sub.req.symbol)
        return cur is None or cur[0] <= last

    def resume_done(self, sub: Sub) -> None:
        """Release the held live messages in order and go LIVE."""
        c, last = sub.conn, sub.replay_last
        for seq, raw, _parsed in sub.held:
            if not self._send(c, raw, [None, None, None], self.forced_high):
                sub.held.clear()
                self._full(sub)
                return
            last = seq
        sub.held.clear()
        sub.last, sub.epoch, sub.mode, sub.had_data = last, sub.replay_epoch, Mode.LIVE, True
        m.RESUMES.labels("ok").inc()

    def resume_failed(self, sub: Sub, result: str) -> None:
        """A resume that cannot be served exactly: a flagged snapshot naming the reason."""
        if sub.conn.closed or sub.conn.subs.get(sub.req.key) is not sub:
            return
        m.RESUMES.labels(result).inc()
        sub.held.clear()
        if result == "slow":
            self._full(sub)
            return
        self._send_snapshot(sub, resync=True, reason=f"resume_{result}")
