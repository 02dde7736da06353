"""Seeded random order flow driving a :class:`MatchingEngine` (pure: time is passed in).

Each :meth:`OrderFlow.step` picks one action: a limit order at a geometric distance from a
drifting mid (sometimes through the spread, so it trades), a cancel, a size reduction, or a
market order. The resting book is kept bounded (``max_orders``, default 400: a few tens of KB of
state per symbol) by cancelling the order farthest from the mid when it is full. The same seed
and symbol give the same sequence of events (timestamps aside, which the caller supplies).
"""

from __future__ import annotations

import random
import zlib
from decimal import Decimal

from aggregator import events as ev
from aggregator.sources.matching import MatchingEngine

# starting mids of the default symbols (others start at 100)
START_PRICES = {
    "BTC-USD": "50000",
    "ETH-USD": "3000",
    "LTC-USD": "200",
    "SOL-USD": "150",
    # FX pairs (simulator.py publishes them by default so ticker ``currencies`` can convert)
    "EUR-USD": "1.08",
    "GBP-USD": "1.27",
    "JPY-USD": "0.0067",
}


class OrderFlow:
    def __init__(
        self,
        symbol: str,
        seed: int,
        *,
        tick: Decimal = Decimal("0.01"),
        lot: Decimal = Decimal("0.0001"),
        max_orders: int = 400,
    ) -> None:
        self.symbol = symbol
        self.rng = random.Random(seed * 1_000_003 + zlib.crc32(symbol.encode()))
        pd = max(0, -tick.as_tuple().exponent)  # type: ignore[operator]
        sd = max(0, -lot.as_tuple().exponent)  # type: ignore[operator]
        self.engine = MatchingEngine(symbol, price_decimals=pd, size_decimals=sd)
        self.tick = tick
        self.mid = int(Decimal(START_PRICES.get(symbol, "100")) / tick)
        self.spread_ticks = max(1, self.mid // 20000)  # ~0.5 bp typical distance unit
        self.max_orders = max_orders
        self.n = 0
        self.lot_scale = int(1 / lot)
        self._code = f"{zlib.crc32(symbol.encode()) & 0xFFFF:04x}"

    def _oid(self) -> str:
        self.n += 1
        return f"{self._code}-{self.n}"

    def _size(self) -> int:
        # 0.0001 .. ~2 units, skewed small
        return max(1, int(self.rng.expovariate(1.0) * self.lot_scale * 0.3))

    def step(self, ts: int) -> list[ev.AnyEvent]:
        r = self.rng
        e = self.engine
        if r.random() < 0.05:  # drifting mid
            self.mid = max(10 * self.spread_ticks, self.mid + r.choice((-1, 1)) * self.spread_ticks)
        if len(e.orders) >= self.max_orders:
            return self._cancel_far(ts)
        x = r.random()
        if x < 0.55 or not e.orders:
            side = "buy" if r.random() < 0.5 else "sell"
            dist = int(r.expovariate(0.25)) * self.spread_ticks  # mostly close to the mid
            if r.random() < 0.1:
                dist = -self.spread_ticks * r.randint(1, 3)  # through the mid: marketable
            price = (
                self.mid - dist - self.spread_ticks
                if side == "buy"
                else self.mid + dist + self.spread_ticks
            )
            return e.limit(self._oid(), side, max(1, price), self._size(), ts)
        if x < 0.80:
            oid = r.choice(list(e.orders)) if len(e.orders) < 64 else self._sample_order()
            return e.cancel(oid, ts)
        if x < 0.92:
            oid = self._sample_order()
            o = e.orders[oid]
            if o.size > 1:
                return e.reduce(oid, r.randint(1, o.size - 1), ts)
            return e.cancel(oid, ts)
        side = "buy" if r.random() < 0.5 else "sell"
        return e.market(self._oid(), side, self._size(), ts)

    def _sample_order(self) -> str:
        # dicts keep insertion order; sampling an index is O(n) but n is bounded by max_orders
        keys = list(self.engine.orders)
        return keys[self.rng.randrange(len(keys))]

    def _cancel_far(self, ts: int) -> list[ev.AnyEvent]:
        """Cancel the resting order farthest from the mid, the earliest of equals. Only the
        oldest order of the lowest and of the highest price level can be it (|price - mid| is
        largest at the ends of the book, and a level keeps time priority): two looks instead
        of a scan of every order, which was a tenth of the simulator's CPU at a full book."""
        e = self.engine
        lo = (e.bids.peekitem(-1) if e.bids else e.asks.peekitem(0))[1][0]
        hi = (e.asks.peekitem(-1) if e.asks else e.bids.peekitem(0))[1][0]
        d_lo, d_hi = abs(lo.price - self.mid), abs(hi.price - self.mid)
        far = lo if d_lo > d_hi or (d_lo == d_hi and lo.born <= hi.born) else hi
        return e.cancel(far.order_id, ts)
