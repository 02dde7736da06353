"""Fan-out: the follower's messages to every subscribed client, encoded once.

The hub owns the subscriptions of all clients of one process, indexed by ``(channel, symbol)``.
A stream message arrives from :class:`core.follower.StreamFollower` as the bytes the
aggregator published; the hub frames those bytes once (msgpack clients share one re-encoding
per message) and appends the same frame to every subscriber's queue; each connection's queue
is written with one ``transport.write`` per loop turn (:meth:`Hub.flush`). No task per
message, no awaiting a slow peer.

Per subscription the hub enforces ``seq == last + 1`` so a client never sees a gap it was
not told about: every discontinuity becomes a snapshot flagged ``"resync": true``.

Slow consumers: a connection whose transport buffer is above ``buffer_high`` bytes at flush
time gets no more data (bound: ``buffer_high`` plus one loop turn of messages). Its book subscriptions are paused (``STALE``) and resnapshotted, flagged, once the
buffer drains below a quarter of the bound; a connection with any other subscription is
closed with 4001 and a reason. Both are counted (md_ws_slow_resyncs_total,
md_ws_slow_disconnects_total).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgpack
import orjson

from core.codec import iso_from_ns
from core.follower import Reset, StreamFollower
from core.isotime import ns_from_iso_cached
from gateway_ws import metrics as m
from gateway_ws.client import Client, Mode, Sub, frame
from gateway_ws.config import WsConfig
from gateway_ws.conflation import Conflator
from gateway_ws.protocol import (
    BOOK_CHANNELS,
    CLOSE_IDLE,
    CLOSE_SLOW,
    STATUS,
    Key,
    SubRequest,
)
from gateway_ws.rates import CrossRates
from gateway_ws.resume import History

log = logging.getLogger(__name__)
audit = logging.getLogger("gateway_ws.audit")


class Hub:
    def __init__(
        self,
        cfg: WsConfig,
        follower: StreamFollower,
        history: History | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.follower = follower
        self.history = history
        self.clock = clock
        self.index: dict[Key, dict[Sub, None]] = {}
        self.groups: dict[tuple[Key, int], Conflator] = {}
        self.groups_by_key: dict[Key, list[Conflator]] = {}
        self.clients: set[Client] = set()
        self.rates = CrossRates(follower)
        self.feed_ok = True
        self.dirty: list[Client] = []
        self._flush_scheduled = False
        # publish times (ns) of the messages queued for the next flush: md_ws_hop_seconds
        # {hop="publish_to_send"} is observed once the bytes are written (one loop turn's worth)
        self._queued_pub: list[int] = []
        self._tick_task: asyncio.Task[None] | None = None
        follower.add_callback(self.on_message)
        follower.add_reset_callback(self.on_reset)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._tick_task = asyncio.get_running_loop().create_task(self._ticker(), name="hub-tick")

    @property
    def tick_task(self) -> asyncio.Task[None] | None:
        """The ticker (heartbeats, idle closes, feed state): a liveness check watches it."""
        return self._tick_task

    async def stop(self) -> None:
        if self._tick_task:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        for g in self.groups.values():
            if g.handle:
                g.handle.cancel()

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write every connection's queued frames: once per loop turn, one syscall each."""
        self._flush_scheduled = False
        dirty, self.dirty = self.dirty, []
        for c in dirty:
            if not c.flush():
                self._slow_client(c)
        if self._queued_pub:
            queued, self._queued_pub = self._queued_pub, []
            now = time.time_ns()
            observe = m.HOP_SEND.observe
            for pub in queued:
                observe(max(0, now - pub) / 1e9)

    def add_client(self, c: Client) -> None:
        c.hub = self
        c.raw_ok = c.raw_ok and self.cfg.preframed
        self.clients.add(c)
        c.next_hb = self.clock() + self.cfg.heartbeat_s
        m.CONNECTIONS.set(len(self.clients))
        m.CONNECTIONS_ACTIVE.set(len(self.clients))

    def remove_client(self, c: Client) -> None:
        c.closed = True
        for key in list(c.subs):
            self._drop(c, key)
        self.clients.discard(c)
        m.CONNECTIONS.set(len(self.clients))
        m.CONNECTIONS_ACTIVE.set(len(self.clients))

    # ----------------------------------------------------------------- encoding

    def _enc(self, c: Client, msg: dict[str, Any]) -> bytes:
        return msgpack.packb(msg) if c.binary else orjson.dumps(msg)

    def control(self, c: Client, msg: dict[str, Any]) -> None:
        c.write(self._enc(c, msg), force=True)

    def _payload(self, c: Client, raw: bytes, cache: list[bytes | None]) -> bytes:
        if not c.binary:
            return raw
        packed = cache[0]
        if packed is None:
            packed = cache[0] = msgpack.packb(orjson.loads(raw))
        return packed

    def _send(self, c: Client, raw: bytes, cache: list[bytes | None], force: bool = False) -> bool:
        """Write one data message, its payload and frame built once per message and encoding.

        ``cache`` is ``[msgpack payload, json frame, msgpack frame]`` for the current message.
        """
        if not c.raw_ok:
            return c.write(self._payload(c, raw, cache), force)
        i = 2 if c.binary else 1
        f = cache[i]
        if f is None:
            f = cache[i] = frame(self._payload(c, raw, cache), c.binary)
        return c.write(b"", force, framed=f)

    # ----------------------------------------------------------------- subscriptions

    def subscribe(self, c: Client, req: SubRequest) -> None:
        old = c.subs.get(req.key)
        if old is not None:
            self._drop(c, req.key)
        sub = Sub(c, req)
        sub.fast = c.raw_ok and not c.binary and not req.interval_ms and not req.currencies
        c.subs[req.key] = sub
        self.index.setdefault(req.key, {})[sub] = None
        if req.interval_ms:
            gk = (req.key, req.interval_ms)
            g = self.groups.get(gk)
            if g is None:
                g = self.groups[gk] = Conflator(req.key, req.interval_ms)
                self.groups_by_key.setdefault(req.key, []).append(g)
                self._schedule(g)
            g.subs.add(sub)
            sub.group = g
        m.SUBSCRIPTIONS.inc()
        audit.info(
            "subscribe",
            extra={
                "event": "subscribe",
                "conn": c.conn_id,
                "ip": c.ip,
                "user": c.user,
                "target": req.name,
                "since_seq": req.since_seq,
            },
        )
        if req.channel == STATUS and req.symbol == "*":
            self._status_snapshot(c, sub)
            return
        if (req.since_seq is not None or req.since_ns is not None) and self.history is not None:
            sub.mode = Mode.PENDING
            asyncio.get_running_loop().create_task(self._resume(sub))
            return
        self._send_snapshot(sub, resync=False)

    def unsubscribe(self, c: Client, keys: Iterable[Key]) -> None:
        for k in keys:
            self._drop(c, k)
            audit.info(
                "unsubscribe",
                extra={
                    "event": "unsubscribe",
                    "conn": c.conn_id,
                    "ip": c.ip,
                    "user": c.user,
                    "target": f"{k[0]}:{k[1]}",
                },
            )

    def _drop(self, c: Client, key: Key) -> None:
        sub = c.subs.pop(key, None)
        if sub is None:
            return
        subs = self.index.get(key)
        if subs is not None:
            subs.pop(sub, None)
            if not subs:
                del self.index[key]
        if sub.group is not None:
            g = sub.group
            g.subs.discard(sub)
            if not g.subs:
                if g.handle:
                    g.handle.cancel()
                self.groups.pop((g.key, g.interval_ms), None)
                lst = self.groups_by_key.get(g.key, [])
                if g in lst:
                    lst.remove(g)
                if not lst:
                    self.groups_by_key.pop(g.key, None)
        m.SUBSCRIPTIONS.dec()

    def _send_snapshot(self, sub: Sub, *, resync: bool, reason: str | None = None) -> None:
        req, c = sub.req, sub.client
        if req.channel == STATUS and req.symbol == "*":
            self._status_snapshot(c, sub)
            return
        cur = self.follower.current(
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
            self.control(
                c,
                {
                    "type": "resync",
                    "channel": req.channel,
                    "symbol": req.symbol,
                    "reason": reason,
                    "seq": cur.seq,
                    "epoch": cur.epoch,
                },
            )
        cache: list[bytes | None] = [None, None, None]
        for raw in cur.messages:
            cache = [None, None, None]
            self._send(c, raw, cache, force=True)
        if req.currencies and cur.messages:
            self._converted(c, req, orjson.loads(cur.messages[-1]))
        sub.last, sub.epoch, sub.mode, sub.had_data = cur.seq, cur.epoch, Mode.LIVE, True
        sub.sent = cur.seq

    def _status_snapshot(self, c: Client, sub: Sub) -> None:
        """All symbols' status messages, then the gateway's own feed state."""
        for (ch, _sym), _st in list(self.follower.join.keys.items()):
            if ch != STATUS:
                continue
            cur = self.follower.current(STATUS, _sym)
            if cur is not None:
                for raw in cur.messages:
                    self._send(c, raw, [None, None, None], force=True)
        self.control(c, self._gateway_status())
        sub.mode, sub.had_data = Mode.LIVE, True

    def _gateway_status(self) -> dict[str, Any]:
        ok, detail = self.follower.health()
        return {
            "type": "gateway_status",
            "channel": STATUS,
            "feed": "ok" if self.follower.connected else "lost",
            "ready": detail["ready"],
            "timestamp": iso_from_ns(time.time_ns()),
        }

    def _converted(self, c: Client, req: SubRequest, parsed: dict[str, Any]) -> None:
        for cur in req.currencies:
            conv = self.rates.convert(parsed, cur)
            if conv is not None:
                c.write(self._enc(c, conv))

    # ----------------------------------------------------------------- stream input

    def on_message(
        self, channel: str, symbol: str, seq: int, raw: bytes, parsed: dict[str, Any]
    ) -> None:
        """Follower callback: one new in-order message; the hot path of the gateway."""
        now = time.time_ns()
        pub = 0  # the aggregator's publish time, ns; 0 = none or malformed
        ts = parsed.get("timestamp")
        if ts.__class__ is str:
            try:
                pub = ns_from_iso_cached(ts)
            except Exception:
                pass
            else:
                m.HOP_RECEIVE.observe(max(0, now - pub) / 1e9)
        subs = self.index.get((channel, symbol))
        status_all = self.index.get((STATUS, "*")) if channel == STATUS else None
        if not subs and not status_all:
            return
        if pub:
            m.FANOUT_LAG.set((now - pub) / 1e9)
        cache: list[bytes | None] = [None, None, None]
        slow: list[Sub] = []
        n = 0
        fr: bytes | None = None
        dirty = self.dirty
        live = Mode.LIVE
        for sub in list(subs or ()):
            mode = sub.mode
            if mode is live and sub.fast and seq == sub.last + 1:
                # the common case, kept to a few appends: JSON, preframed, not conflated
                sub.last = seq
                c = sub.client
                if fr is None:
                    fr = cache[1] = frame(raw, False)
                if not c.out:
                    dirty.append(c)
                c.out.append(fr)
                c.out_bytes += len(fr)
                n += 1
                continue
            if mode is Mode.LIVE:
                if seq != sub.last + 1:
                    if seq <= sub.last:
                        continue
                    self._send_snapshot(sub, resync=True, reason="gap")
                    continue
                sub.last = seq
                if sub.group is not None:
                    continue  # the group was fed once below
                c = sub.client
                if not self._send(c, raw, cache):
                    slow.append(sub)
                    continue
                n += 1
                if sub.req.currencies:
                    self._converted(c, sub.req, parsed)
            elif mode is Mode.PENDING:
                if len(sub.held) >= self.cfg.pending_max:
                    sub.held.clear()
                    sub.mode = Mode.WAIT  # resume will see it and resnapshot
                else:
                    sub.held.append((seq, raw, parsed))
        for sub in list(status_all or ()):
            if sub.mode is Mode.LIVE and not self._send(sub.client, raw, cache):
                slow.append(sub)
        for g in self.groups_by_key.get((channel, symbol), ()):
            g.add(seq, raw, parsed)
        if n:
            m.SENT.inc(n)
            m.SENT_BYTES.inc(n * len(raw))
            if dirty:
                self.schedule_flush()
            if pub:
                if self._flush_scheduled:
                    self._queued_pub.append(pub)  # observed by flush(), after the writes
                else:  # nothing queued: every subscriber was written directly (permessage-deflate)
                    m.HOP_SEND.observe(max(0, time.time_ns() - pub) / 1e9)
        for sub in slow:
            self._slow_client(sub.client)

    def on_reset(self, r: Reset) -> None:
        """The follower rebuilt a key: every subscriber gets a fresh snapshot (flagged)."""
        m.RESETS.labels(r.reason).inc()
        for g in self.groups_by_key.get((r.channel, r.symbol), ()):
            g.reset()
        if r.channel == STATUS:  # "status:*" subscribers follow every symbol's latest state
            cur = self.follower.current(STATUS, r.symbol)
            for sub in list(self.index.get((STATUS, "*"), ())):
                if cur is not None and sub.mode is Mode.LIVE:
                    for raw in cur.messages:
                        self._send(sub.client, raw, [None, None, None], force=True)
        for sub in list(self.index.get((r.channel, r.symbol), ())):
            if sub.mode is Mode.PENDING:
                sub.held.clear()
                sub.mode = Mode.WAIT  # the resume task sees WAIT and falls back to a snapshot
                continue
            if sub.mode is Mode.STALE:
                continue
            self._send_snapshot(sub, resync=sub.had_data, reason=r.reason if sub.had_data else None)

    # ----------------------------------------------------------------- slow consumers

    def _slow_client(self, c: Client) -> None:
        if c.closed:
            return
        if any(s.req.channel not in BOOK_CHANNELS for s in c.subs.values()):
            m.SLOW_DISCONNECT.inc()
            audit.warning(
                "slow consumer disconnected",
                extra={
                    "event": "slow_disconnect",
                    "conn": c.conn_id,
                    "ip": c.ip,
                    "user": c.user,
                    "buffered": c.buffered(),
                },
            )
            c.close(CLOSE_SLOW, "slow consumer: send buffer full")
            return
        for s in c.subs.values():
            if s.mode is Mode.LIVE:
                s.mode = Mode.STALE
                m.SLOW_RESYNC.inc()
        c.stale = True

    def _unstale(self, c: Client) -> None:
        if c.buffered() > c.high // 4:
            return
        c.stale = False
        for s in c.subs.values():
            if s.mode is Mode.STALE:
                self._send_snapshot(s, resync=True, reason="slow_consumer")

    # ----------------------------------------------------------------- timers

    def _schedule(self, g: Conflator) -> None:
        loop = asyncio.get_running_loop()
        g.handle = loop.call_later(g.interval_ms / 1000, self._flush, g)

    def _flush(self, g: Conflator) -> None:
        if (g.key, g.interval_ms) not in self.groups:
            return
        self._schedule(g)
        item = g.take()
        if item is None:
            return
        seq, raw, parsed = item
        cache: list[bytes | None] = [None, None, None]
        slow: list[Sub] = []
        for sub in list(g.subs):
            if sub.mode is not Mode.LIVE or sub.client.closed:
                continue
            if not self._send(sub.client, raw, cache):
                slow.append(sub)
                continue
            sub.sent = seq
            if sub.req.currencies:
                self._converted(sub.client, sub.req, parsed)
        for sub in slow:
            self._slow_client(sub.client)

    async def _ticker(self) -> None:
        """Heartbeats, idle closes, drained slow clients and the feed state, twice a second."""
        while True:
            await asyncio.sleep(0.5)
            try:
                self._tick()
            except Exception:
                log.exception("hub tick failed")

    def _tick(self) -> None:
        now = self.clock()
        ok = self.follower.connected
        m.KAFKA_UP.set(1 if ok else 0)
        if ok != self.feed_ok:
            self.feed_ok = ok
            msg = self._gateway_status()
            for sub in list(self.index.get((STATUS, "*"), ())):
                self.control(sub.client, msg)
        for c in list(self.clients):
            if c.closed:
                continue
            if c.stale:
                self._unstale(c)
            if (
                self.cfg.idle_s
                and not c.subs
                and now - max(c.session.last_request, c.connected_at) > self.cfg.idle_s
            ):
                audit.info(
                    "idle close", extra={"event": "idle_close", "conn": c.conn_id, "ip": c.ip}
                )
                c.close(CLOSE_IDLE, "idle: no subscription")
                continue
            if self.cfg.heartbeat_s and now >= c.next_hb:
                c.next_hb = now + self.cfg.heartbeat_s
                self.control(c, self.heartbeat(c))

    def heartbeat(self, c: Client) -> dict[str, Any]:
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
            if s.req.channel in BOOK_CHANNELS and s.mode is Mode.LIVE:
                st = self.follower.seq_of(s.req.channel, s.req.symbol)
                if st is not None and st[0] == shown:
                    item["checksum"] = st[2]
            subs.append(item)
        return {
            "type": "heartbeat",
            "timestamp": iso_from_ns(time.time_ns()),
            "feed": "ok" if self.follower.connected else "lost",
            "subscriptions": subs,
        }

    # ----------------------------------------------------------------- resume

    async def _resume(self, sub: Sub) -> None:
        """Replay the messages after ``since_seq`` (or ``since``) from Redis, then go live.

        Live messages arriving meanwhile are held (bounded by ``pending_max``) and released in
        order after the replay; anything that cannot be proven continuous ends in a fresh
        snapshot flagged ``resync`` with a ``resync`` message naming the reason.
        """
        req, c = sub.req, sub.client
        assert self.history is not None
        result = "ok"
        try:
            cur = self.follower.seq_of(req.channel, req.symbol)
            since = req.since_seq
            if since is None and req.since_ns is not None:
                since = await self.history.seq_at(req.channel, req.symbol, req.since_ns)
                if since is None:
                    result = "too_old"
            if since is not None and result == "ok":
                cur = await self._caught_up_to(req.channel, req.symbol, since, cur)
                if req.epoch is not None and cur is not None and req.epoch != cur[1]:
                    result = "epoch"
                elif cur is not None and since > cur[0]:
                    result = "ahead"
                else:
                    result = await self._replay(sub, since)
        except Exception as exc:
            log.warning("resume failed", extra={"target": req.name, "error": repr(exc)})
            result = "error"
        if sub.client.closed or c.subs.get(req.key) is not sub:
            return
        m.RESUMES.labels(result).inc()
        if result != "ok":
            sub.held.clear()
            self._send_snapshot(sub, resync=True, reason=f"resume_{result}")

    async def _caught_up_to(
        self, channel: str, symbol: str, since: int, cur: tuple[int, int, int | None] | None
    ) -> tuple[int, int, int | None] | None:
        """This process's state of a key once it reached ``since`` (at most ~1 s of waiting).

        A client that comes back from a gateway that died may be ahead of this one: it had the
        direct feed's messages there, while this process (just started, or a few ms behind on
        Kafka) has not applied them yet. Answering "ahead" at once would resync it to an older
        snapshot than what it holds; waiting for our follower costs a few ms."""
        deadline = self.clock() + 1.0
        while (cur is None or since > cur[0]) and self.clock() < deadline:
            await asyncio.sleep(0.02)
            cur = self.follower.seq_of(channel, symbol)
        return cur

    async def _replay(self, sub: Sub, since: int) -> str:
        req, c = sub.req, sub.client
        assert self.history is not None
        last = since
        cur = self.follower.seq_of(req.channel, req.symbol)
        epoch: int | None = req.epoch if req.epoch is not None else (cur[1] if cur else None)
        deadline = self.clock() + 1.0
        while True:
            entries = await self.history.after(req.channel, req.symbol, last, self.cfg.resume_max)
            if sub.mode is not Mode.PENDING or c.closed:
                return "reset"
            if entries and entries[0][0] != last + 1:
                return "too_old" if last == since else "gap"
            cache: list[bytes | None] = [None, None, None]
            for seq, e, raw in entries:
                if seq != last + 1:
                    return "gap"
                if epoch is None:
                    epoch = e
                elif e != epoch:
                    return "epoch"
                cache = [None, None, None]
                self._send(c, raw, cache, force=True)
                last = seq
                if last - since > self.cfg.resume_max:
                    return "too_far"
            while sub.held and sub.held[0][0] <= last:
                sub.held.popleft()
            cur = self.follower.seq_of(req.channel, req.symbol)
            if sub.held:
                caught_up = sub.held[0][0] == last + 1
            else:
                caught_up = cur is None or cur[0] <= last
            if caught_up:
                break
            if self.clock() > deadline:  # Redis is behind our follower and does not catch up
                return "too_old" if last == since else "gap"
            await asyncio.sleep(0.05)
        for seq, raw, _parsed in sub.held:
            self._send(c, raw, [None, None, None], force=True)
            last = seq
        sub.held.clear()
        sub.last, sub.epoch, sub.mode, sub.had_data = last, epoch, Mode.LIVE, True
        return "ok"
