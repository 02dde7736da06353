"""Frozen settings read from the environment once at start.

A wrong value fails at start with the variable's name (Starlette's ``config`` idea), never later
in a hot path, and so does an unknown ``MD_*`` name (a misspelling; core/env_names.py). Every
variable is listed in README "Configuration" or its service's docs page with its default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True, kw_only=True)
class Settings:
    # infrastructure
    kafka_bootstrap: str = "127.0.0.1:19092"
    # may carry passwords (MD_REDIS_PASSWORD is merged in): kept out of repr() and so of logs
    pg_dsn: str = field(default="postgresql://postgres@127.0.0.1:15432/marketdata", repr=False)
    redis_url: str = field(default="redis://127.0.0.1:16379/0", repr=False)
    # topics are "<prefix>.<name>"; tests use a unique prefix to isolate themselves
    topic_prefix: str = "md"
    # Redis keys are "<prefix>:..."; tests use a unique prefix too
    redis_prefix: str = "md"
    # listeners
    rest_host: str = "127.0.0.1"
    rest_port: int = 8000
    ws_host: str = "127.0.0.1"
    ws_port: int = 8001
    fix_host: str = "127.0.0.1"
    fix_port: int = 9876
    # /metrics + /health of processes that have no HTTP server of their own: the address they
    # bind (0.0.0.0 in containers, so Prometheus and probes reach them) and their ports
    ops_host: str = "127.0.0.1"
    aggregator_http_port: int = 8011
    storage_http_port: int = 8012
    simulator_http_port: int = 8013
    # market
    symbols: tuple[str, ...] = ("BTC-USD", "ETH-USD", "LTC-USD")
    sim_rate: float = 200.0  # order events per second per symbol
    sim_seed: int = 42
    book_checksum_depth: int = 10
    redis_book_depth: int = 100
    # logging
    log_level: str = "INFO"
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        check_names(e)
        d = cls()
        return cls(
            kafka_bootstrap=_get(e, "MD_KAFKA_BOOTSTRAP", str, d.kafka_bootstrap),
            pg_dsn=_pg_tls(e, _get(e, "MD_PG_DSN", str, d.pg_dsn)),
            redis_url=_redis_auth(e, _get(e, "MD_REDIS_URL", str, d.redis_url)),
            topic_prefix=_get(e, "MD_TOPIC_PREFIX", str, d.topic_prefix),
            redis_prefix=_get(e, "MD_REDIS_PREFIX", str, d.redis_prefix),
            rest_host=_get(e, "MD_REST_HOST", str, d.rest_host),
            rest_port=_get(e, "MD_REST_PORT", _port, d.rest_port),
            ws_host=_get(e, "MD_WS_HOST", str, d.ws_host),
            ws_port=_get(e, "MD_WS_PORT", _port, d.ws_port),
            fix_host=_get(e, "MD_FIX_HOST", str, d.fix_host),
            fix_port=_get(e, "MD_FIX_PORT", _port, d.fix_port),
            ops_host=_get(e, "MD_OPS_HOST", str, d.ops_host),
            aggregator_http_port=_get(e, "MD_AGGREGATOR_HTTP_PORT", _port, d.aggregator_http_port),
            storage_http_port=_get(e, "MD_STORAGE_HTTP_PORT", _port, d.storage_http_port),
            simulator_http_port=_get(e, "MD_SIMULATOR_HTTP_PORT", _port, d.simulator_http_port),
            symbols=_get(e, "MD_SYMBOLS", _symbols, d.symbols),
            sim_rate=_get(e, "MD_SIM_RATE", float, d.sim_rate),
            sim_seed=_get(e, "MD_SIM_SEED", int, d.sim_seed),
            book_checksum_depth=_get(e, "MD_BOOK_CHECKSUM_DEPTH", int, d.book_checksum_depth),
            redis_book_depth=_get(e, "MD_REDIS_BOOK_DEPTH", int, d.redis_book_depth),
            log_level=_get(e, "MD_LOG_LEVEL", str, d.log_level).upper(),
            extra={k: v for k, v in e.items() if k.startswith("MD_")},
        )

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


def _symbols(raw: str) -> tuple[str, ...]:
    from core.symbols import normalize_symbol

    return tuple(normalize_symbol(s) for s in _list(raw))


parse_bool = _bool
parse_list = _list
