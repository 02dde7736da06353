"""``python -m gateway_ws.replay_server``: stored history replayed over WebSocket.

A separate process from the live gateway (``ws://127.0.0.1:8002/ws``, ``MD_REPLAY_PORT``), so
any number of replays, however fast, never take CPU, memory or socket buffers from live
clients; its only shared resource is the database, held to ``MD_REPLAY_DB_POOL`` connections
and read a page at a time (core/history/replay.py). Protocol (docs/websocket.md "Replay"):

    -> {"type":"replay","channel":"trades","symbol":"BTC-USD","start":"...","end":"...","speed":0,"id":1}
    <- {"type":"replay_started","id":1,"channel":"trades","symbol":"BTC-USD",...}
    <- the stored messages of that range, as published live (same seq, epoch, timestamp, data);
       book channels first get a snapshot of the book as of `start`
    <- {"type":"replay_done","id":1,"channel":"trades","symbol":"BTC-USD","messages":N}

``speed`` 1 is real time, 10 ten times faster, 0 as fast as the client reads: every send waits
for the socket to drain (back-pressure), so a slow reader slows only its own replay. Errors are
``{"type":"error","code":...,"message":...}`` and never close the connection.

Access follows the live gateway's rules and settings (:mod:`gateway_ws.replay_access`: JWT,
channels per tier, order ids per tier, signatures); on a non-loopback address the server refuses
development defaults like the other gateways (``core.security.replay_findings``), serves TLS with
``MD_REPLAY_TLS_CERT``/``MD_REPLAY_TLS_KEY`` (core/tls.py) and ``/metrics`` off the public port
with ``MD_REPLAY_METRICS_PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from core.codec import ns_from_iso
from core.db_errors import is_retriable_db_error
from core.errors import CodecError, ConfigError, SymbolError
from core.health import INFO, LIVENESS, Health, scope_of, tasks_alive
from core.history.archive import history_source
from core.history.book import HistoryError
from core.history.replay import replay_messages
from core.ops_http import start_ops_server
from core.security import replay_findings, require_secure
from core.settings import Settings, parse_list
from core.symbols import normalize_symbol
from core.tls import server_context
from gateway_ws.errors import GatewayWsError
from gateway_ws.protocol import Principal, ProtocolError
from gateway_ws.replay_access import ConnectionLimits, ReplayAccess, expired

log = logging.getLogger(__name__)

audit = logging.getLogger("audit")
REPLAYS = Counter("md_replay_total", "replays by outcome", ["outcome"])
REJECTS = Counter("md_replay_rejects_total", "connections and requests refused", ["reason"])
REPLAY_MESSAGES = Counter("md_replay_messages_total", "messages sent by replays")
ACTIVE = Gauge("md_replay_active", "replays in progress")
MAX_SPEED = 1000.0
DB_PROBE_S = 5.0  # readiness of the database: as often as the probes ask (k8s: every 5 s)


@dataclass(frozen=True, kw_only=True)
class ReplayConfig:
    host: str = "127.0.0.1"
    port: int = 8002
    channels: tuple[str, ...] = ("l2", "l3", "trades")  # what the database writer keeps
    max_active: int = 4  # replays at once per connection
    max_range_s: int = 7 * 86400  # longest range one request may ask for
    db_pool: int = 4
    archive_url: str = ""  # MD_ARCHIVE_URL: archived days are replayed too
    # connections at once: each holds at most max_active replays and websockets' bounded
    # buffers (~64 KiB read + the send high-water mark), so ~1,000 stay well under 1 GiB
    max_connections: int = 1000
    tls_cert: str | None = None  # both set: wss:// with core/tls.py's policy
    tls_key: str | None = None
    metrics_port: int = 0  # > 0: /metrics and /health there (MD_OPS_HOST), not on the public port

    @classmethod
    def from_settings(cls, s: Settings) -> ReplayConfig:
        d = cls()
        return cls(
            host=s.get("MD_REPLAY_HOST", str, d.host),
            port=s.get("MD_REPLAY_PORT", int, d.port),
            channels=tuple(s.get("MD_STORAGE_HISTORY_CHANNELS", parse_list, d.channels)),
            max_active=s.get("MD_REPLAY_MAX_ACTIVE", int, d.max_active),
            max_range_s=s.get("MD_REPLAY_MAX_RANGE_S", int, d.max_range_s),
            db_pool=s.get("MD_REPLAY_DB_POOL", int, d.db_pool),
            archive_url=s.get("MD_ARCHIVE_URL", str, d.archive_url),
            max_connections=s.get("MD_REPLAY_MAX_CONNECTIONS", int, d.max_connections),
            tls_cert=s.get("MD_REPLAY_TLS_CERT", str, None),
            tls_key=s.get("MD_REPLAY_TLS_KEY", str, None),
            metrics_port=s.get("MD_REPLAY_METRICS_PORT", int, d.metrics_port),
        )

    def __post_init__(self) -> None:
        if self.max_active < 1:
            raise ConfigError("MD_REPLAY_MAX_ACTIVE", "must be >= 1")
        if self.db_pool < 1:
            raise ConfigError("MD_REPLAY_DB_POOL", "must be >= 1")
        if self.max_connections < 1:
            raise ConfigError("MD_REPLAY_MAX_CONNECTIONS", "must be >= 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(
                "MD_REPLAY_TLS_KEY", "MD_REPLAY_TLS_CERT and MD_REPLAY_TLS_KEY go together"
            )


class ReplayError(GatewayWsError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    id: Any
    channel: str
    symbol: str
    start_ns: int
    end_ns: int
    speed: float


def _time(raw: object, name: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw * 1_000_000 if raw > 10**11 else raw * 1_000_000_000
    if isinstance(raw, str) and raw:
        try:
            return ns_from_iso(raw)
        except CodecError:
            pass
    raise ReplayError("invalid_request", f"{name}: expected ISO-8601 time or Unix s/ms")


def parse_replay(msg: dict[str, Any], cfg: ReplayConfig) -> ReplayRequest:
    """Validate a ``replay`` request (pure); every problem is a :class:`ReplayError`."""
    channel = msg.get("channel")
    if channel not in cfg.channels:
        raise ReplayError(
            "invalid_channel", f"channel: replay serves {list(cfg.channels)}, got {channel!r}"
        )
    try:
        symbol = normalize_symbol(str(msg.get("symbol", "")))
    except SymbolError as exc:
        raise ReplayError("invalid_symbol", f"symbol: {exc.reason}") from None
    start = _time(msg.get("start"), "start")
    end = _time(msg.get("end"), "end") if msg.get("end") is not None else time.time_ns()
    if start >= end:
        raise ReplayError("invalid_request", "start: must be before end")
    if end - start > cfg.max_range_s * 1_000_000_000:
        raise ReplayError("invalid_request", f"range longer than {cfg.max_range_s} s")
    speed = msg.get("speed", 1)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0 <= speed <= MAX_SPEED:
        raise ReplayError("invalid_request", f"speed: a number from 0 to {MAX_SPEED:g}")
    return ReplayRequest(msg.get("id"), channel, symbol, start, end, float(speed))


class ReplayServer:
    def __init__(self, settings: Settings, cfg: ReplayConfig | None = None) -> None:
        self.settings = settings
        self.cfg = cfg or ReplayConfig.from_settings(settings)
        self.access = ReplayAccess.from_settings(settings)
        self.limits = ConnectionLimits(self.access.max_conn_per_ip)
        self.server: Server | None = None
        self.ops_server: asyncio.Server | None = None
        self._pool: asyncpg.Pool | None = None
        self.connections = 0
        self.health = Health("replay")
        self.health.add("listening", self._listening, kind=LIVENESS)
        # readiness: the history database answers (a replay server without it serves nothing)
        self._db: tuple[bool, Any] = (False, "not checked yet")
        self._db_task: asyncio.Task[None] | None = None
        self.health.add("database", lambda: self._db)
        self.health.add("db_probe", tasks_alive(lambda: [self._db_task]), kind=LIVENESS)
        self.health.add("replays", lambda: (True, {"active": ACTIVE._value.get()}), kind=INFO)

    def _listening(self) -> tuple[bool, Any]:
        return self.server is not None and self.server.is_serving(), {
            "connections": self.connections
        }

    async def _probe_db(self) -> None:
        """Every ``DB_PROBE_S``: one ``SELECT 1`` through the pool. When every pooled connection
        is busy with replays the database is evidently answering: no probe then (it would
        only wait for a connection and call a busy server unready)."""
        while True:
            try:
                pool = await self.pool()
                if pool.get_size() >= self.cfg.db_pool and pool.get_idle_size() == 0:
                    self._db = (True, "all connections replaying")
                else:
                    async with asyncio.timeout(DB_PROBE_S):
                        await pool.fetchval("SELECT 1")
                    self._db = (True, "answers")
            except Exception as exc:  # noqa: BLE001 - any failure is "not ready", said in the detail
                self._db = (False, f"{type(exc).__name__}: {exc}"[:200])
            await asyncio.sleep(DB_PROBE_S)

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.settings.pg_dsn, min_size=0, max_size=self.cfg.db_pool, command_timeout=30
            )
        return self._pool

    async def start(self) -> None:
        ssl_ctx = None
        if self.cfg.tls_cert and self.cfg.tls_key:
            ssl_ctx = server_context(self.cfg.tls_cert, self.cfg.tls_key)  # core/tls.py policy
        self.server = await serve(
            self._handler,
            self.cfg.host,
            self.cfg.port,
            ssl=ssl_ctx,
            process_request=self._process_request,
            max_size=64 * 1024,  # requests are small
            max_queue=16,
            close_timeout=2,
            server_header=None,
        )
        self._db_task = asyncio.create_task(self._probe_db(), name="replay-db-probe")
        if self.cfg.metrics_port:
            self.ops_server = await start_ops_server(
                self.health, self.settings.ops_host, self.cfg.metrics_port
            )
        scheme = "wss" if ssl_ctx else "ws"
        log.info(
            "replay listening", extra={"url": f"{scheme}://{self.cfg.host}:{self.cfg.port}/ws"}
        )

    async def stop(self) -> None:
        if self._db_task is not None:
            self._db_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._db_task
        if self.ops_server is not None:
            self.ops_server.close()
        if self.server is not None:
            self.server.close(close_connections=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 5)
        if self._pool is not None:
            await self._pool.close()

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        scope = scope_of(url.path)
        if scope is not None:
            ok, body = self.health.evaluate(scope)
            status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            return _http(status, "application/json", orjson.dumps(body))
        if url.path == "/metrics" and not self.cfg.metrics_port:
            return _http(HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
        if url.path != "/ws":
            return _http(HTTPStatus.NOT_FOUND, "application/json", b'{"error":"not found"}')
        if self.connections >= self.cfg.max_connections:
            REJECTS.labels("capacity").inc()
            return _http(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "application/json",
                b'{"error":"replay server at capacity, retry later"}',
            )
        principal = self.access.anonymous
        token = (parse_qs(url.query).get("token") or [""])[0]
        if token:
            try:
                principal = self.access.verify(token)
            except ProtocolError as exc:
                REJECTS.labels("auth").inc()
                audit.warning(
                    "auth failed",
                    extra={
                        "event": "auth_failed",
                        "service": "replay",
                        "ip": _ip(conn),
                        "reason": exc.message,
                    },
                )
                return _http(
                    HTTPStatus.UNAUTHORIZED,
                    "application/json",
                    orjson.dumps({"error": exc.code, "message": exc.message}),
                )
        why = self.limits.refusal(principal, _ip(conn))
        if why is not None:
            REJECTS.labels("per_ip" if principal.anonymous else "per_user").inc()
            audit.warning(
                "connection limit",
                extra={
                    "event": "limit",
                    "service": "replay",
                    "ip": _ip(conn),
                    "user": principal.user,
                },
            )
            return _http(
                HTTPStatus.TOO_MANY_REQUESTS,
                "application/json",
                orjson.dumps({"error": "too_many_connections", "message": why}),
            )
        conn.md_principal = principal  # type: ignore[attr-defined]
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        principal: Principal = getattr(ws, "md_principal", self.access.anonymous)
        ip = _ip(ws)
        active: dict[int, asyncio.Task[None]] = {}
        n = 0
        self.connections += 1
        self.limits.add(principal, ip)
        try:
            async for data in ws:
                try:
                    msg = orjson.loads(data)
                except orjson.JSONDecodeError:
                    await _send(ws, _error("invalid_json", "not a JSON message"))
                    continue
                if not isinstance(msg, dict):
                    await _send(ws, _error("invalid_request", "a message is a JSON object"))
                    continue
                typ = msg.get("type")
                if typ == "ping":
                    await _send(ws, {"type": "pong", "id": msg.get("id")})
                elif typ == "auth":
                    principal = await self._auth(ws, principal, ip, msg)
                elif typ == "replay":
                    for k in [k for k, t in active.items() if t.done()]:
                        del active[k]
                    if len(active) >= self.cfg.max_active:
                        await _send(
                            ws,
                            _error(
                                "too_many_replays",
                                f"at most {self.cfg.max_active} replays at once per connection",
                                id=msg.get("id"),
                            ),
                        )
                        continue
                    try:
                        req = parse_replay(msg, self.cfg)
                        self.access.check(principal, req.channel)
                    except (ReplayError, ProtocolError) as exc:
                        if isinstance(exc, ProtocolError):
                            REJECTS.labels(exc.code).inc()
                        await _send(ws, _error(exc.code, exc.message, id=msg.get("id")))
                        continue
                    n += 1
                    active[n] = asyncio.create_task(self._run(ws, req, principal, n, active))
                else:
                    await _send(ws, _error("unknown_type", f"unknown message type {typ!r}"))
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            self.limits.remove(principal, ip)
            running = list(active.values())
            for t in running:
                t.cancel()
            for t in running:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _auth(
        self, ws: ServerConnection, principal: Principal, ip: str, msg: dict[str, Any]
    ) -> Principal:
        """An ``auth`` message: the connection's new principal, or the old one and an error."""
        try:
            new = self.access.verify(msg.get("token"))
        except ProtocolError as exc:
            REJECTS.labels("auth").inc()
            await _send(ws, _error(exc.code, exc.message, id=msg.get("id")))
            return principal
        why = self.limits.move(principal, new, ip)
        if why is not None:  # the connection stays what it was
            REJECTS.labels("per_user").inc()
            await _send(ws, _error("too_many_connections", why, id=msg.get("id")))
            return principal
        ack = {"type": "authenticated", "user": new.user, "tier": new.tier.name}
        await _send(ws, {**ack, "id": msg.get("id")})
        return new

    async def _run(
        self,
        ws: ServerConnection,
        req: ReplayRequest,
        principal: Principal,
        n: int,
        active: dict[int, asyncio.Task[None]],
    ) -> None:
        """One replay; it leaves ``active`` before its last message, so a client may start the
        next one as soon as it reads ``replay_done``."""
        ACTIVE.inc()
        try:
            final = await self._replay(ws, req, principal)
        finally:
            ACTIVE.dec()
            active.pop(n, None)
        if final is not None:
            with contextlib.suppress(ConnectionClosed):
                await _send(ws, final)

    async def _replay(
        self, ws: ServerConnection, req: ReplayRequest, principal: Principal
    ) -> dict[str, Any] | None:
        head = {"id": req.id, "channel": req.channel, "symbol": req.symbol}
        view = self.access.view(principal)  # the tier's order-id policy, signatures
        sent = 0
        try:
            await _send(ws, {"type": "replay_started", **head, "speed": req.speed})
            source = history_source(await self.pool(), self.cfg.archive_url)
            first_ts: int | None = None
            wall0 = 0.0
            async for item in replay_messages(
                source, req.channel, req.symbol, req.start_ns, req.end_ns
            ):
                if req.speed > 0:
                    if first_ts is None:
                        first_ts, wall0 = item.ts_ns, time.monotonic()
                    due = wall0 + (item.ts_ns - first_ts) / 1e9 / req.speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if principal.expires_at is not None and expired(principal):
                    REPLAYS.labels("token_expired").inc()
                    return _error("token_expired", "the token expired", **head, messages=sent)
                # text frame, like the live gateway; send() waits while the socket's buffer
                # is above its high-water mark: back-pressure from this client only
                await ws.send(view(item.raw).decode())
                sent += 1
            REPLAYS.labels("done").inc()
            return {"type": "replay_done", **head, "messages": sent}
        except HistoryError as exc:
            REPLAYS.labels("no_history").inc()
            return _error("no_history", str(exc), **head, messages=sent)
        except ConnectionClosed:
            REPLAYS.labels("disconnected").inc()
            return None
        except Exception as exc:
            if not is_retriable_db_error(exc):
                log.error("replay failed", exc_info=exc)
            REPLAYS.labels("failed").inc()
            return _error("unavailable", "history database unavailable", **head, messages=sent)
        finally:
            REPLAY_MESSAGES.inc(sent)


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, **extra}


async def _send(ws: ServerConnection, msg: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(msg).decode())


def _ip(conn: ServerConnection) -> str:
    addr = conn.remote_address
    return str(addr[0]) if addr else "?"


def _http(status: HTTPStatus, ctype: str, body: bytes) -> Response:
    headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)


async def main(stop: asyncio.Event) -> None:
    s = Settings.from_env()
    cfg = ReplayConfig.from_settings(s)
    require_secure("replay", cfg.host, replay_findings(s), s)  # docs/security.md
    server = ReplayServer(s, cfg)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()


if __name__ == "__main__":
    from core.service import run

    run(main, service="replay")
