"""The asyncio shell around the fan-out core (:mod:`gateway_ws.fanout`).

The core decides who gets which bytes; this shell only connects it to the world:

- the follower's callbacks (:meth:`Hub.on_message`, :meth:`Hub.on_reset`) feed the core, and
  observe the hop metrics (``publish_to_receive`` here, ``publish_to_send`` after the writes);
- one flush per loop turn (:meth:`Hub.flush`) writes each connection's queued frames with one
  ``transport.write`` (several frames coalesced in one syscall), reports what each transport
  still holds back to the core (its slow-consumer and per-process bounds) and carries out the
  closes the core asked for;
- one timer for the conflation groups (armed at the core's next due time) and a ticker twice
  a second (heartbeats, idle closes, expired tokens, drained slow clients);
- the resume tasks: Redis reads in chunks of ``RESUME_CHUNK`` entries, at most
  ``MD_WS_RESUME_CONCURRENCY`` at once per process, each chunk only once the connection has
  drained below its bound; a task whose subscription is replaced, dropped or closed is
  cancelled (issue 12: 200 duplicate resumes once queued 118-426 MB on one socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from core.errors import CodecError
from core.follower import Reset, StreamFollower
from core.isotime import ns_from_iso_cached
from gateway_ws import metrics as m
from gateway_ws.client import ShellClient
from gateway_ws.config import WsConfig
from gateway_ws.fanout import CloseConn, Conn, Sub
from gateway_ws.protocol import Key, SubRequest
from gateway_ws.resume import History
from gateway_ws.tier_views import TieredFanoutCore

log = logging.getLogger(__name__)
audit = logging.getLogger("gateway_ws.audit")

# Redis entries read per XRANGE while replaying (~250 B each: ~125 KiB, half a send buffer):
# a replay proceeds one chunk at a time as the client reads, never 10,000 entries at once.
RESUME_CHUNK = 500
# a replay waits this long for a connection to drain below its bound, then it is slow
RESUME_DRAIN_S = 5.0
# a resume on a worker still reading its streams up to where they ended at its start waits
# this long for that first (then ~1 s for the key): a client whose worker died lands on a
# worker started a moment ago more often than on any other
RESUME_READY_WAIT_S = 5.0
# the next flush waits as long as the last one took (so writing takes at most about half of
# the loop, and under load each connection's frames of several messages go out in one
# write, like Centrifugo's per-connection writer), but never longer than this. At light load
# a flush takes microseconds, so is the delay; at 10,000 sockets a flush takes tens of ms and
# a 10 ms cap left one message per write (22.5 CPU-s per M msgs against 4.7 with 100 ms)
MAX_FLUSH_GAP_S = 0.100


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
        self.core = TieredFanoutCore(  # order ids per client tier (gateway_ws/tier_views.py)
            follower,
            buffer_high=cfg.buffer_high,
            process_high=cfg.process_buffer_bytes,
            pending_max=cfg.pending_max,
            heartbeat_s=cfg.heartbeat_s,
            idle_s=cfg.idle_s,
            resume=history is not None,
        )
        self.resumes: dict[Sub, asyncio.Task[None]] = {}
        self._resume_slots = asyncio.Semaphore(max(1, cfg.resume_concurrency))
        self._flush_scheduled = False
        self._flush_next = 0.0  # loop time before which no flush runs (see kick)
        # publish times (ns) of the messages queued for the next flush: md_ws_hop_seconds
        # {hop="publish_to_send"} is observed once the bytes are written (one loop turn's worth)
        self._queued_pub: list[int] = []
        self._tick_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        follower.add_callback(self.on_message)
        follower.add_reset_callback(self.on_reset)

    @property
    def clients(self) -> dict[Conn, None]:
        return self.core.conns

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
        if self._timer is not None:
            self._timer.cancel()
        for t in list(self.resumes.values()):
            t.cancel()

    def kick(self) -> None:
        """Schedule a flush if the core has anything to write or close.

        At the next loop turn, or, when the last flush was costly (thousands of sockets), once
        as much time has passed again: a self-tuning write delay, zero at light load."""
        if not self._flush_scheduled and self.core.has_output:
            self._flush_scheduled = True
            loop = asyncio.get_running_loop()
            if self._flush_next > loop.time():
                loop.call_at(self._flush_next, self.flush)
            else:
                loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every connection's queued frames: one ``transport.write`` each."""
        self._flush_scheduled = False
        t0 = time.perf_counter()
        core = self.core
        report = core.report_backlog
        for c, chunks in core.data_to_send():
            c.write_out(chunks)  # type: ignore[attr-defined]  # every Conn here is a Client
            report(c, c.buffered())  # type: ignore[attr-defined]
        for cl in core.closes_to_send():
            self._close(cl)
        if self._queued_pub:
            queued, self._queued_pub = self._queued_pub, []
            now = time.time_ns()
            observe = m.HOP_SEND.observe
            for pub in queued:
                observe(max(0, now - pub) / 1e9)
        cost = time.perf_counter() - t0
        self._flush_next = asyncio.get_running_loop().time() + min(cost, MAX_FLUSH_GAP_S)
        self.kick()  # a slow client found while writing may have queued a close

    def _close(self, cl: CloseConn) -> None:
        c = cl.conn
        assert isinstance(c, ShellClient)
        self._cancel_resumes(c.subs.values())
        level = logging.INFO if cl.event == "idle_close" else logging.WARNING
        audit.log(
            level,
            cl.reason,
            extra={
                "event": cl.event,
                "conn": c.conn_id,
                "ip": c.ip,
                "user": c.user,
                "buffered": c.buffered(),
            },
        )
        if c.close_task is None:
            c.close_task = asyncio.get_running_loop().create_task(c.aclose(cl.code, cl.reason))

    def close(self, c: ShellClient, code: int, reason: str, event: str) -> None:
        self.core.close(c, code, reason, event)
        self.kick()

    def add_client(self, c: ShellClient) -> None:
        self.core.add(c, self.clock())

    def remove_client(self, c: ShellClient) -> None:
        self._cancel_resumes(self.core.remove(c))

    def control(self, c: ShellClient, payload: bytes) -> None:
        """A reply of the client's session (already encoded), queued within the forced bound."""
        self.core.control(c, payload)
        self.kick()

    # ----------------------------------------------------------------- subscriptions

    def subscribe(self, c: ShellClient, req: SubRequest) -> None:
        old = c.subs.get(req.key)
        if old is not None:
            self._cancel_resumes((old,))
        sub = self.core.subscribe(c, req)
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
        if sub.group is not None:
            self._arm_timer()
        if self.core.resuming(sub):
            self.resumes[sub] = asyncio.get_running_loop().create_task(self._resume(sub))
        self.kick()

    def unsubscribe(self, c: ShellClient, keys: Iterable[Key]) -> None:
        keys = tuple(keys)
        self._cancel_resumes(self.core.unsubscribe(c, keys))
        for k in keys:
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

    def _cancel_resumes(self, subs: Iterable[Sub]) -> None:
        for s in subs:
            t = self.resumes.pop(s, None)
            if t is not None:
                t.cancel()

    # ----------------------------------------------------------------- stream input

    def on_message(
        self, channel: str, symbol: str, seq: int, raw: bytes, parsed: dict[str, Any]
    ) -> None:
        """Follower callback: one new in-order message; the hot path of the gateway."""
        pub = 0  # the aggregator's publish time, ns; 0 = none or malformed
        ts = parsed.get("timestamp")
        if ts.__class__ is str:
            try:
                pub = ns_from_iso_cached(ts)
            except CodecError:
                pass
            else:
                m.HOP_RECEIVE.observe(max(0, time.time_ns() - pub) / 1e9)
        n = self.core.on_message(channel, symbol, seq, raw, parsed)
        if n and pub:
            m.FANOUT_LAG.set((time.time_ns() - pub) / 1e9)
            self._queued_pub.append(pub)  # observed by flush(), after the writes
        self.kick()

    def on_reset(self, r: Reset) -> None:
        self.core.on_reset(r.channel, r.symbol, r.reason)
        self.kick()

    # ----------------------------------------------------------------- timers

    def _arm_timer(self) -> None:
        loop = asyncio.get_running_loop()
        nxt = self.core.poll_timers(loop.time())
        if nxt is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= nxt:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = nxt
        self._timer = loop.call_at(nxt, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._arm_timer()
        self.kick()

    async def _ticker(self) -> None:
        """Heartbeats, idle closes, drained slow clients and the feed state, twice a second."""
        while True:
            await asyncio.sleep(0.5)
            try:
                self._tick()
            except Exception:
                log.exception("hub tick failed")

    def _tick(self) -> None:
        for c in self.core.conns:
            if c.stale:
                self.core.report_backlog(c, cast(ShellClient, c).buffered())
        self.core.tick(self.clock(), time.time_ns())
        self.kick()

    def heartbeat(self, c: ShellClient) -> dict[str, Any]:
        return self.core.heartbeat(c, time.time_ns())

    # ----------------------------------------------------------------- resume

    async def _resume(self, sub: Sub) -> None:
        """Replay the messages after ``since_seq`` (or ``since``) from Redis, then go live.

        Live messages arriving meanwhile are held by the core (bounded by ``pending_max``) and
        released in order after the replay; anything that cannot be proven continuous ends in
        a fresh snapshot flagged ``resync`` with a ``resync`` message naming the reason.
        """
        req = sub.req
        assert self.history is not None
        result = "ok"
        try:
            async with self._resume_slots:
                since = req.since_seq
                opening = None  # a resume by time older than the window: from stored history
                if since is None and req.since_ns is not None:
                    since = await self.history.seq_at(req.channel, req.symbol, req.since_ns)
                    if since is None:
                        opening = await self.history.opening(req.channel, req.symbol, req.since_ns)
                        since = None if opening is None else opening.seq
                        result = "too_old" if opening is None else result
                if since is not None and result == "ok":
                    cur = await self._caught_up_to(req.channel, req.symbol, since)
                    want = opening.epoch if opening is not None else req.epoch
                    if want is not None and cur is not None and want != cur[1]:
                        result = "epoch"
                    elif cur is not None and since > cur[0]:
                        result = "ahead"
                    else:
                        epoch = want if want is not None else (cur[1] if cur else None)
                        self.core.resume_start(sub, since, epoch)
                        if opening is not None and opening.snapshot is not None:
                            # a book resumed by time: the book at since first (gateway_ws/
                            # history_resume.py), as the replayed entry of its own seq
                            self.core.resume_start(sub, since - 1, epoch)
                            entry = [(since, opening.epoch, opening.snapshot)]
                            result = self.core.replay(sub, entry, 1) or "ok"
                            self.core.resume_start(sub, since, epoch)
                        if result == "ok":
                            result = await self._replay(sub)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one client's resume; the gateway goes on
            log.warning("resume failed", extra={"target": req.name, "error": repr(exc)})
            result = "error"
        finally:
            if self.resumes.get(sub) is asyncio.current_task():
                del self.resumes[sub]
        if result == "ok" and self.core.resuming(sub):
            self.core.resume_done(sub)
        else:
            self.core.resume_failed(sub, result)
        self.kick()

    async def _caught_up_to(
        self, channel: str, symbol: str, since: int
    ) -> tuple[int, int, int | None] | None:
        """This process's state of a key once it reached ``since`` (at most ~1 s of waiting).

        A client that comes back from a gateway that died may be ahead of this one: it had the
        direct feed's messages there, while this process (just started, or a few ms behind on
        Kafka) has not applied them yet. Answering "ahead" at once would resync it to an older
        snapshot than what it holds; waiting for our follower costs a few ms. A worker just
        started listens once it has read the snapshots, before its streams are read from the
        snapshots' time to their ends (``ready``): on a slow host that alone can take longer
        than the second, so the wait for the key starts once it is ready."""
        ready = self.follower.ready
        if not ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), RESUME_READY_WAIT_S)
        cur = self.follower.seq_of(channel, symbol)
        deadline = self.clock() + 1.0
        while (cur is None or since > cur[0]) and self.clock() < deadline:
            await asyncio.sleep(0.02)
            cur = self.follower.seq_of(channel, symbol)
        return cur

    async def _drained(self, c: ShellClient) -> bool:
        """Wait until ``c`` is under its bound (it reads); False if it does not within
        ``RESUME_DRAIN_S`` or closes."""
        deadline = self.clock() + RESUME_DRAIN_S
        while not c.closed:
            self.core.report_backlog(c, c.buffered())
            if self.core.room(c):
                return True
            if self.clock() > deadline:
                return False
            await asyncio.sleep(0.05)
        return False

    async def _replay(self, sub: Sub) -> str:
        req, core = sub.req, self.core
        c = cast(ShellClient, sub.conn)  # every Conn of this shell is a Client (or quacks like one)
        assert self.history is not None
        resume_max = self.cfg.resume_max
        deadline = self.clock() + 1.0
        stored = self.history.stored
        from_db = 0  # messages read from stored history (bounded by MD_WS_HISTORY_RESUME_MAX)
        while True:
            if not await self._drained(c):
                return "slow" if not c.closed else "reset"
            count = min(RESUME_CHUNK, resume_max + 1)
            head = self.follower.seq_of(req.channel, req.symbol)
            entries, from_history = await self.history.chunk(
                req.channel,
                req.symbol,
                sub.replay_last,
                sub.replay_epoch,
                count,
                head[0] if head else None,
            )
            if from_history:
                from_db += len(entries)
                if stored is not None and from_db > stored.cfg.max_messages:
                    return "too_far"
            stop = core.replay(sub, entries, resume_max + from_db)
            self.kick()
            if stop is not None:
                return stop
            if from_history:
                deadline = self.clock() + 1.0  # a second for Redis to follow from here
                continue
            if len(entries) == count:
                continue  # more in the window: the next chunk once the client has read this one
            if core.caught_up(sub):
                return "ok"
            if self.clock() > deadline:  # Redis is behind our follower and does not catch up
                return "too_old" if sub.replay_last == sub.replay_since else "gap"
            await asyncio.sleep(0.05)
