"""The cache writer's pure core: Kafka records in, Redis writes out (no I/O, no event loop).

It keeps the latest state per symbol in memory (L2 book, ticker, stats, candles, recent trades,
catalogue), built from the snapshot topic then the streams, and hands the I/O shell
(:mod:`storage.cache_writer`) a :class:`Writes` batch per flush. Between flushes, many updates to
one symbol's book collapse into one Redis write (conflation: Redis sees the book at most once
per Kafka batch, whatever the update rate).

The WebSocket resume window is the exception: every stream message goes into
``<prefix>:hist:<channel>:<symbol>`` in order (docs/internals.md). :func:`hist_action` decides,
from the last entry's ``(epoch, seq)``, whether a message is added, skipped (already there) or
starts a fresh window (new epoch, or a gap that would make the window lie about continuity).

Because the full state is in memory, a Redis that restarts empty is refilled by
:meth:`CacheModel.full_writes` without re-reading Kafka; a restarted writer rebuilds the memory
from the snapshot topic.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from core.book import L2Book
from core.cache_keys import RELATIVE, book_depths
from core.channels import DATA_CHANNELS, snapshot_key_channel
from core.codec import iso_from_ns
from core.symbols import SymbolInfo
from storage.errors import BadRecord
from storage.messages import Envelope, candle_of, levels_of, parse_envelope, trades_of

Pos = tuple[int, int]  # (epoch, seq)


class HistAction(Enum):
    ADD = "add"
    SKIP = "skip"
    RESET = "reset"  # delete the window, then add


def hist_action(last: Pos | None, epoch: int, seq: int) -> HistAction:
    """What to do with stream message ``(epoch, seq)`` given the window's last entry."""
    if last is None:
        return HistAction.ADD
    last_epoch, last_seq = last
    if epoch != last_epoch:
        return HistAction.RESET if epoch > last_epoch else HistAction.SKIP
    if seq <= last_seq:
        return HistAction.SKIP
    if seq == last_seq + 1:
        return HistAction.ADD
    return HistAction.RESET  # a gap: the window must not pretend to be contiguous


@dataclass
class BookState:
    book: L2Book = field(default_factory=L2Book)
    pos: Pos = (-1, -1)
    synced: bool = False
    timestamp: str = ""
    checksum: int | None = None


@dataclass
class Writes:
    """One flush worth of Redis writes, applied by the I/O shell in one pipeline."""

    # key suffix (``ticker:BTC-USD``, ``candle:1m:BTC-USD``...) -> body; the key is ``<prefix>:<suffix>``
    strings: dict[str, bytes] = field(default_factory=dict)
    books: dict[str, dict[str, bytes]] = field(default_factory=dict)  # symbol -> hash fields
    symbols: dict[str, bytes] = field(default_factory=dict)  # symbol -> catalogue JSON
    trades: dict[str, list[bytes]] = field(default_factory=dict)  # symbol -> new, oldest first
    trades_pos: dict[str, Pos] = field(default_factory=dict)
    trades_replace: set[str] = field(default_factory=set)  # symbols whose list is rewritten whole
    hist: list[tuple[str, str, int, int, bytes]] = field(
        default_factory=list
    )  # ch, sym, epoch, seq, raw

    def empty(self) -> bool:
        return not (self.strings or self.books or self.symbols or self.trades or self.hist)


@dataclass
class CacheCounters:
    records: int = 0
    bad_records: int = 0
    stale_dropped: int = 0
    book_gaps: int = 0
    unknown_keys: int = 0
    snapshot_skipped: int = 0  # redundant snapshot-topic records once the streams are followed


def _newer(pos: Pos, cur: Pos | None) -> bool:
    return cur is None or pos > cur


def _body(env: Envelope, extra: dict[str, Any]) -> bytes:
    """REST bodies: the payload fields plus the stream position they reflect."""
    out: dict[str, Any] = dict(extra)
    out["symbol"] = env.symbol
    out["seq"] = env.seq
    out["epoch"] = env.epoch
    out["timestamp"] = env.timestamp
    return orjson.dumps(out)


class CacheModel:
    def __init__(self, *, book_depth: int = 100, trades_len: int = 1000) -> None:
        if book_depth < 1 or trades_len < 1:
            raise ValueError("book_depth and trades_len must be >= 1")
        self.book_depth = book_depth
        self.depths = book_depths(book_depth)
        self.trades_len = trades_len
        self.books: dict[str, BookState] = {}
        # key suffix -> (pos, body): ticker:<sym>, stats:<sym>, candle:<iv>:<sym>, l3:<sym>
        self.latest: dict[str, tuple[Pos, bytes]] = {}
        self.catalogue: dict[str, tuple[Pos, bytes]] = {}
        self.recent: dict[str, deque[bytes]] = {}
        self.trades_pos: dict[str, Pos] = {}
        self.counters = CacheCounters()
        self._pending = Writes()
        self._dirty_books: set[str] = set()
        # once the streams are followed (:meth:`follow_streams`), the snapshot topic's records of
        # channels whose every message is a whole state (ticker, stats, candles) repeat what the
        # streams already brought: not parsed (about a third of this model's records at live rates)
        self._skip_snapshot_channels: frozenset[str] = frozenset()

    # --- input ---------------------------------------------------------------------------

    def on_snapshot_record(self, key: bytes | None, value: bytes | None) -> None:
        """A record of the compacted snapshot topic (key ``<channel>:<symbol>``)."""
        if value is None or key is None:
            return  # tombstone
        k = key.decode("utf-8", "replace")
        channel = snapshot_key_channel(k)
        if k.startswith("agg:") or not (channel in DATA_CHANNELS or channel == "status"):
            self.counters.unknown_keys += 1
            return
        if channel in self._skip_snapshot_channels:
            self.counters.snapshot_skipped += 1
            return
        self._on(value, from_stream=False)

    def follow_streams(self) -> None:
        """The streams are read from here on: snapshot records of the channels they carry whole
        are redundant. The book (``l2``: the resync point after a gap), ``l3`` (its snapshot is
        the only L3 state cached), ``trades`` (a new epoch's list) and ``status`` stay."""
        self._skip_snapshot_channels = frozenset(
            ch for ch in DATA_CHANNELS if ch in ("ticker", "stats") or ch.startswith("candles_")
        )

    def on_stream_record(self, value: bytes | None) -> None:
        if value is None:
            return
        self._on(value, from_stream=True)

    def _on(self, value: bytes, *, from_stream: bool) -> None:
        self.counters.records += 1
        try:
            env = parse_envelope(value)
            self._dispatch(env, from_stream)
        except (BadRecord, ValueError, KeyError, TypeError):
            self.counters.bad_records += 1

    def _dispatch(self, env: Envelope, from_stream: bool) -> None:
        ch = env.channel
        if from_stream and ch in DATA_CHANNELS:
            self._pending.hist.append((ch, env.symbol, env.epoch, env.seq, env.raw))
        t = env.type
        if ch == "l2" or t in ("l2_snapshot", "l2_update"):
            self._on_l2(env)
        elif t == "status" or ch == "status":
            self._on_status(env)
        elif ch == "ticker":
            self._latest(
                RELATIVE.ticker(env.symbol), env, env.data if isinstance(env.data, dict) else {}
            )
        elif ch == "stats":
            self._latest(
                RELATIVE.stats(env.symbol), env, env.data if isinstance(env.data, dict) else {}
            )
        elif ch.startswith("candles_") or t == "candle":
            c = candle_of(env)
            body = {
                "interval": c.interval,
                "start": iso_from_ns(c.bucket_ns),
                "open": c.open,
                "high": c.high,
                "low": c.low,
                "close": c.close,
                "volume": c.volume,
                "trades": c.trades,
                "closed": c.closed,
            }
            if isinstance(env.data, dict) and "end" in env.data:
                body["end"] = env.data["end"]
            if isinstance(env.data, dict) and "vwap" in env.data:
                body["vwap"] = env.data["vwap"]
            self._latest(RELATIVE.candle(c.interval, env.symbol), env, body)
        elif ch == "trades":
            self._on_trades(env)
        elif ch == "l3" and t == "l3_snapshot":
            d = env.data if isinstance(env.data, dict) else {}
            self._latest(RELATIVE.l3(env.symbol), env, {"level": 3, **d})
        # l3 updates: only the resume window (REST level=3 serves the latest l3 snapshot)

    def _latest(self, k: str, env: Envelope, payload: dict[str, Any]) -> None:
        cur = self.latest.get(k)
        if not _newer(env.pos, cur[0] if cur else None):
            self.counters.stale_dropped += 1
            return
        body = _body(env, payload)
        self.latest[k] = (env.pos, body)
        self._pending.strings[k] = body

    def _on_status(self, env: Envelope) -> None:
        if not isinstance(env.data, dict):
            raise BadRecord("status data is not an object")
        info = SymbolInfo.from_dict(env.data)  # validates the catalogue entry
        cur = self.catalogue.get(info.symbol)
        if not _newer(env.pos, cur[0] if cur else None):
            self.counters.stale_dropped += 1
            return
        body = orjson.dumps({**info.to_dict(), "state": env.data.get("state"), "seq": env.seq})
        self.catalogue[info.symbol] = (env.pos, body)
        self._pending.symbols[info.symbol] = body

    def _on_trades(self, env: Envelope) -> None:
        cur = self.trades_pos.get(env.symbol)
        if env.type == "trades_snapshot":
            # The last N trades as of ``seq``. Appending it to a list the stream already fed
            # would duplicate trades (snapshot and stream topics are not ordered with each other),
            # so it only seeds a symbol we know nothing of, or replaces a retired epoch's list.
            if cur is not None and env.epoch <= cur[0]:
                self.counters.stale_dropped += 1
                return
            new = [orjson.dumps(t.to_dict()) for t in trades_of(env)]
            self.trades_pos[env.symbol] = env.pos
            self.recent[env.symbol] = deque(new, maxlen=self.trades_len)
            self._pending.trades_replace.add(env.symbol)
            self._pending.trades[env.symbol] = list(self.recent[env.symbol])
            self._pending.trades_pos[env.symbol] = env.pos
            return
        if not _newer(env.pos, cur):
            self.counters.stale_dropped += 1
            return
        new = [orjson.dumps(t.to_dict()) for t in trades_of(env)]
        self.trades_pos[env.symbol] = env.pos
        dq = self.recent.setdefault(env.symbol, deque(maxlen=self.trades_len))
        dq.extend(new)
        self._pending.trades.setdefault(env.symbol, []).extend(new)
        self._pending.trades_pos[env.symbol] = env.pos

    def _on_l2(self, env: Envelope) -> None:
        st = self.books.setdefault(env.symbol, BookState())
        d = env.data if isinstance(env.data, dict) else {}
        if env.type == "l2_snapshot":
            if st.synced and env.pos <= st.pos:
                self.counters.stale_dropped += 1
                return
            st.book.load(levels_of(d.get("bids", []), "bids"), levels_of(d.get("asks", []), "asks"))
        elif env.type == "l2_update":
            if not st.synced or env.epoch != st.pos[0]:
                self.counters.stale_dropped += 1  # wait for a snapshot of this epoch
                return
            if env.seq <= st.pos[1]:
                self.counters.stale_dropped += 1
                return
            if env.seq != st.pos[1] + 1:
                st.synced = False
                self.counters.book_gaps += 1
                return
            changes = d.get("changes")
            if not isinstance(changes, list):
                raise BadRecord("l2_update without changes")
            st.book.apply(changes)
        else:
            return
        st.pos = env.pos
        st.synced = True
        st.timestamp = env.timestamp
        st.checksum = env.checksum
        self._dirty_books.add(env.symbol)

    # --- output --------------------------------------------------------------------------

    def _book_fields(self, symbol: str, st: BookState) -> dict[str, bytes]:
        bids = st.book.top_bids(self.book_depth)
        asks = st.book.top_asks(self.book_depth)
        fields: dict[str, bytes] = {
            "seq": str(st.pos[1]).encode(),
            "epoch": str(st.pos[0]).encode(),
        }
        for depth in self.depths:
            fields[f"d{depth}"] = orjson.dumps(
                {
                    "symbol": symbol,
                    "seq": st.pos[1],
                    "epoch": st.pos[0],
                    "timestamp": st.timestamp,
                    "checksum": st.checksum,
                    "depth": depth,
                    "bids": [[p, q] for p, q in bids[:depth]],
                    "asks": [[p, q] for p, q in asks[:depth]],
                }
            )
        return fields

    def take_writes(self) -> Writes:
        """The writes accumulated since the last call (books rendered once, here)."""
        w = self._pending
        for sym in self._dirty_books:
            st = self.books[sym]
            if st.synced:
                w.books[sym] = self._book_fields(sym, st)
        self._dirty_books.clear()
        self._pending = Writes()
        return w

    def full_writes(self) -> Writes:
        """Everything the model knows, to refill a Redis that lost its data (no hist)."""
        w = Writes()
        for sym, st in self.books.items():
            if st.synced:
                w.books[sym] = self._book_fields(sym, st)
        for k, (_, body) in self.latest.items():
            w.strings[k] = body
        for sym, (_, body) in self.catalogue.items():
            w.symbols[sym] = body
        for sym, dq in self.recent.items():
            w.trades[sym] = list(dq)
            w.trades_pos[sym] = self.trades_pos[sym]
            w.trades_replace.add(sym)
        return w
