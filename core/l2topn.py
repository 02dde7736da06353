"""A top-N view of a full-depth l2 stream (Coinbase's ``level2_50`` idea), pure and synchronous.

The aggregator publishes one full-depth ``l2`` stream per symbol (docs/aggregator.md). A reader
that serves clients a shallower book (a gateway, for ``depth=50``) keeps one :class:`TopNView`
per ``(symbol, N)``: it is fed the full-depth ``l2_snapshot``/``l2_update`` messages in order and
returns the view's own messages:

- ``l2_snapshot``: the top N levels per side, ``data.depth = N``;
- ``l2_update``: only the levels whose presence or size *within the top N* changed, including a
  level pushed out of the top N (sent as size ``"0"``) and a deeper level that moved into it
  (sent with its size); ``None`` when the update did not touch the top N (most updates of a deep
  book do not, which is the point);
- their own ``seq``, +1 per view message, gapless, restarting at 1 when the source's ``epoch``
  changes (the view carries the source ``epoch``); the ``checksum`` is the source's when
  N >= the checksum depth (the top 10 of the view *are* the book's), else recomputed over the view.

A consumer detecting a gap in the source stream must feed the view a fresh source snapshot;
the view then answers with a fresh view snapshot (its ``seq`` continues, so view clients see a
snapshot, not a gap).
"""

from __future__ import annotations

from typing import Any

from core.book import L2Book
from core.checksum import book_checksum


class TopNView:
    __slots__ = ("symbol", "depth", "checksum_depth", "book", "seq", "epoch")

    def __init__(self, symbol: str, depth: int, *, checksum_depth: int = 10) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.symbol = symbol
        self.depth = depth
        self.checksum_depth = checksum_depth
        self.book = L2Book()
        self.seq = 0
        self.epoch: int | None = None

    def _top(self) -> dict[tuple[str, str], str]:
        top = {("buy", p): q for p, q in self.book.top_bids(self.depth)}
        top.update({("sell", p): q for p, q in self.book.top_asks(self.depth)})
        return top

    def _checksum(self, msg: dict[str, Any]) -> int | None:
        if self.depth >= self.checksum_depth and "checksum" in msg:
            return int(msg["checksum"])
        n = min(self.depth, self.checksum_depth)
        return book_checksum(self.book.top_asks(n), self.book.top_bids(n))

    def _envelope(self, msg: dict[str, Any], type_: str, data: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: msg[k] for k in ("channel", "symbol", "epoch", "timestamp", "event_time") if k in msg
        }
        out.update(type=type_, seq=self.seq, data=data)
        cs = self._checksum(msg)
        if cs is not None:
            out["checksum"] = cs
        return out

    def snapshot(self, msg: dict[str, Any] | None = None) -> dict[str, Any]:
        """The view's current snapshot (``seq`` = its last update included)."""
        base = msg or {"channel": "l2", "symbol": self.symbol, "epoch": self.epoch}
        snap = self.book.snapshot(self.depth)
        return self._envelope(
            base, "l2_snapshot", {"bids": snap["bids"], "asks": snap["asks"], "depth": self.depth}
        )

    def on_message(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """Feed one full-depth message; returns the view's message or ``None``."""
        t = msg.get("type")
        epoch = msg.get("epoch")
        if t == "l2_snapshot":
            if epoch != self.epoch:
                self.seq = 0
                self.epoch = epoch
            self.book.load(msg["data"]["bids"], msg["data"]["asks"])
            return self.snapshot(msg)
        if t != "l2_update":
            return None
        if epoch != self.epoch:
            raise ValueError("l2_update of another epoch: feed a snapshot first")
        before = self._top()
        self.book.apply(msg["data"]["changes"])
        after = self._top()
        changes: list[list[str]] = []
        for (side, price), size in after.items():
            if before.get((side, price)) != size:
                changes.append([side, price, size])
        for side, price in before.keys() - after.keys():
            changes.append([side, price, "0"])
        if not changes:
            return None
        self.seq += 1
        return self._envelope(msg, "l2_update", {"changes": changes, "depth": self.depth})
