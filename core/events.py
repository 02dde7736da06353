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
                   ``reason`` (optional): the source *switched* the symbol to this feed and
                   says why (``stalled``, ``gap``, ``garbage``, ``disconnected``: the failover,
                   aggregator/sources/failover.py); the ``status`` message carries it.
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

**Declared once.** Each event is one dataclass below; a field's wire check is written beside
it (``Annotated[str, Check(_price, into="px")]``). The constructor (``Open(...)``, used by the
sources) and the decoder run the *same* checks over the same field list, and the encoder
writes the same fields, so what a source can build is exactly what the aggregator accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar, TypeVar, get_type_hints

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


# --- field checks: wire value in, field value out (or raise EventError) -------------------------

# Parsed decimals by string. Prices sit on a tick grid and sizes repeat, so most lookups hit;
# a dict lookup is ~5x cheaper than Decimal(str). Bounded: cleared when full (~100k entries,
# ~15 MB at worst), so a feed of random numbers cannot grow it without limit.
_DEC_CACHE: dict[str, Decimal] = {}
_DEC_CACHE_MAX = 100_000


def _dec(v: object, name: str) -> Decimal:
    """A finite, non-negative decimal from a string (cached); raises :class:`EventError`."""
    if type(v) is str:
        d = _DEC_CACHE.get(v)
        if d is not None:
            return d
    if not isinstance(v, str):
        raise EventError(f"{name} must be a decimal string", v)
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise EventError(f"{name} is not a decimal", v) from None
    if not d.is_finite() or d < 0:
        raise EventError(f"{name} must be finite and >= 0", v)
    if d and (d.adjusted() > 15 or d.as_tuple().exponent < -18):  # type: ignore[operator]
        # keeps every later sum/product far inside the decimal context: no Overflow mid-update
        raise EventError(f"{name} out of range (1e-18 .. 1e15)", v)
    if len(_DEC_CACHE) >= _DEC_CACHE_MAX:
        _DEC_CACHE.clear()
    _DEC_CACHE[v] = d
    return d


def _price(v: object, name: str) -> tuple[str, Decimal]:
    d = _dec(v, name)
    if d <= 0:
        raise EventError(f"{name} must be > 0", v)
    assert isinstance(v, str)
    return v, d


def _size(v: object, name: str) -> tuple[str, Decimal]:
    d = _dec(v, name)
    if d == 0:
        raise EventError(f"{name} must be > 0", v)
    assert isinstance(v, str)
    return v, d


def _size0(v: object, name: str) -> tuple[str, Decimal]:
    d = _dec(v, name)
    assert isinstance(v, str)
    return v, d


def _opt_price(v: object, name: str) -> str | None:
    return None if v is None else _price(v, name)[0]


def _opt_size0(v: object, name: str) -> str | None:
    return None if v is None else _size0(v, name)[0]


def _side(v: object, name: str) -> str:
    if v not in SIDES:
        raise EventError(f"{name} must be buy or sell", v)
    assert isinstance(v, str)
    return v


def _id(v: object, name: str) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str) or not v or len(v) > 128:
        raise EventError(f"{name} must be a non-empty string", v)
    return v


def _reason(v: object, name: str) -> str:
    if v not in DONE_REASONS:
        raise EventError(f"{name} must be filled or canceled", v)
    assert isinstance(v, str)
    return v


def _text(v: object, name: str) -> str:
    """Free text (a reset's reason), cut to 200 characters."""
    if v is None:
        return ""
    if not isinstance(v, str):
        raise EventError(f"{name} must be a string", v)
    return v[:200]


def _opt_text(v: object, name: str) -> str | None:
    """Optional free text: None stays None (a ``symbol_info`` without a switch reason)."""
    return None if v is None else _text(v, name)


_SYMBOL_CACHE: dict[str, str] = {}
_SYMBOL_CACHE_MAX = 100_000  # bounded: a feed sending random symbols cannot grow it forever


def _symbol(v: object, name: str) -> str:
    """``normalize_symbol`` memoized: the same few strings arrive millions of times."""
    if isinstance(v, str):
        sym = _SYMBOL_CACHE.get(v)
        if sym is not None:
            return sym
    try:
        sym = normalize_symbol(v)
    except SymbolError as exc:
        raise EventError(f"bad {name} ({exc.reason})", v) from None
    if isinstance(v, str) and len(_SYMBOL_CACHE) < _SYMBOL_CACHE_MAX:
        _SYMBOL_CACHE[v] = sym
    return sym


def _ts(v: object, name: str) -> int:
    if type(v) is not int or v < 0:
        raise EventError(f"{name} must be an integer (ns since epoch)", v)
    return v


def _source(v: object, name: str) -> str:
    if v is None or v == "":
        return "unknown"
    if type(v) is not str:
        raise EventError(f"{name} must be a string", v)
    return v


def _src_seq(v: object, name: str) -> int | None:
    if v is not None and type(v) is not int:
        raise EventError(f"{name} must be an integer or null", v)
    return v


Level = tuple[str, Decimal, str, Decimal]  # (price, px, size, qty)
LevelChange = tuple[str, str, Decimal, str, Decimal]  # (side, price, px, size, qty)


def _levels(v: object, name: str) -> list[Level]:
    if not isinstance(v, list):
        raise EventError(f"{name} must be a list", v)
    out = []
    for lv in v:
        if not isinstance(lv, list | tuple) or len(lv) < 2:
            raise EventError(f"{name} level must be [price, size]", lv)
        p, px = _price(lv[0], "price")
        s, q = _size(lv[1], "size")
        out.append((p, px, s, q))
    return out


def _dump_levels(v: list[Level]) -> list[list[str]]:
    return [[p, s] for p, _, s, _ in v]


def _changes(v: object, name: str) -> list[LevelChange]:
    if not isinstance(v, list):
        raise EventError(f"{name} must be a list", v)
    out = []
    for c in v:
        if not isinstance(c, list | tuple) or len(c) != 3:
            raise EventError("change must be [side, price, size]", c)
        side = _side(c[0], "side")
        p, px = _price(c[1], "price")
        s, q = _size0(c[2], "size")
        out.append((side, p, px, s, q))
    return out


def _dump_changes(v: list[LevelChange]) -> list[list[str]]:
    return [[sd, p, s] for sd, p, _, s, _ in v]


def _info(v: object, name: str) -> SymbolInfo:
    if isinstance(v, SymbolInfo):
        return v
    if not isinstance(v, dict):
        raise EventError(f"{name} must be an object", v)
    try:
        return SymbolInfo.from_dict(v)
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise EventError(f"bad {name}: {exc!r}", v) from None


def _dump_info(v: SymbolInfo) -> dict[str, object]:
    return v.to_dict()


@dataclass(frozen=True, slots=True)
class Check:
    """How a field crosses the wire: ``check(raw, name)`` validates (and returns the field's
    value, or ``(value, parsed)`` when ``into`` names the field that keeps the parsed
    decimal); ``dump`` turns the field back into JSON (identity when ``None``)."""

    check: Callable[[Any, str], Any]
    into: str | None = None
    dump: Callable[[Any], Any] | None = None
    # an expression over ``v`` true only when ``check(v, name)`` would return ``v`` unchanged:
    # inlined into the generated fill so valid values skip the call (test_core_events checks
    # that it never accepts what ``check`` refuses)
    fast: str | None = None


# The vocabulary of field kinds: a field annotated with one of these is checked by its ``Check``
# (``Price`` keeps the parsed decimal in ``px``, ``Size``/``Size0`` in ``qty``).
Symbol = Annotated[str, Check(_symbol)]
Ts = Annotated[int, Check(_ts, fast="type(v) is int and v >= 0")]
Source = Annotated[str, Check(_source, fast="type(v) is str and v != ''")]
SrcSeq = Annotated[int | None, Check(_src_seq, fast="v is None or type(v) is int")]
Id = Annotated[str, Check(_id, fast="type(v) is str and 0 < len(v) <= 128")]
Side = Annotated[str, Check(_side, fast="v in SIDES")]
Price = Annotated[str, Check(_price, into="px")]
Size = Annotated[str, Check(_size, into="qty")]
OptPrice = Annotated[str | None, Check(_opt_price)]
Size0 = Annotated[str, Check(_size0, into="qty")]
OptSize0 = Annotated[str | None, Check(_opt_size0)]
# built from wire lists (``[[price, size], ...]``), kept parsed (``list[Level]``): typed ``Any`` so
# a source can pass what it received
Levels = Annotated[list[Any], Check(_levels, dump=_dump_levels)]
Changes = Annotated[list[Any], Check(_changes, dump=_dump_changes)]

# --- the events ------------------------------------------------------------------------------

_Spec = tuple[str, Callable[[Any, str], Any], str | None, str | None]  # name, check, into, fast


@dataclass(slots=True)
class Event:
    """Fields common to every event; subclasses add theirs. ``ts`` is event time in ns."""

    symbol: Symbol
    ts: Ts
    source: Source = field(default="simulator", kw_only=True)
    src_seq: SrcSeq = field(default=None, kw_only=True)

    type: ClassVar[str] = "event"
    # filled by @_event from the annotations: (name, check, into) and (name, dump)
    CHECKS: ClassVar[tuple[_Spec, ...]] = ()
    FILL: ClassVar[Callable[[Event, Callable[[str], object]], None]]
    DUMPS: ClassVar[tuple[tuple[str, Callable[[Any], Any] | None], ...]] = ()

    def __post_init__(self) -> None:
        self.FILL(self.__getattribute__)

    def _cross_check(self) -> None:
        """Checks across fields, run after each field's own (by ``FILL``, when overridden)."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        for name, dump in self.DUMPS:
            v = getattr(self, name)
            d[name] = v if dump is None else dump(v)
        return d


def _compile_fill(
    checks: tuple[_Spec, ...], cross_check: bool
) -> Callable[[Event, Callable[[str], object]], None]:
    """One function per event class running every field check on the raw values ``get``
    returns and storing the results on the event: the one validation path of both the
    constructor and the decoder. Generated from the declaration (as ``dataclasses`` generates
    ``__init__``) because a generic loop over the fields costs ~2.5 us more per event, on the
    hot path of every source and of the aggregator."""
    env: dict[str, Any] = {"SIDES": SIDES}
    lines = ["def fill(obj, get):"]
    for i, (name, check, into, fast) in enumerate(checks):
        env[f"c{i}"] = check
        if into is not None:
            lines.append(f"    obj.{name}, obj.{into} = c{i}(get({name!r}), {name!r})")
        elif fast is not None:
            lines.append(f"    v = get({name!r})")
            lines.append(f"    obj.{name} = v if {fast} else c{i}(v, {name!r})")
        else:
            lines.append(f"    obj.{name} = c{i}(get({name!r}), {name!r})")
    if cross_check:
        lines.append("    obj._cross_check()")
    if len(lines) == 1:
        lines.append("    pass")
    exec("\n".join(lines), env)  # noqa: S102 - names and checks come from the class body
    fill: Callable[[Event, Callable[[str], object]], None] = env["fill"]
    return fill


_TYPES: dict[str, type[Event]] = {}
_E = TypeVar("_E", bound=type[Event])


def _event(cls: _E) -> _E:
    """Register an event class and derive its checks and dumps from its annotations."""
    hints = get_type_hints(cls, include_extras=True)
    checks: list[_Spec] = []
    dumps: list[tuple[str, Callable[[Any], Any] | None]] = []
    for f in fields(cls):
        meta = getattr(hints[f.name], "__metadata__", ())
        spec = next((m for m in meta if isinstance(m, Check)), None)
        if spec is None:
            continue  # a parsed companion (px, qty), filled through its field's ``into``
        checks.append((f.name, spec.check, spec.into, spec.fast))
        dumps.append((f.name, spec.dump))
    cls.CHECKS, cls.DUMPS = tuple(checks), tuple(dumps)
    cross = cls._cross_check is not Event._cross_check
    cls.FILL = _compile_fill(cls.CHECKS, cross)
    _TYPES[cls.type] = cls
    return cls


@_event
@dataclass(slots=True)
class Open(Event):
    order_id: Id
    side: Side
    price: Price
    size: Size
    px: Decimal = field(init=False, repr=False)
    qty: Decimal = field(init=False, repr=False)
    type: ClassVar[str] = "open"


@_event
@dataclass(slots=True)
class Change(Event):
    order_id: Id
    side: Side
    price: OptPrice = field(default=None, kw_only=True)
    new_size: Size0
    qty: Decimal = field(init=False, repr=False)
    type: ClassVar[str] = "change"


@_event
@dataclass(slots=True)
class Done(Event):
    order_id: Id
    side: Side
    reason: Annotated[str, Check(_reason)]
    price: OptPrice = field(default=None, kw_only=True)
    remaining_size: OptSize0 = field(default=None, kw_only=True)
    type: ClassVar[str] = "done"


@_event
@dataclass(slots=True)
class Match(Event):
    trade_id: Id
    maker_order_id: Id
    taker_order_id: Id
    taker_side: Side
    price: Price
    size: Size
    px: Decimal = field(init=False, repr=False)
    qty: Decimal = field(init=False, repr=False)
    type: ClassVar[str] = "match"


@_event
@dataclass(slots=True)
class BookSnapshot(Event):
    bids: Levels
    asks: Levels
    type: ClassVar[str] = "book_snapshot"


@_event
@dataclass(slots=True)
class BookUpdate(Event):
    changes: Changes
    type: ClassVar[str] = "book_update"


@_event
@dataclass(slots=True)
class Trade(Event):
    trade_id: Id
    taker_side: Side
    price: Price
    size: Size
    px: Decimal = field(init=False, repr=False)
    qty: Decimal = field(init=False, repr=False)
    type: ClassVar[str] = "trade"


@_event
@dataclass(slots=True)
class SymbolInfoEvent(Event):
    info: Annotated[SymbolInfo, Check(_info, dump=_dump_info)]
    reason: Annotated[str | None, Check(_opt_text)] = field(default=None, kw_only=True)
    type: ClassVar[str] = "symbol_info"

    def _cross_check(self) -> None:
        if _symbol(self.info.symbol, "info.symbol") != self.symbol:
            raise EventError("info.symbol differs from symbol", self.info.symbol)


@_event
@dataclass(slots=True)
class Reset(Event):
    reason: Annotated[str, Check(_text)]
    type: ClassVar[str] = "reset"


AnyEvent = (
    Open | Change | Done | Match | BookSnapshot | BookUpdate | Trade | SymbolInfoEvent | Reset
)

# The sources' names for the constructors (the classes themselves: same arguments, same checks).
open_ = Open
change = Change
done = Done
match = Match
book_snapshot = BookSnapshot
book_update = BookUpdate
trade = Trade
reset = Reset


def symbol_info(
    info: SymbolInfo,
    ts: int,
    *,
    source: str | None = None,
    src_seq: int | None = None,
    reason: str | None = None,
) -> SymbolInfoEvent:
    """The catalogue entry as an event; ``source`` defaults to the entry's own; ``reason`` only
    when the symbol was just switched to this feed (why)."""
    return SymbolInfoEvent(
        info.symbol, ts, info, source=source or info.source, src_seq=src_seq, reason=reason
    )


# --- wire codec --------------------------------------------------------------------------------


def encode(ev: Event) -> bytes:
    return orjson.dumps(ev.to_dict())


def from_dict(d: Any) -> AnyEvent:
    """Validate a decoded JSON object into an event; raises :class:`EventError`."""
    if type(d) is not dict:
        raise EventError("event must be a JSON object", d)
    t = d.get("type")
    cls = _TYPES.get(t) if isinstance(t, str) else None
    if cls is None:
        raise EventError("unknown event type", t)
    obj = cls.__new__(cls)
    try:
        obj.FILL(d.get)
    except EventError:
        raise
    except (KeyError, TypeError, ValueError, ArithmeticError, SymbolError) as exc:
        raise EventError(f"bad {t} event: {exc}", d) from None
    return obj  # type: ignore[return-value]


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


def encode_record(events: Sequence[Event]) -> bytes:
    """The record for ``events`` (one symbol): a plain object for one, an array for several."""
    if len(events) == 1:
        return encode(events[0])
    return orjson.dumps([e.to_dict() for e in events])
