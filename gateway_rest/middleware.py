"""Pure-ASGI middleware in front of the router: API keys, tiers, rate limits, metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) because it runs on every request of the hot path and
must not add a task and a body copy per request. Rate-limit headers are added to every
``/api/`` response by rewriting ``http.response.start``.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import orjson
from fastapi import FastAPI
from prometheus_client import REGISTRY as _DEFAULT
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.audit import AuditLog
from gateway_rest.config import RestConfig, Tier
from gateway_rest.fastpath import ROUTES, FastPath
from gateway_rest.http_protocol import HeaderTimeoutProtocol
from gateway_rest.ratelimit import RateLimiter
from gateway_rest.store import MarketStore

# the default registry: process/python collectors plus ours (each uvicorn worker process has its own)
REGISTRY: CollectorRegistry = _DEFAULT
log = logging.getLogger(__name__)
AUDIT = AuditLog("gateway_rest")  # refused keys, missing keys, rate limits (docs/security.md)

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RequestMetrics(Collector):
    """``md_rest_requests_total{route,method,status}`` and the ``md_rest_request_seconds{route}``
    histogram, counted in plain ints and turned into families only when scraped.

    Why not prometheus_client's Counter/Histogram: ``labels()`` (a locked dict lookup) and
    ``observe()`` (a Python loop over the buckets) cost ~5 µs a request on the hot path, where
    the whole fast-path answer costs ~15 µs (docs/benchmarks.md "REST per core"). One event
    loop per process updates these, so no lock is needed; a scrape reads a consistent enough
    snapshot (each count is one int).
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        # route -> [count per bucket (not cumulative) ..., +Inf count, sum of seconds]
        self.hist: dict[str, list[float]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, str(status))
        self.counts[key] = self.counts.get(key, 0) + 1
        h = self.hist.get(route)
        if h is None:
            h = self.hist[route] = [0.0] * (len(BUCKETS) + 2)
        h[bisect_left(BUCKETS, seconds)] += 1
        h[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(
            "md_rest_requests", "REST requests", labels=["route", "method", "status"]
        )
        for key, n in list(self.counts.items()):
            c.add_metric(list(key), n)
        yield c
        h = HistogramMetricFamily(
            "md_rest_request_seconds",
            "REST request latency (in the gateway, from first byte in to response start)",
            labels=["route"],
        )
        for route, row in list(self.hist.items()):
            acc, buckets = 0.0, []
            for le, count in zip((*map(str, BUCKETS), "+Inf"), row[:-1], strict=True):
                acc += count
                buckets.append((le, acc))
            h.add_metric([route], buckets, row[-1])
        yield h
        yield CounterMetricFamily(
            "md_rest_header_timeouts",
            "connections closed because a request's headers were not complete in time",
            value=HeaderTimeoutProtocol.timeouts,
        )
        yield CounterMetricFamily(
            "md_rest_answered_in_protocol",
            "requests answered from the micro-cache by the HTTP protocol, without an ASGI task",
            value=HeaderTimeoutProtocol.answered_now,
        )


METRICS = RequestMetrics()
REGISTRY.register(METRICS)
RATE_LIMITED = Counter(
    "md_rest_rate_limited_total", "requests answered 429", ["tier"], registry=REGISTRY
)


_LIMITED_BODY_OPS = {
    "error": "rate_limited",
    "message": "too many requests to the ops endpoints from this address; retry after the "
    "Retry-After seconds",
    "parameter": None,
}
_LIMITED_BODY_BAD_KEY = {
    "error": "rate_limited",
    "message": "too many requests with an unknown API key from this address; retry after the "
    "Retry-After seconds",
    "parameter": None,
}


def _json(
    status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]]
) -> tuple[Message, Message]:
    raw = orjson.dumps(body)
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            *extra,
        ],
    }
    return start, {"type": "http.response.body", "body": raw}


class GatewayMiddleware:
    """Admission (API key, tier, rate limit), the fast path and per-route metrics, in front of
    the FastAPI app. :class:`GatewayApp` calls it before FastAPI's own stack (telemetry, body
    limit, Starlette's error and exception middleware, routing), which the fast path skips."""

    def __init__(
        self, app: ASGIApp, *, config: RestConfig, limiter: RateLimiter, store: MarketStore
    ) -> None:
        self.app = app
        self.config = config
        self.limiter = limiter
        self.store = store
        self._key_header = config.key_header.lower().encode()
        self.fast = FastPath(config, store) if config.fast_path else None

    def _client(self, scope: Scope) -> str:
        client = scope.get("client")
        return str(client[0]) if client else "unknown"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status_box = [500]
        fast_route: str | None = None
        path: str = scope.get("path", "")
        rl_headers: list[tuple[bytes, bytes]] = []
        try:
            if not path.startswith("/api/"):
                denied = self._admit_ops(scope)
                if denied is not None:
                    status_box[0] = 429
                    await send(denied[0])
                    await send(denied[1])
                    return
            else:
                denied = await self._admit(scope, rl_headers)
                if denied is not None:
                    status_box[0] = denied[0]["status"]
                    await send(denied[0])
                    await send(denied[1])
                    return
                if self.fast is not None and scope.get("method") == "GET":
                    m = self.fast.match(path)
                    if m is not None:
                        tier = scope["state"]["tier"]
                        try:
                            body = await self.fast.answer(
                                m[1], m[0], scope.get("query_string", b""), tier
                            )
                        except Exception:  # a bug: logged, and the route gives the answer
                            log.exception("fast path failed", extra={"path": path})
                            body = None
                        if body is not None:
                            fast_route = ROUTES[m[1]]
                            status_box[0] = 200
                            await send(
                                {
                                    "type": "http.response.start",
                                    "status": 200,
                                    "headers": [
                                        (b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()),
                                        *rl_headers,
                                    ],
                                }
                            )
                            await send({"type": "http.response.body", "body": body})
                            return

            async def send_wrapper(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status_box[0] = message["status"]
                    if rl_headers:
                        message = {**message, "headers": [*message.get("headers", []), *rl_headers]}
                await send(message)

            await self.app(scope, receive, send_wrapper)
        finally:
            # the route template (``/api/v1/market/{symbol}/orderbook``), never the raw path:
            # label cardinality stays bounded whatever clients send
            route = scope.get("route")
            name = fast_route or str(getattr(route, "path", "unmatched")).replace(":path}", "}")
            METRICS.observe(name, scope.get("method", ""), status_box[0], time.perf_counter() - t0)

    def _admit_ops(self, scope: Scope) -> tuple[Message, Message] | None:
        """The ops paths' own per-IP budget, counted in this process: /health must answer
        even when Redis does not, and must not cost a Redis call per probe."""
        if self.config.ops_limit <= 0:
            return None
        d = self.limiter.hit_local(f"ops:{self._client(scope)}", self.config.ops_limit)
        if d.allowed:
            return None
        RATE_LIMITED.labels("ops").inc()
        return _json(429, _LIMITED_BODY_OPS, d.headers())

    def _api_key(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The request's API key header, if any (shared by the ASGI admission and the answer
        given inside the protocol)."""
        for k, v in headers:
            if k == self._key_header:
                return v.decode("latin-1")
        return None

    async def _admit(
        self, scope: Scope, rl_headers: list[tuple[bytes, bytes]]
    ) -> tuple[Message, Message] | None:
        key = self._api_key(scope.get("headers", ()))
        if key is not None:
            tier_name = self.config.api_keys.get(key)
            if tier_name is None:
                ip = self._client(scope)
                if self.config.bad_key_limit > 0:
                    d = await self.limiter.hit(
                        f"badkey:{ip}",
                        self.config.bad_key_limit,
                        use_redis=self.store.redis_available(),
                    )
                    if not d.allowed:  # key guessing: throttled like any other client
                        RATE_LIMITED.labels("unknown_key").inc()
                        return _json(429, _LIMITED_BODY_BAD_KEY, d.headers())
                AUDIT.event("key_refused", limit_key=ip, ip=ip, api_key=key, reason="unknown key")
                return _json(
                    401,
                    {
                        "error": "unauthorized",
                        "message": "unknown API key",
                        "parameter": self.config.key_header,
                    },
                    [],
                )
            tier: Tier = self.config.tiers[tier_name]
            who = f"k:{key}"
        else:
            if self.config.require_key:
                ip = self._client(scope)
                AUDIT.event("key_missing", limit_key=ip, ip=ip, reason="no API key")
                return _json(
                    401,
                    {
                        "error": "unauthorized",
                        "message": f"an API key is required ({self.config.key_header} header)",
                        "parameter": self.config.key_header,
                    },
                    [],
                )
            tier = self.config.tiers["anonymous"]
            who = f"ip:{self._client(scope)}"
        scope.setdefault("state", {})["tier"] = tier
        if tier.limit <= 0:
            return None
        d = await self.limiter.hit(
            who, tier.limit, tier.window_s, use_redis=self.store.redis_available()
        )
        if self.limiter.last_error is not None:
            self.store.trip(self.limiter.last_error)
        rl_headers.extend(d.headers())
        if d.allowed:
            return None
        return self._limited(tier, who, self._client(scope), key, rl_headers)

    def _limited(
        self, tier: Tier, who: str, ip: str, key: str | None, rl_headers: list[tuple[bytes, bytes]]
    ) -> tuple[Message, Message]:
        """The 429 of a client over its tier's limit, counted and audited."""
        RATE_LIMITED.labels(tier.name).inc()
        AUDIT.event("rate_limited", limit_key=who, ip=ip, tier=tier.name, api_key=key)
        return _json(
            429,
            {
                "error": "rate_limited",
                "message": f"rate limit of {tier.limit} requests per {tier.window_s}s "
                f"exceeded for tier {tier.name}; retry after the Retry-After seconds",
                "parameter": None,
            },
            rl_headers,
        )

    def answer_now(
        self, path: str, query: bytes, headers: list[tuple[bytes, bytes]], ip: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """The answer to ``GET path?query`` when it is known without awaiting anything: a hot
        route whose micro-cached body is fresh, for a known tier whose rate-limit decision is
        in hand (a token reserved earlier, or no limit). None: nothing was counted, and the
        request must go through the ASGI app, which answers it exactly as it always did.

        The status, headers and body are those :meth:`__call__` sends for the same request
        (tests/integration/test_rest_protocol_answer.py compares them byte for byte); the
        protocol writes them without creating an ASGI task (gateway_rest/http_protocol.py)."""
        fast = self.fast
        if fast is None or not path.startswith("/api/"):
            return None
        m = fast.match(path)
        if m is None:
            return None
        t0 = time.perf_counter()
        key = self._api_key(headers)
        if key is not None:
            tier_name = self.config.api_keys.get(key)
            if tier_name is None:
                return None  # a refused key: throttled and audited by _admit
            tier = self.config.tiers[tier_name]
            who = f"k:{key}"
        elif self.config.require_key:
            return None
        else:
            tier = self.config.tiers["anonymous"]
            who = f"ip:{ip}"
        body = fast.cached(m[1], m[0], query, tier)
        if body is None:
            return None
        rl_headers: list[tuple[bytes, bytes]] = []
        if tier.limit > 0:
            if not self.store.redis_available():
                return None  # counted in this process by _admit, as the limiter's fallback
            d = self.limiter.hit_now(who, tier.limit, tier.window_s)
            if d is None:
                return None
            rl_headers = d.headers()
            if not d.allowed:
                start, done = self._limited(tier, who, ip, key, rl_headers)
                METRICS.observe("unmatched", "GET", 429, time.perf_counter() - t0)
                return 429, start["headers"], done["body"]
        METRICS.observe(ROUTES[m[1]], "GET", 200, time.perf_counter() - t0)
        return (
            200,
            [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *rl_headers,
            ],
            body,
        )


class GatewayApp(FastAPI):
    """The FastAPI app with :class:`GatewayMiddleware` outermost once :meth:`install` ran.

    A subclass rather than ``add_middleware``: Starlette's stack (and FastAPI's own wrappers in
    ``FastAPI.__call__``) cost ~20 µs a request before the middleware ran (py-spy,
    docs/benchmarks.md "REST per core"); the requests the fast path answers now skip them, and
    every other request goes through ``FastAPI.__call__`` exactly as before.
    """

    gateway: GatewayMiddleware | None = None
    # optional: wraps every request's ``send`` (gateway_rest/signing.py signs the answers)
    wrap_send: Callable[[Scope, Send], Send] | None = None

    def install(self, *, config: RestConfig, limiter: RateLimiter, store: MarketStore) -> None:
        self.gateway = GatewayMiddleware(
            partial(FastAPI.__call__, self), config=config, limiter=limiter, store=store
        )

    def answer_now(
        self, path: str, query: bytes, headers: list[tuple[bytes, bytes]], ip: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """:meth:`GatewayMiddleware.answer_now`, unless answers are signed (the signer wraps
        the ASGI ``send``) or no gateway is installed: then always None."""
        gw = self.gateway
        if gw is None or self.wrap_send is not None:
            return None
        return gw.answer_now(path, query, headers, ip)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gateway
        if self.wrap_send is not None:
            send = self.wrap_send(scope, send)
        if gw is None:
            await super().__call__(scope, receive, send)
        else:
            await gw(scope, receive, send)
