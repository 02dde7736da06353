"""The FastAPI application: ``/api/v1/market/...``, ``/health`` (``/health/live``,
``/health/ready``), ``/metrics``, ``/docs``.

Hot endpoints return the cache writer's pre-encoded bytes as they are (no model validation, no
re-encoding); validation of *inputs* is strict and every bad input is a 404/422 JSON error naming
the parameter, never a 500. A pure-ASGI middleware (:mod:`gateway_rest.middleware`) does API keys,
rate limits and per-route metrics in front of the router.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.anonymize import for_tier, rest_anonymizers
from core.cache_keys import book_depths
from core.channels import CANDLE_INTERVALS
from core.codec import ns_from_iso
from core.errors import CodecError, SymbolError
from core.health import INFO, LIVE, READINESS, READY, Health, Result
from core.ops_http import start_ops_server
from core.settings import Settings
from core.symbols import normalize_symbol
from gateway_rest.config import RestConfig, Tier
from gateway_rest.history import NoHistory, past_orderbook
from gateway_rest.middleware import REGISTRY, GatewayApp
from gateway_rest.models import (
    ERRORS,
    CandlesResponse,
    HealthResponse,
    OrderBook,
    OrderBookL3,
    Stats,
    SymbolsResponse,
    Ticker,
    TradesResponse,
)
from gateway_rest.ratelimit import RateLimiter
from gateway_rest.store import MarketStore, NotCached, Unavailable
from gateway_rest.web_page import mount_web

log = logging.getLogger(__name__)
JSON = "application/json"
PREFIX = "/api/v1/market"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        parameter: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.error = error
        self.message = message
        self.parameter = parameter
        self.headers = headers
        super().__init__(message)


def error_response(
    status: int,
    error: str,
    message: str,
    parameter: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"error": error, "message": message, "parameter": parameter}
    if details:
        body["details"] = details
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


# 9999-12-31: beyond it neither Python's datetime nor PostgreSQL's timestamptz can follow
MAX_NS = 253_402_300_799 * 1_000_000_000


def parse_time(raw: str | None, name: str) -> int | None:
    """ISO-8601 (``2026-11-24T06:00:00Z``) or Unix time in seconds or milliseconds -> ns."""
    if raw is None or raw == "":
        return None
    text = raw.strip()
    try:
        if text.lstrip("-").isdigit():
            v = int(text)
            if v < 0:
                raise ValueError
            ns = v * 1_000_000 if v > 10**11 else v * 1_000_000_000
        else:
            ns = ns_from_iso(text)
        if not 0 <= ns < MAX_NS:
            raise ValueError
        return ns
    except (ValueError, CodecError, OverflowError):
        raise ApiError(
            422,
            "invalid_parameter",
            f"{name}: expected ISO-8601 time or Unix seconds/milliseconds, got {raw!r}",
            name,
        ) from None


def parse_range(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    s, e = parse_time(start, "start"), parse_time(end, "end")
    if s is not None and e is not None and s >= e:
        raise ApiError(422, "invalid_parameter", "start: must be before end", "start")
    return s, e


def parse_cursor(raw: str | None) -> tuple[int, str] | None:
    if not raw:
        return None
    ns, sep, tid = raw.partition(":")
    # isascii: str.isdigit() also accepts digits int() refuses ("²"), which were a 500
    if (
        not sep
        or not (ns.isascii() and ns.isdigit())
        or not tid
        or int(ns) >= MAX_NS
        or "\x00" in tid
    ):
        raise ApiError(
            422, "invalid_parameter", "cursor: not a cursor returned by this API", "cursor"
        )
    return int(ns), tid


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
    depths = book_depths(cfg.book_depth)

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

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return error_response(
            exc.status, exc.error, exc.message, exc.parameter, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ())]
        param = loc[-1] if loc else None
        details = [
            {"parameter": str(e.get("loc", ("",))[-1]), "message": e.get("msg", "")} for e in errs
        ]
        return error_response(
            422, "invalid_parameter", f"{param}: {first.get('msg', 'invalid')}", param, details
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        # keeps the router's headers: a 405 must say `Allow` (RFC 9110)
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Unavailable)
    async def _unavailable(_: Request, exc: Unavailable) -> Response:
        return error_response(
            503,
            "unavailable",
            f"{exc.dependency} unavailable: {exc.reason}",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> Response:
        # a bug, never bad input (that is 404/422 above): log it whole, answer JSON
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal", "internal error (logged)")

    @app.exception_handler(NotCached)
    async def _not_cached(_: Request, exc: NotCached) -> Response:
        return error_response(404, "no_data", str(exc))

    async def known(raw: str) -> tuple[str, dict[str, Any]]:
        try:
            sym = normalize_symbol(raw)
        except SymbolError as exc:
            raise ApiError(404, "unknown_symbol", f"{exc.reason}: {raw!r}", "symbol") from None
        cat = await st.catalogue()
        entry = cat.get(sym)
        if entry is None:
            raise ApiError(404, "unknown_symbol", f"unknown symbol: {sym}", "symbol")
        return sym, entry

    def tier_of(request: Request) -> Tier:
        t: Tier | None = getattr(request.state, "tier", None)
        return t or cfg.tiers["anonymous"]

    @app.get(
        f"{PREFIX}/symbols",
        response_model=SymbolsResponse,
        responses=ERRORS,
        tags=["market"],
        summary="The symbol catalogue",
    )
    async def symbols() -> Response:
        cat = await st.catalogue()
        body = orjson.dumps({"symbols": [cat[k] for k in sorted(cat)]})
        return Response(body, media_type=JSON)

    @app.get(
        PREFIX + "/{symbol:path}/orderbook",
        response_model=OrderBook | OrderBookL3,
        responses=ERRORS,
        tags=["market"],
        summary="Order book (L2 by price level, or L3)",
    )
    async def orderbook(
        request: Request,
        symbol: str,
        depth: Annotated[
            int,
            Query(
                ge=1,
                description="price levels per side (level=3: every order at those levels); "
                "capped at the cached depth (MD_REDIS_BOOK_DEPTH, default 100) and the tier's cap",
            ),
        ] = 20,
        level: Annotated[
            int,
            Query(
                ge=2,
                le=3,
                description="2: by price level; 3: order by "
                "order, where the symbol's source and your tier allow it",
            ),
        ] = 2,
        seq: Annotated[
            int | None,
            Query(
                ge=0,
                le=2**63 - 1,
                description="the book as it was right after this message `seq` (history)",
            ),
        ] = None,
        epoch: Annotated[
            int | None,
            Query(ge=0, le=2**63 - 1, description="with `seq`: its epoch (default: the newest)"),
        ] = None,
        at: Annotated[
            str | None,
            Query(description="the book as of this time (ISO-8601 or Unix s/ms; history)"),
        ] = None,
    ) -> Response:
        sym, entry = await known(symbol)
        tier = tier_of(request)
        if seq is not None or at:  # docs/rest.md "The book at a past moment"
            return await past_book(sym, tier, depth, level, seq, epoch, at)
        if level == 3:
            if "l3" not in entry.get("channels", ()):
                raise ApiError(
                    422,
                    "invalid_parameter",
                    f"level: {sym} has no order-by-order book (source {entry.get('source')})",
                    "level",
                )
            if not tier.level3:
                raise ApiError(
                    403, "forbidden", f"level: tier {tier.name} may not read level=3", "level"
                )
            d3 = min(depth, tier.max_depth)
            body = for_tier(anon, tier.name).body(await st.l3_book(sym, d3))
            return Response(body, media_type=JSON)
        d = min(depth, cfg.book_depth, tier.max_depth)
        return Response(await st.book(sym, d, depths), media_type=JSON)

    async def past_book(
        sym: str,
        tier: Tier,
        depth: int,
        level: int,
        seq: int | None,
        epoch: int | None,
        at: str | None,
    ) -> Response:
        if seq is not None and at:
            raise ApiError(422, "invalid_parameter", "at: give either seq or at, not both", "at")
        at_ns = parse_time(at, "at") if at else None
        if level == 3 and not tier.level3:
            raise ApiError(
                403, "forbidden", f"level: tier {tier.name} may not read level=3", "level"
            )
        try:
            body = await past_orderbook(
                st,
                sym,
                level=level,
                depth=min(depth, tier.max_depth),
                seq=seq,
                epoch=epoch,
                at_ns=at_ns,
            )
        except NoHistory as exc:
            raise ApiError(404, "no_history", str(exc), "at" if at else "seq") from None
        return Response(body, media_type=JSON)

    @app.get(
        PREFIX + "/{symbol:path}/ticker",
        response_model=Ticker,
        responses=ERRORS,
        tags=["market"],
        summary="Latest ticker (L1)",
    )
    async def ticker(symbol: str) -> Response:
        sym, _ = await known(symbol)
        return Response(await st.string(st.keys.ticker(sym), "ticker"), media_type=JSON)

    @app.get(
        PREFIX + "/{symbol:path}/stats",
        response_model=Stats,
        responses=ERRORS,
        tags=["market"],
        summary="24h statistics",
    )
    async def stats(symbol: str) -> Response:
        sym, _ = await known(symbol)
        return Response(await st.string(st.keys.stats(sym), "stats"), media_type=JSON)

    @app.get(
        PREFIX + "/{symbol:path}/trades",
        response_model=TradesResponse,
        responses=ERRORS,
        tags=["market"],
        summary="Recent trades (cache) or a time range (database, paged)",
    )
    async def trades(
        request: Request,
        symbol: str,
        limit: Annotated[int, Query(ge=1, description=f"capped at {cfg.trades_limit_max}")] = 100,
        start: Annotated[str | None, Query(description="ISO-8601 or Unix s/ms; inclusive")] = None,
        end: Annotated[str | None, Query(description="ISO-8601 or Unix s/ms; exclusive")] = None,
        cursor: Annotated[
            str | None, Query(description="`next_cursor` of the previous page")
        ] = None,
    ) -> Response:
        sym, _ = await known(symbol)
        lim = min(limit, cfg.trades_limit_max)
        s_ns, e_ns = parse_range(start, end)
        cur = parse_cursor(cursor)
        a = for_tier(anon, tier_of(request).name)
        if s_ns is None and e_ns is None and cur is None:
            return Response(a.body(await st.recent_trades(sym, lim)), media_type=JSON)
        return Response(a.body(await st.trades_range(sym, s_ns, e_ns, lim, cur)), media_type=JSON)

    @app.get(
        PREFIX + "/{symbol:path}/candles",
        response_model=CandlesResponse,
        responses=ERRORS,
        tags=["market"],
        summary="Candles (OHLCV) of one interval; the last may be open",
    )
    async def candles(
        symbol: str,
        interval: Annotated[
            str,
            Query(
                description="one of " + ", ".join(CANDLE_INTERVALS),
                json_schema_extra={"enum": list(CANDLE_INTERVALS)},  # checked below: our 422
            ),
        ] = "1m",
        start: Annotated[str | None, Query(description="ISO-8601 or Unix s/ms; inclusive")] = None,
        end: Annotated[str | None, Query(description="ISO-8601 or Unix s/ms; exclusive")] = None,
        limit: Annotated[int, Query(ge=1, description=f"capped at {cfg.candles_limit_max}")] = 300,
    ) -> Response:
        sym, _ = await known(symbol)
        if interval not in CANDLE_INTERVALS:
            raise ApiError(
                422,
                "invalid_parameter",
                f"interval: expected one of {', '.join(CANDLE_INTERVALS)}, got {interval!r}",
                "interval",
            )
        s_ns, e_ns = parse_range(start, end)
        body = await st.candles(sym, interval, s_ns, e_ns, min(limit, cfg.candles_limit_max))
        return Response(body, media_type=JSON)

    # Liveness: the event loop answering is the check (no loop of our own can die here), so
    # /health/live does no I/O. Readiness: the hot routes (orderbook, ticker, trades, symbols)
    # are served from Redis, so "redis" gates it. The database only serves history (candles,
    # trades with start/end) and the stale fallback while Redis is down: reported ("info"),
    # never a reason to take the pod out of the load balancer while Redis answers.
    health = Health("gateway_rest")

    async def health_response(scope: str) -> Response:
        extra: list[Result] = []
        if scope == READY:
            pings = await st.ping()
            extra = [
                Result("redis", READINESS, *pings["redis"]),
                Result("database", INFO, *pings["database"]),
            ]
        ok, body = health.evaluate(scope, extra)
        return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type=JSON)

    health_doc: dict[str, Any] = {
        "response_model": HealthResponse,
        "responses": {503: {"model": HealthResponse}},
        "tags": ["ops"],
    }

    @app.get(
        "/health",
        summary="Combined health, the same verdict as /health/ready",
        description="200 when Redis answers (the hot routes); the database is reported "
        "(`kind: info`) but does not fail it. Each check says its `kind`.",
        **health_doc,
    )
    async def health_combined() -> Response:
        return await health_response(READY)

    @app.get(
        "/health/ready",
        summary="Readiness: 200 when the hot routes can be served (Redis answers)",
        **health_doc,
    )
    async def health_ready() -> Response:
        return await health_response(READY)

    @app.get(
        "/health/live",
        summary="Liveness: 200 while the process serves requests (no dependency is asked)",
        **health_doc,
    )
    async def health_live() -> Response:
        return await health_response(LIVE)

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        if metrics_port:
            raise StarletteHTTPException(404, f"/metrics is served on port {metrics_port}")
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    mount_web(app, s)  # the live market page at / (web/dist, built by `make web`)
    return app
