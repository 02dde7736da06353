"""The ``stats`` channel's windows: mid moving average and widest spread over the last N
top-of-book changes, VWAP over the last N trades (``MD_STATS_MID_WINDOW``/``_VWAP_WINDOW``),
and the widest spread since the symbol's state began (``max_spread``, the seed's definition: a
running maximum, kept in the checkpoint so a standby or a replay carries it on).

Part of the derivation of :mod:`aggregator.state`; pure, with its own save/restore. Running
sums make each update O(1); the bounded deques drop the oldest entry (and its share of the sum).
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal
from typing import Any

from aggregator.book import ZERO, Book, fmt
from aggregator.candles import q8
from core.messages import StatsData


class StatsWindows:
    __slots__ = ("last_top", "mids", "mid_sum", "vw", "vw_pq", "vw_q", "last_px", "max_spread")

    def __init__(self, mid_window: int, vwap_window: int) -> None:
        self.last_top: tuple[Decimal, Decimal] | None = None
        self.mids: deque[tuple[Decimal, Decimal]] = deque(maxlen=mid_window)  # (mid, spread)
        self.mid_sum = ZERO
        self.vw: deque[tuple[Decimal, Decimal]] = deque(maxlen=vwap_window)  # (px*qty, qty)
        self.vw_pq = ZERO
        self.vw_q = ZERO
        self.last_px = ZERO  # last trade price
        self.max_spread: Decimal | None = None  # widest spread since start (running maximum)

    def on_top(self, top: tuple[Decimal, Decimal]) -> None:
        """Best bid and ask after a book change; counted only when they moved."""
        if top != self.last_top:
            self.last_top = top
            bb, ba = top
            mid = (bb + ba) / 2
            if len(self.mids) == self.mids.maxlen:
                self.mid_sum -= self.mids[0][0]
            self.mids.append((mid, ba - bb))
            self.mid_sum += mid
            if self.max_spread is None or ba - bb > self.max_spread:
                self.max_spread = ba - bb

    def on_trade(self, px: Decimal, qty: Decimal) -> None:
        self.last_px = px
        pq = px * qty
        if len(self.vw) == self.vw.maxlen:
            opq, oq = self.vw[0]
            self.vw_pq -= opq
            self.vw_q -= oq
        self.vw.append((pq, qty))
        self.vw_pq += pq
        self.vw_q += qty

    def data(self, book: Book) -> StatsData | None:
        """None while the book has an empty side and no trade happened yet."""
        if book.best("buy") is None or book.best("sell") is None:
            spread = mid = None
        else:
            b, a = -book.bids.peekitem(0)[0], book.asks.peekitem(0)[0]
            spread, mid = fmt(a - b), q8((a + b) / 2)
        if spread is None and not self.vw:
            return None
        return {
            "spread": spread,
            "mid": mid,
            "max_spread": fmt(self.max_spread) if self.max_spread is not None else None,
            "max_spread_window": fmt(max(s for _, s in self.mids)) if self.mids else None,
            "mid_sma": q8(self.mid_sum / len(self.mids)) if self.mids else None,
            "mid_sma_window": len(self.mids),
            "vwap": q8(self.vw_pq / self.vw_q) if self.vw_q else None,
            "vwap_window": len(self.vw),
        }

    def to_state(self) -> dict[str, Any]:
        return {
            "last_top": [fmt(x) for x in self.last_top] if self.last_top else None,
            "mids": [[fmt(m), fmt(s)] for m, s in self.mids],
            "vw": [[fmt(pq), fmt(q)] for pq, q in self.vw],
            "max_spread": fmt(self.max_spread) if self.max_spread is not None else None,
        }

    def restore(self, st: dict[str, Any], last_px: Decimal) -> None:
        lt = st.get("last_top")
        self.last_top = (Decimal(lt[0]), Decimal(lt[1])) if lt else None
        for m, sp in st["mids"]:
            self.mids.append((Decimal(m), Decimal(sp)))
        self.mid_sum = sum((m for m, _ in self.mids), ZERO)
        for pq, q in st["vw"]:
            self.vw.append((Decimal(pq), Decimal(q)))
        self.vw_pq = sum((pq for pq, _ in self.vw), ZERO)
        self.vw_q = sum((q for _, q in self.vw), ZERO)
        self.last_px = last_px
        ms = st.get("max_spread")  # absent in checkpoints of older versions: the window's max
        self.max_spread = (
            Decimal(ms) if ms is not None else max((s for _, s in self.mids), default=None)
        )
