"""Ticker prices in other quote currencies through the tickers the gateway follows."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from core.follower import StreamFollower

_PRICE_FIELDS = (
    "best_bid",
    "best_ask",
    "last_price",
    "open_24h",
    "high_24h",
    "low_24h",
    "change_24h",
    "price",
    "open",
    "high",
    "low",
    "close",
)


def _direct(quote: str, currency: str, has: Callable[[str], bool]) -> str | None:
    for sym in (f"{quote}-{currency}", f"{currency}-{quote}"):
        if has(sym):
            return sym
    return None


def conversion_path(
    quote: str, currency: str, has: Callable[[str], bool]
) -> tuple[str, ...] | None:
    """The tickers a conversion from ``quote`` to ``currency`` reads, by the rules of
    :meth:`CrossRates.rate` (``Q-C`` or ``C-Q``, else through USD); None when ``has`` (is this
    symbol followed?) knows none that would do. A path can exist before its tickers have a
    price: until then :meth:`CrossRates.convert` sends no copy."""
    if quote == currency:
        return ()
    d = _direct(quote, currency, has)
    if d is not None:
        return (d,)
    if "USD" not in (quote, currency):
        a, b = _direct(quote, "USD", has), _direct("USD", currency, has)
        if a is not None and b is not None:
            return (a, b)
    return None


def no_path_message(quote: str, currency: str) -> str:
    """Why ``currency`` cannot be served for a ``quote``-quoted symbol, naming what would do."""
    legs = f"{quote}-{currency} or {currency}-{quote}"
    if "USD" not in (quote, currency):
        legs += f", or {quote}-USD and USD-{currency} (either direction)"
    return f"no conversion from {quote} to {currency}: this gateway follows no ticker of {legs}"


class CrossRates:
    """Converts a ticker's prices into another quote currency through the tickers we follow.

    The rate from quote ``Q`` to currency ``C`` is the last price of ``Q-C``, or 1 / that of
    ``C-Q``, or through USD (``Q-USD`` then ``USD-C``); None when no path is known.
    """

    def __init__(self, follower: StreamFollower) -> None:
        self.follower = follower

    def _price(self, symbol: str) -> Decimal | None:
        cur = self.follower.current("ticker", symbol)
        if cur is None or not cur.messages:
            return None
        data = orjson.loads(cur.messages[-1]).get("data") or {}
        for f in ("last_price", "price", "best_bid"):
            v = data.get(f)
            if v:
                try:
                    d = Decimal(str(v))
                except InvalidOperation:
                    continue
                if d > 0:
                    return d
        return None

    def rate(self, quote: str, currency: str, _depth: int = 0) -> Decimal | None:
        if quote == currency:
            return Decimal(1)
        p = self._price(f"{quote}-{currency}")
        if p is not None:
            return p
        p = self._price(f"{currency}-{quote}")
        if p is not None:
            return 1 / p
        if _depth == 0 and "USD" not in (quote, currency):
            a, b = self.rate(quote, "USD", 1), self.rate("USD", currency, 1)
            if a is not None and b is not None:
                return a * b
        return None

    def convert(self, parsed: dict[str, Any], currency: str) -> dict[str, Any] | None:
        quote = parsed["symbol"].split("-")[1]
        r = self.rate(quote, currency)
        if r is None:
            return None
        data = dict(parsed.get("data") or {})
        for f in _PRICE_FIELDS:
            v = data.get(f)
            if isinstance(v, str):
                with contextlib.suppress(InvalidOperation):
                    data[f] = format(
                        (Decimal(v) * r).quantize(Decimal("0.00000001")).normalize(), "f"
                    )
        return {**parsed, "data": data, "currency": currency, "rate": format(r.normalize(), "f")}
