"""The output messages: what the aggregator publishes on ``<prefix>.<stream>`` and every reader
(gateways, storage) receives. One declaration per message kind, with encode and a strict decode.

Every message is the envelope of ``core.channels`` (``type``, ``channel``, ``symbol``, ``seq``,
``epoch``, ``timestamp``, ``event_time``, ``data``, ``checksum`` on book messages); ``data`` has
the shape of its ``type``, declared below as a ``TypedDict``. The producer builds plain dicts
typed with these declarations (mypy checks every key, no cost at run time, the bytes stay what
orjson writes), and :func:`decode` derives its checks from the same declarations: a missing
key, an unknown key or a value of the wrong type raises :class:`MessageError`. There are no
aliases: a reader sees exactly the names the producer writes (docs/internals.md "Envelope").

Gateways forward the producer's bytes unchanged ("serialize once, send many"); they never
re-encode. Readers that look inside (storage) decode with :func:`decode`.
"""

# no ``from __future__ import annotations``: on Python 3.11 a TypedDict sees ``NotRequired`` only
# in evaluated annotations
import types
from collections.abc import Callable
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    Required,
    TypedDict,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

import orjson

from core.errors import CodecError


class OneOf(frozenset[str]):
    """``Annotated[str, OneOf(...)]``: a string from a set, checked by :func:`decode` but typed
    ``str`` for producers (the book's sides come from validated input as plain strings)."""


Side = Annotated[str, OneOf(("buy", "sell"))]


class MessageError(CodecError):
    """Bytes that are not a valid output message (permanent: the reader counts and skips)."""

    def __init__(self, reason: str, path: str = "") -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


# --- data shapes, one per message type -----------------------------------------------------------


class L2Data(TypedDict):
    """``l2_snapshot``: ``[price, size]`` string pairs, best first."""

    bids: list[list[str]]
    asks: list[list[str]]


class L2UpdateData(TypedDict):
    """``l2_update``: ``[side, price, size]``; size ``"0"`` removes the level."""

    changes: list[list[str]]


class L3SnapshotData(TypedDict):
    """``l3_snapshot``: ``[price, size, order_id]`` per order, best price first, time priority."""

    bids: list[list[str]]
    asks: list[list[str]]


class L3Op(TypedDict):
    """One order event of an ``l3_update``: ``add`` (size), ``change`` (size), ``fill`` (size,
    remaining, trade_id), ``delete`` (reason: filled | canceled | reset)."""

    op: Literal["add", "change", "fill", "delete"]
    order_id: str
    side: Side
    price: str
    size: NotRequired[str]
    remaining: NotRequired[str]
    trade_id: NotRequired[str]
    reason: NotRequired[str]


class L3UpdateData(TypedDict):
    events: list[L3Op]


class TradeData(TypedDict):
    """``trade``: one match; ``side`` is the taker's. Order ids only from order-level feeds."""

    trade_id: str
    price: str
    size: str
    side: Side
    time: str
    maker_order_id: NotRequired[str]
    taker_order_id: NotRequired[str]


class TradesSnapshotData(TypedDict):
    """``trades_snapshot``: the most recent trades, oldest first."""

    trades: list[TradeData]


class TickerData(TypedDict):
    best_bid: str | None
    best_bid_size: str | None
    best_ask: str | None
    best_ask_size: str | None
    last_price: str | None
    last_size: str | None
    last_side: Side | None
    last_trade_id: str | None
    open_24h: str | None
    high_24h: str | None
    low_24h: str | None
    volume_24h: str
    change_24h: str | None
    change_pct_24h: str | None


class StatsData(TypedDict):
    spread: str | None
    mid: str | None
    max_spread: str | None  # widest spread since start (seed 000: a running maximum)
    max_spread_window: str | None  # widest among the mid window's entries
    mid_sma: str | None
    mid_sma_window: int
    vwap: str | None
    vwap_window: int


class CandleData(TypedDict):
    """``candle``: one bucket; ``closed`` once final (event time reached ``end``)."""

    interval: str
    start: str
    end: str
    open: str
    high: str
    low: str
    close: str
    volume: str
    vwap: str
    trades: int
    closed: bool


class StatusData(TypedDict):
    """``status``: the catalogue entry (``core.symbols.SymbolInfo.to_dict()``) and its state."""

    symbol: str
    base: str
    quote: str
    tick_size: str
    min_size: str
    status: str
    source: str
    channels: list[str]
    state: Literal["live", "l2_only"]
    # only after a source switch (the failover, docs/sources.md): why the symbol now comes from
    # ``source`` (``stalled``, ``gap``, ``garbage``, ``disconnected``, or ``changed`` when the
    # source gave no reason) and which source it came from before; kept while it stays there
    source_reason: NotRequired[str]
    previous_source: NotRequired[str]


MessageType = Literal[
    "l2_snapshot",
    "l2_update",
    "l3_snapshot",
    "l3_update",
    "trade",
    "trades_snapshot",
    "ticker",
    "stats",
    "candle",
    "status",
]

DATA: dict[str, type] = {
    "l2_snapshot": L2Data,
    "l2_update": L2UpdateData,
    "l3_snapshot": L3SnapshotData,
    "l3_update": L3UpdateData,
    "trade": TradeData,
    "trades_snapshot": TradesSnapshotData,
    "ticker": TickerData,
    "stats": StatsData,
    "candle": CandleData,
    "status": StatusData,
}

AnyData = (
    L2Data
    | L2UpdateData
    | L3SnapshotData
    | L3UpdateData
    | TradeData
    | TradesSnapshotData
    | TickerData
    | StatsData
    | CandleData
    | StatusData
)


class Message(TypedDict):
    """The envelope of every data message (``core.channels.data_message`` builds it)."""

    type: MessageType
    channel: str
    symbol: str
    seq: int
    epoch: int
    timestamp: str
    event_time: str
    data: Any  # the shape of DATA[type], checked by decode
    checksum: NotRequired[int]


# --- strict decode, derived from the declarations above ------------------------------------------

_Check = Callable[[object, str], None]


def _fail(path: str, why: str) -> None:
    raise MessageError(why, path)


_SCALARS: dict[Any, _Check] = {
    Any: lambda v, p: None,
    str: lambda v, p: None if type(v) is str else _fail(p, "must be a string"),
    int: lambda v, p: None if type(v) is int else _fail(p, "must be an integer"),
    bool: lambda v, p: None if type(v) is bool else _fail(p, "must be true or false"),
    None: lambda v, p: None if v is None else _fail(p, "must be null"),
    type(None): lambda v, p: None if v is None else _fail(p, "must be null"),
}


def _compile(tp: Any) -> _Check:
    """A checker for one annotation: str, int, bool, None, Literal, X | Y, list[X], TypedDict."""
    scalar = _SCALARS.get(tp)
    if scalar is not None:
        return scalar
    one_of = next((m for m in getattr(tp, "__metadata__", ()) if isinstance(m, OneOf)), None)
    if one_of is not None:
        return lambda v, p: None if v in one_of else _fail(p, f"must be one of {sorted(one_of)}")
    if get_origin(tp) in (NotRequired, Required, Annotated):
        return _compile(get_args(tp)[0])
    origin = get_origin(tp)
    if origin is Literal:
        allowed = frozenset(get_args(tp))
        return lambda v, p: (
            None if isinstance(v, str) and v in allowed else _fail(p, f"must be one of {allowed}")
        )
    if origin is Union or origin is types.UnionType:
        options = [_compile(a) for a in get_args(tp)]

        def union(v: object, p: str) -> None:
            for check in options:
                try:
                    check(v, p)
                    return
                except MessageError:
                    continue
            _fail(p, "has the wrong type")

        return union
    if origin is list:
        (item_tp,) = get_args(tp)
        item = _compile(item_tp)

        def list_(v: object, p: str) -> None:
            if not isinstance(v, list):
                raise MessageError("must be a list", p)
            for i, x in enumerate(v):
                item(x, f"{p}[{i}]")

        return list_
    if is_typeddict(tp):
        return _compile_typeddict(tp)
    raise TypeError(f"no message check for {tp!r}")


def _compile_typeddict(tp: Any) -> _Check:
    hints = get_type_hints(tp, include_extras=True)
    required: frozenset[str] = tp.__required_keys__
    fields = {k: _compile(h) for k, h in hints.items()}

    def obj(v: object, p: str) -> None:
        if type(v) is not dict:
            _fail(p, "must be an object")
        d: dict[str, object] = v  # type: ignore[assignment]
        missing = required - d.keys()
        if missing:
            _fail(p, f"missing {sorted(missing)}")
        for k, x in d.items():
            check = fields.get(k)
            if check is None:
                _fail(p, f"unknown field {k!r}")
            else:
                check(x, f"{p}.{k}")

    return obj


_ENVELOPE = _compile_typeddict(Message)
_DATA_CHECKS: dict[str, _Check] = {t: _compile_typeddict(d) for t, d in DATA.items()}


def check(msg: object) -> Message:
    """``msg`` (a decoded JSON value) as a :class:`Message`, or :class:`MessageError`."""
    _ENVELOPE(msg, "message")
    m: Message = msg  # type: ignore[assignment]
    _DATA_CHECKS[m["type"]](m["data"], f"{m['type']}.data")
    return m


def check_envelope(msg: object) -> Message:
    """``msg`` checked as a :class:`Message` except for its ``data`` (for readers that check
    only the data they use, with :func:`check_data`); raises :class:`MessageError`."""
    _ENVELOPE(msg, "message")
    m: Message = msg  # type: ignore[assignment]
    return m


def check_data(type_: str, data: object) -> Any:
    """``data`` checked against the declaration of ``type_`` (for readers that look only at
    ``data``); raises :class:`MessageError`."""
    checker = _DATA_CHECKS.get(type_)
    if checker is None:
        raise MessageError(f"unknown message type {type_!r}")
    checker(data, f"{type_}.data")
    return data


def decode(raw: bytes | bytearray | memoryview | str) -> Message:
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"malformed JSON: {exc}") from None
    return check(msg)


def encode(msg: Message) -> bytes:
    """The message's bytes, written once by the producer and forwarded unchanged."""
    return orjson.dumps(msg)
