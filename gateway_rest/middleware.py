"""Pure-ASGI middleware in front of the router: API keys, tiers, rate limits, metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) because it runs on every request of the hot path and
must not add a task and a body copy per request. Rate-limit headers are added to every
``/api/`` response by rewriting ``http.response.start``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from prometheus_client import REGISTRY as _DEFAULT
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.audit import AuditLog
from gateway_rest.config import RestConfig, Tier
from gateway_rest.fastpath import ROUTES, FastPath
from gateway_rest.ratelimit import Decision, RateLimiter
from gateway_rest.store import MarketStore

# the default registry: process/python collectors plus ours (each uvicorn worker process has its own)
REGISTRY: CollectorRegistry = _DEFAULT
AUDIT = AuditLog("gateway_rest")  # refused keys, missing keys, rate limits (docs/security.md)

REQUESTS = Counter(
    "md_rest_requests_total", "REST requests", ["route", "method", "status"], registry=REGISTRY
)
LATENCY = Histogram(
    "md_rest_request_seconds",
    "REST request latency (in the gateway, from first byte in to response start)",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "md_rest_rate_limited_total", "requests answered 429", ["tier"], registry=REGISTRY
)


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
            if path.startswith("/api/"):
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
                        body = await self.fast.answer(
                            m[1], m[0], scope.get("query_string", b""), tier
                        )
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
            REQUESTS.labels(name, scope.get("method", ""), str(status_box[0])).inc()
            LATENCY.labels(name).observe(time.perf_counter() - t0)

    async def _admit(
        self, scope: Scope, rl_headers: list[tuple[bytes, bytes]]
    ) -> tuple[Message, Message] | None:
        key: str | None = None
        for k, v in scope.get("headers", ()):
            if k == self._key_header:
                key = v.decode("latin-1")
                break
        if key is not None:
            tier_name = self.config.api_keys.get(key)
            if tier_name is None:
                ip = self._client(scope)
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
        d: Decision = await self.limiter.hit(
            who, tier.limit, tier.window_s, use_redis=self.store.redis_available()
        )
        if self.limiter.last_error is not None:
            self.store.trip(self.limiter.last_error)
        rl_headers.extend(d.headers())
        if d.allowed:
            return None
        RATE_LIMITED.labels(tier.name).inc()
        AUDIT.event(
            "rate_limited",
            limit_key=who,
            ip=self._client(scope),
            tier=tier.name,
            **({"api_key": key} if key is not None else {}),
        )
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
