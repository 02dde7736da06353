"""Candles of every interval for one symbol: buckets of *event* time, closed when the symbol's
event time reaches their end, so a replay closes the same buckets with the same content.

Part of the derivation of :mod:`aggregator.state`; pure, with its own save/restore.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aggregator.book import fmt
from core.channels import CANDLE_INTERVALS
from core.codec import iso_from_ns
from core.messages import CandleData

NS = 1_000_000_000
Q8 = Decimal("0.00000001")


def q8(d: Decimal) -> str:
    """Derived values (averages) rounded to 8 decimals, plain notation, no trailing zeros."""
    s = fmt(d.quantize(Q8))
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s or "0"


class Candle:
    __slots__ = ("start", "open", "high", "low", "close", "volume", "quote_volume", "count")

    def __init__(self, start: int, px: Decimal, qty: Decimal) -> None:
        self.start = start
        self.open = self.high = self.low = self.close = px
        self.volume = qty
        self.quote_volume = px * qty
        self.count = 1

    def add(self, px: Decimal, qty: Decimal) -> None:
        if px > self.high:
            self.high = px
        if px < self.low:
            self.low = px
        self.close = px
        self.volume += qty
        self.quote_volume += px * qty
        self.count += 1

    def data(self, interval: str, secs: int, closed: bool) -> CandleData:
        return {
            "interval": interval,
            "start": iso_from_ns(self.start),
            "end": iso_from_ns(self.start + secs * NS),
            "open": fmt(self.open),
            "high": fmt(self.high),
            "low": fmt(self.low),
            "close": fmt(self.close),
            "volume": fmt(self.volume),
            "vwap": q8(self.quote_volume / self.volume) if self.volume else fmt(self.close),
            "trades": self.count,
            "closed": closed,
        }

    def to_state(self) -> list[Any]:
        return [
            self.start,
            fmt(self.open),
            fmt(self.high),
            fmt(self.low),
            fmt(self.close),
            fmt(self.volume),
            fmt(self.quote_volume),
            self.count,
        ]

    @classmethod
    def from_state(cls, st: list[Any]) -> Candle:
        c = cls(int(st[0]), Decimal(st[1]), Decimal(st[5]))
        c.high, c.low, c.close = Decimal(st[2]), Decimal(st[3]), Decimal(st[4])
        c.quote_volume, c.count = Decimal(st[6]), int(st[7])
        return c


class CandleSeries:
    """The open bucket of each interval, the final records waiting to be published, and what
    the last flush published (open candles of 5m and longer at most once per ``update_ms`` of
    event time; 1m with every record that has a trade; every final record on its own)."""

    __slots__ = ("open", "next_close", "closed", "last_closed", "dirty", "published")

    def __init__(self) -> None:
        self.open: dict[str, Candle] = {}
        self.next_close = 0  # smallest end of an open candle (0: none open): one compare per event
        self.closed: list[tuple[str, CandleData]] = []  # final records not yet published
        # final record of the last closed bucket per interval: the snapshot when none is open
        self.last_closed: dict[str, CandleData] = {}
        self.dirty: set[str] = set()
        self.published: dict[str, int] = {}  # interval -> event time of its last open update

    def add(self, ts: int, px: Decimal, qty: Decimal) -> None:
        for name, secs in CANDLE_INTERVALS.items():
            start = ts - ts % (secs * NS)
            c = self.open.get(name)
            if c is None or start > c.start:
                self.open[name] = Candle(start, px, qty)
                end = start + secs * NS
                if not self.next_close or end < self.next_close:
                    self.next_close = end
            else:  # same bucket, or a late trade (event time before the open bucket): counted in it
                c.add(px, qty)
            self.dirty.add(name)

    def close(self, ts: int) -> None:
        """Close every bucket whose end ``ts`` (the symbol's event time) has reached."""
        for name, c in list(self.open.items()):
            secs = CANDLE_INTERVALS[name]
            if ts >= c.start + secs * NS:
                final = c.data(name, secs, True)
                self.closed.append((name, final))
                self.last_closed[name] = final
                del self.open[name]
                self.dirty.discard(name)
        self._set_next_close()

    def _set_next_close(self) -> None:
        self.next_close = min(
            (c.start + CANDLE_INTERVALS[n] * NS for n, c in self.open.items()), default=0
        )

    def take_closed(self) -> list[tuple[str, CandleData]]:
        out, self.closed = self.closed, []
        return out

    def take_updates(self, last_ts: int, update_ms: int) -> list[tuple[str, CandleData]]:
        """Open candles due for an update message at event time ``last_ts``."""
        out: list[tuple[str, CandleData]] = []
        if not self.dirty:
            return out
        due_before = last_ts - update_ms * 1_000_000
        for name, secs in CANDLE_INTERVALS.items():
            if name in self.dirty and (name == "1m" or self.published.get(name, -1) <= due_before):
                out.append((name, self.open[name].data(name, secs, False)))
                self.published[name] = last_ts
                self.dirty.discard(name)
        return out

    def snapshot(self) -> list[tuple[str, CandleData]]:
        """Per interval: the open bucket, else the last final record."""
        out: list[tuple[str, CandleData]] = []
        for name, secs in CANDLE_INTERVALS.items():
            c = self.open.get(name)
            if c is not None:
                out.append((name, c.data(name, secs, False)))
            elif name in self.last_closed:
                out.append((name, self.last_closed[name]))
        return out

    def to_state(self) -> dict[str, Any]:
        return {
            "candles": {k: c.to_state() for k, c in self.open.items()},
            "last_closed": self.last_closed,
            "candle_dirty": sorted(self.dirty),
            "candle_pub": self.published,
        }

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> CandleSeries:
        cs = cls()
        cs.open = {k: Candle.from_state(v) for k, v in st["candles"].items()}
        cs.last_closed = dict(st.get("last_closed") or {})
        cs._set_next_close()
        cs.dirty = set(st.get("candle_dirty") or ()) & set(cs.open)
        cs.published = {str(k): int(v) for k, v in dict(st.get("candle_pub") or {}).items()}
        return cs
