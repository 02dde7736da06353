"""Frozen settings read from the environment once at start.

A wrong value fails at start with the variable's name (Starlette's ``config`` idea), never later
in a hot path, and so does an unknown ``MD_*`` name (a misspelling; core/env_names.py). Every
variable is listed in README "Configuration" or its service's docs page with its default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from core.env_names import check_names
from core.errors import ConfigError

T = TypeVar("T")


def _get(env: Mapping[str, str], key: str, cast: Callable[[str], T], default: T) -> T:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except (TypeError, ValueError) as exc:
        if is_secret_setting(key):  # never print a secret, even a malformed one (issue 12)
            raise ConfigError(key, f"cannot parse the value (not shown: secret): {exc}") from None
        raise ConfigError(key, f"cannot parse {raw!r}: {exc}") from exc


SECRET_WORDS = ("SECRET", "PASSWORD", "API_KEYS", "TOKEN", "PRIVATE", "DSN", "_URL")


def is_secret_setting(key: str) -> bool:
    """Settings whose value is never printed, even when malformed (docs/security.md); their
    casts must not put the value into their error either."""
    return any(w in key.upper() for w in SECRET_WORDS)


def _bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected one of 1/0/true/false/yes/no/on/off")


def _list(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _port(raw: str) -> int:
    p = int(raw)
    if not 0 <= p <= 65535:
        raise ValueError("port out of range")
    return p


def _tick_ms(raw: str) -> int:
    t = int(raw)
    if not 1 <= t <= 1000:
        raise ValueError("tick out of range 1..1000 ms")
    return t


def _symbols(raw: str) -> tuple[str, ...]:
    from core.symbols import normalize_symbol

    return tuple(normalize_symbol(s) for s in _list(raw))


def setting(
    env: str,
    default: T,
    cast: Callable[[str], T],
    doc: str,
    *,
    post: Callable[[Mapping[str, str], T], T] | None = None,
    secret: bool = False,
) -> T:
    """A field of :class:`Settings` declared once: its variable, default, cast (which holds its
    bounds), the doc line of its README row, and ``post`` to combine it with other variables."""
    meta = {"env": env, "cast": cast, "doc": doc, "post": post}
    return field(default=default, repr=not secret, metadata=meta)


def _upper(env: Mapping[str, str], v: str) -> str:
    return v.upper()


@dataclass(frozen=True, kw_only=True)
class Settings:
    # infrastructure
    kafka_bootstrap: str = setting(
        "MD_KAFKA_BOOTSTRAP", "127.0.0.1:19092", str, "Kafka bootstrap servers"
    )
    # may carry passwords (MD_REDIS_PASSWORD is merged in): kept out of repr() and so of logs
    pg_dsn: str = setting(
        "MD_PG_DSN",
        "postgresql://postgres@127.0.0.1:15432/marketdata",
        str,
        "PostgreSQL/TimescaleDB DSN",
        post=lambda e, v: _pg_tls(e, v),
        secret=True,
    )
    redis_url: str = setting(
        "MD_REDIS_URL",
        "redis://127.0.0.1:16379/0",
        str,
        "Redis URL",
        post=lambda e, v: _redis_auth(e, v),
        secret=True,
    )
    # topics are "<prefix>.<name>"; tests use a unique prefix to isolate themselves
    topic_prefix: str = setting("MD_TOPIC_PREFIX", "md", str, "Kafka topics are `<prefix>.in`")
    # Redis keys are "<prefix>:..."; tests use a unique prefix too
    redis_prefix: str = setting("MD_REDIS_PREFIX", "md", str, "Redis keys are `<prefix>:...`")
    # listeners
    rest_host: str = setting("MD_REST_HOST", "127.0.0.1", str, "REST listen address")
    rest_port: int = setting("MD_REST_PORT", 8000, _port, "REST port")
    ws_host: str = setting("MD_WS_HOST", "127.0.0.1", str, "WebSocket listen address")
    ws_port: int = setting("MD_WS_PORT", 8001, _port, "WebSocket port")
    fix_host: str = setting("MD_FIX_HOST", "127.0.0.1", str, "FIX acceptor listen address")
    fix_port: int = setting("MD_FIX_PORT", 9876, _port, "FIX acceptor port")
    # /metrics + /health of processes that have no HTTP server of their own: the address they
    # bind (0.0.0.0 in containers, so Prometheus and probes reach them) and their ports
    ops_host: str = setting("MD_OPS_HOST", "127.0.0.1", str, "bind address of /health, /metrics")
    aggregator_http_port: int = setting(
        "MD_AGGREGATOR_HTTP_PORT", 8011, _port, "aggregator /health and /metrics"
    )
    storage_http_port: int = setting(
        "MD_STORAGE_HTTP_PORT", 8012, _port, "storage /health and /metrics"
    )
    simulator_http_port: int = setting(
        "MD_SIMULATOR_HTTP_PORT", 8013, _port, "simulator /health and /metrics"
    )
    # market
    symbols: tuple[str, ...] = setting(
        "MD_SYMBOLS", ("BTC-USD", "ETH-USD", "LTC-USD"), _symbols, "the simulator's symbols"
    )
    sim_rate: float = setting(
        "MD_SIM_RATE", 200.0, float, "simulator order events per second per symbol"
    )
    sim_seed: int = setting("MD_SIM_SEED", 42, int, "simulator seed")
    sim_tick_ms: int = setting(
        "MD_SIM_TICK_MS",
        50,
        _tick_ms,
        "simulator packet cadence: one md.in record per symbol a tick",
    )
    book_checksum_depth: int = setting(
        "MD_BOOK_CHECKSUM_DEPTH", 10, int, "levels per side in the book checksum"
    )
    redis_book_depth: int = setting(
        "MD_REDIS_BOOK_DEPTH", 100, int, "levels per side cached in Redis for REST"
    )
    # logging
    log_level: str = setting("MD_LOG_LEVEL", "INFO", str, "log level", post=_upper)
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        check_names(e)
        values: dict[str, object] = {}
        for f in fields(cls):
            meta = f.metadata
            if "env" not in meta:
                continue
            v = _get(e, meta["env"], meta["cast"], f.default)
            values[f.name] = v if meta["post"] is None else meta["post"](e, v)
        return cls(**values, extra={k: v for k, v in e.items() if k.startswith("MD_")})  # type: ignore[arg-type]

    def get(self, key: str, cast: Callable[[str], T], default: T) -> T:
        """Service-specific settings (``MD_WS_*``, ``MD_FIX_*``...) with the same strict casting."""
        return _get(self.extra, key, cast, default)


PG_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _pg_tls(env: Mapping[str, str], dsn: str) -> str:
    """``MD_PG_SSLMODE`` (``verify-full`` in production: encrypted, and the server's certificate
    and host name checked against ``MD_PG_SSLROOTCERT``) added to the DSN's query string, which
    asyncpg reads; a DSN that already says ``sslmode`` keeps its own."""
    mode = env.get("MD_PG_SSLMODE", "").strip()
    root = env.get("MD_PG_SSLROOTCERT", "").strip()
    if mode and mode not in PG_SSLMODES:
        raise ConfigError("MD_PG_SSLMODE", f"expected one of {', '.join(PG_SSLMODES)}")
    if root and mode not in ("verify-ca", "verify-full"):
        raise ConfigError("MD_PG_SSLROOTCERT", "needs MD_PG_SSLMODE=verify-ca or verify-full")
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query)
    names = {k for k, _ in query}
    if mode and "sslmode" not in names:
        query.append(("sslmode", mode))
        if root and "sslrootcert" not in names:
            query.append(("sslrootcert", root))
    return urlunsplit(parts._replace(query=urlencode(query))) if mode else dsn


def _redis_auth(env: Mapping[str, str], url: str) -> str:
    """``MD_REDIS_PASSWORD`` (and ``MD_REDIS_USERNAME`` for a Redis 6 ACL user) merged into the
    URL every Redis client of the platform is built from (redis-py sends AUTH on connect)."""
    password = env.get("MD_REDIS_PASSWORD", "")
    if not password:
        return url
    parts = urlsplit(url)
    if parts.password:
        raise ConfigError("MD_REDIS_PASSWORD", "MD_REDIS_URL already carries a password")
    user = quote(env.get("MD_REDIS_USERNAME", ""), safe="")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


parse_bool = _bool
parse_list = _list
