"""REST gateway settings: limits, API keys and tiers, read once at start (strict casts).

Keys come from ``MD_REST_API_KEYS`` as ``key:tier`` pairs (``k1:pro,k2:basic``); production
puts them in a secret and sets ``MD_REST_REQUIRE_KEY=1``. Tiers are fixed here with the reason
for each number; ``MD_REST_ANON_RPS`` overrides the anonymous per-IP limit (``0`` disables
rate limiting entirely, for benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import ConfigError
from core.settings import Settings, parse_bool


@dataclass(frozen=True)
class Tier:
    name: str
    limit: int  # requests per window per key (per IP for anonymous); 0 = unlimited
    window_s: int = 1  # fixed window length in seconds
    max_depth: int = 1000  # orderbook depth cap
    level3: bool = True  # may read the order-by-order book


# anonymous: generous per IP for local use and a browser UI (a page polling a few endpoints at
# 10 Hz uses ~50 req/s); basic/pro: per key, for programs; internal: unlimited (ops, load tests)
DEFAULT_TIERS: dict[str, Tier] = {
    "anonymous": Tier("anonymous", limit=200, max_depth=1000, level3=True),
    "basic": Tier("basic", limit=50, max_depth=100, level3=False),
    "pro": Tier("pro", limit=1000, max_depth=1000, level3=True),
    "internal": Tier("internal", limit=0, max_depth=1000, level3=True),
}


def _keys(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, part in enumerate(raw.split(","), 1):
        part = part.strip()
        if not part:
            continue
        key, sep, tier = part.rpartition(":")
        if not sep or not key or tier not in DEFAULT_TIERS or tier == "anonymous":
            # never the entry itself: it holds a key (issue 12); its position suffices
            raise ValueError(f"entry {n}: expected key:tier with tier in basic/pro/internal")
        out[key] = tier
    return out


@dataclass(frozen=True, kw_only=True)
class RestConfig:
    book_depth: int = 100  # what the cache holds (MD_REDIS_BOOK_DEPTH)
    trades_limit_max: int = 1000
    candles_limit_max: int = 1000
    require_key: bool = False
    api_keys: dict[str, str] = field(default_factory=dict)
    tiers: dict[str, Tier] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    catalogue_ttl_s: float = 1.0  # in-process catalogue cache: /symbols and 404 checks
    key_header: str = "X-API-Key"
    # serve a cached orderbook/ticker body again for this long without asking Redis (0 = off);
    # the body still carries its seq, so a client sees exactly how fresh it is
    microcache_ms: int = 0
    fast_path: bool = True
    # /health*, /metrics, /docs, the page: per client IP and second, counted in this process (a
    # probe every few seconds, a scrape every 15 s, a page load's assets fit; a loop hammering
    # the health check, which pings Redis and PostgreSQL, does not); 0 = unlimited
    ops_limit: int = 20
    # requests with an unknown API key, per client IP and second (key guessing gets 429s, a
    # misconfigured client still sees its 401s); shared across instances through Redis
    bad_key_limit: int = 5

    @classmethod
    def from_settings(cls, s: Settings) -> RestConfig:
        tiers = dict(DEFAULT_TIERS)
        anon = s.get("MD_REST_ANON_RPS", int, tiers["anonymous"].limit)
        if anon < 0:
            raise ConfigError("MD_REST_ANON_RPS", "must be >= 0")
        tiers["anonymous"] = Tier(
            "anonymous",
            limit=anon,
            max_depth=tiers["anonymous"].max_depth,
            level3=s.get("MD_REST_ANON_L3", parse_bool, True),
        )
        limits = s.get("MD_REST_RATE_LIMIT", parse_bool, True)
        if not limits:
            tiers = {
                k: Tier(t.name, 0, t.window_s, t.max_depth, t.level3) for k, t in tiers.items()
            }
        return cls(
            book_depth=s.redis_book_depth,
            require_key=s.get("MD_REST_REQUIRE_KEY", parse_bool, False),
            api_keys=s.get("MD_REST_API_KEYS", _keys, {}),
            tiers=tiers,
            microcache_ms=s.get("MD_REST_MICROCACHE_MS", int, 10),
            fast_path=s.get("MD_REST_FAST_PATH", parse_bool, True),
            ops_limit=_nonneg(s, "MD_REST_OPS_RPS", 20) if limits else 0,
            bad_key_limit=_nonneg(s, "MD_REST_BAD_KEY_RPS", 5) if limits else 0,
        )


def _nonneg(s: Settings, name: str, default: int) -> int:
    v = s.get(name, int, default)
    if v < 0:
        raise ConfigError(name, "must be >= 0")
    return v
