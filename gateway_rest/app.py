"""The FastAPI application, assembled: ``/api/v1/market/...`` (gateway_rest/routes_market.py),
``/health`` (``/health/live``, ``/health/ready``) and ``/metrics`` (routes_ops.py), ``/docs``, the
live page (web_page.py); errors in one shape (errors.py).

Hot endpoints return the cache writer's pre-encoded bytes as they are (no model validation, no
re-encoding); validation of *inputs* is strict and every bad input is a 404/422 JSON error naming
the parameter, never a 500. :class:`~gateway_rest.middleware.GatewayApp` puts API keys, rate
limits, the fast path and per-route metrics in front of FastAPI's own stack.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from core.anonymize import rest_anonymizers
from core.health import Health
from core.ops_http import start_ops_server
from core.settings import Settings
from core.signing import Signer
from gateway_rest.config import RestConfig
from gateway_rest.errors import (
    ApiError,
    install_error_handlers,
    parse_cursor,
    parse_range,
    parse_time,
)
from gateway_rest.middleware import GatewayApp
from gateway_rest.ratelimit import RateLimiter
from gateway_rest.routes_market import PREFIX, market_router
from gateway_rest.routes_ops import ops_router
from gateway_rest.signing import ResponseSigner, keys_router
from gateway_rest.store import MarketStore
from gateway_rest.web_page import mount_web

# the parsers are part of this module's interface (tests, gateway_rest/history.py)
__all__ = ["PREFIX", "ApiError", "create_app", "parse_cursor", "parse_range", "parse_time"]


def create_app(
    settings: Settings | None = None,
    *,
    config: RestConfig | None = None,
    store: MarketStore | None = None,
) -> FastAPI:
    s = settings or Settings.from_env()
    cfg = config or RestConfig.from_settings(s)
    anon = rest_anonymizers(s)  # order ids per tier, no account fields (core/anonymize.py)
    st = store or MarketStore(s)
    st.catalogue_ttl_s = cfg.catalogue_ttl_s

    # MD_REST_METRICS_PORT > 0: /metrics there (on MD_OPS_HOST), 404 on the public port
    metrics_port = s.get("MD_REST_METRICS_PORT", int, 0)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ops = None
        if metrics_port:
            ops = await start_ops_server(
                Health("gateway_rest"), s.ops_host, metrics_port, reuse_port=True
            )
        yield
        if ops is not None:
            ops.close()
        await st.close()

    app = GatewayApp(
        title="Market data REST API",
        version="1.0.0",
        description="Order books, tickers, trades, candles and 24h stats. Every answer carries "
        "the `seq` (and `epoch`) of the stream message it reflects, so it can be joined with the "
        "WebSocket stream. Symbols are `BASE-QUOTE`; `BTC/USD` and lower case are accepted. "
        "Rate-limit headers on every response; 429 with `Retry-After` when exceeded.",
        lifespan=lifespan,
    )
    app.state.store = st
    app.state.config = cfg
    limiter = RateLimiter(st.redis, st.keys)
    app.install(config=cfg, limiter=limiter, store=st)  # admission + fast path, outermost

    signer = Signer.from_settings(s)  # optional Ed25519 X-MD-Signature (gateway_rest/signing.py)
    if signer is not None:
        app.wrap_send = ResponseSigner(signer).wrap
    install_error_handlers(app)
    app.include_router(market_router(cfg, st, anon))
    app.include_router(ops_router(st, metrics_port))
    app.include_router(keys_router(signer, s))
    mount_web(app, s)  # the live market page at / (web/dist, built by `make web`)
    return app
