"""The per-symbol book: orders (L3) aggregated into price levels (L2), pure, no I/O. The
aggregator derives the streams with it; the point-in-time rebuild (core/history/book.py) replays
stored L3 history into it.

One structure serves both kinds of source:

- order-level sources (``open``/``change``/``done``/``match``): each level holds its orders in
  time priority (a dict keeps insertion order) and their total, maintained incrementally;
- L2-only sources (``book_snapshot``/``book_update``): a level holds only its total.

Every mutation records the level it touched together with the size string *published before
the first touch since the last* :meth:`take_l2_changes`, so the L2 diff of a batch is the net
change of each level (a level that went up and back down is not sent) with no second copy of
the book. Size strings are ``format(Decimal, "f")`` of exact sums of the sources' strings, and
price strings are the sources' own, so the checksum is over exactly what clients see.
"""

from __future__ import annotations

from decimal import Decimal
from itertools import islice
from typing import Any

from sortedcontainers import SortedDict

from core.checksum import crc_of_parts, level_part

ZERO = Decimal(0)


def fmt(d: Decimal) -> str:
    """Plain decimal string, never scientific notation (``Decimal('1E+1')`` -> ``"10"``)."""
    return format(d, "f")


class Level:
    """One price level. ``total`` is written only in this module, and every write clears
    ``text`` (its formatted size) and ``part`` (its share of the checksummed string): a record's
    checksum reads the top levels of both sides, and most of them did not change since the last
    record (issue 10: the checksum was a sixth of the aggregator's derivation)."""

    __slots__ = ("price", "total", "orders", "text", "part")

    def __init__(self, price: str) -> None:
        self.price = price
        self.total = ZERO
        self.text: str | None = None  # fmt(total), once asked for; None: not formatted since
        self.part: str | None = None  # the level's part of the checksummed string, likewise
        # order_id -> remaining size; insertion order is time priority
        self.orders: dict[str, Decimal] = {}

    def size_text(self) -> str:
        t = self.text
        if t is None:
            t = self.text = fmt(self.total)
        return t


class Order:
    __slots__ = ("order_id", "side", "key", "price", "size")

    def __init__(self, order_id: str, side: str, key: Decimal, price: str, size: Decimal) -> None:
        self.order_id = order_id
        self.side = side
        self.key = key  # SortedDict key: -price for bids (best first), price for asks
        self.price = price
        self.size = size


class Book:
    __slots__ = ("bids", "asks", "orders", "_touched")

    def __init__(self) -> None:
        self.bids: SortedDict[Decimal, Level] = SortedDict()  # -px -> Level
        self.asks: SortedDict[Decimal, Level] = SortedDict()  # px -> Level
        self.orders: dict[str, Order] = {}
        # (side, key) -> (price string, size string published before this batch, "0" if none)
        self._touched: dict[tuple[str, Decimal], tuple[str, str]] = {}

    # ------------------------------------------------------------------ internals
    def _side(self, side: str) -> SortedDict[Decimal, Level]:
        return self.bids if side == "buy" else self.asks

    def _touch(self, side: str, key: Decimal, lvl: Level | None, price: str) -> None:
        k = (side, key)
        if k not in self._touched:
            self._touched[k] = (price, lvl.size_text() if lvl is not None else "0")

    # ------------------------------------------------------------------ L3 operations
    def add(self, order_id: str, side: str, price: str, px: Decimal, size: Decimal) -> bool:
        """Rest an order last in its level's time priority. False if the id already rests."""
        if order_id in self.orders or size <= 0:
            return False
        key = -px if side == "buy" else px
        levels = self._side(side)
        lvl = levels.get(key)
        self._touch(side, key, lvl, price)
        if lvl is None:
            lvl = levels[key] = Level(price)
        lvl.orders[order_id] = size
        lvl.total += size
        lvl.text = lvl.part = None
        self.orders[order_id] = Order(order_id, side, key, lvl.price, size)
        return True

    def set_size(self, order_id: str, new_size: Decimal) -> Order | None:
        """Change a resting order's size in place (priority kept); size 0 removes it."""
        o = self.orders.get(order_id)
        if o is None:
            return None
        if new_size <= 0:
            self.remove(order_id)
            o.size = ZERO
            return o
        levels = self._side(o.side)
        lvl: Level = levels[o.key]
        self._touch(o.side, o.key, lvl, lvl.price)
        lvl.total += new_size - o.size
        lvl.text = lvl.part = None
        lvl.orders[order_id] = new_size
        o.size = new_size
        return o

    def fill(self, order_id: str, size: Decimal) -> Order | None:
        """Reduce a resting order by a match; removes it when nothing remains."""
        o = self.orders.get(order_id)
        if o is None:
            return None
        rest = o.size - size
        if rest <= 0:
            self.remove(order_id)
            o.size = ZERO
            return o
        return self.set_size(order_id, rest)

    def remove(self, order_id: str) -> Order | None:
        o = self.orders.pop(order_id, None)
        if o is None:
            return None
        levels = self._side(o.side)
        lvl: Level = levels[o.key]
        self._touch(o.side, o.key, lvl, lvl.price)
        lvl.total -= lvl.orders.pop(order_id)
        lvl.text = lvl.part = None
        if not lvl.orders:
            del levels[o.key]
        return o

    # ------------------------------------------------------------------ L2-only operations
    def set_level(self, side: str, price: str, px: Decimal, size: Decimal) -> None:
        """Set a whole level (L2-only sources); size 0 removes it."""
        key = -px if side == "buy" else px
        levels = self._side(side)
        lvl = levels.get(key)
        self._touch(side, key, lvl, price if lvl is None else lvl.price)
        if size <= 0:
            if lvl is not None:
                del levels[key]
            return
        if lvl is None:
            lvl = levels[key] = Level(price)
        lvl.total = size
        lvl.text = lvl.part = None

    def clear(self) -> None:
        """Empty the book, recording every level as removed (so the diff publishes it)."""
        for side, levels in (("buy", self.bids), ("sell", self.asks)):
            for key, lvl in levels.items():
                self._touch(side, key, lvl, lvl.price)
            levels.clear()
        self.orders.clear()

    # ------------------------------------------------------------------ views
    def take_l2_changes(self) -> list[list[str]]:
        """Net ``[side, price, size]`` changes since the last call (size ``"0"``: removed)."""
        out: list[list[str]] = []
        for (side, key), (price, before) in self._touched.items():
            lvl = self._side(side).get(key)
            now = lvl.size_text() if lvl is not None else "0"
            if now != before:
                out.append([side, lvl.price if lvl is not None else price, now])
        self._touched.clear()
        return out

    def discard_changes(self) -> None:
        self._touched.clear()

    def top(self, side: str, n: int | None = None) -> list[tuple[str, str]]:
        vals = self._side(side).values()
        it = vals if n is None else islice(vals, n)
        return [(lvl.price, lvl.size_text()) for lvl in it]

    def best(self, side: str) -> Level | None:
        levels = self._side(side)
        return levels.peekitem(0)[1] if levels else None

    def checksum(self, depth: int) -> int:
        """``core/checksum.py``'s checksum of the top ``depth`` levels, from each level's part
        as remembered since its size last changed."""
        parts: list[str] = []
        for levels in (self.asks, self.bids):
            for lvl in islice(levels.values(), depth):
                c = lvl.part
                if c is None:
                    c = lvl.part = level_part(lvl.price, lvl.size_text())
                parts.append(c)
        return crc_of_parts(parts)

    def crossed(self) -> bool:
        if not self.bids or not self.asks:
            return False
        return bool(-self.bids.peekitem(0)[0] >= self.asks.peekitem(0)[0])

    def l2_snapshot(self, depth: int | None = None) -> dict[str, list[list[str]]]:
        return {
            "bids": [[p, s] for p, s in self.top("buy", depth)],
            "asks": [[p, s] for p, s in self.top("sell", depth)],
        }

    def l3_snapshot(self) -> dict[str, list[list[str]]]:
        """``[price, size, order_id]`` per order, best price first, time priority within a level."""
        out: dict[str, list[list[str]]] = {"bids": [], "asks": []}
        for name, levels in (("bids", self.bids), ("asks", self.asks)):
            rows = out[name]
            for lvl in levels.values():
                for oid, sz in lvl.orders.items():
                    rows.append([lvl.price, fmt(sz), oid])
        return out

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        """Compact recovery state: levels with their orders in priority order."""

        def dump(levels: SortedDict[Decimal, Level]) -> list[Any]:
            return [
                [lvl.price, lvl.size_text(), [[o, fmt(s)] for o, s in lvl.orders.items()]]
                for lvl in levels.values()
            ]

        return {"bids": dump(self.bids), "asks": dump(self.asks)}

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> Book:
        b = cls()
        for side, name in (("buy", "bids"), ("sell", "asks")):
            levels = b._side(side)
            for price, total, orders in st[name]:
                px = Decimal(price)
                key = -px if side == "buy" else px
                lvl = levels[key] = Level(price)
                lvl.total = Decimal(total)
                lvl.text = lvl.part = None
                for oid, s in orders:
                    sz = Decimal(s)
                    lvl.orders[oid] = sz
                    b.orders[oid] = Order(oid, side, key, price, sz)
        return b
