"""Rate limits per API key and per client IP, shared by every gateway instance through Redis.

Fixed one-second windows counted with one ``INCR`` (+ ``PEXPIRE`` on the first hit) in a Lua
script: a single round trip per request, atomic across instances, and the key expires by itself.
A fixed window can let up to 2x the limit through across a window edge; that is accepted for a
market-data read API (the cost of a sliding log would be a sorted set per client).

If Redis is unreachable the limiter falls back to the same windows counted in this process, so
limits still hold per instance and requests are not refused because the limiter's store is down.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.cache_keys import CacheKeys

_LUA = """
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return c
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: float  # seconds until the window resets

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(math.ceil(self.reset_s)).encode()),
        ]
        if not self.allowed:
            out.append((b"retry-after", str(max(1, math.ceil(self.reset_s))).encode()))
        return out


def decide(count: int, limit: int, now: float, window_s: int) -> Decision:
    """Pure decision for the ``count``-th request in the window that contains ``now``."""
    reset = window_s - (now % window_s)
    return Decision(count <= limit, limit, max(0, limit - count), reset)


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, keys: CacheKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._script = redis.register_script(_LUA)
        self._local: dict[tuple[str, int], int] = {}
        self.redis_failures = 0
        self.last_error: str | None = None

    async def hit(
        self, who: str, limit: int, window_s: int = 1, *, use_redis: bool = True
    ) -> Decision:
        now = time.time()
        idx = int(now // window_s)
        count: int | None = None
        self.last_error = None
        if use_redis:
            try:
                count = int(
                    await self._script(
                        keys=[self.keys.ratelimit(who, idx)], args=[window_s * 1000 + 1000]
                    )
                )
            except (RedisError, OSError) as exc:
                self.redis_failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
        if count is None:
            count = self._local_hit(who, idx)
        return decide(count, limit, now, window_s)

    def _local_hit(self, who: str, idx: int) -> int:
        if len(self._local) > 100_000:  # bound: one entry per client per window
            self._local = {k: v for k, v in self._local.items() if k[1] >= idx}
        c = self._local.get((who, idx), 0) + 1
        self._local[(who, idx)] = c
        return c
