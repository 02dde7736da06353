"""The FIX market-data application layer (FIX 4.4 Vol. 3 "Market Data"). Pure: no I/O, no clock.

Feed side (called by the server with what ``core.follower`` delivers): the catalogue from
``status`` messages (data = ``SymbolInfo.to_dict()``), an L2 mirror per symbol from the
``l2_snapshot`` / ``l2_update`` messages and the last trade from ``trade`` messages. Session
side: SecurityListRequest(x) -> SecurityList(y); MarketDataRequest(V) -> MarketDataSnapshot-
FullRefresh(W), MarketDataIncrementalRefresh(X) or MarketDataRequestReject(Y); any other
application message -> BusinessMessageReject(j) with BusinessRejectReason(380)=3; a request
missing a required tag or with a wrong NumInGroup -> session Reject(3) with its 373 reason.

Serialize once, send many: the repeating-group bytes of a W or X are built once per update and
per distinct (MarketDepth, MDEntryTypes) and framed for each session with its own MDReqID(262)
prefix (``codec.Body`` caches the byte sum, so only the per-session header is summed).

RptSeq(83) is the platform's ``seq``: on bid/offer entries the ``l2`` stream's, on trade
entries the ``trades`` stream's. In W it is a body field (the book's seq); in X it is in each
entry. A full-depth incremental subscriber sees RptSeq +1 per book update and can detect a gap
exactly like a WebSocket client; with MarketDepth N an update outside the top N sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Protocol

from core.book import L2Book
from core.errors import SymbolError
from core.symbols import normalize_symbol
from fix_gateway import tags as T
from fix_gateway.codec import Body, Message
from fix_gateway.errors import FieldError

log = logging.getLogger(__name__)

ENTRY_TYPES = frozenset({T.ENTRY_BID, T.ENTRY_OFFER, T.ENTRY_TRADE})
BOOK_TYPES = frozenset({T.ENTRY_BID, T.ENTRY_OFFER})
# MarketDepth above this is refused (281=5): a W of 1000 levels is ~40 KiB, the size where a
# FIX peer's buffers start to matter.
MAX_DEPTH = 1000
# Symbols per MarketDataRequest(V): bounds the work one request can cause.
MAX_SYMBOLS = 500
_MD_ENTRY_TYPE_MEMBERS = frozenset({T.MDEntryType})
_RELATED_SYM_MEMBERS = frozenset({T.Symbol, 65, 48, 22, 460, 461, 167, 107})
_SIDE_TYPE = {"buy": T.ENTRY_BID, "bid": T.ENTRY_BID, "sell": T.ENTRY_OFFER, "ask": T.ENTRY_OFFER}


class Sink(Protocol):
    """Where the application sends: a logged-on session (the server's connection)."""

    def send_app(self, msg_type: str, body: Body) -> None: ...

    def reject_message(self, msg: Message, error: FieldError) -> None:
        """Session-level Reject(3) of ``msg`` (a required tag missing, a bad NumInGroup...)."""
        ...


@dataclass(frozen=True, slots=True)
class Subscription:
    req_id: str
    symbols: tuple[str, ...]
    types: frozenset[str]
    depth: int  # 0 = full book
    incremental: bool  # MDUpdateType(265) 1; 0 = a full refresh on every change
    # derived once here, read per update and session by the fan-out (no set or tuple built there)
    view: tuple[int, frozenset[str]] = field(init=False)  # the X body's cache key
    books: bool = field(init=False)  # asks for bid or offer entries
    prefix: tuple[bytes, int] = field(init=False)  # MDReqID(262) field and its byte sum

    def __post_init__(self) -> None:
        object.__setattr__(self, "view", (self.depth, self.types))
        object.__setattr__(self, "books", bool(self.types & BOOK_TYPES))
        object.__setattr__(self, "prefix", _req_prefix(self.req_id))


@dataclass(slots=True)
class _Symbol:
    book: L2Book = field(default_factory=L2Book)
    synced: bool = False
    l2_seq: int = 0
    trade: dict[str, Any] | None = None
    trade_seq: int = 0
    views: dict[int, tuple[dict[str, str], dict[str, str]]] = field(default_factory=dict)
    w_cache: dict[tuple[int, frozenset[str]], Body] = field(default_factory=dict)


def _group(entries: list[bytes]) -> Body:
    return Body.of(b"268=%d\x01" % len(entries) + b"".join(entries))


@lru_cache(maxsize=4096)  # bound: live subscriptions' MDReqIDs; a miss only costs the encode
def _req_prefix(req_id: str) -> tuple[bytes, int]:
    prefix = f"262={req_id}\x01".encode("latin-1")
    return prefix, sum(prefix)


def _prefixed(req_id: str, body: Body) -> Body:
    """``body`` for one subscriber: its MDReqID(262) first (once per message per session)."""
    prefix, prefix_sum = _req_prefix(req_id)
    return Body(prefix + body.data, prefix_sum + body.byte_sum)


class MarketDataApp:
    """Shared by every session of a gateway process."""

    def __init__(self, *, symbols: Iterable[str] = ()) -> None:
        self.catalogue: dict[str, dict[str, Any]] = {}
        self._static = tuple(symbols)  # configured symbols, listed until the catalogue arrives
        self.syms: dict[str, _Symbol] = {}
        self.subs: dict[Sink, dict[str, Subscription]] = {}
        self.by_symbol: dict[str, dict[tuple[Sink, str], Subscription]] = {}
        # snapshot-only requests (263=0) for a symbol whose book is not synced yet
        self.pending: dict[str, list[tuple[Sink, Subscription]]] = {}
        self.security_list_id = 0
        # set by the gateway: bring a symbol nobody read up to date before its first W (the
        # follower keeps such symbols cold: core.follower.StreamJoin.interest)
        self.refresh: Callable[[str], None] | None = None
        self.counters: dict[str, int] = {
            "md_rejects": 0,
            "business_rejects": 0,
            "snapshots": 0,
            "incrementals": 0,
        }

    # ------------------------------------------------------------------ feed side
    def _sym(self, symbol: str) -> _Symbol:
        s = self.syms.get(symbol)
        if s is None:
            s = self.syms[symbol] = _Symbol()
        return s

    def known(self, symbol: str) -> bool:
        return (
            symbol in self.catalogue
            or symbol in self.syms
            or (not self.catalogue and symbol in self._static)
        )

    def reads(self, symbol: str) -> bool:
        """Whether a session subscribed to ``symbol`` or waits for its first snapshot."""
        return bool(self.by_symbol.get(symbol)) or symbol in self.pending

    def on_status(self, symbol: str, data: dict[str, Any]) -> None:
        """A ``status`` message (catalogue line: ``SymbolInfo.to_dict()`` + ``state``)."""
        self.catalogue[symbol] = data

    def on_l2_snapshot(
        self, symbol: str, seq: int, bids: Iterable[Iterable[str]], asks: Iterable[Iterable[str]]
    ) -> None:
        """The book was (re)based (first snapshot, gap, new epoch): every subscriber gets a W."""
        s = self._sym(symbol)
        s.book.load([tuple(b) for b in bids], [tuple(a) for a in asks])  # type: ignore[misc]
        s.synced = True
        s.l2_seq = seq
        s.views.clear()
        s.w_cache.clear()
        for (sink, _), sub in list(self.by_symbol.get(symbol, {}).items()):
            if sub.types & BOOK_TYPES or not sub.incremental:
                self._send_w(sink, sub, symbol)
        for sink, sub in self.pending.pop(symbol, []):
            if sink in self.subs:
                self._send_w(sink, sub, symbol)

    def on_l2_update(self, symbol: str, seq: int, changes: Iterable[Iterable[str]]) -> None:
        """An in-order ``l2_update``: X entries with MDUpdateAction new/change/delete."""
        s = self.syms.get(symbol)
        if s is None or not s.synced:
            return
        subs = self.by_symbol.get(symbol)
        book = s.book
        changes = [tuple(c) for c in changes]
        depths = (
            {sub.depth for sub in subs.values() if sub.incremental and sub.depth} if subs else set()
        )
        before = {d: self._top(book, d) for d in depths}
        full: list[tuple[str, str, str, str]] = []  # (action, type, price, size)
        for side, price, size in changes:
            etype = _SIDE_TYPE.get(side)
            try:
                px, sz = Decimal(price), Decimal(size)
            except (InvalidOperation, TypeError):
                etype = None
            if etype is None:
                log.warning(
                    "bad l2 change ignored", extra={"symbol": symbol, "change": [side, price, size]}
                )
                continue
            levels = book.bids if etype == T.ENTRY_BID else book.asks
            present = (-px if etype == T.ENTRY_BID else px) in levels
            try:
                book.set(side, price, size)
            except ValueError:
                log.warning(
                    "bad l2 change ignored", extra={"symbol": symbol, "change": [side, price, size]}
                )
                continue
            if sz == 0:
                # sent even when the level was absent (a no-op for the client), so that a
                # full-depth subscriber sees RptSeq(83) advance by exactly 1 per l2 message
                full.append((T.ACTION_DELETE, etype, price, "0"))
            else:
                full.append((T.ACTION_CHANGE if present else T.ACTION_NEW, etype, price, size))
        s.l2_seq = seq
        s.w_cache.clear()
        if not subs:
            return
        self._fan_out_book(symbol, s, subs, full, before)

    def _fan_out_book(
        self,
        symbol: str,
        s: _Symbol,
        subs: dict[tuple[Sink, str], Subscription],
        full: list[tuple[str, str, str, str]],
        before: dict[int, tuple[dict[str, str], dict[str, str]]],
    ) -> None:
        bodies: dict[tuple[int, frozenset[str]], Body | None] = {}
        sent = 0
        X = T.MARKET_DATA_INCREMENTAL
        for (sink, _), sub in list(subs.items()):
            if not sub.books:
                continue
            if not sub.incremental:
                self._send_w(sink, sub, symbol)
                continue
            key = sub.view
            if key in bodies:
                body = bodies[key]
            else:
                if sub.depth:
                    entries = self._diff(before[sub.depth], self._top(s.book, sub.depth))
                else:
                    entries = full
                body = bodies[key] = self._x_group(symbol, s.l2_seq, entries, sub.types)
            if body is not None:
                # the group's bytes and byte sum are shared; only the MDReqID prefix is per session
                prefix, prefix_sum = sub.prefix
                sink.send_app(X, Body(prefix + body[0], prefix_sum + body[1]))
                sent += 1
        self.counters["incrementals"] += sent

    @staticmethod
    def _top(book: L2Book, depth: int) -> tuple[dict[str, str], dict[str, str]]:
        return dict(book.top_bids(depth)), dict(book.top_asks(depth))

    @staticmethod
    def _diff(
        old: tuple[dict[str, str], dict[str, str]], new: tuple[dict[str, str], dict[str, str]]
    ) -> list[tuple[str, str, str, str]]:
        out: list[tuple[str, str, str, str]] = []
        for etype, o, n in ((T.ENTRY_BID, old[0], new[0]), (T.ENTRY_OFFER, old[1], new[1])):
            for px in o:
                if px not in n:
                    out.append((T.ACTION_DELETE, etype, px, "0"))
            for px, sz in n.items():
                was = o.get(px)
                if was is None:
                    out.append((T.ACTION_NEW, etype, px, sz))
                elif was != sz:
                    out.append((T.ACTION_CHANGE, etype, px, sz))
        return out

    @staticmethod
    def _x_group(
        symbol: str, seq: int, entries: list[tuple[str, str, str, str]], types: frozenset[str]
    ) -> Body | None:
        parts: list[bytes] = []
        for action, etype, px, sz in entries:
            if etype not in types:
                continue
            if action == T.ACTION_DELETE:
                parts.append(
                    f"279=2\x01269={etype}\x0155={symbol}\x01270={px}\x0183={seq}\x01".encode()
                )
            else:
                parts.append(
                    f"279={action}\x01269={etype}\x0155={symbol}\x01270={px}\x01271={sz}\x0183={seq}\x01".encode()
                )
        return _group(parts) if parts else None

    def on_trade(
        self, symbol: str, seq: int, trade: dict[str, Any], *, reset: bool = False
    ) -> None:
        """A ``trade`` message: an X entry MDEntryType(269)=2 for subscribers of trades."""
        s = self._sym(symbol)
        s.trade, s.trade_seq = trade, seq
        s.w_cache.clear()
        if reset:
            return
        subs = self.by_symbol.get(symbol)
        if not subs:
            return
        entry = (
            f"279=0\x01269=2\x0155={symbol}\x01270={trade['price']}\x01271={trade['size']}\x0183={seq}\x01"
        ).encode()
        group = _group([entry])
        for (sink, req_id), sub in list(subs.items()):
            if T.ENTRY_TRADE not in sub.types:
                continue
            if sub.incremental:
                sink.send_app(T.MARKET_DATA_INCREMENTAL, _prefixed(req_id, group))
                self.counters["incrementals"] += 1
            else:
                self._send_w(sink, sub, symbol)

    # ------------------------------------------------------------------ W
    def _w_body(self, symbol: str, depth: int, types: frozenset[str]) -> Body:
        s = self._sym(symbol)
        key = (depth, types)
        body = s.w_cache.get(key)
        if body is None:
            entries: list[bytes] = []
            n = depth or None
            if T.ENTRY_BID in types:
                entries += [
                    f"269=0\x01270={p}\x01271={q}\x01".encode() for p, q in s.book.top_bids(n)
                ]
            if T.ENTRY_OFFER in types:
                entries += [
                    f"269=1\x01270={p}\x01271={q}\x01".encode() for p, q in s.book.top_asks(n)
                ]
            if T.ENTRY_TRADE in types and s.trade is not None:
                entries.append(
                    f"269=2\x01270={s.trade['price']}\x01271={s.trade['size']}\x01".encode()
                )
            seq = s.l2_seq if types & BOOK_TYPES else s.trade_seq
            head = f"55={symbol}\x0183={seq}\x01".encode()
            body = s.w_cache[key] = Body.of(head + b"268=%d\x01" % len(entries) + b"".join(entries))
        return body

    def _send_w(self, sink: Sink, sub: Subscription, symbol: str) -> None:
        sink.send_app(
            T.MARKET_DATA_SNAPSHOT,
            _prefixed(sub.req_id, self._w_body(symbol, sub.depth, sub.types)),
        )
        self.counters["snapshots"] += 1

    def ready(self, symbol: str, types: frozenset[str]) -> bool:
        s = self.syms.get(symbol)
        if types & BOOK_TYPES:
            return s is not None and s.synced
        return True

    # ------------------------------------------------------------------ session side
    def drop_session(self, sink: Sink) -> None:
        for sym, waiting in list(self.pending.items()):
            self.pending[sym] = [(k, s) for k, s in waiting if k is not sink]
        for req_id, sub in self.subs.pop(sink, {}).items():
            for sym in sub.symbols:
                self.by_symbol.get(sym, {}).pop((sink, req_id), None)

    def on_message(self, sink: Sink, msg: Message) -> None:
        try:
            if msg.msg_type == T.MARKET_DATA_REQUEST:
                self._on_md_request(sink, msg)
            elif msg.msg_type == T.SECURITY_LIST_REQUEST:
                self._on_security_list_request(sink, msg)
            else:
                self._business_reject(sink, msg, 3, f"unsupported message type {msg.msg_type}")
        except FieldError as e:
            # what a dictionary-validating engine rejects at the session level (FIX 4.4 Vol. 2)
            sink.reject_message(msg, e)

    def _business_reject(self, sink: Sink, msg: Message, reason: int, text: str) -> None:
        fields: list[tuple[int, str | int]] = [
            (T.RefSeqNum, msg.get(T.MsgSeqNum) or "0"),
            (T.RefMsgType, msg.msg_type),
        ]
        ref = msg.get(T.MDReqID) or msg.get(T.SecurityReqID)
        if ref:
            fields.append((T.BusinessRejectRefID, ref))
        fields += [(T.BusinessRejectReason, reason), (T.Text, text[:200])]
        sink.send_app(T.BUSINESS_REJECT, Body.from_fields(fields))
        self.counters["business_rejects"] += 1

    def _md_reject(self, sink: Sink, req_id: str, reason: str | None, text: str) -> None:
        fields: list[tuple[int, str | int]] = [(T.MDReqID, req_id)]
        if reason is not None:
            fields.append((T.MDReqRejReason, reason))
        fields.append((T.Text, text[:200]))
        sink.send_app(T.MARKET_DATA_REQUEST_REJECT, Body.from_fields(fields))
        self.counters["md_rejects"] += 1

    def _unsubscribe(self, sink: Sink, req_id: str, mine: dict[str, Subscription]) -> None:
        """SubscriptionRequestType(263)=2: the subscription ``req_id`` of ``sink`` ends."""
        sub = mine.pop(req_id, None)
        if sub is None:
            self._md_reject(sink, req_id, None, f"no active subscription {req_id}")
            return
        for sym in sub.symbols:
            self.by_symbol.get(sym, {}).pop((sink, req_id), None)

    def _known_symbols(self, raw_syms: list[str]) -> tuple[list[str], str | None]:
        """The canonical symbols of a request, in order without repeats, or the first one that
        is malformed or not served (returned as the peer spelled it)."""
        symbols: list[str] = []
        for raw in raw_syms:
            try:
                sym = normalize_symbol(raw)
            except SymbolError:
                sym = ""
            if not sym or not self.known(sym):
                return symbols, raw
            if sym not in symbols:
                symbols.append(sym)
        return symbols, None

    def _on_md_request(self, sink: Sink, msg: Message) -> None:
        """MarketDataRequest(V): 262, 263 (0/1/2), 264, 265, 267 group of 269, 146 group of 55."""
        req_id = msg.require(T.MDReqID)
        srt = msg.require(T.SubscriptionRequestType)
        mine = self.subs.setdefault(sink, {})
        if srt == "2":
            self._unsubscribe(sink, req_id, mine)
            return
        if srt not in ("0", "1"):
            self._md_reject(
                sink,
                req_id,
                T.MDREJ_UNSUPPORTED_SUBSCRIPTION,
                f"SubscriptionRequestType {srt} not supported",
            )
            return
        if req_id in mine:
            self._md_reject(sink, req_id, T.MDREJ_DUPLICATE_ID, f"duplicate MDReqID {req_id}")
            return
        depth_raw = msg.require(T.MarketDepth)
        if (
            not (depth_raw.isascii() and depth_raw.isdigit() and len(depth_raw) <= 9)
            or int(depth_raw) > MAX_DEPTH
        ):
            self._md_reject(
                sink,
                req_id,
                T.MDREJ_UNSUPPORTED_DEPTH,
                f"MarketDepth {depth_raw} not supported (0..{MAX_DEPTH})",
            )
            return
        depth = int(depth_raw)
        upd = msg.get(T.MDUpdateType, "1")
        if upd not in ("0", "1"):
            self._md_reject(
                sink, req_id, T.MDREJ_UNSUPPORTED_UPDATE_TYPE, f"MDUpdateType {upd} not supported"
            )
            return
        if msg.get(T.AggregatedBook, "Y") != "Y":
            self._md_reject(sink, req_id, "7", "only aggregated books (AggregatedBook=Y)")
            return
        types_raw = [
            e.get(T.MDEntryType, "") for e in msg.group(T.NoMDEntryTypes, _MD_ENTRY_TYPE_MEMBERS)
        ]
        bad = [t for t in types_raw if t not in ENTRY_TYPES]
        if not types_raw or bad:
            self._md_reject(
                sink,
                req_id,
                T.MDREJ_UNSUPPORTED_ENTRY_TYPE,
                f"MDEntryType {','.join(bad) or 'missing'} not supported (0 bid, 1 offer, 2 trade)",
            )
            return
        raw_syms = [e.get(T.Symbol, "") for e in msg.group(T.NoRelatedSym, _RELATED_SYM_MEMBERS)]
        if not raw_syms or len(raw_syms) > MAX_SYMBOLS:
            self._md_reject(
                sink, req_id, T.MDREJ_UNKNOWN_SYMBOL, f"1..{MAX_SYMBOLS} symbols per request"
            )
            return
        symbols, unknown = self._known_symbols(raw_syms)
        if unknown is not None:
            self._md_reject(sink, req_id, T.MDREJ_UNKNOWN_SYMBOL, f"unknown symbol {unknown}")
            return
        sub = Subscription(req_id, tuple(symbols), frozenset(types_raw), depth, upd == "1")
        self._warm(symbols)
        if srt == "1":
            mine[req_id] = sub
            for sym in symbols:
                self.by_symbol.setdefault(sym, {})[(sink, req_id)] = sub
        for sym in symbols:
            if self.ready(sym, sub.types):
                self._send_w(sink, sub, sym)
            elif srt == "0":
                self.pending.setdefault(sym, []).append((sink, sub))
            # else: the W goes out from on_l2_snapshot when the book is first synced

    def _warm(self, symbols: list[str]) -> None:
        if self.refresh is not None:
            for sym in symbols:
                if not self.reads(sym):
                    self.refresh(sym)

    def _on_security_list_request(self, sink: Sink, msg: Message) -> None:
        """SecurityListRequest(x): 320, 559 (0 = one Symbol(55), 4 = all) -> SecurityList(y)."""
        req_id = msg.require(T.SecurityReqID)
        kind = msg.require(T.SecurityListRequestType)
        self.security_list_id += 1
        resp_id = f"SL{self.security_list_id}"
        names = sorted(self.catalogue) or sorted(set(self._static) | set(self.syms))
        if kind == "0":
            try:
                want = normalize_symbol(msg.require(T.Symbol))
            except SymbolError:
                want = ""
            names = [n for n in names if n == want]
        elif kind != "4":
            fields: list[tuple[int, str | int]] = [
                (T.SecurityReqID, req_id),
                (T.SecurityResponseID, resp_id),
                (T.SecurityRequestResult, 5),
                (T.Text, "SecurityListRequestType 0 (symbol) and 4 (all) are supported"),
            ]
            sink.send_app(T.SECURITY_LIST, Body.from_fields(fields))
            return
        fields = [
            (T.SecurityReqID, req_id),
            (T.SecurityResponseID, resp_id),
            (T.SecurityRequestResult, 0 if names else 2),
        ]
        if names:
            fields += [
                (T.TotNoRelatedSym, len(names)),
                (T.LastFragment, "Y"),
                (T.NoRelatedSym, len(names)),
            ]
            for n in names:
                info = self.catalogue.get(n, {})
                base, _, quote = n.partition("-")
                fields += [
                    (T.Symbol, n),
                    (T.SecurityDesc, f"{info.get('base', base)}/{info.get('quote', quote)} spot"),
                ]
                fields.append((T.Currency, str(info.get("quote", quote))))
                if info.get("min_size"):
                    fields.append((T.MinTradeVol, str(info["min_size"])))
                text = (
                    f"tick_size={info.get('tick_size', '')};status={info.get('status', 'unknown')}"
                )
                fields.append((T.Text, text))
        sink.send_app(T.SECURITY_LIST, Body.from_fields(fields))
