"""The rolling 24 hours of trades behind the ticker's ``*_24h`` fields, in 1-minute buckets of
*event* time (never the wall clock, so a replay computes the same window).

Part of the derivation of :mod:`aggregator.state`; pure, with its own save/restore.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aggregator.book import ZERO, fmt

MINUTE_NS = 60 * 1_000_000_000
DAY_MINUTES = 1440


class DayWindow:
    """minute -> ``[open, high, low, close, volume]``; insertion order is event-time order
    except for rare late trades (counted in their own minute).

    ``rows`` keeps each minute's saved form until a trade changes that minute: a checkpoint
    (every 5 s, on the leader's loop) saved up to 1,440 minutes of five decimals per symbol, all
    but the last one unchanged since the checkpoint before (issue 10: ~12 ms stalls of the
    leader's loop, ~5 % of its CPU)."""

    __slots__ = ("buckets", "volume", "high", "low", "rows")

    def __init__(self) -> None:
        self.buckets: dict[int, list[Decimal]] = {}
        self.volume = ZERO
        self.high: Decimal | None = None
        self.low: Decimal | None = None
        self.rows: dict[int, list[Any]] = {}  # minute -> its saved row, while unchanged

    def add(self, ts: int, px: Decimal, qty: Decimal) -> None:
        minute = ts // MINUTE_NS
        self.rows.pop(minute, None)
        b = self.buckets.get(minute)
        if b is None:
            self.buckets[minute] = [px, px, px, px, qty]
        else:
            if px > b[1]:
                b[1] = px
            if px < b[2]:
                b[2] = px
            b[3] = px
            b[4] += qty
        self.volume += qty
        if self.high is None or px > self.high:
            self.high = px
        if self.low is None or px < self.low:
            self.low = px
        self._evict(minute)

    def _evict(self, minute: int) -> None:
        oldest = minute - DAY_MINUTES + 1
        if next(iter(self.buckets)) < oldest:
            for m in [m for m in self.buckets if m < oldest]:
                self.volume -= self.buckets.pop(m)[4]
                self.rows.pop(m, None)
            self._recompute()

    def _recompute(self) -> None:
        vals = self.buckets.values()
        self.high = max((b[1] for b in vals), default=None)
        self.low = min((b[2] for b in vals), default=None)
        self.volume = sum((b[4] for b in vals), ZERO)

    def first_open(self) -> Decimal | None:
        """The open of the oldest minute in the window (the 24h change is measured from it)."""
        return next(iter(self.buckets.values()))[0] if self.buckets else None

    def to_state(self) -> list[Any]:
        """The buckets in minute order, each ``[minute, open, high, low, close, volume]``; the
        rows are shared with the next call until their minute changes (serialize, do not
        mutate)."""
        rows, buckets = self.rows, self.buckets
        out = []
        for m in sorted(buckets):
            r = rows.get(m)
            if r is None:
                r = rows[m] = [m, *map(fmt, buckets[m])]
            out.append(r)
        return out

    @classmethod
    def from_state(cls, rows: list[Any]) -> DayWindow:
        w = cls()
        for m, *b in rows:
            w.buckets[int(m)] = [Decimal(x) for x in b]
        w._recompute()
        return w
