"""The market routes under ``/api/v1/market``: symbols, order book (live, and past through
gateway_rest/history.py), ticker, stats, trades, candles. Hot answers are the cache writer's
bytes as they are (no model validation, no re-encoding); the models only document them."""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from core.anonymize import Anonymizer, for_tier
from core.cache_keys import book_depths
from core.channels import CANDLE_INTERVALS
from core.errors import SymbolError
from core.symbols import normalize_symbol
from gateway_rest.config import RestConfig, Tier
from gateway_rest.errors import DIGITS, JSON, ApiError, parse_cursor, parse_range, parse_time
from gateway_rest.history import NoHistory, past_orderbook
from gateway_rest.models import (
    ERRORS,
    CandlesResponse,
    OrderBook,
    OrderBookL3,
    Stats,
    SymbolsResponse,
    Ticker,
    TradesResponse,
)
from gateway_rest.store import MarketStore

PREFIX = "/api/v1/market"


def market_router(  # noqa: C901 - ruff counts the routes' branches (closures) into it
    cfg: RestConfig, st: MarketStore, anon: dict[str, Anonymizer]
) -> APIRouter:
    router = APIRouter()
    depths = book_depths(cfg.book_depth)

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

    def allow_level3(tier: Tier) -> None:
        if not tier.level3:
            raise ApiError(
                403, "forbidden", f"level: tier {tier.name} may not read level=3", "level"
            )

    @router.get(
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

    @router.get(
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
            DIGITS,
        ] = 20,
        level: Annotated[
            int,
            Query(
                ge=2,
                le=3,
                description="2: by price level; 3: order by "
                "order, where the symbol's source and your tier allow it",
            ),
            DIGITS,
        ] = 2,
        seq: Annotated[
            int | None,
            Query(
                ge=0,
                le=2**63 - 1,
                description="the book as it was right after this message `seq` (history)",
            ),
            DIGITS,
        ] = None,
        epoch: Annotated[
            int | None,
            Query(ge=0, le=2**63 - 1, description="with `seq`: its epoch (default: the newest)"),
            DIGITS,
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
            allow_level3(tier)
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
        if level == 3:
            allow_level3(tier)
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

    def latest(kind: str, key_of: Callable[[str], str]) -> Callable[[str], Awaitable[Response]]:
        """A route answering the cache writer's latest ``kind`` message of a symbol, as is."""

        async def route(symbol: str) -> Response:
            sym, _ = await known(symbol)
            return Response(await st.string(key_of(sym), kind), media_type=JSON)

        return route

    for kind, key_of, model, summary in (
        ("ticker", st.keys.ticker, Ticker, "Latest ticker (L1)"),
        ("stats", st.keys.stats, Stats, "24h statistics"),
    ):
        router.add_api_route(
            PREFIX + "/{symbol:path}/" + kind,
            latest(kind, key_of),
            methods=["GET"],
            name=kind,  # the operationId stays ``<kind>_api_v1_market__symbol__<kind>_get``
            response_model=model,
            responses=ERRORS,
            tags=["market"],
            summary=summary,
        )

    @router.get(
        PREFIX + "/{symbol:path}/trades",
        response_model=TradesResponse,
        responses=ERRORS,
        tags=["market"],
        summary="Recent trades (cache) or a time range (database, paged)",
    )
    async def trades(
        request: Request,
        symbol: str,
        limit: Annotated[
            int, Query(ge=1, description=f"capped at {cfg.trades_limit_max}"), DIGITS
        ] = 100,
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

    @router.get(
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
        limit: Annotated[
            int, Query(ge=1, description=f"capped at {cfg.candles_limit_max}"), DIGITS
        ] = 300,
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

    return router
