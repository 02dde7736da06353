"""A price-time-priority matching engine (pure, no I/O) emitting exchange ``full``-channel events.

Prices are integer ticks and sizes integer lots, so matching is exact and fast; the engine's
output are :mod:`aggregator.events` objects with decimal strings, in the order an exchange
publishes them:

- a limit order that does not cross: ``open``;
- a crossing (limit or market) order: one ``match`` per maker it trades against, best price
  first and oldest first within a price (price-time priority), with ``done(filled)`` for each
  maker it empties; then ``open`` for a limit order's remainder, or ``done`` for the taker
  (``filled`` when nothing is left, ``canceled`` for a market order's unfilled remainder);
- ``cancel``: ``done(canceled)``; ``reduce``: ``change`` (size down in place keeps priority, as on
  Coinbase; an increase would lose priority, so the simulator never sends one).

The trade price is always the maker's price. The book is never crossed after an operation,
which the property tests check together with conservation of size.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sortedcontainers import SortedDict

from aggregator import events as ev


@dataclass(slots=True)
class RestingOrder:
    order_id: str
    side: str
    price: int  # ticks
    size: int  # lots remaining
    born: int = 0  # the engine's count of resting orders at its arrival: time priority


class MatchingEngine:
    """One symbol's book. ``price_decimals``/``size_decimals`` render ticks/lots as strings."""

    def __init__(
        self,
        symbol: str,
        *,
        price_decimals: int = 2,
        size_decimals: int = 4,
        source: str = "simulator",
    ) -> None:
        self.symbol = symbol
        self.source = source
        self._pd = price_decimals
        self._sd = size_decimals
        self._pscale = 10**price_decimals
        self._sscale = 10**size_decimals
        self.bids: SortedDict = SortedDict()  # -price -> deque[RestingOrder]
        self.asks: SortedDict = SortedDict()  # price -> deque[RestingOrder]
        self.orders: dict[str, RestingOrder] = {}
        self._trade_id = 0
        self._born = 0

    # -- formatting -------------------------------------------------------------------------
    def px(self, ticks: int) -> str:
        if self._pd == 0:
            return str(ticks)
        q, r = divmod(ticks, self._pscale)
        return f"{q}.{r:0{self._pd}d}"

    def sz(self, lots: int) -> str:
        if self._sd == 0:
            return str(lots)
        q, r = divmod(lots, self._sscale)
        return f"{q}.{r:0{self._sd}d}"

    # -- queries ----------------------------------------------------------------------------
    def best_bid(self) -> int | None:
        return -self.bids.peekitem(0)[0] if self.bids else None

    def best_ask(self) -> int | None:
        return self.asks.peekitem(0)[0] if self.asks else None

    def level_sizes(self, side: str) -> dict[int, int]:
        book = self.bids if side == "buy" else self.asks
        sign = -1 if side == "buy" else 1
        return {sign * k: sum(o.size for o in q) for k, q in book.items()}

    # -- operations -------------------------------------------------------------------------
    def limit(self, order_id: str, side: str, price: int, size: int, ts: int) -> list[ev.AnyEvent]:
        if size <= 0 or price <= 0 or order_id in self.orders:
            raise ValueError("bad order")
        out: list[ev.AnyEvent] = []
        rest = self._take(order_id, side, size, price, ts, out)
        if rest > 0:
            self._born += 1
            o = RestingOrder(order_id, side, price, rest, self._born)
            book, key = (self.bids, -price) if side == "buy" else (self.asks, price)
            q = book.get(key)
            if q is None:
                q = book[key] = deque()
            q.append(o)
            self.orders[order_id] = o
            out.append(
                ev.open_(
                    self.symbol,
                    ts,
                    order_id,
                    side,
                    self.px(price),
                    self.sz(rest),
                    source=self.source,
                )
            )
        else:
            out.append(
                ev.done(
                    self.symbol,
                    ts,
                    order_id,
                    side,
                    "filled",
                    price=self.px(price),
                    remaining_size=self.sz(0),
                    source=self.source,
                )
            )
        return out

    def market(self, order_id: str, side: str, size: int, ts: int) -> list[ev.AnyEvent]:
        if size <= 0:
            raise ValueError("bad order")
        out: list[ev.AnyEvent] = []
        rest = self._take(order_id, side, size, None, ts, out)
        out.append(
            ev.done(
                self.symbol,
                ts,
                order_id,
                side,
                "filled" if rest == 0 else "canceled",
                remaining_size=self.sz(rest),
                source=self.source,
            )
        )
        return out

    def cancel(self, order_id: str, ts: int) -> list[ev.AnyEvent]:
        o = self.orders.pop(order_id, None)
        if o is None:
            return []
        self._unlink(o)
        return [
            ev.done(
                self.symbol,
                ts,
                order_id,
                o.side,
                "canceled",
                price=self.px(o.price),
                remaining_size=self.sz(o.size),
                source=self.source,
            )
        ]

    def reduce(self, order_id: str, new_size: int, ts: int) -> list[ev.AnyEvent]:
        o = self.orders.get(order_id)
        if o is None or not 0 < new_size < o.size:
            return []
        o.size = new_size
        return [
            ev.change(
                self.symbol,
                ts,
                order_id,
                o.side,
                self.sz(new_size),
                price=self.px(o.price),
                source=self.source,
            )
        ]

    # -- internals --------------------------------------------------------------------------
    def _unlink(self, o: RestingOrder) -> None:
        book, key = (self.bids, -o.price) if o.side == "buy" else (self.asks, o.price)
        q = book[key]
        q.remove(o)
        if not q:
            del book[key]

    def _take(
        self, taker: str, side: str, size: int, limit: int | None, ts: int, out: list[ev.AnyEvent]
    ) -> int:
        """Match a taker against the opposite side; returns the unfilled size."""
        book = self.asks if side == "buy" else self.bids
        while size > 0 and book:
            key, q = book.peekitem(0)
            price = key if side == "buy" else -key
            if limit is not None and (price > limit if side == "buy" else price < limit):
                break
            while size > 0 and q:
                maker = q[0]
                n = min(size, maker.size)
                self._trade_id += 1
                out.append(
                    ev.match(
                        self.symbol,
                        ts,
                        str(self._trade_id),
                        maker.order_id,
                        taker,
                        side,
                        self.px(price),
                        self.sz(n),
                        source=self.source,
                    )
                )
                maker.size -= n
                size -= n
                if maker.size == 0:
                    q.popleft()
                    del self.orders[maker.order_id]
                    out.append(
                        ev.done(
                            self.symbol,
                            ts,
                            maker.order_id,
                            maker.side,
                            "filled",
                            price=self.px(price),
                            remaining_size=self.sz(0),
                            source=self.source,
                        )
                    )
            if not q:
                del book[key]
        return size
