"""Gateway settings (``MD_WS_*``), read once at start with the strict casts of core.settings.

Every bound is documented in docs/websocket.md "Configuration" with its reason; the defaults
let ``make run`` work out of the box (anonymous clients on every channel), the production
values in the README turn anonymous access down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.errors import ConfigError
from core.security import check_hs256_secret
from core.settings import Settings, parse_bool, parse_list
from gateway_ws.protocol import Limits, Tier


def _tiers(raw: str) -> dict[str, Tier]:
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object {tier: {limits}}")
    out: dict[str, Tier] = {}
    for name, d in data.items():
        if not isinstance(d, dict):
            raise ValueError(f"tier {name!r}: expected an object of limits")
        chans = d.get("channels")
        out[name] = Tier(
            name=name,
            max_subscriptions=int(d.get("max_subscriptions", 50)),
            max_connections=int(d.get("max_connections", 20)),
            rate=float(d.get("rate", 20)),
            burst=int(d.get("burst", 40)),
            channels=None if chans in (None, "*") else frozenset(chans),
        )
    return out


HS256_MIN_SECRET_BYTES = 32

DEFAULT_TIERS: dict[str, Tier] = {
    "basic": Tier("basic", max_subscriptions=100, max_connections=10, rate=20, burst=40),
    "pro": Tier("pro", max_subscriptions=500, max_connections=50, rate=100, burst=200),
}


SERVERS = ("native", "websockets")


@dataclass(frozen=True, kw_only=True)
class WsConfig:
    host: str = "127.0.0.1"
    port: int = 8001
    processes: int = 1
    # anonymous clients: which channels ("*" = all), their limits, connections per IP
    anon_channels: frozenset[str] | None = None
    anon_max_subscriptions: int = 50
    anon_rate: float = 20.0
    anon_burst: int = 40
    max_conn_per_ip: int = 200  # anonymous, per process; SO_REUSEPORT spreads a host's sockets
    tiers: dict[str, Tier] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    default_tier: str = "basic"  # for tokens without a tier claim
    # JWT: HS256 secret and/or RS256 public key (PEM text or a path to it)
    jwt_hs256_secret: str | None = None
    jwt_rs256_public_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    # longest token lifetime accepted (exp - iat, or exp - now without iat): a stolen token
    # is useful for at most this long; exp is also enforced on open connections
    jwt_max_lifetime_s: float = 24 * 3600
    # per-connection output: 256 KiB high-water of the socket buffer (10,000 slow clients
    # would pin 2.5 GiB at worst, a normal one holds ~0); a book subscriber above it is
    # resynced once it drains below a quarter, any other subscriber is disconnected
    buffer_high: int = 256 * 1024
    # all connections together: above it, every connection holding more than a quarter of
    # buffer_high is treated as slow (a few sockets that never read cannot grow the process)
    process_buffer_bytes: int = 256 * 1024 * 1024
    # kernel send buffer per socket (SO_SNDBUF); 0 = the kernel's autotuning. Bounding it
    # bounds kernel memory per client and makes a stalled client visible to buffer_high sooner
    sndbuf: int = 0
    # resume: at most this many messages replayed from Redis for one subscription
    resume_max: int = 10_000
    # live messages held per subscription while its Redis replay runs
    pending_max: int = 10_000
    # resumes reading Redis at once per process (each reads 500 entries at a time)
    resume_concurrency: int = 8
    # resume by client_id: a client's stored subscription set expires this long after its
    # last change or disconnect (one small string per client id in Redis)
    client_ttl_s: float = 24 * 3600
    heartbeat_s: float = 5.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    idle_s: float = 60.0  # no subscription and no request for this long: close 4002
    hard_max_frame: int = 1 << 20  # websockets' own limit: above it the library closes (1009)
    # write frames built once per message straight to the transport (off: every connection
    # frames each message through websockets' protocol object, as websockets.broadcast does;
    # kept as a switch for the benchmark comparison in docs/benchmarks.md)
    preframed: bool = True
    deflate: bool = False  # permessage-deflate offered to clients that ask (CPU per client)
    # "native": the gateway's own asyncio.Protocol answers the upgrade and reads frames
    # (gateway_ws/listener.py: ~10x less CPU per connection in a storm, docs/benchmarks.md);
    # "websockets": python-websockets' server, as before. permessage-deflate is only in the
    # latter, so MD_WS_DEFLATE=1 serves with websockets whatever this says
    server: str = "native"
    tls_cert: str | None = None
    tls_key: str | None = None
    trades_keep: int = 100
    limits: Limits = field(default_factory=Limits)
    max_connections: int = 20_000  # per process: above it new clients get 1013
    # listen(2) backlog: connections the kernel completes before the process accepts them.
    # asyncio's default is 100: a storm of thousands (a gateway restart brings every client
    # back at once) overflowed it, the kernel dropped the SYNs and the clients retried after
    # 1, 3, 7 s (setup p50 of seconds, docs/benchmarks.md). The kernel caps it at
    # net.core.somaxconn (4096 on current kernels); ~100 bytes of kernel memory per entry
    backlog: int = 4096
    # the cyclic garbage collector's first threshold (allocations between collections):
    # Python's 700 made a storm of 5,000 connections (each ~100 new objects) run hundreds of
    # collections over a growing heap, ~30 % of the gateway's CPU per connection
    # (docs/benchmarks.md); 100,000 costs a few MB between collections. 0 = Python's default
    gc_gen0: int = 100_000

    def __post_init__(self) -> None:
        # RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits);
        # a short secret can be brute-forced from any one token a client holds
        if (
            self.jwt_hs256_secret is not None
            and len(self.jwt_hs256_secret.encode()) < HS256_MIN_SECRET_BYTES
        ):
            raise ConfigError(
                "MD_WS_JWT_HS256_SECRET",
                f"must be at least {HS256_MIN_SECRET_BYTES} bytes (RFC 7518 §3.2), "
                f"got {len(self.jwt_hs256_secret.encode())}",
            )
        if self.jwt_max_lifetime_s <= 0:
            raise ConfigError("MD_WS_JWT_MAX_LIFETIME_S", "must be > 0 seconds")
        if self.backlog < 1:
            raise ConfigError("MD_WS_BACKLOG", "must be >= 1")
        if self.gc_gen0 < 0:
            raise ConfigError("MD_WS_GC_GEN0", "must be >= 0")
        if self.process_buffer_bytes < self.buffer_high:
            raise ConfigError("MD_WS_PROCESS_BUFFER_BYTES", "must be at least MD_WS_BUFFER_BYTES")
        if self.resume_concurrency < 1:
            raise ConfigError("MD_WS_RESUME_CONCURRENCY", "must be >= 1")
        if self.client_ttl_s <= 0:
            raise ConfigError("MD_WS_CLIENT_TTL_S", "must be > 0 seconds")
        if self.server not in SERVERS:
            raise ConfigError("MD_WS_SERVER", f"must be one of {', '.join(SERVERS)}")

    @property
    def native_server(self) -> bool:
        """Whether gateway_ws/listener.py serves (permessage-deflate needs websockets)."""
        return self.server == "native" and not self.deflate

    @classmethod
    def from_settings(cls, s: Settings) -> WsConfig:
        d = cls()

        def g(key: str, cast: Any, default: Any) -> Any:
            return s.get(key, cast, default)

        # set but empty (or "none") = no anonymous access at all; unset = "*" (every channel).
        # Read raw: the shared getter treats an empty value as unset.
        anon = s.extra.get("MD_WS_ANON_CHANNELS", "*").strip()
        if anon.lower() == "none":
            anon = ""
        tiers = dict(DEFAULT_TIERS)
        tiers.update(g("MD_WS_TIERS", _tiers, {}))
        lim = Limits(
            max_frame=g("MD_WS_MAX_FRAME", int, d.limits.max_frame),
            max_violations=g("MD_WS_MAX_VIOLATIONS", int, d.limits.max_violations),
        )
        cfg = cls(
            host=s.ws_host,
            port=s.ws_port,
            processes=g("MD_WS_PROCESSES", int, os.cpu_count() or 1),
            anon_channels=None if anon == "*" else frozenset(parse_list(anon)),
            anon_max_subscriptions=g("MD_WS_ANON_MAX_SUBSCRIPTIONS", int, d.anon_max_subscriptions),
            anon_rate=g("MD_WS_ANON_RATE", float, d.anon_rate),
            anon_burst=g("MD_WS_ANON_BURST", int, d.anon_burst),
            max_conn_per_ip=g("MD_WS_MAX_CONN_PER_IP", int, d.max_conn_per_ip),
            tiers=tiers,
            default_tier=g("MD_WS_DEFAULT_TIER", str, d.default_tier),
            jwt_hs256_secret=g("MD_WS_JWT_HS256_SECRET", str, None),
            jwt_rs256_public_key=g("MD_WS_JWT_RS256_PUBLIC_KEY", _pem, None),
            jwt_audience=g("MD_WS_JWT_AUDIENCE", str, None),
            jwt_issuer=g("MD_WS_JWT_ISSUER", str, None),
            jwt_max_lifetime_s=g("MD_WS_JWT_MAX_LIFETIME_S", float, d.jwt_max_lifetime_s),
            buffer_high=g("MD_WS_BUFFER_BYTES", int, d.buffer_high),
            process_buffer_bytes=g("MD_WS_PROCESS_BUFFER_BYTES", int, d.process_buffer_bytes),
            sndbuf=g("MD_WS_SNDBUF", int, d.sndbuf),
            resume_max=g("MD_WS_RESUME_MAX", int, d.resume_max),
            pending_max=g("MD_WS_PENDING_MAX", int, d.pending_max),
            resume_concurrency=g("MD_WS_RESUME_CONCURRENCY", int, d.resume_concurrency),
            client_ttl_s=g("MD_WS_CLIENT_TTL_S", float, d.client_ttl_s),
            heartbeat_s=g("MD_WS_HEARTBEAT_S", float, d.heartbeat_s),
            ping_interval_s=g("MD_WS_PING_INTERVAL_S", float, d.ping_interval_s),
            ping_timeout_s=g("MD_WS_PING_TIMEOUT_S", float, d.ping_timeout_s),
            idle_s=g("MD_WS_IDLE_S", float, d.idle_s),
            deflate=g("MD_WS_DEFLATE", parse_bool, d.deflate),
            preframed=g("MD_WS_PREFRAMED", parse_bool, d.preframed),
            server=g("MD_WS_SERVER", str, d.server).strip().lower(),
            tls_cert=g("MD_WS_TLS_CERT", str, None),
            tls_key=g("MD_WS_TLS_KEY", str, None),
            limits=lim,
            max_connections=g("MD_WS_MAX_CONNECTIONS", int, d.max_connections),
            backlog=g("MD_WS_BACKLOG", int, d.backlog),
            gc_gen0=g("MD_WS_GC_GEN0", int, d.gc_gen0),
        )
        check_hs256_secret("MD_WS_JWT_HS256_SECRET", cfg.jwt_hs256_secret)
        if cfg.default_tier not in cfg.tiers:
            raise ConfigError("MD_WS_DEFAULT_TIER", f"unknown tier {cfg.default_tier!r}")
        if cfg.processes < 1:
            raise ConfigError("MD_WS_PROCESSES", "must be >= 1")
        if bool(cfg.tls_cert) != bool(cfg.tls_key):
            raise ConfigError("MD_WS_TLS_KEY", "MD_WS_TLS_CERT and MD_WS_TLS_KEY go together")
        return cfg

    @property
    def anonymous_tier(self) -> Tier:
        return Tier(
            "anonymous",
            max_subscriptions=self.anon_max_subscriptions,
            max_connections=self.max_conn_per_ip,
            rate=self.anon_rate,
            burst=self.anon_burst,
            channels=self.anon_channels,
        )


def _pem(raw: str) -> str:
    if raw.lstrip().startswith("-----BEGIN"):
        return raw
    with open(raw, encoding="ascii") as fh:
        return fh.read()
