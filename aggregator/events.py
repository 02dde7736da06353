"""The ``<prefix>.in`` input event schema: what every source publishes and the aggregator reads.

Sources only normalize; they never derive. Every record on the input topic is keyed by the
canonical symbol (UTF-8) and its value is one JSON object::

    {"type": <event type>, "symbol": "BTC-USD", "ts": <event time, int ns since epoch>,
     "source": "simulator", "src_seq": 1234 | null, ...type-specific fields}

Order-level events follow Coinbase Exchange's ``full`` channel (an order's life is
``open`` -> ``change``* -> ``done``, with ``match`` between a resting maker and a taker), so the
aggregator's L3 book is the exchange's book, not an invented one:

=================  ===========================================================================
``open``           ``order_id``, ``side`` (buy|sell), ``price``, ``size`` (remaining, > 0): the
                   order now rests on the book, last in time priority at its price.
``change``         ``order_id``, ``side``, ``price``, ``new_size`` (> 0): a resting order's
                   remaining size changed in place (keeps priority, like Coinbase ``change``).
``done``           ``order_id``, ``side``, ``reason`` (filled|canceled), ``price``/
                   ``remaining_size`` optional: the order left the book (no-op when unknown:
                   takers that never rested get a ``done`` too).
``match``          ``trade_id``, ``maker_order_id``, ``taker_order_id``, ``taker_side``
                   (buy|sell, the aggressor; *not* Coinbase's maker ``side``), ``price``,
                   ``size``: reduces the maker's remaining size; a trade.
=================  ===========================================================================

L2-only sources (no order ids, e.g. Coinbase ``level2``) send instead:

=================  ===========================================================================
``book_snapshot``  ``bids``/``asks``: ``[[price, size], ...]``; replaces the symbol's book
                   (the aggregator publishes the difference as an ordinary ``l2_update``, so a
                   source resync never breaks the output stream).
``book_update``    ``changes``: ``[[side, price, size], ...]``, size ``"0"`` removes the level.
``trade``          ``trade_id``, ``taker_side``, ``price``, ``size``.
=================  ===========================================================================

Control events:

=================  ===========================================================================
``symbol_info``    ``info``: ``core.symbols.SymbolInfo.to_dict()``; the catalogue flows from the
                   sources (tick size, status, which channels exist for the symbol).
``reset``          ``reason``: the source lost its state for the symbol (restart, resync of an
                   order-level feed); the aggregator empties the book, publishing the removals.
=================  ===========================================================================

A record may also hold a JSON array of such objects, all of one symbol: the events of one
upstream action (an aggressive order and the matches and ``done``s it caused, one Coinbase
``l2update``). The aggregator applies them together and publishes one message per channel for
them: the record is its conflation unit, which keeps its output a function of the input log
alone (docs/aggregator.md "Sequencer and failover"). An invalid element drops the whole record.

Prices and sizes are decimal strings (never floats), kept exactly as sent: the strings flow
through to the published levels and therefore into the checksums. A value that is not a valid
event raises :class:`EventError`; the aggregator counts it and drops it, it never crashes on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from core.errors import CodecError, SymbolError
from core.symbols import SymbolInfo, normalize_symbol

SIDES = frozenset(("buy", "sell"))
DONE_REASONS = frozenset(("filled", "canceled"))


class EventError(CodecError):
    """An input record that is not a valid event (permanent: drop and count)."""

    def __init__(self, reason: str, raw: object = None) -> None:
        self.reason = reason
        self.raw = raw
        super().__init__(reason)

    def __str__(self) -> str:
        raw = repr(self.raw)
        return f"{self.reason}: {raw[:200]}" if self.raw is not None else self.reason


# Parsed decimals by string. Prices sit on a tick grid and sizes repeat, so most lookups hit;
# a dict lookup is ~5x cheaper than Decimal(str). Bounded: cleared when full (~100k entries,
# ~15 MB at worst), so a feed of random numbers cannot grow it without limit.
_DEC_CACHE: dict[str, Decimal] = {}
_DEC_CACHE_MAX = 100_000


def _dec(v: object, field: str) -> Decimal:
    """A finite, non-negative decimal from a string (cached); raises :class:`EventError`."""
    if type(v) is str:
        d = _DEC_CACHE.get(v)
        if d is not None:
            return d
    if not isinstance(v, str):
        raise EventError(f"{field} must be a decimal string", v)
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise EventError(f"{field} is not a decimal", v) from None
    if not d.is_finite() or d < 0:
        raise EventError(f"{field} must be finite and >= 0", v)
    if d and (d.adjusted() > 15 or d.as_tuple().exponent < -18):  # type: ignore[operator]
        # keeps every later sum/product far inside the decimal context: no Overflow mid-update
        raise EventError(f"{field} out of range (1e-18 .. 1e15)", v)
    if len(_DEC_CACHE) >= _DEC_CACHE_MAX:
        _DEC_CACHE.clear()
    _DEC_CACHE[v] = d
    return d


def _price(v: object, field: str) -> tuple[str, Decimal]:
    d = _dec(v, field)
    if d <= 0:
        raise EventError(f"{field} must be > 0", v)
    return v, d  # type: ignore[return-value]


def _size(v: object, field: str, *, allow_zero: bool) -> tuple[str, Decimal]:
    d = _dec(v, field)
    if d == 0 and not allow_zero:
        raise EventError(f"{field} must be > 0", v)
    return v, d  # type: ignore[return-value]


def _side(v: object, field: str = "side") -> str:
    if v not in SIDES:
        raise EventError(f"{field} must be buy or sell", v)
    return v


def _id(v: object, field: str) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str) or not v or len(v) > 128:
        raise EventError(f"{field} must be a non-empty string", v)
    return v


@dataclass(slots=True)
class Event:
    """Fields common to every event; subclasses add theirs. ``ts`` is event time in ns."""

    symbol: str
    ts: int
    source: str
    src_seq: int | None

    type = "event"

    def _body(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type,
            "symbol": self.symbol,
            "ts": self.ts,
            "source": self.source,
            "src_seq": self.src_seq,
        }
        d.update(self._body())
        return d


@dataclass(slots=True)
class Open(Event):
    order_id: str
    side: str
    price: str
    px: Decimal
    size: str
    qty: Decimal
    type = "open"

    def _body(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "side": self.side,
            "price": self.price,
            "size": self.size,
        }


@dataclass(slots=True)
class Change(Event):
    order_id: str
    side: str
    price: str | None
    new_size: str
    qty: Decimal
    type = "change"

    def _body(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "side": self.side,
            "price": self.price,
            "new_size": self.new_size,
        }


@dataclass(slots=True)
class Done(Event):
    order_id: str
    side: str
    reason: str
    price: str | None
    remaining_size: str | None
    type = "done"

    def _body(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "side": self.side,
            "reason": self.reason,
            "price": self.price,
            "remaining_size": self.remaining_size,
        }


@dataclass(slots=True)
class Match(Event):
    trade_id: str
    maker_order_id: str
    taker_order_id: str
    taker_side: str
    price: str
    px: Decimal
    size: str
    qty: Decimal
    type = "match"

    def _body(self) -> dict[str, Any]:
        return {
            "trade_id": self.trade_id,
            "maker_order_id": self.maker_order_id,
            "taker_order_id": self.taker_order_id,
            "taker_side": self.taker_side,
            "price": self.price,
            "size": self.size,
        }


@dataclass(slots=True)
class BookSnapshot(Event):
    bids: list[tuple[str, Decimal, str, Decimal]]  # (price, px, size, qty)
    asks: list[tuple[str, Decimal, str, Decimal]]
    type = "book_snapshot"

    def _body(self) -> dict[str, Any]:
        return {
            "bids": [[p, s] for p, _, s, _ in self.bids],
            "asks": [[p, s] for p, _, s, _ in self.asks],
        }


@dataclass(slots=True)
class BookUpdate(Event):
    changes: list[tuple[str, str, Decimal, str, Decimal]]  # (side, price, px, size, qty)
    type = "book_update"

    def _body(self) -> dict[str, Any]:
        return {"changes": [[sd, p, s] for sd, p, _, s, _ in self.changes]}


@dataclass(slots=True)
class Trade(Event):
    trade_id: str
    taker_side: str
    price: str
    px: Decimal
    size: str
    qty: Decimal
    type = "trade"

    def _body(self) -> dict[str, Any]:
        return {
            "trade_id": self.trade_id,
            "taker_side": self.taker_side,
            "price": self.price,
            "size": self.size,
        }


@dataclass(slots=True)
class SymbolInfoEvent(Event):
    info: SymbolInfo
    type = "symbol_info"

    def _body(self) -> dict[str, Any]:
        return {"info": self.info.to_dict()}


@dataclass(slots=True)
class Reset(Event):
    reason: str
    type = "reset"

    def _body(self) -> dict[str, Any]:
        return {"reason": self.reason}


AnyEvent = (
    Open | Change | Done | Match | BookSnapshot | BookUpdate | Trade | SymbolInfoEvent | Reset
)

# --- constructors used by sources (validate exactly like decoding does) ---------------------


def open_(
    symbol: str,
    ts: int,
    order_id: str,
    side: str,
    price: str,
    size: str,
    *,
    source: str = "simulator",
    src_seq: int | None = None,
) -> Open:
    p, px = _price(price, "price")
    s, q = _size(size, "size", allow_zero=False)
    return Open(symbol, ts, source, src_seq, _id(order_id, "order_id"), _side(side), p, px, s, q)


def change(
    symbol: str,
    ts: int,
    order_id: str,
    side: str,
    new_size: str,
    *,
    price: str | None = None,
    source: str = "simulator",
    src_seq: int | None = None,
) -> Change:
    s, q = _size(new_size, "new_size", allow_zero=True)
    if price is not None:
        _price(price, "price")
    return Change(symbol, ts, source, src_seq, _id(order_id, "order_id"), _side(side), price, s, q)


def done(
    symbol: str,
    ts: int,
    order_id: str,
    side: str,
    reason: str,
    *,
    price: str | None = None,
    remaining_size: str | None = None,
    source: str = "simulator",
    src_seq: int | None = None,
) -> Done:
    if reason not in DONE_REASONS:
        raise EventError("reason must be filled or canceled", reason)
    return Done(
        symbol,
        ts,
        source,
        src_seq,
        _id(order_id, "order_id"),
        _side(side),
        reason,
        price,
        remaining_size,
    )


def match(
    symbol: str,
    ts: int,
    trade_id: str,
    maker_order_id: str,
    taker_order_id: str,
    taker_side: str,
    price: str,
    size: str,
    *,
    source: str = "simulator",
    src_seq: int | None = None,
) -> Match:
    p, px = _price(price, "price")
    s, q = _size(size, "size", allow_zero=False)
    return Match(
        symbol,
        ts,
        source,
        src_seq,
        _id(trade_id, "trade_id"),
        _id(maker_order_id, "maker_order_id"),
        _id(taker_order_id, "taker_order_id"),
        _side(taker_side, "taker_side"),
        p,
        px,
        s,
        q,
    )


def _levels(v: object, field: str) -> list[tuple[str, Decimal, str, Decimal]]:
    if not isinstance(v, list):
        raise EventError(f"{field} must be a list", v)
    out = []
    for lv in v:
        if not isinstance(lv, list | tuple) or len(lv) < 2:
            raise EventError(f"{field} level must be [price, size]", lv)
        p, px = _price(lv[0], "price")
        s, q = _size(lv[1], "size", allow_zero=False)
        out.append((p, px, s, q))
    return out


def book_snapshot(
    symbol: str,
    ts: int,
    bids: list[Any],
    asks: list[Any],
    *,
    source: str = "simulator",
    src_seq: int | None = None,
) -> BookSnapshot:
    return BookSnapshot(symbol, ts, source, src_seq, _levels(bids, "bids"), _levels(asks, "asks"))


def book_update(
    symbol: str,
    ts: int,
    changes: list[Any],
    *,
    source: str = "simulator",
    src_seq: int | None = None,
) -> BookUpdate:
    if not isinstance(changes, list):
        raise EventError("changes must be a list", changes)
    out = []
    for c in changes:
        if not isinstance(c, list | tuple) or len(c) != 3:
            raise EventError("change must be [side, price, size]", c)
        side = _side(c[0])
        p, px = _price(c[1], "price")
        s, q = _size(c[2], "size", allow_zero=True)
        out.append((side, p, px, s, q))
    return BookUpdate(symbol, ts, source, src_seq, out)


def trade(
    symbol: str,
    ts: int,
    trade_id: str,
    taker_side: str,
    price: str,
    size: str,
    *,
    source: str = "simulator",
    src_seq: int | None = None,
) -> Trade:
    p, px = _price(price, "price")
    s, q = _size(size, "size", allow_zero=False)
    return Trade(
        symbol,
        ts,
        source,
        src_seq,
        _id(trade_id, "trade_id"),
        _side(taker_side, "taker_side"),
        p,
        px,
        s,
        q,
    )


def symbol_info(
    info: SymbolInfo, ts: int, *, source: str | None = None, src_seq: int | None = None
) -> SymbolInfoEvent:
    return SymbolInfoEvent(info.symbol, ts, source or info.source, src_seq, info)


def reset(
    symbol: str, ts: int, reason: str, *, source: str = "simulator", src_seq: int | None = None
) -> Reset:
    return Reset(symbol, ts, source, src_seq, str(reason)[:200])


# --- wire codec --------------------------------------------------------------------------------


def encode(ev: Event) -> bytes:
    return orjson.dumps(ev.to_dict())


_SYMBOL_CACHE: dict[str, str] = {}
_SYMBOL_CACHE_MAX = 100_000  # bounded: a feed sending random symbols cannot grow it forever


def _symbol(raw: object) -> str:
    """``normalize_symbol`` memoized: the same few strings arrive millions of times."""
    if isinstance(raw, str):
        sym = _SYMBOL_CACHE.get(raw)
        if sym is not None:
            return sym
    try:
        sym = normalize_symbol(raw)
    except SymbolError as exc:
        raise EventError(f"bad symbol ({exc.reason})", raw) from None
    if len(_SYMBOL_CACHE) < _SYMBOL_CACHE_MAX:
        _SYMBOL_CACHE[raw] = sym  # type: ignore[index]
    return sym


def _p_open(d: dict[str, Any], sym: str, ts: int, src: str, sq: int | None) -> Open:
    p, px = _price(d.get("price"), "price")
    s, q = _size(d.get("size"), "size", allow_zero=False)
    return Open(
        sym, ts, src, sq, _id(d.get("order_id"), "order_id"), _side(d.get("side")), p, px, s, q
    )


def _p_change(d: dict[str, Any], sym: str, ts: int, src: str, sq: int | None) -> Change:
    return change(
        sym,
        ts,
        d.get("order_id"),
        d.get("side"),
        d.get("new_size"),  # type: ignore[arg-type]
        price=d.get("price"),
        source=src,
        src_seq=sq,
    )


def _p_done(d: dict[str, Any], sym: str, ts: int, src: str, sq: int | None) -> Done:
    reason = d.get("reason")
    if reason not in DONE_REASONS:
        raise EventError("reason must be filled or canceled", reason)
    price, rest = d.get("price"), d.get("remaining_size")
    if (price is not None and not isinstance(price, str)) or (
        rest is not None and not isinstance(rest, str)
    ):
        raise EventError("price/remaining_size must be strings", d)
    return Done(
        sym,
        ts,
        src,
        sq,
        _id(d.get("order_id"), "order_id"),
        _side(d.get("side")),
        reason,
        price,
        rest,
    )


def _p_match(d: dict[str, Any], sym: str, ts: int, src: str, sq: int | None) -> Match:
    p, px = _price(d.get("price"), "price")
    s, q = _size(d.get("size"), "size", allow_zero=False)
    return Match(
        sym,
        ts,
        src,
        sq,
        _id(d.get("trade_id"), "trade_id"),
        _id(d.get("maker_order_id"), "maker_order_id"),
        _id(d.get("taker_order_id"), "taker_order_id"),
        _side(d.get("taker_side"), "taker_side"),
        p,
        px,
        s,
        q,
    )


def _p_book_snapshot(
    d: dict[str, Any], sym: str, ts: int, src: str, sq: int | None
) -> BookSnapshot:
    return book_snapshot(sym, ts, d.get("bids"), d.get("asks"), source=src, src_seq=sq)  # type: ignore[arg-type]


def _p_book_update(d: dict[str, Any], sym: str, ts: int, src: str, sq: int | None) -> BookUpdate:
    return book_update(sym, ts, d.get("changes"), source=src, src_seq=sq)  # type: ignore[arg-type]


def _p_trade(d: dict[str, Any], sym: str, ts: int, src: str, sq: int | None) -> Trade:
    return trade(
        sym,
        ts,
        d.get("trade_id"),
        d.get("taker_side"),
        d.get("price"),
        d.get("size"),  # type: ignore[arg-type]
        source=src,
        src_seq=sq,
    )


def _p_symbol_info(
    d: dict[str, Any], sym: str, ts: int, src: str, sq: int | None
) -> SymbolInfoEvent:
    raw = d.get("info")
    if not isinstance(raw, dict):
        raise EventError("info must be an object", raw)
    info = SymbolInfo.from_dict(raw)
    if normalize_symbol(info.symbol) != sym:
        raise EventError("info.symbol differs from symbol", raw)
    return symbol_info(info, ts, source=src, src_seq=sq)


def _p_reset(d: dict[str, Any], sym: str, ts: int, src: str, sq: int | None) -> Reset:
    return reset(sym, ts, str(d.get("reason", "")), source=src, src_seq=sq)


_PARSERS: dict[str, Any] = {
    "open": _p_open,
    "change": _p_change,
    "done": _p_done,
    "match": _p_match,
    "book_snapshot": _p_book_snapshot,
    "book_update": _p_book_update,
    "trade": _p_trade,
    "symbol_info": _p_symbol_info,
    "reset": _p_reset,
}


def from_dict(d: Any) -> AnyEvent:
    """Validate a decoded JSON object into an event; raises :class:`EventError`."""
    if type(d) is not dict:
        raise EventError("event must be a JSON object", d)
    symbol = _symbol(d.get("symbol"))
    ts = d.get("ts")
    if type(ts) is not int or ts < 0:
        raise EventError("ts must be an integer (ns since epoch)", ts)
    source = d.get("source") or "unknown"
    if type(source) is not str:
        raise EventError("source must be a string", source)
    src_seq = d.get("src_seq")
    if src_seq is not None and type(src_seq) is not int:
        raise EventError("src_seq must be an integer or null", src_seq)
    t = d.get("type")
    parse = _PARSERS.get(t) if isinstance(t, str) else None
    if parse is None:
        raise EventError("unknown event type", t)
    try:
        return parse(d, symbol, ts, source, src_seq)
    except EventError:
        raise
    except (KeyError, TypeError, ValueError, ArithmeticError, SymbolError) as exc:
        raise EventError(f"bad {t} event: {exc}", d) from None


def decode(data: bytes | bytearray | memoryview | str) -> AnyEvent:
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"malformed JSON: {exc}") from None
    return from_dict(d)


def decode_record(data: bytes | bytearray | memoryview | str) -> list[AnyEvent]:
    """One ``<prefix>.in`` record: a single event, or a non-empty array of one symbol's events."""
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"malformed JSON: {exc}") from None
    if type(d) is not list:
        return [from_dict(d)]
    if not d:
        raise EventError("an event array must not be empty", d)
    events = [from_dict(x) for x in d]
    if any(e.symbol != events[0].symbol for e in events):
        raise EventError("an event array must hold one symbol's events", d)
    return events


def encode_record(events: list[Event]) -> bytes:
    """The record for ``events`` (one symbol): a plain object for one, an array for several."""
    if len(events) == 1:
        return encode(events[0])
    return orjson.dumps([e.to_dict() for e in events])
