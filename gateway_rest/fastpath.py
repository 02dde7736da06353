"""Fast path for the two hottest reads, ``/{symbol}/orderbook`` and ``/{symbol}/ticker``.

FastAPI's per-request dependency solving and routing cost more than the Redis read itself
(docs/benchmarks.md). For the well-formed common case (a known symbol, ``depth`` a plain
integer, ``level`` absent or 2, data cached) this answers directly with the cached bytes. Every
other case (a bad parameter, unknown symbol, no data, Redis down, level=3) returns ``None`` and
the request falls through to the FastAPI route, which produces the documented answer or error,
so the API, its errors and its OpenAPI document stay exactly those of :mod:`gateway_rest.app`.
"""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import unquote

from core.cache_keys import book_depths
from core.errors import SymbolError
from core.symbols import normalize_symbol
from gateway_rest.config import RestConfig, Tier
from gateway_rest.store import MarketStore, NotCached, Unavailable

_PATH = re.compile(r"^/api/v1/market/(.+)/(orderbook|ticker)$")
ROUTES = {
    "orderbook": "/api/v1/market/{symbol}/orderbook",
    "ticker": "/api/v1/market/{symbol}/ticker",
}


class FastPath:
    def __init__(self, config: RestConfig, store: MarketStore) -> None:
        self.config = config
        self.store = store
        self.depths = book_depths(config.book_depth)
        self._micro: dict[tuple[str, int], tuple[float, bytes]] = {}
        self._inflight: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self.shared = 0  # requests answered by another request's in-flight read
        self.micro_s = config.microcache_ms / 1000.0
        self._symbols: dict[str, str] = {}  # path spelling -> canonical symbol

    def match(self, path: str) -> tuple[str, str] | None:
        m = _PATH.match(path)
        return (m[1], m[2]) if m else None

    def _depth(self, qs: bytes) -> int | None:
        """``depth`` from a query string with nothing else of interest; None = not for us."""
        depth = 20
        if not qs:
            return depth
        for part in qs.split(b"&"):
            k, _, v = part.partition(b"=")
            if k == b"depth" and v.isdigit() and len(v) < 9 and int(v) >= 1:
                depth = int(v)
            elif k == b"level" and v == b"2":
                continue
            else:
                return None
        return depth

    def _depth_for(self, kind: str, qs: bytes, tier: Tier) -> int | None:
        """The book depth a request asks for (0: not a book); None: the query is not for us."""
        if kind != "orderbook":
            return None if qs else 0
        depth = self._depth(qs)
        return None if depth is None else min(depth, self.config.book_depth, tier.max_depth)

    def _symbol(self, raw_symbol: str) -> str | None:
        """The canonical form of a symbol spelling not seen yet (remembered), None if malformed."""
        try:
            sym = normalize_symbol(unquote(raw_symbol))
        except SymbolError:
            return None
        if len(self._symbols) < 4096:  # bound: spellings of real symbols, not every typo
            self._symbols[raw_symbol] = sym
        return sym

    async def _shared(self, fut: asyncio.Future[bytes]) -> bytes | None:
        """The body another request of the burst is reading (None: answer through the route)."""
        try:
            body = await asyncio.shield(fut)
        except (NotCached, Unavailable):
            return None
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if fut.cancelled() and me is not None and not me.cancelling():
                return None  # the leading request was cancelled: answer through the route
            raise
        self.shared += 1
        return body

    def _fresh(self, key: tuple[str, int], fut: asyncio.Future[bytes] | None) -> bytes | None:
        """The micro-cached body if fresh, or expired while its refresh is in flight: the
        others of a burst are answered the body one refresh old (at most micro_s + one Redis
        round trip) instead of each waiting on the refresh (64 connections: 63 waits a refresh)."""
        if self.micro_s <= 0:
            return None
        hit = self._micro.get(key)
        if hit is not None and (
            time.monotonic() - hit[0] < self.micro_s or (fut is not None and not fut.done())
        ):
            return hit[1]
        return None

    def cached(self, kind: str, raw_symbol: str, qs: bytes, tier: Tier) -> bytes | None:
        """What :meth:`answer` would answer, when that is known without awaiting anything (the
        catalogue and the micro-cached body fresh); None: :meth:`answer` must be awaited.
        Nothing is read from Redis and nothing is counted."""
        if self.micro_s <= 0:
            return None
        sym = self._symbols.get(raw_symbol) or self._symbol(raw_symbol)
        if sym is None:
            return None
        cat = self.store.catalogue_cached()
        if cat is None or sym not in cat:
            return None
        depth = self._depth_for(kind, qs, tier)
        if depth is None:
            return None
        key = (sym if kind == "orderbook" else "t:" + sym, depth)
        return self._fresh(key, self._inflight.get(key))

    async def answer(self, kind: str, raw_symbol: str, qs: bytes, tier: Tier) -> bytes | None:
        sym = self._symbols.get(raw_symbol) or self._symbol(raw_symbol)
        if sym is None:
            return None
        try:
            cat = await self.store.catalogue()
        except Unavailable:
            return None
        if sym not in cat:
            return None
        depth = self._depth_for(kind, qs, tier)
        if depth is None:
            return None
        key = (sym if kind == "orderbook" else "t:" + sym, depth)
        fut = self._inflight.get(key)
        hit = self._fresh(key, fut)
        if hit is not None:
            return hit
        # single flight: concurrent requests for the same body share one Redis read that
        # started after the first of them arrived (no staleness beyond one round trip)
        if fut is not None:
            return await self._shared(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            if kind == "orderbook":
                if not self.store.redis_available():
                    raise Unavailable("redis", "circuit open")  # the route answers from the DB
                body = await self.store.book(sym, depth, self.depths)
            else:
                body = await self.store.string(self.store.keys.ticker(sym), "ticker")
            fut.set_result(body)
        except (NotCached, Unavailable) as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters see it, nobody else needs to
            return None
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()
            raise
        finally:
            del self._inflight[key]
        if self.micro_s > 0:
            if len(self._micro) > 10_000:  # bound: symbols x depths actually requested
                self._micro.clear()
            self._micro[key] = (time.monotonic(), body)
        return body
