"""A price-level (L2) order book keyed by exact decimal price, keeping the published strings.

Used by the aggregator to derive L2 from L3, by gateways and tests as the client-side book that
verifies checksums, and by the Coinbase connector for L2-only sources. Sizes of ``"0"`` remove a
level (the l2_update contract). Prices sort numerically; the strings are kept as received so
the checksum is computed over exactly what clients see.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from itertools import islice

from sortedcontainers import SortedDict

from core.checksum import book_checksum

Level = tuple[str, str]  # (price, size) as published strings


def _dec(s: str) -> Decimal:
    try:
        d = Decimal(s)
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal: {s!r}") from exc
    if not d.is_finite():
        raise ValueError(f"not a finite decimal: {s!r}")
    return d


def is_zero(size: str) -> bool:
    return _dec(size) == 0


class L2Book:
    __slots__ = ("bids", "asks")

    def __init__(self) -> None:
        # bids keyed by -price so that iteration is best (highest) first
        self.bids: SortedDict[Decimal, Level] = SortedDict()
        self.asks: SortedDict[Decimal, Level] = SortedDict()

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()

    def load(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        self.clear()
        for p, q in bids:
            self.set("buy", p, q)
        for p, q in asks:
            self.set("sell", p, q)

    def set(self, side: str, price: str, size: str) -> None:
        """Set a level's size (``"0"`` deletes it). ``side`` is ``buy``/``bid`` or ``sell``/``ask``."""
        px = _dec(price)
        sz = _dec(size)
        if sz < 0 or px <= 0:
            raise ValueError(f"bad level {side} {price} {size}")
        if side in ("buy", "bid"):
            book, key = self.bids, -px
        elif side in ("sell", "ask"):
            book, key = self.asks, px
        else:
            raise ValueError(f"bad side {side!r}")
        if sz == 0:
            book.pop(key, None)
        else:
            book[key] = (price, size)

    def apply(self, changes: Iterable[Iterable[str]]) -> None:
        for side, price, size in changes:
            self.set(side, price, size)

    def top_bids(self, n: int | None = None) -> list[Level]:
        vals = self.bids.values()
        return list(vals if n is None else islice(vals, n))

    def top_asks(self, n: int | None = None) -> list[Level]:
        vals = self.asks.values()
        return list(vals if n is None else islice(vals, n))

    def best_bid(self) -> Level | None:
        return self.bids.peekitem(0)[1] if self.bids else None

    def best_ask(self) -> Level | None:
        return self.asks.peekitem(0)[1] if self.asks else None

    def crossed(self) -> bool:
        bb, ba = self.best_bid(), self.best_ask()
        return bb is not None and ba is not None and _dec(bb[0]) >= _dec(ba[0])

    def checksum(self, depth: int = 10) -> int:
        return book_checksum(self.top_asks(depth), self.top_bids(depth))

    def snapshot(self, depth: int | None = None) -> dict[str, list[list[str]]]:
        return {
            "bids": [[p, q] for p, q in self.top_bids(depth)],
            "asks": [[p, q] for p, q in self.top_asks(depth)],
        }
