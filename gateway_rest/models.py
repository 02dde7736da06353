"""Response and error schemas: they document the API in OpenAPI (``/openapi.json``).

Handlers return pre-encoded bytes (serialize once, in the cache writer), so these models are not
run on the hot path; tests validate real responses against them to keep the document accurate.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    error: str = Field(
        description="machine-readable code: unknown_symbol, invalid_parameter, "
        "rate_limited, unauthorized, forbidden, unavailable, not_found"
    )
    message: str = Field(description="human-readable explanation")
    parameter: str | None = Field(None, description="the request parameter at fault, if any")
    details: list[dict[str, Any]] | None = None


class SymbolEntry(BaseModel):
    symbol: str = Field(examples=["BTC-USD"])
    base: str
    quote: str
    tick_size: str = Field(description="decimal string")
    min_size: str = Field(description="decimal string")
    status: str = Field(description="online | halted | maintenance")
    source: str
    channels: list[str]
    seq: int | None = Field(None, description="seq of the status message this entry reflects")


class SymbolsResponse(BaseModel):
    symbols: list[SymbolEntry]


class Positioned(BaseModel):
    model_config = ConfigDict(extra="allow")
    symbol: str = Field(examples=["BTC-USD"], description="canonical symbol")
    seq: int = Field(
        description="seq of the last stream message this answer reflects "
        "(join with the WebSocket stream of the same channel)"
    )
    epoch: int = Field(description="stream epoch; changes only when the stream restarted")


class OrderBook(Positioned):
    timestamp: str = Field(description="publish time of the message at `seq`, ISO-8601 UTC")
    checksum: int | None = Field(None, description="book checksum (docs/internals.md) at `seq`")
    depth: int
    bids: list[list[str]] = Field(description="[price, size] best (highest) first")
    asks: list[list[str]] = Field(description="[price, size] best (lowest) first")
    source: str | None = Field(None, description="`database` when served from a stored snapshot")
    stale: bool | None = None


class OrderBookL3(Positioned):
    level: int = 3
    timestamp: str
    depth: int = Field(description="price levels per side included")
    bids: list[list[str]] = Field(
        description="[price, size, order_id], best price first, time priority"
    )
    asks: list[list[str]] = Field(
        description="[price, size, order_id], best price first, time priority"
    )


class Ticker(Positioned):
    timestamp: str


class Stats(Positioned):
    timestamp: str


class TradeEntry(BaseModel):
    trade_id: str
    price: str
    size: str
    side: str = Field(description="taker side: buy | sell")
    time: str
    seq: int


class TradesResponse(Positioned):
    trades: list[TradeEntry] = Field(
        description="recent: newest first; with start/end: oldest first"
    )
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page")
    source: str | None = None


class CandleEntry(BaseModel):
    start: str = Field(description="bucket start, ISO-8601 UTC")
    open: str
    high: str
    low: str
    close: str
    volume: str
    trades: int
    closed: bool = Field(description="true once the bucket is final")
    vwap: str | None = None


class CandlesResponse(Positioned):
    interval: str
    candles: list[CandleEntry] = Field(description="oldest first; the last may be the open bucket")


class HealthResponse(BaseModel):
    status: str = Field(
        description="ok; degraded: live but not ready; failing: a liveness check fails"
    )
    service: str
    live: bool = Field(description="no liveness check fails")
    ready: bool | None = Field(
        None, description="live and every readiness check passes (absent on /health/live)"
    )
    checks: dict[str, Any] = Field(
        description="name -> {ok, kind (liveness | readiness | info), detail}"
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown API key"},
    404: {"model": ErrorBody, "description": "unknown symbol, or no data yet"},
    422: {"model": ErrorBody, "description": "invalid parameter (named in `parameter`)"},
    429: {"model": ErrorBody, "description": "rate limited; see Retry-After"},
    503: {"model": ErrorBody, "description": "a dependency (Redis, database) is down; see message"},
}
