"""Rate limits per API key and per client IP, shared by every gateway instance through Redis.

Fixed one-second windows counted with ``INCRBY`` (+ ``PEXPIRE`` on the first hit) in a Lua
script: atomic across instances, and the key expires by itself. For small limits every request
is one round trip (exact); for large limits a process reserves a few tokens per round trip
(:func:`chunk_for`), which bounds both the Redis load and the possible overshoot.
A fixed window can let up to 2x the limit through across a window edge; that is accepted for a
market-data read API (the cost of a sliding log would be a sorted set per client).

If Redis is unreachable the limiter falls back to the same windows counted in this process, so
limits still hold per instance and requests are not refused because the limiter's store is down.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.cache_keys import CacheKeys

_LUA = """
local c = redis.call('INCRBY', KEYS[1], ARGV[2])
if c == tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return c
"""


def chunk_for(limit: int) -> int:
    """Tokens a process reserves per Redis call: 1 (exact) for small limits; for large ones up
    to 2% of the limit, at most 100, so a busy client costs one Redis call per ~100 requests
    and the limit is exceeded by at most ``chunk x processes`` per window."""
    return max(1, min(limit // 50, 100))


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
        # (who, window) -> [count in Redis after our last reservation, tokens left locally]
        self._reserved: dict[tuple[str, int], list[int]] = {}
        self._pending: dict[tuple[str, int], asyncio.Future[None]] = {}
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
            k = (who, idx)
            # single flight: while one request reserves tokens in Redis, the others of the same
            # client wait for its answer and take from it (64 connections of one client made 64
            # concurrent INCRBY calls, each overwriting the other's reservation: py-spy showed
            # the limiter at 18 % of the gateway's CPU)
            # (waiters look again after each reservation until one is free to make the next: a
            # bounded "look twice" let a third waiter overwrite the second's pending entry and
            # the second's cleanup raise KeyError, a 500, under 64 connections of one client)
            while True:
                res = self._reserved.get(k)
                if res is not None and res[1] > 0:
                    res[1] -= 1
                    return decide(res[0] - res[1], limit, now, window_s)
                pending = self._pending.get(k)
                if pending is None:
                    break
                await asyncio.shield(pending)
            n = chunk_for(limit)
            done = asyncio.get_running_loop().create_future()
            self._pending[k] = done
            try:
                total = int(
                    await self._script(
                        keys=[self.keys.ratelimit(who, idx)], args=[window_s * 1000 + 1000, n]
                    )
                )
                if len(self._reserved) > 100_000:  # bound: one entry per client per window
                    self._reserved = {k: v for k, v in self._reserved.items() if k[1] >= idx}
                self._reserved[k] = [total, n - 1]
                count = total - (n - 1)
            except (RedisError, OSError) as exc:
                self.redis_failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                if self._pending.get(k) is done:
                    del self._pending[k]
                done.set_result(None)  # waiters look again (and count locally if Redis failed)
        if count is None:
            count = self._local_hit(who, idx)
        return decide(count, limit, now, window_s)

    def hit_local(self, who: str, limit: int, window_s: int = 1) -> Decision:
        """The same fixed windows counted in this process only (no Redis call)."""
        now = time.time()
        return decide(self._local_hit(who, int(now // window_s)), limit, now, window_s)

    def _local_hit(self, who: str, idx: int) -> int:
        if len(self._local) > 100_000:  # bound: one entry per client per window
            self._local = {k: v for k, v in self._local.items() if k[1] >= idx}
        c = self._local.get((who, idx), 0) + 1
        self._local[(who, idx)] = c
        return c
