"""Rate limits per API key and per client IP, shared by every gateway instance through Redis.

Fixed one-second windows counted with ``INCRBY`` (+ ``PEXPIRE`` on the first hit) in a Lua
script: atomic across instances, and the key expires by itself. For small limits every request
is one round trip (exact); for large limits a process reserves a few tokens per round trip
(:func:`chunk_for`), which bounds both the Redis load and the possible overshoot, and from
500/s up renews them in the background once half are used (``PREFETCH_MIN_CHUNK``), so that a
busy client's requests do not wait for Redis.
A fixed window can let up to 2x the limit through across a window edge; that is accepted for a
market-data read API (the cost of a sliding log would be a sorted set per client).

If Redis is unreachable the limiter falls back to the same windows counted in this process, so
limits still hold per instance and requests are not refused because the limiter's store is down.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Coroutine
from functools import lru_cache, partial
from typing import Any, NamedTuple

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
    to 2% of the limit, at most 1,000, so a busy client costs one Redis call per ~1,000
    requests (at 100, a client at 18,000 req/s ran out of tokens before the renewal made at
    half of them came back from a loaded Redis, and its requests waited: p99 42 ms) and is
    refused at most ``chunk x processes`` early (tokens another process reserved, unused)."""
    return max(1, min(limit // 50, 1000))


class Decision(NamedTuple):
    """A named tuple, not a frozen dataclass: one is made per request (a frozen dataclass's
    ``__init__`` costs ~1 µs of ``object.__setattr__`` calls on the hot path)."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: float  # seconds until the window resets

    def headers(self) -> list[tuple[bytes, bytes]]:
        reset = math.ceil(self.reset_s)
        out = [
            (b"x-ratelimit-limit", _digits(self.limit)),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", _digits(reset)),
        ]
        if not self.allowed:
            out.append((b"retry-after", _digits(max(1, reset))))
        return out


@lru_cache(maxsize=256)  # bound: the distinct limits and reset seconds of the configured tiers
def _digits(n: int) -> bytes:
    return str(n).encode()


def decide(count: int, limit: int, now: float, window_s: int) -> Decision:
    """Pure decision for the ``count``-th request in the window that contains ``now``."""
    reset = window_s - (now % window_s)
    return Decision(count <= limit, limit, max(0, limit - count), reset)


# Reservations of at least this many tokens are renewed ahead, in the background, once half of
# one is used: the requests of a busy client then never wait for Redis (64 concurrent requests
# waiting on each reservation cost ~12 µs of CPU a request). Below it (limits under 500/s),
# every token is reserved when it is needed, so small limits stay exact.
PREFETCH_MIN_CHUNK = 10


class _Tokens:
    """Counts one process reserved in Redis for one client and window, not used yet: blocks
    ``[next, last]`` of consecutive counts, and the reservation in flight, if any."""

    __slots__ = ("blocks", "pending")

    def __init__(self) -> None:
        self.blocks: deque[list[int]] = deque()
        self.pending: asyncio.Future[bool] | None = None  # True: reserved, False: Redis failed

    def take(self) -> int | None:
        b = self.blocks
        while b:
            blk = b[0]
            if blk[0] <= blk[1]:
                blk[0] += 1
                return blk[0] - 1
            b.popleft()
        return None

    def left(self) -> int:
        return sum(last - nxt + 1 for nxt, last in self.blocks)


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, keys: CacheKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._script = redis.register_script(_LUA)
        self._local: dict[tuple[str, int], int] = {}
        self._tokens: dict[tuple[str, int], _Tokens] = {}  # (who, window) -> reserved counts
        self._background: set[asyncio.Task[bool]] = set()  # reservations made ahead
        self.redis_failures = 0
        self.last_error: str | None = None

    async def hit(
        self, who: str, limit: int, window_s: int = 1, *, use_redis: bool = True
    ) -> Decision:
        now = time.time()
        idx = int(now // window_s)
        self.last_error = None
        if use_redis:
            count = await self._redis_count(who, idx, chunk_for(limit), window_s)
            if count is not None:
                return decide(count, limit, now, window_s)
        return decide(self._local_hit(who, idx), limit, now, window_s)

    async def _redis_count(self, who: str, idx: int, n: int, window_s: int) -> int | None:
        """This request's count in the window from tokens reserved in Redis; None if Redis
        failed (the caller counts locally).

        Single flight: while one reservation is in flight the other requests of the same client
        wait for it and take from it (64 connections of one client made 64 concurrent INCRBY
        calls, each overwriting the other's reservation), and look again after each one until a
        token is theirs or no reservation is in flight."""
        k = (who, idx)
        t = self._tokens.get(k)
        if t is None:
            if len(self._tokens) > 100_000:  # bound: one entry per client per window
                self._tokens = {q: v for q, v in self._tokens.items() if q[1] >= idx}
            t = self._tokens[k] = _Tokens()
        while True:
            c = self._take(t, who, idx, n, window_s)
            if c is not None:
                return c
            if t.pending is None:
                if not await self._reserve(t, who, idx, n, window_s):
                    return None
            elif not await asyncio.shield(t.pending):
                return None

    def hit_now(self, who: str, limit: int, window_s: int = 1) -> Decision | None:
        """The decision for a request of ``who`` when this process holds a token reserved in
        Redis for the current window: no Redis call and no wait, so the caller can answer
        without a task (gateway_rest/http_protocol.py). None: no token in hand (nothing is
        counted; the caller must ``await hit()``)."""
        now = time.time()
        idx = int(now // window_s)
        t = self._tokens.get((who, idx))
        if t is None:
            return None
        c = self._take(t, who, idx, chunk_for(limit), window_s)
        return None if c is None else decide(c, limit, now, window_s)

    def _take(self, t: _Tokens, who: str, idx: int, n: int, window_s: int) -> int | None:
        """A reserved count, if one is left; from ``PREFETCH_MIN_CHUNK`` up the next
        reservation is started in the background once half of one is used."""
        c = t.take()
        if c is not None and n >= PREFETCH_MIN_CHUNK and t.pending is None and t.left() < n // 2:
            ahead = self._reserve(t, who, idx, n, window_s)  # in flight from here on
            task = asyncio.get_running_loop().create_task(ahead)
            self._background.add(task)
            task.add_done_callback(partial(self._ahead_done, t, t.pending))
        return c

    def _ahead_done(
        self, t: _Tokens, done: asyncio.Future[bool] | None, task: asyncio.Task[bool]
    ) -> None:
        self._background.discard(task)
        if done is not None and not done.done():  # cancelled before it ran: nobody waits on it
            done.set_result(False)
            if t.pending is done:
                t.pending = None

    def _reserve(
        self, t: _Tokens, who: str, idx: int, n: int, window_s: int
    ) -> Coroutine[Any, Any, bool]:
        """Reserve ``n`` counts of the window in Redis (``INCRBY``) for this process; the
        reservation is ``t.pending`` from this call on, before its coroutine first runs."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        t.pending = done
        return self._reserve_in_redis(t, done, who, idx, n, window_s)

    async def _reserve_in_redis(
        self, t: _Tokens, done: asyncio.Future[bool], who: str, idx: int, n: int, window_s: int
    ) -> bool:
        ok = False
        try:
            total = int(
                await self._script(
                    keys=[self.keys.ratelimit(who, idx)], args=[window_s * 1000 + 1000, n]
                )
            )
            t.blocks.append([total - n + 1, total])
            ok = True
        except (RedisError, OSError) as exc:
            self.redis_failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            t.pending = None
            done.set_result(ok)  # waiters look again, or count locally if Redis failed
        return ok

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
