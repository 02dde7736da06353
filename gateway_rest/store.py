"""Where REST answers come from: Redis first (pre-encoded bodies), PostgreSQL for history and as
the fallback when Redis is down.

Redis failures open a short circuit (``REDIS_RETRY_S``): requests in that time go straight to the
database fallback or get a 503 naming the reason, instead of each waiting for a connect timeout;
the next request after it tries Redis again, so the gateway recovers by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.cache_keys import CacheKeys
from core.codec import iso_from_ns, ns_from_iso
from core.history.sql import (
    SQL_LATEST_L2_SNAPSHOT,
    SQL_SYMBOLS,
    candles_query,
    trades_range_query,
)
from core.settings import Settings
from gateway_rest.base_error import RestError

log = logging.getLogger(__name__)
T = TypeVar("T")

REDIS_RETRY_S = 1.0
PING_TIMEOUT_S = 1.0
DB_POOL_SIZE = 4  # history reads are rare next to the Redis-served hot routes
DB_ACQUIRE_TIMEOUT_S = 2.0  # a request waits this long for a free connection, then 503
DB_MAX_WAITERS = 32  # ... and no more than this many wait at once (the rest: 503 at once)  # /health/ready: each dependency's answer (probes time out at 2 s)


def _b(v: bytes | str) -> bytes:
    """redis-py is typed for both; this client never decodes, so values are bytes."""
    return v if isinstance(v, bytes) else v.encode()


class Unavailable(RestError):
    """A dependency needed for this answer is down: 503 with ``reason``."""

    retriable = True

    def __init__(self, dependency: str, reason: str) -> None:
        self.dependency = dependency
        self.reason = reason
        super().__init__(f"{dependency}: {reason}")


class NotCached(RestError):
    """The symbol is listed but the cache holds no data for it yet (404 with a reason)."""


def _iso(v: datetime) -> str:
    return iso_from_ns(int(v.timestamp()) * 1_000_000_000 + v.microsecond * 1000)


class MarketStore:
    def __init__(self, settings: Settings, *, redis: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.keys = CacheKeys(settings.redis_prefix)
        self.redis: aioredis.Redis = redis or aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=1.0,
            socket_connect_timeout=0.5,
            max_connections=64,
        )
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._db_waiting = 0
        self._redis_down_until = 0.0
        self.redis_last_error: str | None = None
        self.db_last_error: str | None = None
        self._catalogue: dict[str, dict[str, Any]] = {}
        self._catalogue_at = -1e9
        self._catalogue_loading: asyncio.Future[dict[str, dict[str, Any]]] | None = None
        self.catalogue_ttl_s = 1.0

    async def close(self) -> None:
        await self.redis.aclose()
        if self._pool is not None:
            await self._pool.close()

    # --- dependencies ---------------------------------------------------------------------

    def redis_available(self) -> bool:
        return time.monotonic() >= self._redis_down_until

    def trip(self, reason: str) -> None:
        """Open the circuit: Redis failed somewhere (rate limiter, a query)."""
        self._redis_down_until = time.monotonic() + REDIS_RETRY_S
        self.redis_last_error = reason

    async def r(self, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run a Redis call with the circuit breaker; raises :class:`Unavailable`."""
        if not self.redis_available():
            raise Unavailable("redis", self.redis_last_error or "unreachable")
        try:
            out = await fn(self.redis)
        except (RedisError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.trip(reason)
            raise Unavailable("redis", reason) from exc
        self.redis_last_error = None
        return out

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    # min_size=0: creating the pool never needs the database to be up
                    self._pool = await asyncpg.create_pool(
                        self.settings.pg_dsn, min_size=0, max_size=DB_POOL_SIZE, command_timeout=5
                    )
        return self._pool

    async def db(self, query: str, *args: Any) -> list[asyncpg.Record]:
        # bounded wait for one of the pool's DB_POOL_SIZE connections: at most DB_MAX_WAITERS
        # requests queue, each for at most DB_ACQUIRE_TIMEOUT_S; past that a 503 at once, so
        # slow history queries never pile up every request's memory and task behind them
        if self._db_waiting >= DB_MAX_WAITERS:
            raise Unavailable("database", f"busy: {DB_MAX_WAITERS} requests already waiting")
        try:
            pool = await self.pool()
            self._db_waiting += 1
            try:
                con = await pool.acquire(timeout=DB_ACQUIRE_TIMEOUT_S)
            except TimeoutError as exc:
                raise Unavailable("database", "busy: no connection free in time") from exc
            finally:
                self._db_waiting -= 1
            try:
                rows = await con.fetch(query, *args, timeout=5)
            finally:
                await pool.release(con)
        except (
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            OSError,
            TimeoutError,
            asyncpg.exceptions.OperatorInterventionError,
        ) as exc:
            self.db_last_error = f"{type(exc).__name__}: {exc}"
            raise Unavailable("database", self.db_last_error) from exc
        except asyncpg.exceptions.UndefinedTableError as exc:
            raise Unavailable(
                "database", "schema missing: run `python -m storage migrate`"
            ) from exc
        self.db_last_error = None
        return rows

    async def ping(self) -> dict[str, tuple[bool, str]]:
        """Redis and the database, probed at once, each bounded by ``PING_TIMEOUT_S`` (a server
        that does not answer at all must not hold a health probe longer than that)."""
        timeout = PING_TIMEOUT_S

        async def redis() -> tuple[bool, str]:
            try:
                await asyncio.wait_for(self.redis.ping(), timeout)
            except TimeoutError:
                return False, f"no answer within {timeout} s"
            except (RedisError, OSError) as exc:
                return False, f"{type(exc).__name__}: {exc}"
            self._redis_down_until = 0.0
            return True, "up"

        async def database() -> tuple[bool, str]:
            async def q() -> None:
                pool = await self.pool()
                await pool.fetchval("SELECT 1", timeout=timeout)

            try:
                await asyncio.wait_for(q(), timeout)
            except TimeoutError:
                return False, f"no answer within {timeout} s"
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # down
                return False, f"{type(exc).__name__}: {exc}"
            return True, "up"

        r, d = await asyncio.gather(redis(), database())
        return {"redis": r, "database": d}

    # --- catalogue ------------------------------------------------------------------------

    async def catalogue(self) -> dict[str, dict[str, Any]]:
        """Symbol -> entry, cached in-process for ``catalogue_ttl_s``: every request checks it."""
        now = time.monotonic()
        if now - self._catalogue_at < self.catalogue_ttl_s:
            return self._catalogue
        # single flight: one request reloads it, the others get the one they had meanwhile (64
        # connections each reloading it at once took 64 Redis connections: the pool's limit,
        # "Too many connections", the circuit opened and requests went to the database: 503s)
        while (pending := self._catalogue_loading) is not None:
            if self._catalogue:
                return self._catalogue
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if not pending.cancelled() or me is None or me.cancelling():
                    raise
                # the loading request was cancelled, not this one: load it here
        loading = self._catalogue_loading = asyncio.get_running_loop().create_future()
        try:
            cat = await self._load_catalogue()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                loading.cancel()
            else:
                loading.set_exception(exc)
                loading.exception()  # retrieved: the waiters see it, nobody else needs to
            raise
        finally:
            self._catalogue_loading = None
        self._catalogue, self._catalogue_at = cat, now
        loading.set_result(cat)
        return cat

    def catalogue_cached(self) -> dict[str, dict[str, Any]] | None:
        """The catalogue if it is fresh, without loading it (None: a request must await
        :meth:`catalogue`); for answers made without a task (gateway_rest/http_protocol.py)."""
        if time.monotonic() - self._catalogue_at < self.catalogue_ttl_s:
            return self._catalogue
        return None

    async def _load_catalogue(self) -> dict[str, dict[str, Any]]:
        try:
            raw = await self.r(lambda r: r.hgetall(self.keys.symbols))
            if not raw and not await self.r(lambda r: r.exists(self.keys.sentinel)):
                # Redis answers but holds nothing (restarted empty, or never written): the
                # cache writer is rebuilding it. Serve what the database has meanwhile, as for
                # a Redis that is down, instead of calling known symbols unknown (404)
                self.trip("redis holds no cache (restarted empty): being rebuilt")
                raise Unavailable("redis", self.redis_last_error or "empty")
            cat = {_b(k).decode(): orjson.loads(v) for k, v in raw.items()}
        except Unavailable:
            rows = await self.db(SQL_SYMBOLS)
            cat = {
                r["symbol"]: {
                    "symbol": r["symbol"],
                    "base": r["base"],
                    "quote": r["quote"],
                    "tick_size": str(r["tick_size"]),
                    "min_size": str(r["min_size"]),
                    "status": r["status"],
                    "source": r["source"],
                    "channels": list(r["channels"]),
                    "seq": r["seq"],
                }
                for r in rows
            }
        return cat

    # --- hot data -------------------------------------------------------------------------

    async def book(self, symbol: str, depth: int, depths: tuple[int, ...]) -> bytes:
        """Orderbook body for ``depth``: pre-encoded bytes when ``depth`` is a cached depth."""
        field = next((d for d in depths if d >= depth), depths[-1])
        try:
            body = await self.r(lambda r: r.hget(self.keys.book(symbol), f"d{field}"))
        except Unavailable:
            return await self._book_from_db(symbol, depth)
        if body is None:
            raise NotCached("no order book cached yet for this symbol")
        if field == depth:
            return _b(body)
        b = orjson.loads(body)
        b["bids"], b["asks"], b["depth"] = b["bids"][:depth], b["asks"][:depth], depth
        return orjson.dumps(b)

    async def _book_from_db(self, symbol: str, depth: int) -> bytes:
        rows = await self.db(SQL_LATEST_L2_SNAPSHOT, symbol)
        if not rows:
            raise Unavailable(
                "redis", f"{self.redis_last_error}; no stored snapshot to fall back to"
            )
        r = rows[0]
        return orjson.dumps(
            {
                "symbol": symbol,
                "seq": r["seq"],
                "epoch": r["epoch"],
                "timestamp": _iso(r["ts"]),
                "checksum": r["checksum"],
                "depth": depth,
                "bids": orjson.loads(r["bids"])[:depth],
                "asks": orjson.loads(r["asks"])[:depth],
                "source": "database",
                "stale": True,
            }
        )

    async def l3_book(self, symbol: str, depth: int) -> bytes:
        """The cached ``l3_snapshot`` cut to its best ``depth`` price levels per side (every
        order at those prices, in time priority)."""
        b = orjson.loads(await self.string(self.keys.l3(symbol), "level-3 book"))
        for side in ("bids", "asks"):
            orders = b.get(side) or []
            prices: set[str] = set()
            cut = len(orders)
            for i, o in enumerate(orders):
                if o[0] not in prices:
                    if len(prices) == depth:
                        cut = i
                        break
                    prices.add(o[0])
            b[side] = orders[:cut]
        b["depth"] = depth
        return orjson.dumps(b)

    async def string(self, key: str, what: str) -> bytes:
        body = await self.r(lambda r: r.get(key))
        if body is None:
            raise NotCached(f"no {what} cached yet for this symbol")
        return _b(body)

    async def recent_trades(self, symbol: str, limit: int) -> bytes:
        async def q(r: aioredis.Redis) -> list[Any]:
            p = r.pipeline(transaction=True)  # list and its seq from the same instant
            p.lrange(self.keys.trades(symbol), 0, limit - 1)
            p.get(self.keys.trades_seq(symbol))
            return list(await p.execute())

        try:
            items, pos = await self.r(q)
        except Unavailable:
            return await self.trades_range(symbol, None, None, limit, None, newest_first=True)
        epoch, seq = (int(x) for x in pos.split(b":")) if pos else (0, 0)
        head = orjson.dumps({"symbol": symbol, "seq": seq, "epoch": epoch})[:-1]
        return head + b',"trades":[' + b",".join(items) + b"]}"

    async def trades_range(
        self,
        symbol: str,
        start_ns: int | None,
        end_ns: int | None,
        limit: int,
        cursor: tuple[int, str] | None,
        *,
        newest_first: bool = False,
    ) -> bytes:
        """History from the database, ascending by (time, trade_id), paged by an opaque cursor."""
        query, args = trades_range_query(
            symbol, start_ns, end_ns, limit, cursor, newest_first=newest_first
        )
        rows = await self.db(query, *args)
        more = len(rows) > limit
        rows = rows[:limit]
        trades = [
            {
                "trade_id": r["trade_id"],
                "price": r["price"],
                "size": r["size"],
                "side": r["side"],
                "time": r["time"],
                "seq": r["seq"],
            }
            for r in rows
        ]
        next_cursor = None
        if more and rows and not newest_first:
            last = rows[-1]
            next_cursor = f"{ns_from_iso(last['time'])}:{last['trade_id']}"
        seq = max((r["seq"] for r in rows), default=0)
        epoch = max((r["epoch"] for r in rows), default=0)
        return orjson.dumps(
            {
                "symbol": symbol,
                "seq": seq,
                "epoch": epoch,
                "trades": trades,
                "next_cursor": next_cursor,
                "source": "database",
            }
        )

    async def candles(
        self, symbol: str, interval: str, start_ns: int | None, end_ns: int | None, limit: int
    ) -> bytes:
        """Stored candles in [start, end), newest ``limit`` when unbounded, plus the current
        bucket from Redis (which may be newer than what the database writer has stored)."""
        query, args = candles_query(symbol, interval, start_ns, end_ns, limit)
        db_error: Unavailable | None = None
        try:
            rows = await self.db(query, *args)
        except Unavailable as exc:
            rows, db_error = [], exc
        out: dict[str, dict[str, Any]] = {}
        seq = epoch = 0
        for r in rows:
            c = {
                "start": _iso(r["bucket"]),
                "open": str(r["open"]),
                "high": str(r["high"]),
                "low": str(r["low"]),
                "close": str(r["close"]),
                "volume": str(r["volume"]),
                "trades": r["trades"],
                "closed": r["closed"],
                "vwap": None if r["vwap"] is None else str(r["vwap"]),
            }
            out[c["start"]] = c
            if (r["epoch"], r["seq"]) > (epoch, seq):
                epoch, seq = r["epoch"], r["seq"]
        current: dict[str, Any] | None = None
        try:
            raw = await self.r(lambda r: r.get(self.keys.candle(interval, symbol)))
            current = orjson.loads(raw) if raw else None
        except Unavailable:
            if db_error is not None:
                raise db_error from None
        if current is not None:
            s_ns = current.get("start")
            in_range = True
            if isinstance(s_ns, str):
                t = ns_from_iso(s_ns)
                in_range = (start_ns is None or t >= start_ns) and (end_ns is None or t < end_ns)
            if in_range:
                out[current["start"]] = {
                    k: current.get(k)
                    for k in (
                        "start",
                        "open",
                        "high",
                        "low",
                        "close",
                        "volume",
                        "trades",
                        "closed",
                        "vwap",
                    )
                }
                if (current["epoch"], current["seq"]) > (epoch, seq):
                    epoch, seq = current["epoch"], current["seq"]
        candles = [out[k] for k in sorted(out)]
        if len(candles) > limit:
            candles = candles[:limit] if start_ns is not None else candles[-limit:]
        return orjson.dumps(
            {"symbol": symbol, "interval": interval, "seq": seq, "epoch": epoch, "candles": candles}
        )
