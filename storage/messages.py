"""Parse the aggregator's data messages (docs/internals.md envelope) into what storage keeps.

Pure functions, no I/O. Malformed records raise :class:`storage.errors.BadRecord`; writers count
and skip them rather than stall a partition on one bad record. ``data`` is checked against its
declaration in core/messages.py: no aliases, the names are the ones the aggregator writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from core.channels import CANDLE_INTERVALS
from core.codec import loads, ns_from_iso
from core.errors import CodecError
from core.messages import CandleData, MessageError, TradeData, check_data, check_envelope
from storage.errors import BadRecord


@dataclass(frozen=True, slots=True)
class Envelope:
    type: str
    channel: str
    symbol: str
    seq: int
    epoch: int
    timestamp: str
    event_time: str
    data: Any
    checksum: int | None
    raw: bytes

    @property
    def pos(self) -> tuple[int, int]:
        """Ordering key: epochs only grow, seq grows inside an epoch."""
        return (self.epoch, self.seq)


def parse_envelope(raw: bytes) -> Envelope:
    try:
        m = loads(raw)
    except CodecError as exc:
        raise BadRecord(str(exc)) from exc
    try:
        e = check_envelope(m)
    except MessageError as exc:
        raise BadRecord(str(exc)) from exc
    return Envelope(
        type=e["type"],
        channel=e["channel"],
        symbol=e["symbol"],
        seq=e["seq"],
        epoch=e["epoch"],
        timestamp=e["timestamp"],
        event_time=e["event_time"],
        data=e["data"],
        checksum=e.get("checksum"),
        raw=bytes(raw),
    )


def _dec_str(v: object, name: str) -> str:
    if isinstance(v, bool) or v is None:
        raise BadRecord(f"{name} missing or not a number")
    try:
        d = Decimal(str(v))
    except InvalidOperation as exc:
        raise BadRecord(f"{name} not a decimal: {v!r}") from exc
    if not d.is_finite():
        raise BadRecord(f"{name} not finite: {v!r}")
    return str(v)


def _ns(text: object, name: str) -> int:
    """An ISO-8601 time (the only form the messages carry, core/messages.py) in ns."""
    if not isinstance(text, str) or not text:
        raise BadRecord(f"{name} missing")
    try:
        return ns_from_iso(text)
    except CodecError as exc:
        raise BadRecord(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class Trade:
    symbol: str
    trade_id: str
    ts_ns: int
    time: str  # ISO-8601 as published
    price: str
    size: str
    side: str
    seq: int
    epoch: int

    def to_dict(self) -> dict[str, object]:
        return {
            "trade_id": self.trade_id,
            "price": self.price,
            "size": self.size,
            "side": self.side,
            "time": self.time,
            "seq": self.seq,
        }


def trades_of(env: Envelope) -> list[Trade]:
    """The trades of a ``trade`` message (one) or a ``trades_snapshot`` (``{"trades": [...]}``)."""
    try:
        if env.type == "trades_snapshot":
            items: list[TradeData] = check_data("trades_snapshot", env.data)["trades"]
        else:
            items = [check_data("trade", env.data)]
    except MessageError as exc:
        raise BadRecord(str(exc)) from exc
    out: list[Trade] = []
    for it in items:
        if not it["trade_id"]:
            raise BadRecord("trade without trade_id")
        t = it["time"]
        out.append(
            Trade(
                symbol=env.symbol,
                trade_id=it["trade_id"],
                ts_ns=_ns(t, "trade time"),
                time=t,
                price=_dec_str(it["price"], "price"),
                size=_dec_str(it["size"], "size"),
                side=it["side"],
                seq=env.seq,
                epoch=env.epoch,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class Candle:
    symbol: str
    interval: str
    bucket_ns: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    trades: int
    closed: bool
    seq: int
    epoch: int
    vwap: str | None = None


def interval_of(env: Envelope) -> str:
    if env.channel.startswith("candles_"):
        iv = env.channel.removeprefix("candles_")
    elif isinstance(env.data, dict):
        iv = str(env.data.get("interval", ""))
    else:
        iv = ""
    if iv not in CANDLE_INTERVALS:
        raise BadRecord(f"unknown candle interval {iv!r}")
    return iv


def candle_of(env: Envelope) -> Candle:
    iv = interval_of(env)
    try:
        d: CandleData = check_data("candle", env.data)
    except MessageError as exc:
        raise BadRecord(str(exc)) from exc
    return Candle(
        symbol=env.symbol,
        interval=iv,
        bucket_ns=_ns(d["start"], "candle start"),
        open=_dec_str(d["open"], "open"),
        high=_dec_str(d["high"], "high"),
        low=_dec_str(d["low"], "low"),
        close=_dec_str(d["close"], "close"),
        volume=_dec_str(d["volume"], "volume"),
        trades=d["trades"],
        closed=d["closed"],
        seq=env.seq,
        epoch=env.epoch,
        vwap=_dec_str(d["vwap"], "vwap"),
    )


def levels_of(side: object, name: str) -> list[tuple[str, str]]:
    if not isinstance(side, list):
        raise BadRecord(f"{name} is not a list")
    out: list[tuple[str, str]] = []
    for lv in side:
        if not isinstance(lv, list | tuple) or len(lv) < 2:
            raise BadRecord(f"bad {name} level {lv!r}")
        out.append((str(lv[0]), str(lv[1])))
    return out
