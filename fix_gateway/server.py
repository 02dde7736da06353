"""The thin asyncio acceptor around the sans-I/O session core (uvicorn's protocol shape).

An ``asyncio.Protocol`` owns the transport and a :class:`~fix_gateway.session.FixSession`
owns the state; after each input it writes ``b"".join(session.data_to_send())``. One timer
task ticks every session (heartbeats, timeouts). ``core.follower.StreamFollower`` feeds the
shared :class:`~fix_gateway.marketdata.MarketDataApp` with the l2, trades and status streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import orjson

from core.audit import AuditLog
from core.errors import CodecError
from core.follower import Reset, StreamFollower
from core.health import LIVENESS, READINESS, Health, add_follower, tasks_alive
from core.isotime import ns_from_iso_cached
from core.ops_http import start_ops_server
from core.security import fix_findings, require_secure
from core.settings import Settings
from core.signing import Signer
from core.signing_fix import sign as sign_fix
from core.tls import server_context
from fix_gateway import metrics as M
from fix_gateway.codec import Body, Message, timestamper
from fix_gateway.config import GatewayConfig, SessionConfig
from fix_gateway.errors import FieldError, SessionMisuse
from fix_gateway.marketdata import MarketDataApp
from fix_gateway.session import AppMessage, Closed, FixSession, LoggedOn, RejectReceived
from fix_gateway.session_lock import SessionLock
from fix_gateway.states import State
from fix_gateway.store import FileStore, MemoryStore, Store

log = logging.getLogger(__name__)
AUDIT = AuditLog("fix_gateway")  # logons, refusals, session ends (docs/security.md)
TICK_SECONDS = 0.5


class Registry:
    """Configured sessions, their stores (open for the process lifetime), who is logged on."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.stores: dict[str, Store] = {}
        self.active: dict[str, Connection] = {}
        self.lock: SessionLock | None = None  # across processes (fix_gateway/session_lock.py)

    def resolver(self, conn: Connection) -> Any:
        def resolve(peer: str, ours: str) -> tuple[SessionConfig, Store] | str:
            sc = self.cfg.sessions.get((peer, ours))
            if sc is None:
                return "unknown session"
            store = self.stores.get(sc.session_id)
            if store is None:
                store = self.stores[sc.session_id] = self._new_store(sc.session_id)
            return sc, store

        return resolve

    def _new_store(self, session_id: str) -> Store:
        if self.cfg.store == "memory":  # MD_FIX_STORE=memory: for this process's lifetime
            return MemoryStore(max_messages=self.cfg.store_max_messages)
        return FileStore(self.cfg.store_dir, session_id, max_messages=self.cfg.store_max_messages)

    def claimer(self, conn: Connection) -> Callable[[str], str | None]:
        """Called once a Logon is authenticated: the session becomes ``conn``'s. A connection
        still holding it (a peer that vanished without a FIN keeps it until its heartbeat
        timeout, up to 660 s, and locked its own reconnects out) gets Logout(5) and is closed:
        the newest authenticated logon wins. A failed logon never touches the session."""

        def claim(session_id: str) -> str | None:
            if self.lock is not None and (refused := self.lock.acquire(session_id)):
                return refused  # held by another process
            other = self.active.get(session_id)
            if other is not None and other is not conn and not other.session.closed:
                log.warning(
                    "FIX session taken over by a new logon",
                    extra={"session": session_id, "old_peer": other.peer, "new_peer": conn.peer},
                )
                other.session.terminate("session taken over by a new logon")
                other._after()
            self.active[session_id] = conn
            return None

        return claim

    def release(self, conn: Connection) -> None:
        sid = conn.session.session_id
        if sid and self.active.get(sid) is conn:
            del self.active[sid]
            if self.lock is not None:
                self.lock.release_soon(sid, lambda: sid in self.active)

    def close(self) -> None:
        for s in self.stores.values():
            s.close()
        if self.lock is not None:
            self.lock.close()


class Connection(asyncio.Protocol):
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.session = FixSession(
            resolve=gw.registry.resolver(self),
            claim=gw.registry.claimer(self),
            resend_chunk=gw.cfg.resend_chunk,
            timestamp=gw.stamp,
        )
        # every session of the process counts into one dict, exported once per loop pass
        self.session.counters = gw.session_counters
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.logged_on = False
        self._flush_scheduled = False
        # application messages waiting for this pass's flush, framed there (see send_app)
        self._queued: list[tuple[str, Body]] = []
        self.ip = ""
        self.pending = False  # counted in gw.pending_by_ip until logged on
        self.refused = False  # over a connection cap: aborted in connection_made
        self._paused = False  # the transport's write buffer is above its high-water mark
        self._resend_scheduled = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(
            asyncio.Transport, transport
        )  # uvloop's is no asyncio.Transport subclass
        peername = transport.get_extra_info("peername")
        self.peer = str(peername)
        self.ip = str(peername[0]) if isinstance(peername, tuple) else self.peer
        gw = self.gw
        pending = gw.pending_by_ip.get(self.ip, 0)
        if len(gw.connections) >= gw.cfg.max_connections or pending >= gw.cfg.max_pending_per_ip:
            # over a cap: closed at once, before any byte is read or logged per connection
            M.CONNECTIONS_REFUSED.inc()
            self.refused = True
            self.transport.abort()
            return
        gw.pending_by_ip[self.ip] = pending + 1
        self.pending = True
        gw.connections.add(self)
        M.CONNECTIONS.inc()
        log.info("FIX connection", extra={"peer": self.peer})

    def _not_pending(self) -> None:
        """Logged on or gone: no longer counted against its address's pending cap."""
        if self.pending:
            self.pending = False
            n = self.gw.pending_by_ip.get(self.ip, 1) - 1
            if n > 0:
                self.gw.pending_by_ip[self.ip] = n
            else:
                self.gw.pending_by_ip.pop(self.ip, None)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self.session.receive_data(data)
        self._after()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        self._not_pending()
        self.session.connection_lost()
        self._after()
        self.gw.connections.discard(self)
        M.CONNECTIONS.dec()
        if not self.gw.connections:
            self.gw._drained.set()

    # application side (marketdata.Sink)
    def send_app(self, msg_type: str, body: Body) -> None:
        """Queue an application message; it is framed (MsgSeqNum, SendingTime), stored and
        written once per event-loop pass, with all the others a Kafka batch produced for this
        session: one store flush and one socket write. Framing at the flush rather than here
        stamps SendingTime(52) just before this session's write, not before the framing of
        every other session's copy (100 sessions: ~2 ms of waiting inside the stamp)."""
        if self.session.state is State.CLOSED:
            return
        self._queued.append((msg_type, body))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.gw.flush_soon(self)

    def reject_message(self, msg: Message, error: FieldError) -> None:
        self.session.reject(msg, error)
        self._flush()

    def tick(self) -> None:
        self.session.tick()
        self._after()

    # internals
    def _flush(self) -> None:
        """Frame what is queued, write it in one call, watch the buffer bound. Runs from the
        gateway's one flush pass (send_app) and after each input (``_after``): a second run in
        the same pass finds nothing queued. Once per session and update: kept to few steps."""
        self._flush_scheduled = False
        session, gw = self.session, self.gw
        if self._queued:
            q, self._queued = self._queued, []
            try:  # noqa: SIM105 - suppress() would add a context manager per session and update
                session.send_many(q)
            except SessionMisuse:  # closed meanwhile: they are not sent
                pass
        out = session.data_to_send()
        if out:
            if gw.signer is not None:  # MD_SIGNING_KEY: W and X carry 93/89 (core/signing_fix.py)
                out = [sign_fix(m, gw.signer) for m in out]
            t = self.transport
            if t is not None and not t.is_closing():
                t.write(b"".join(out))
                if t.get_write_buffer_size() > gw.cfg.max_buffer and not session.closed:
                    M.SLOW_DISCONNECTS.inc()
                    log.warning(
                        "slow FIX consumer disconnected", extra={"session": session.session_id}
                    )
                    gw.app.drop_session(self)
                    t.abort()
        if not gw._export_scheduled:
            gw.export_soon()
        if session.resend_pending and not self._paused and not self._resend_scheduled:
            self._resend_scheduled = True
            asyncio.get_running_loop().call_soon(self._resend_more)

    def _resend_more(self) -> None:
        """The next step of a long resend, once the socket took the previous one (flow control
        through pause_writing/resume_writing): other sessions run in between."""
        self._resend_scheduled = False
        if self._paused or self.transport is None or self.transport.is_closing():
            return
        self.session.continue_resend()
        self._flush()

    # asyncio flow control: the transport's buffer passed its high-water mark / drained
    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self.session.resend_pending and not self._resend_scheduled:
            self._resend_scheduled = True
            asyncio.get_running_loop().call_soon(self._resend_more)

    def _after(self) -> None:
        for ev in self.session.events_received():
            if isinstance(ev, AppMessage):
                self.gw.app.on_message(self, ev.msg)
            elif isinstance(ev, LoggedOn):
                self._not_pending()
                self.logged_on = True
                AUDIT.event("logon", session=ev.session_id, peer=self.peer, reset=ev.reset)
                M.SESSIONS.inc()
            elif isinstance(ev, RejectReceived):
                log.warning(
                    "FIX reject received",
                    extra={
                        "session": self.session.session_id,
                        "text": ev.msg.get(58),
                        "ref_seq": ev.msg.get(45),
                    },
                )
            elif isinstance(ev, Closed):
                AUDIT.event(
                    "session_end" if self.logged_on else "logon_refused",
                    limit_key=None if self.logged_on else self.peer.rpartition(",")[0],
                    session=self.session.session_id,
                    peer=self.peer,
                    reason=ev.reason,
                )
                self.gw.app.drop_session(self)
                if self.logged_on:
                    self.logged_on = False
                    M.SESSIONS.dec()
                self.gw.registry.release(self)
        self._flush()
        if self.session.closed and self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Gateway:
    def __init__(self, settings: Settings, cfg: GatewayConfig | None = None) -> None:
        self.settings = settings
        self.cfg = cfg or GatewayConfig.from_settings(settings)
        self.stamp = timestamper(self.cfg.timestamp_precision)  # SendingTime(52) of every session
        self.registry = Registry(self.cfg)
        # MD_FIX_SESSION_LOCK=redis: one process per session (fix_gateway/session_lock.py)
        self.registry.lock = SessionLock.from_settings(settings, self.registry)
        self.signer = Signer.from_settings(settings)  # optional Ed25519 on market data
        self.app = MarketDataApp(symbols=settings.symbols)
        self.connections: set[Connection] = set()
        self.pending_by_ip: dict[str, int] = {}  # connections not logged on yet, per address
        self.follower = StreamFollower(settings, channels=["l2", "trades", "status"])
        self.follower.add_callback(self._on_deliver)
        self.follower.add_reset_callback(self._on_reset)
        # a symbol no session reads stays cold in the follower (no book kept, issue 10) and is
        # brought up to date by the first MarketDataRequest for it; status feeds the catalogue
        self.follower.set_interest(lambda ch, sym: ch == "status" or self.app.reads(sym))
        self.app.refresh = self._refresh
        self.server: asyncio.Server | None = None
        self._drained = asyncio.Event()  # set when the last connection is gone
        self.session_counters: Counter[str] = Counter()  # all sessions' (FixSession.counters)
        self._dirty: list[Connection] = []  # connections with queued messages (flush_soon)
        self._flush_all_scheduled = False
        self._export_scheduled = False

    # the end of a loop pass: every session an update was queued for is written
    def flush_soon(self, conn: Connection) -> None:
        """``conn`` has application messages queued: it is flushed (framed, stamped, written)
        once this loop pass ends, in one callback for all such connections (one update to 100
        sessions is one callback, not 100 handles through the event loop)."""
        self._dirty.append(conn)
        if not self._flush_all_scheduled:
            self._flush_all_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_all)

    def _flush_all(self) -> None:
        self._flush_all_scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            if not conn._flush_scheduled:
                continue  # flushed meanwhile (its input arrived in the same pass)
            try:
                conn._flush()
            except Exception:  # one broken connection must not hold back the others' data
                log.exception("FIX flush failed", extra={"session": conn.session.session_id})

    # metrics
    def export_soon(self) -> None:
        """Move the sessions' and the application's counters into Prometheus once, after this
        loop pass (not once per session flush: ~3 µs each, a fifth of an X's cost)."""
        if not self._export_scheduled:
            self._export_scheduled = True
            asyncio.get_running_loop().call_soon(self._export)

    def _export(self) -> None:
        self._export_scheduled = False
        M.export_session_counters(self.session_counters)
        M.export_app_counters(self.app.counters)

    # feed
    def _on_deliver(
        self, channel: str, symbol: str, seq: int, raw: bytes, parsed: dict[str, Any]
    ) -> None:
        pub = 0  # the aggregator's publish time, ns; 0 = none or malformed
        ts = parsed.get("timestamp")
        if ts.__class__ is str:
            try:
                pub = ns_from_iso_cached(ts)
            except CodecError:
                pass
            else:
                M.HOP_RECEIVE.observe(max(0, time.time_ns() - pub) / 1e9)
        data = parsed.get("data") or {}
        if channel == "l2":
            if parsed.get("type") == "l2_snapshot":
                self.app.on_l2_snapshot(symbol, seq, data.get("bids", ()), data.get("asks", ()))
            else:
                self.app.on_l2_update(symbol, seq, data.get("changes", ()))
            self._observe(pub)
        elif channel == "trades":
            if parsed.get("type") == "trade":
                self.app.on_trade(symbol, seq, data)
                self._observe(pub)
            else:
                self._trades_state(symbol, seq, parsed)
        elif channel == "status":
            self.app.on_status(symbol, data)

    @staticmethod
    def _observe(pub: int) -> None:
        """fix_publish_to_send_seconds: the message is queued for every session (framed and
        written at the end of this loop pass)."""
        if pub:
            M.LATENCY.observe(max(0, time.time_ns() - pub) / 1e9)

    def _trades_state(self, symbol: str, seq: int, parsed: dict[str, Any]) -> None:
        """A trades Reset: a ``trades_snapshot`` only sets the state; a ``trade`` the follower
        rebased on (first message, gap, new epoch) is also news for the subscribers."""
        data = parsed.get("data") or {}
        if parsed.get("type") == "trade":
            known = self.app.syms.get(symbol)
            self.app.on_trade(symbol, seq, data, reset=known is not None and seq <= known.trade_seq)
            return
        trades = data.get("trades") or []
        if trades:
            self.app.on_trade(symbol, seq, trades[-1], reset=True)

    def _on_reset(self, r: Reset) -> None:
        seq = self._load(r.channel, r.symbol)
        if seq is not None and r.channel == "l2":
            log.info("l2 book rebased", extra={"symbol": r.symbol, "seq": seq, "reason": r.reason})

    def _refresh(self, symbol: str) -> None:
        """The first subscriber of a cold symbol: its book and last trade from the follower."""
        if self._load("l2", symbol) is None and symbol in self.app.syms:
            self.app.syms[symbol].synced = False  # no base yet: the W waits for the rebase
        self._load("trades", symbol)

    def _load(self, channel: str, symbol: str) -> int | None:
        """Set the application's state of a key from the follower's; the key's seq or None."""
        cur = self.follower.current(channel, symbol)
        if cur is None or not cur.messages:
            return None
        parsed = orjson.loads(cur.messages[-1])
        data = parsed.get("data") or {}
        if channel == "l2":
            self.app.on_l2_snapshot(symbol, cur.seq, data.get("bids", ()), data.get("asks", ()))
        elif channel == "trades":
            self._trades_state(symbol, cur.seq, parsed)
        elif channel == "status":
            self.app.on_status(symbol, data)
        return cur.seq

    # lifecycle
    async def start(self) -> None:
        self.cfg.store_dir.mkdir(parents=True, exist_ok=True)
        await self.follower.start()
        ctx: ssl.SSLContext | None = None
        if self.cfg.certfile:
            ctx = server_context(self.cfg.certfile, self.cfg.keyfile)  # core/tls.py policy
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Connection(self), self.cfg.host, self.cfg.port, ssl=ctx
        )
        self._ticker = asyncio.create_task(self._tick_loop(), name="fix-ticker")
        log.info(
            "FIX acceptor listening",
            extra={
                "host": self.cfg.host,
                "port": self.cfg.port,
                "tls": bool(ctx),
                "sessions": sorted(c.session_id for c in self.cfg.sessions.values()),
            },
        )

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            for c in list(self.connections):
                try:
                    c.tick()
                except Exception:
                    log.exception("FIX tick failed", extra={"session": c.session.session_id})

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for c in list(self.connections):
            c.session.logout("gateway shutting down")
            c._after()
        if self.connections:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 2.0)  # peers answer our Logout(5)
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.close()
        self._ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._ticker
        await self.follower.stop()
        self.registry.close()

    def health(self) -> Health:
        """Readiness: the Kafka feed is connected and caught up, the acceptor listens (a load
        balancer sends new sessions elsewhere meanwhile; logged-on sessions stay). Liveness: the
        follower's loops and the session ticker (heartbeats, test requests, timeouts) run."""
        h = Health("fix_gateway")
        add_follower(h, self.follower, name="kafka_feed")
        h.add(
            "listener",
            lambda: (
                self.server is not None and self.server.is_serving(),
                {"sessions": len(self.registry.active), "connections": len(self.connections)},
            ),
            kind=READINESS,
        )
        # the ticker exists once start() ran
        h.add(
            "session_ticker", tasks_alive(lambda: [getattr(self, "_ticker", None)]), kind=LIVENESS
        )
        return h


async def serve(stop: asyncio.Event, settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    gw = Gateway(settings)
    bare = [c.session_id for c in gw.cfg.sessions.values() if not (c.password or c.hmac_key)]
    require_secure("fix_gateway", gw.cfg.host, fix_findings(settings, bare), settings)
    ops = await start_ops_server(gw.health(), gw.cfg.host, gw.cfg.http_port)
    try:
        await gw.start()
        await stop.wait()
    finally:
        if gw.server is not None:
            await gw.stop()
        ops.close()
