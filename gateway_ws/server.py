"""The asyncio transport: websockets server, HTTP ``/health`` (``/health/live``,
``/health/ready``) and ``/metrics`` on the same port.

Thin by design: each connection's reader feeds the pure :class:`~gateway_ws.protocol.Session`
and writes what it says; the data path is the :class:`~gateway_ws.hub.Hub`'s. The listener
sets ``SO_REUSEPORT`` so several processes share the port (the kernel spreads connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from redis.exceptions import RedisError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from core.anonymize import install as install_anonymizer
from core.anonymize import ws_anonymizer
from core.channels import error_message
from core.codec import ns_from_iso
from core.errors import SymbolError
from core.follower import StreamFollower
from core.health import LIVENESS, Health, add_follower, scope_of, tasks_alive
from core.ops_http import start_ops_server
from core.settings import Settings
from core.signing import Signer, install, keys_document
from core.symbols import normalize_symbol
from core.tls import server_context
from gateway_ws import metrics as m
from gateway_ws.auth import Authenticator
from gateway_ws.client import Client, ShellClient
from gateway_ws.client_ids import ClientStore, check_client_id, owner_of
from gateway_ws.config import WsConfig
from gateway_ws.history_resume import StoredHistory
from gateway_ws.hub import Hub
from gateway_ws.listener import Listener
from gateway_ws.protocol import (
    CLOSE_TRY_LATER,
    STATUS,
    Authenticated,
    Close,
    Principal,
    ProtocolError,
    ResumeClient,
    Session,
    Subscribe,
    Unsubscribe,
)
from gateway_ws.rates import conversion_path
from gateway_ws.resume import History
from gateway_ws.upgrade import Admitted, Reply

log = logging.getLogger(__name__)
audit = logging.getLogger("gateway_ws.audit")

WS_PATH = "/ws"


def _http(status: HTTPStatus, ctype: str, body: bytes) -> Response:
    headers = Headers(
        [("Content-Type", ctype), ("Content-Length", str(len(body))), ("Connection", "close")]
    )
    return Response(status.value, status.phrase, headers, body)


class Gateway:
    """One gateway process: follower + hub + websockets listener."""

    def __init__(self, settings: Settings, cfg: WsConfig | None = None) -> None:
        self.settings = settings
        self.cfg = cfg or WsConfig.from_settings(settings)
        self.follower = StreamFollower(settings, trades_keep=self.cfg.trades_keep)
        # resume: the Redis window, then stored history beyond it (gateway_ws/history_resume.py)
        self.history = History(
            settings.redis_url, settings.redis_prefix, StoredHistory.from_settings(settings)
        )
        self.hub = Hub(self.cfg, self.follower, self.history)
        self.follower.set_interest(self.hub.core.reads)  # keys nobody reads stay cold
        # resume by client_id: subscription sets in the same Redis as the resume window
        self.client_store = ClientStore(
            self.history.redis, settings.redis_prefix, self.cfg.client_ttl_s
        )
        self.auth = Authenticator(self.cfg)
        self.health = Health("gateway_ws")
        # readiness "kafka": the feed is connected and was read to its end (no new clients
        # while it is lost); liveness: the follower's loops and the hub's ticker are running
        add_follower(self.health, self.follower, name="kafka")
        self.health.add("hub_ticker", tasks_alive(lambda: [self.hub.tick_task]), kind=LIVENESS)
        self.symbols = set(settings.symbols)
        self.per_ip: dict[str, int] = {}
        self.per_user: dict[str, int] = {}
        self._ids = itertools.count(1)
        self.anonymous = Principal(None, self.cfg.anonymous_tier)
        self._encoders = {False: _encoder(False), True: _encoder(True)}
        self._touches: set[asyncio.Task[None]] = set()
        self.server: Server | None = None
        self.listener: Listener | None = None
        # optional Ed25519 signatures on every data message (core/signing.py), keys at GET /keys
        signer = Signer.from_settings(settings)
        install(signer)
        install_anonymizer(ws_anonymizer(settings))  # order ids, account fields (MD_WS_ORDER_IDS)
        self.keys_doc = orjson.dumps(keys_document(signer, settings))
        # MD_WS_METRICS_PORT > 0: /metrics there (MD_OPS_HOST) and not on the public port
        self.metrics_port = settings.get("MD_WS_METRICS_PORT", int, 0)
        self.metrics_server: asyncio.Server | None = None
        m.WORKER.info({"pid": str(os.getpid()), "worker": os.environ.get("MD_WS_WORKER", "0")})

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self.follower.start()
        self.hub.start()
        if self.metrics_port:
            self.metrics_server = await start_ops_server(
                self.health, self.settings.ops_host, self.metrics_port, reuse_port=True
            )
        ssl_ctx = None
        if self.cfg.tls_cert and self.cfg.tls_key:
            ssl_ctx = server_context(self.cfg.tls_cert, self.cfg.tls_key)  # core/tls.py policy
        if self.cfg.native_server:
            self.listener = Listener(self)
            await self.listener.start(ssl_ctx)
        else:
            self.server = await serve(
                self._handler,
                self.cfg.host,
                self.cfg.port,
                reuse_port=True,
                backlog=self.cfg.backlog,
                ssl=ssl_ctx,
                process_request=self._process_request,
                compression="deflate" if self.cfg.deflate else None,
                max_size=self.cfg.hard_max_frame,
                max_queue=16,
                ping_interval=self.cfg.ping_interval_s or None,
                ping_timeout=self.cfg.ping_timeout_s or None,
                close_timeout=2,
                server_header=None,
            )
        log.info(
            "websocket listening",
            extra={
                "url": f"{'wss' if ssl_ctx else 'ws'}://{self.cfg.host}:{self.cfg.port}{WS_PATH}",
                "server": "native" if self.cfg.native_server else "websockets",
            },
        )

    async def stop(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.listener is not None:
            await self.listener.stop()
        if self.server is not None:
            self.server.close(close_connections=True)
            try:
                await asyncio.wait_for(self.server.wait_closed(), 5)
            except TimeoutError:
                log.warning("connections did not close in time")
        await self.hub.stop()
        await self.follower.stop()
        await self.history.close()

    def next_id(self) -> int:
        """A connection number for the audit log, unique in this process."""
        return next(self._ids)

    def is_symbol(self, sym: str) -> bool:
        return sym in self.symbols or sym in self.follower.join.symbols_seen()

    def can_convert(self, quote: str, currency: str) -> bool:
        """Whether ``currencies`` can name ``currency`` on a ``quote``-quoted ticker here."""
        return conversion_path(quote, currency, self.is_symbol) is not None

    # ----------------------------------------------------------------- HTTP side

    def admit(self, target: str, ip: str) -> Reply | Admitted:
        """What a request on the public port gets: a plain reply (health, keys, metrics, a
        refusal), or the options of an accepted WebSocket upgrade. Both servers ask this."""
        url = urlsplit(target)
        scope = scope_of(url.path)
        if scope is not None:
            ok, body = self.health.evaluate(scope)
            body["connections"] = len(self.hub.clients)
            body["pid"] = os.getpid()
            return Reply(
                HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                "application/json",
                orjson.dumps(body),
            )
        if url.path == "/keys":
            return Reply(HTTPStatus.OK, "application/json", self.keys_doc)
        if url.path == "/metrics" and not self.metrics_port:
            return Reply(HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
        if url.path != WS_PATH:
            return Reply(
                HTTPStatus.NOT_FOUND,
                "application/json",
                b'{"error":"not found: the WebSocket endpoint is /ws"}',
            )
        if len(self.hub.clients) >= self.cfg.max_connections:
            m.REJECTS.labels("capacity").inc()
            return Reply(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "application/json",
                b'{"error":"gateway at capacity, retry later"}',
            )
        q = parse_qs(url.query) if url.query else {}
        principal = self.anonymous
        token = (q.get("token") or [""])[0]
        if token:
            try:
                principal = self.auth.verify(token)
            except ProtocolError as exc:
                m.REJECTS.labels("auth").inc()
                audit.warning(
                    "auth failed", extra={"event": "auth_failed", "ip": ip, "reason": exc.message}
                )
                return Reply(
                    HTTPStatus.UNAUTHORIZED,
                    "application/json",
                    orjson.dumps({"error": exc.code, "message": exc.message}),
                )
        if principal.anonymous:
            if self.per_ip.get(ip, 0) >= self.cfg.max_conn_per_ip:
                m.REJECTS.labels("per_ip").inc()
                audit.warning("connection limit", extra={"event": "limit_ip", "ip": ip})
                return Reply(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    "application/json",
                    b'{"error":"too many connections from this address"}',
                )
        elif self.per_user.get(principal.user or "", 0) >= principal.tier.max_connections:
            m.REJECTS.labels("per_user").inc()
            audit.warning(
                "connection limit", extra={"event": "limit_user", "ip": ip, "user": principal.user}
            )
            return Reply(
                HTTPStatus.TOO_MANY_REQUESTS,
                "application/json",
                b'{"error":"too many connections for this user"}',
            )
        batch = (q.get("batch") or ["0"])[0]  # opt-in batched frames (docs/websocket.md)
        if batch not in ("0", "1"):
            return Reply(HTTPStatus.BAD_REQUEST, "application/json", b'{"error":"batch is 0 or 1"}')
        enc = (q.get("encoding") or ["json"])[0]
        if enc not in ("json", "msgpack"):
            return Reply(
                HTTPStatus.BAD_REQUEST,
                "application/json",
                b'{"error":"encoding is json or msgpack"}',
            )
        cid = q["client_id"][0] if q.get("client_id") else None
        if cid is not None:
            try:
                check_client_id(cid)
            except ValueError as exc:
                return Reply(
                    HTTPStatus.BAD_REQUEST,
                    "application/json",
                    orjson.dumps({"error": "bad_request", "message": str(exc)}),
                )
        return Admitted(principal, enc == "msgpack", batch == "1", cid)

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """websockets' hook: :meth:`admit` in its types."""
        got = self.admit(request.path, self._ip(conn))
        if isinstance(got, Reply):
            return _http(got.status, got.ctype, got.body)
        conn.md_admitted = got  # type: ignore[attr-defined]
        return None

    @staticmethod
    def _ip(conn: ServerConnection) -> str:
        addr = conn.remote_address
        return str(addr[0]) if addr else "?"

    # ----------------------------------------------------------------- a connection's life

    def new_session(self, adm: Admitted, now: float) -> Session:
        session = Session(
            principal=adm.principal,
            is_symbol=self.is_symbol,
            ns_from_iso=ns_from_iso,
            encode=self._encoders[adm.binary],
            limits=self.cfg.limits,
            verify_token=self.auth.verify if self.auth.enabled else None,
            now=now,
            on_error=_count_error,
            client_id=adm.client_id,
            can_convert=self.can_convert,
        )
        session.last_request = now
        return session

    def connected(self, client: ShellClient) -> None:
        """An accepted connection joins the hub and the per-IP / per-user counts."""
        principal = client.session.principal
        self._count(principal, +1, client.ip)
        self.hub.add_client(client)
        m.CONNECTS.inc()
        audit.info(
            "connect",
            extra={
                "event": "connect",
                "conn": client.conn_id,
                "ip": client.ip,
                "user": principal.user,
                "tier": principal.tier.name,
            },
        )

    def on_request(
        self, client: ShellClient, data: str | bytes, now: float
    ) -> Coroutine[Any, Any, None] | None:
        """One client message through its session; what it asked for is carried out now, or
        by the returned coroutine when it needs Redis (the transport awaits it before it reads
        the client's next message, so requests keep their order)."""
        session = client.session
        client.last_request = now
        session.receive_data(data, now)
        for out in session.data_to_send():
            self.hub.control(client, out)
        return self._apply_events(client)

    def disconnected(self, client: ShellClient, reason: str, code: int | None) -> None:
        session = client.session
        if session.closing is not None:
            reason = session.closing.reason
        self.hub.remove_client(client)
        self._count(session.principal, -1, client.ip)
        if session.client_id is not None:  # the set outlives the connection by the TTL
            task = asyncio.get_running_loop().create_task(
                self.client_store.touch(owner_of(session.principal.user), session.client_id)
            )
            self._touches.add(task)
            task.add_done_callback(self._touched)
        audit.info(
            "disconnect",
            extra={
                "event": "disconnect",
                "conn": client.conn_id,
                "ip": client.ip,
                "user": session.principal.user,
                "reason": reason,
                "code": code,
            },
        )

    def _touched(self, task: asyncio.Task[None]) -> None:
        self._touches.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("client set not touched", extra={"error": repr(task.exception())})

    # ----------------------------------------------------------------- websockets server

    async def _handler(self, ws: ServerConnection) -> None:
        adm: Admitted = getattr(ws, "md_admitted", None) or Admitted(self.anonymous)
        if self.cfg.sndbuf:
            sock = ws.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.cfg.sndbuf)
        ip = self._ip(ws)
        # the handshake is done: its headers (~2 KiB per client) are not needed any more
        # (the request object itself is, websockets reads it as "handshake received")
        for msg in (ws.request, ws.response):
            if msg is not None:
                msg.headers = Headers()
        now = time.monotonic()
        session = self.new_session(adm, now)
        client = Client(
            ws,
            session,
            ip,
            binary=adm.binary,
            batch=adm.batch,
            conn_id=self.next_id(),
            user=adm.principal.user,
            now=now,
            preframed=self.cfg.preframed,
        )
        self.connected(client)
        reason = "peer closed"
        try:
            async for data in ws:
                pending = self.on_request(client, data, time.monotonic())
                if pending is not None:
                    await pending
                if session.closing is not None:
                    self.hub.flush()
                    client.closed = True
                    await ws.close(session.closing.code, session.closing.reason)
                    break
                if client.closed:
                    self.hub.flush()  # writes what is queued, starts the close with its code
                    if client.close_task is not None:
                        await client.close_task
                    break
        except ConnectionClosed:
            pass
        finally:
            self.disconnected(client, reason, ws.close_code)

    # ----------------------------------------------------------------- requests' effects

    def _apply_events(self, client: ShellClient) -> Coroutine[Any, Any, None] | None:
        """Carry out what the session asked for; a coroutine for the part that needs Redis."""
        session = client.session
        changed = False
        while evs := session.events_received():
            for i, ev in enumerate(evs):
                if isinstance(ev, ResumeClient):
                    return self._events(client, evs[i:], changed)
                self._on_event(client, ev)
                changed = changed or isinstance(ev, Subscribe | Unsubscribe)
        if changed and session.client_id is not None:
            return self._store(client)
        return None

    async def _events(self, client: ShellClient, evs: list[Any], changed: bool) -> None:
        """The events from a ``resume`` on; a named session's set is stored after a change.

        A ``resume`` reads Redis here, before the connection's next request is read, so the
        resumed subscriptions are in place first."""
        session = client.session
        while evs:
            for ev in evs:
                if isinstance(ev, ResumeClient):
                    await self._resume_client(client, ev)
                    for out in session.data_to_send():
                        self.hub.control(client, out)
                    continue
                self._on_event(client, ev)
                changed = changed or isinstance(ev, Subscribe | Unsubscribe)
            evs = session.events_received()
        if changed and session.client_id is not None:
            await self._store(client)

    async def _store(self, client: ShellClient) -> None:
        session = client.session
        assert session.client_id is not None
        try:
            await self.client_store.save(
                owner_of(session.principal.user), session.client_id, session.stored_targets()
            )
        except (RedisError, OSError) as exc:
            log.warning("client set not stored", extra={"error": repr(exc)})
            self._notify(client, "client_store_unavailable", "subscriptions not stored for resume")

    async def _resume_client(self, client: ShellClient, ev: ResumeClient) -> None:
        """Read the client's stored set (and which streams' windows start after ``since``)."""
        owner = owner_of(client.session.principal.user)
        try:
            targets = await self.client_store.load(owner, ev.client_id)
            keys = []
            for t in targets or ():
                if t["channel"] != STATUS and t.get("interval_ms") is None:
                    with contextlib.suppress(SymbolError):
                        keys.append((t["channel"], normalize_symbol(t["symbol"])))
            beyond = await self.history.window_starts(keys, ev.since_ns)
            beyond = await self.history.beyond_history(beyond, ev.since_ns)
        except (RedisError, OSError) as exc:
            log.warning("client resume failed", extra={"error": repr(exc)})
            self._notify(client, "resume_unavailable", "the stored subscriptions could not be read")
            return
        audit.info(
            "resume client",
            extra={
                "event": "resume_client",
                "conn": client.conn_id,
                "ip": client.ip,
                "user": client.user,
                "client_id": ev.client_id,
                "targets": len(targets or ()),
            },
        )
        client.session.resume_with(ev, targets, beyond)

    def _notify(self, client: ShellClient, code: str, message: str) -> None:
        """An error the server caused (Redis down): not counted against the client."""
        self.hub.control(client, _encoder(client.binary)(error_message(code, message)))

    def _on_event(self, client: ShellClient, ev: Any) -> None:
        if isinstance(ev, Subscribe):
            for req in ev.requests:
                self.hub.subscribe(client, req)
        elif isinstance(ev, Unsubscribe):
            self.hub.unsubscribe(client, ev.keys)
        elif isinstance(ev, Authenticated):
            old = client.user
            if (
                ev.principal.user
                and ev.principal.user != old
                and self.per_user.get(ev.principal.user, 0) >= ev.principal.tier.max_connections
            ):
                # refused: the session goes back to what it was, so the disconnect lowers the
                # count this connection holds (the IP's or the old user's), not the new user's
                client.session.revert_auth(ev)
                self.hub.control(
                    client,
                    _encoder(client.binary)(
                        {
                            "type": "error",
                            "code": "too_many_connections",
                            "message": "connection limit of this user reached",
                        }
                    ),
                )
                self.hub.close(
                    client, CLOSE_TRY_LATER, "too many connections for this user", "limit_user"
                )
                return
            if old is None:
                self.per_ip[client.ip] = max(0, self.per_ip.get(client.ip, 1) - 1)
            else:
                self.per_user[old] = max(0, self.per_user.get(old, 1) - 1)
            if ev.principal.user:
                self.per_user[ev.principal.user] = self.per_user.get(ev.principal.user, 0) + 1
            client.user = ev.principal.user
            client.expires_at = ev.principal.expires_at
            audit.info(
                "authenticated",
                extra={
                    "event": "auth",
                    "conn": client.conn_id,
                    "ip": client.ip,
                    "user": client.user,
                    "tier": ev.principal.tier.name,
                },
            )
        elif isinstance(ev, Close):
            m.ABUSE_CLOSE.inc()
            audit.warning(
                "abusive client closed",
                extra={
                    "event": "abuse_close",
                    "conn": client.conn_id,
                    "ip": client.ip,
                    "user": client.user,
                    "reason": ev.reason,
                },
            )
            # the reader loop closes with ev.code once this request's replies are written

    def _count(self, p: Principal, delta: int, ip: str) -> None:
        if delta == 0:
            return
        if p.anonymous:
            self.per_ip[ip] = max(0, self.per_ip.get(ip, 0) + delta)
            if not self.per_ip[ip]:
                del self.per_ip[ip]
        else:
            u = p.user or ""
            self.per_user[u] = max(0, self.per_user.get(u, 0) + delta)
            if not self.per_user[u]:
                del self.per_user[u]


def _count_error(code: str) -> None:
    m.ERRORS.labels(code).inc()


def _encoder(binary: bool) -> Any:
    if binary:
        import msgpack

        return msgpack.packb
    return orjson.dumps


# a worker of a multi-process gateway exits when its liveness has failed this long
WORKER_LIVENESS_EXIT_S = 5.0
EXIT_NOT_LIVE = 70  # EX_SOFTWARE: the parent logs it and starts the worker again


async def exit_when_not_live(
    health: Health, stop: asyncio.Event, grace_s: float, interval_s: float = 0.5
) -> bool:
    """Set ``stop`` once ``health`` has not been live for ``grace_s``; True if it did.

    For the workers of ``MD_WS_PROCESSES`` > 1: they share one port, so an orchestrator's
    liveness probe reaches whichever worker the kernel picks and cannot single out the broken
    one. The worker leaves by itself instead and the parent process restarts just that worker.
    """
    failing_since: float | None = None
    while not stop.is_set():
        ok, body = health.live()
        now = time.monotonic()
        if ok:
            failing_since = None
        elif failing_since is None:
            failing_since = now
        elif now - failing_since >= grace_s:
            log.error(
                "liveness failing: worker exits to be restarted", extra={"checks": body["checks"]}
            )
            stop.set()
            return True
        with contextlib.suppress(TimeoutError):  # the next check is due
            await asyncio.wait_for(stop.wait(), interval_s)
    return False


async def serve_gateway(stop: asyncio.Event, settings: Settings | None = None) -> None:
    """Run one gateway process until ``stop`` is set (``core.service.run`` entry)."""
    gw = Gateway(settings or Settings.from_env())
    await gw.start()
    watchdog: asyncio.Task[bool] | None = None
    if os.environ.get("MD_WS_WORKER") is not None:  # started by the multi-process parent
        watchdog = asyncio.create_task(
            exit_when_not_live(gw.health, stop, WORKER_LIVENESS_EXIT_S), name="liveness-exit"
        )
    try:
        await stop.wait()
    finally:
        await gw.stop()
        if watchdog is not None and not watchdog.done():
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
    if watchdog is not None and not watchdog.cancelled() and watchdog.result():
        raise SystemExit(EXIT_NOT_LIVE)
