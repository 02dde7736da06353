"""Per-symbol derivation: input events in, client-ready data messages out. Pure, synchronous.

``SymbolState.apply(event)`` mutates the book and the derived state and queues what changed;
``SymbolState.flush(publish_ns)`` turns the queue into messages, each with the next ``seq`` of
its ``(channel, symbol)``. The service calls ``flush`` once per consumed batch, so under load
one ``l2_update``/``l3_update``/``ticker``/``stats``/candle update covers many events
(conflation by batch, like Coinbase's ``level2_batch``), while ``trade`` messages are one per
match and the final candle of a bucket is always its own message.

Everything a restarted aggregator needs to continue with the same ``seq`` lives in
:meth:`to_state`. The book, the 24h window, the candles and the stats windows are a pure
function of the input *events* (never of how they were batched, and never of the wall clock),
so state checkpointed at input offset O plus a silent replay of the events after O gives the
same state as the crashed instance had; only the ``seq`` counters depend on batching and they
are recorded in every transaction (see ``aggregator/service.py``).

The derived parts with state of their own live in their modules, each with its save/restore:
:mod:`aggregator.candles` (buckets of every interval), :mod:`aggregator.day_window` (24h),
:mod:`aggregator.stats_window` (mid/spread/VWAP windows). This class keeps the book, the trades,
the sequence numbers and the messages.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from aggregator import events as ev
from aggregator.book import Book, fmt
from aggregator.candles import CandleSeries, q8
from aggregator.day_window import DayWindow
from aggregator.stats_window import StatsWindows
from core.channels import data_message, snapshot_key
from core.checksum import book_checksum
from core.codec import iso_from_ns
from core.messages import (
    L3Op,
    Message,
    MessageType,
    StatsData,
    StatusData,
    TickerData,
    TradeData,
)
from core.symbols import SymbolInfo, default_info

Out = tuple[str, Message]  # (channel, message)


@dataclass(frozen=True, kw_only=True)
class AggConfig:
    """Tunables of the derivation (``MD_AGG_*``; see docs/aggregator.md)."""

    checksum_depth: int = 10
    # trades kept in the ``trades:<symbol>`` snapshot (bounded: ~150 B each)
    trades_snapshot_n: int = 100
    # stats windows: mid moving average over the last N top-of-book changes, VWAP over N trades
    stats_mid_window: int = 10
    stats_vwap_window: int = 200
    # open candles of 5m and longer are republished at most once per this much *event* time
    # (1m: every record with a trade; all: when they close): a trade no longer costs six
    # candle messages; event time keeps the output a function of the input
    # (docs/aggregator.md "candle")
    candle_update_ms: int = 1000


class SymbolState:
    """All derived state of one symbol. See the module docstring for the contract."""

    def __init__(self, symbol: str, epoch: int, cfg: AggConfig | None = None) -> None:
        self.symbol = symbol
        self.epoch = epoch
        self.cfg = cfg or AggConfig()
        self.book = Book()
        self.seq: dict[str, int] = {}
        self.info: SymbolInfo | None = None
        # the last source switch: {"source_reason": why, "previous_source": from} (status data)
        self.switch: dict[str, str] | None = None
        self.l2_only = False
        self.last_ts = 0  # event time of the last applied event
        # pending outputs since the last flush
        self._l3_ops: list[L3Op] = []
        self._trades: list[TradeData] = []
        self._status_dirty = False
        self._book_dirty = False
        self._trade_dirty = False
        self._top_dirty = False
        # trades snapshot / last trade
        self.recent_trades: deque[TradeData] = deque(maxlen=self.cfg.trades_snapshot_n)
        self.day = DayWindow()
        self.candles = CandleSeries()
        self.stats = StatsWindows(self.cfg.stats_mid_window, self.cfg.stats_vwap_window)
        # last published ticker/stats data, to publish only changes
        self.last_ticker: TickerData | None = None
        self.last_stats: StatsData | None = None

    # ------------------------------------------------------------------ input
    def apply(self, e: ev.AnyEvent) -> None:
        """Apply one validated event. Inconsistent events (unknown order ids) are no-ops."""
        ts = e.ts
        if ts > self.last_ts:
            self.last_ts = ts
        if self.candles.next_close and ts >= self.candles.next_close:
            self.candles.close(ts)
        _APPLY[type(e)](self, e)

    def _on_open(self, e: ev.Open) -> None:
        if self.l2_only:
            return  # an L2-only book has no orders; a ``reset`` switches back to order level
        if self.book.add(e.order_id, e.side, e.price, e.px, e.qty):
            if not self.l2_only:
                self._l3_ops.append(
                    {
                        "op": "add",
                        "order_id": e.order_id,
                        "side": e.side,
                        "price": e.price,
                        "size": e.size,
                    }
                )
            self._book_changed()

    def _on_match(self, e: ev.Match) -> None:
        resting = None if self.l2_only else self.book.orders.get(e.maker_order_id)
        if resting is not None:
            before = resting.size
            o = self.book.fill(e.maker_order_id, e.qty)
            assert o is not None
            # an overfill (a feed out of sync) fills what rests, so l3 clients stay consistent
            filled = e.size if e.qty <= before else fmt(before)
            self._l3(
                {
                    "op": "fill",
                    "order_id": o.order_id,
                    "side": o.side,
                    "price": o.price,
                    "size": filled,
                    "remaining": fmt(o.size),
                    "trade_id": e.trade_id,
                }
            )
            self._book_changed()
        self._trade(
            e.trade_id,
            e.taker_side,
            e.price,
            e.px,
            e.size,
            e.qty,
            e.ts,
            e.maker_order_id,
            e.taker_order_id,
        )

    def _on_done(self, e: ev.Done) -> None:
        o = self.book.remove(e.order_id)
        if o is not None:
            if not self.l2_only:
                self._l3_ops.append(
                    {
                        "op": "delete",
                        "order_id": o.order_id,
                        "side": o.side,
                        "price": o.price,
                        "reason": e.reason,
                    }
                )
            self._book_changed()

    def _on_change(self, e: ev.Change) -> None:
        o = self.book.set_size(e.order_id, e.qty)
        if o is not None:
            if e.qty > 0:
                self._l3(
                    {
                        "op": "change",
                        "order_id": o.order_id,
                        "side": o.side,
                        "price": o.price,
                        "size": fmt(o.size),
                    }
                )
            else:
                self._l3(
                    {
                        "op": "delete",
                        "order_id": o.order_id,
                        "side": o.side,
                        "price": o.price,
                        "reason": "canceled",
                    }
                )
            self._book_changed()

    def _on_book_update(self, e: ev.BookUpdate) -> None:
        self._go_l2_only()
        book = self.book
        for side, price, px, _s, qty in e.changes:
            book.set_level(side, price, px, qty)
        self._book_changed()

    def _on_book_snapshot(self, e: ev.BookSnapshot) -> None:
        self._go_l2_only()
        book = self.book
        book.clear()
        for price, px, _s, qty in e.bids:
            book.set_level("buy", price, px, qty)
        for price, px, _s, qty in e.asks:
            book.set_level("sell", price, px, qty)
        self._book_changed()

    def _on_trade(self, e: ev.Trade) -> None:
        self._trade(e.trade_id, e.taker_side, e.price, e.px, e.size, e.qty, e.ts, None, None)

    def _on_symbol_info(self, e: ev.SymbolInfoEvent) -> None:
        info = e.info
        if self.l2_only and "l3" in info.channels:
            info = _without_l3(info)
        old = self.info.source if self.info is not None else None
        if e.reason is not None or (old is not None and info.source != old):
            # a source switch (the failover says why): the next status names it
            self.switch = {"source_reason": e.reason or "changed"}
            if old is not None:
                self.switch["previous_source"] = old
            self._status_dirty = True
        if info != self.info:
            self.info = info
            self._status_dirty = True

    def _on_reset(self, e: ev.Reset) -> None:
        if self.l2_only:
            self.l2_only = False
            if self.info is not None:
                self._status_dirty = True  # state goes back to "live"
        book = self.book
        if book.orders or book.bids or book.asks:
            for o in list(book.orders.values()):
                self._l3(
                    {
                        "op": "delete",
                        "order_id": o.order_id,
                        "side": o.side,
                        "price": o.price,
                        "reason": "reset",
                    }
                )
            book.clear()
            self._book_changed()

    def _l3(self, op: L3Op) -> None:
        if not self.l2_only:
            self._l3_ops.append(op)

    def _go_l2_only(self) -> None:
        """Level events switch the symbol to L2-only until a ``reset``: resting orders of an
        order-level feed cannot be combined with levels, so they are removed (published)."""
        if not self.l2_only:
            if self.book.orders:
                for o in list(self.book.orders.values()):
                    self._l3(
                        {
                            "op": "delete",
                            "order_id": o.order_id,
                            "side": o.side,
                            "price": o.price,
                            "reason": "reset",
                        }
                    )
                self.book.clear()
            self.l2_only = True
            if self.info is not None and "l3" in self.info.channels:
                self.info = _without_l3(self.info)
                self._status_dirty = True

    def _book_changed(self) -> None:
        self._book_dirty = True
        self._top_dirty = True  # sizes at the top may have changed (ticker), even with a side empty
        bids, asks = self.book.bids, self.book.asks
        if not bids or not asks:
            return
        # first keys without SortedDict.peekitem's bounds/index machinery (hot path)
        self.stats.on_top((-bids._list._lists[0][0], asks._list._lists[0][0]))  # type: ignore[attr-defined]

    def _trade(
        self,
        trade_id: str,
        side: Any,
        price: str,
        px: Decimal,
        size: str,
        qty: Decimal,
        ts: int,
        maker: str | None,
        taker: str | None,
    ) -> None:
        t: TradeData = {
            "trade_id": trade_id,
            "price": price,
            "size": size,
            "side": side,
            "time": iso_from_ns(ts),
        }
        if maker is not None:
            t["maker_order_id"] = maker
            t["taker_order_id"] = cast(str, taker)
        self._trades.append(t)
        self.recent_trades.append(t)
        self._trade_dirty = True
        self.day.add(ts, px, qty)
        self.candles.add(ts, px, qty)
        self.stats.on_trade(px, qty)

    # ------------------------------------------------------------------ output
    def _next(self, channel: str) -> int:
        n = self.seq.get(channel, 0) + 1
        self.seq[channel] = n
        return n

    def _msg(
        self,
        type_: MessageType,
        channel: str,
        now: int,
        data: Any,
        checksum: int | None = None,
        event_ns: int | None = None,
    ) -> Out:
        return channel, data_message(
            type=type_,
            channel=channel,
            symbol=self.symbol,
            seq=self._next(channel),
            epoch=self.epoch,
            publish_ns=now,
            event_ns=event_ns or self.last_ts,
            data=data,
            checksum=checksum,
        )

    def flush(self, now: int) -> list[Out]:
        """Messages for everything applied since the last flush, in a stable channel order."""
        out: list[Out] = []
        self._flush(now, out)
        return out

    def discard(self) -> None:
        """Drop pending outputs (silent replay during recovery, a standby's record that the
        leader already published) but keep ``seq`` and ``last_*`` current: the same decisions
        as :meth:`flush`, without building a message or a book checksum. A standby discards
        nearly every record, and those two were most of what it spent on one (issue 10)."""
        self._flush(0, None)

    def _put(
        self,
        out: list[Out] | None,
        type_: MessageType,
        channel: str,
        now: int,
        data: Any,
        checksum: int | None = None,
    ) -> None:
        if out is None:
            self._next(channel)  # discarded: its seq is spent all the same
        else:
            out.append(self._msg(type_, channel, now, data, checksum))

    def _flush(self, now: int, out: list[Out] | None) -> None:
        """Every output decision, once for both :meth:`flush` and :meth:`discard` (``out`` None):
        one code path is what keeps a standby's ``seq`` equal to the leader's."""
        put = self._put
        if self._status_dirty:
            self._status_dirty = False
            put(out, "status", "status", now, self.status_data())
        self._flush_book(now, out)
        if self._trades:
            for t in self._trades:
                put(out, "trade", "trades", now, t)
            self._trades = []
        for name, data in self.candles.take_closed():
            put(out, "candle", f"candles_{name}", now, data)
        for name, data in self.candles.take_updates(self.last_ts, self.cfg.candle_update_ms):
            put(out, "candle", f"candles_{name}", now, data)
        if self._top_dirty or self._trade_dirty:
            tick = self.ticker_data()
            if tick != self.last_ticker:
                self.last_ticker = tick
                put(out, "ticker", "ticker", now, tick)
        if self._top_dirty or self._trade_dirty:
            st = self.stats_data()
            # remember "no stats" too (a side of the book emptied): otherwise the memory would
            # depend on how events were batched into flushes, and a silent replay after a
            # takeover would suppress or repeat a different stats message than the old owner
            if st != self.last_stats:
                self.last_stats = st
                if st is not None:
                    put(out, "stats", "stats", now, st)
        self._top_dirty = self._trade_dirty = False

    def _flush_book(self, now: int, out: list[Out] | None) -> None:
        """The ``l2_update`` and ``l3_update`` since the last flush (one checksum for both;
        none when discarding)."""
        build = out is not None
        csum: int | None = None
        if self._book_dirty:
            self._book_dirty = False
            changes = self.book.take_l2_changes()
            if changes:
                if build:
                    csum = self.book.checksum(self.cfg.checksum_depth)
                self._put(out, "l2_update", "l2", now, {"changes": changes}, csum)
        if self._l3_ops:
            l3_csum: int | None = None
            if build and self.l2_only:  # the last l3 message turned L2-only: all orders gone
                l3_csum = book_checksum([], [])
            elif build:
                l3_csum = csum if csum is not None else self.book.checksum(self.cfg.checksum_depth)
            self._put(out, "l3_update", "l3", now, {"events": self._l3_ops}, l3_csum)
            self._l3_ops = []

    # ------------------------------------------------------------------ data shapes
    def status_data(self) -> StatusData:
        info = self.info or default_info(self.symbol, source="unknown")
        d = info.to_dict()
        d["state"] = "l2_only" if self.l2_only else "live"
        if self.switch is not None:
            d.update(self.switch)
        return cast(StatusData, d)

    def ticker_data(self) -> TickerData:
        bb, ba = self.book.best("buy"), self.book.best("sell")
        last = self.recent_trades[-1] if self.recent_trades else None
        day = self.day
        open_ = day.first_open()
        if open_ is not None and day.high is not None and day.low is not None:
            chg = self.stats.last_px - open_
            open_24h: str | None = fmt(open_)
            high_24h: str | None = fmt(day.high)
            low_24h: str | None = fmt(day.low)
            volume_24h = fmt(day.volume)
            change_24h: str | None = fmt(chg)
            change_pct_24h: str | None = q8(chg * 100 / open_)
        else:
            open_24h = high_24h = low_24h = change_24h = change_pct_24h = None
            volume_24h = "0"
        return {
            "best_bid": bb.price if bb else None,
            "best_bid_size": bb.size_text() if bb else None,
            "best_ask": ba.price if ba else None,
            "best_ask_size": ba.size_text() if ba else None,
            "last_price": last["price"] if last else None,
            "last_size": last["size"] if last else None,
            "last_side": last["side"] if last else None,
            "last_trade_id": last["trade_id"] if last else None,
            "open_24h": open_24h,
            "high_24h": high_24h,
            "low_24h": low_24h,
            "volume_24h": volume_24h,
            "change_24h": change_24h,
            "change_pct_24h": change_pct_24h,
        }

    def stats_data(self) -> StatsData | None:
        return self.stats.data(self.book)

    # ------------------------------------------------------------------ snapshots
    def snapshots(self, now: int) -> list[tuple[str, Message]]:
        """``(key, message)`` for the compacted snapshot topic; each ``seq`` is the stream's last."""
        sym = self.symbol
        out: list[tuple[str, Message]] = []

        def snap(
            type_: MessageType, channel: str, data: Any, checksum: int | None = None
        ) -> Message:
            return data_message(
                type=type_,
                channel=channel,
                symbol=sym,
                seq=self.seq.get(channel, 0),
                epoch=self.epoch,
                publish_ns=now,
                event_ns=self.last_ts,
                data=data,
                checksum=checksum,
            )

        csum = self.book.checksum(self.cfg.checksum_depth)
        out.append(
            (snapshot_key("l2", sym), snap("l2_snapshot", "l2", self.book.l2_snapshot(), csum))
        )
        if not self.l2_only:
            out.append(
                (snapshot_key("l3", sym), snap("l3_snapshot", "l3", self.book.l3_snapshot(), csum))
            )
        out.append(
            (
                snapshot_key("ticker", sym),
                snap("ticker", "ticker", self.last_ticker or self.ticker_data()),
            )
        )
        st = self.last_stats or self.stats_data()
        if st is not None:
            out.append((snapshot_key("stats", sym), snap("stats", "stats", st)))
        out.append(
            (
                snapshot_key("trades", sym),
                snap("trades_snapshot", "trades", {"trades": list(self.recent_trades)}),
            )
        )
        for name, data in self.candles.snapshot():
            ch = f"candles_{name}"
            out.append((snapshot_key(ch, sym), snap("candle", ch, data)))
        return out

    def status_snapshot(self, now: int) -> tuple[str, Message]:
        return snapshot_key("status", self.symbol), data_message(
            type="status",
            channel="status",
            symbol=self.symbol,
            seq=self.seq.get("status", 0),
            epoch=self.epoch,
            publish_ns=now,
            event_ns=self.last_ts,
            data=self.status_data(),
        )

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        candles = self.candles.to_state()
        stats = self.stats.to_state()
        return {  # the key order is the checkpoint's byte layout: keep it
            "v": 1,
            "symbol": self.symbol,
            "epoch": self.epoch,
            "seq": dict(self.seq),
            "info": self.info.to_dict() if self.info else None,
            "l2_only": self.l2_only,
            "last_ts": self.last_ts,
            "book": self.book.to_state(),
            "recent_trades": list(self.recent_trades),
            "day": self.day.to_state(),
            "candles": candles["candles"],
            "last_closed": candles["last_closed"],
            "last_top": stats["last_top"],
            "mids": stats["mids"],
            "vw": stats["vw"],
            # any further state of the stats windows (their own save/restore decides what)
            **{k: v for k, v in stats.items() if k not in ("last_top", "mids", "vw")},
            "last_ticker": self.last_ticker,
            "last_stats": self.last_stats,
            "candle_dirty": candles["candle_dirty"],
            "candle_pub": candles["candle_pub"],
            # only once a source switch happened: checkpoints without one keep their layout
            **({"switch": self.switch} if self.switch is not None else {}),
        }

    @classmethod
    def from_state(cls, st: dict[str, Any], cfg: AggConfig | None = None) -> SymbolState:
        s = cls(st["symbol"], int(st["epoch"]), cfg)
        s.seq = {k: int(v) for k, v in st["seq"].items()}
        s.info = SymbolInfo.from_dict(st["info"]) if st.get("info") else None
        s.switch = dict(st["switch"]) if st.get("switch") else None
        s.l2_only = bool(st["l2_only"])
        s.last_ts = int(st["last_ts"])
        s.book = Book.from_state(st["book"])
        s.recent_trades.extend(st["recent_trades"])
        s.day = DayWindow.from_state(st["day"])
        s.candles = CandleSeries.from_state(st)
        last_px = Decimal(s.recent_trades[-1]["price"]) if s.recent_trades else s.stats.last_px
        s.stats.restore(st, last_px)
        s.last_ticker = st.get("last_ticker")
        s.last_stats = st.get("last_stats")
        return s


_APPLY: dict[type, Any] = {
    ev.Open: SymbolState._on_open,
    ev.Match: SymbolState._on_match,
    ev.Done: SymbolState._on_done,
    ev.Change: SymbolState._on_change,
    ev.BookUpdate: SymbolState._on_book_update,
    ev.BookSnapshot: SymbolState._on_book_snapshot,
    ev.Trade: SymbolState._on_trade,
    ev.SymbolInfoEvent: SymbolState._on_symbol_info,
    ev.Reset: SymbolState._on_reset,
}


def _without_l3(info: SymbolInfo) -> SymbolInfo:
    from dataclasses import replace

    return replace(info, channels=tuple(c for c in info.channels if c != "l3"))
