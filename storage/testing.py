"""Contract-conforming aggregator messages for tests and benchmarks (docs/internals.md shapes).

Lives in the package (not under tests/) because the benchmarks produce the same records.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer

from core.channels import data_message
from core.codec import dumps, now_ns
from core.symbols import default_info
from core.topics import Topics

EPOCH = 1795503050651


def msg(
    type: str,
    channel: str,
    symbol: str,
    seq: int,
    data: Any,
    *,
    epoch: int = EPOCH,
    ts_ns: int | None = None,
    checksum: int | None = None,
) -> bytes:
    t = ts_ns if ts_ns is not None else now_ns()
    return dumps(
        data_message(
            type=type,
            channel=channel,
            symbol=symbol,
            seq=seq,
            epoch=epoch,
            publish_ns=t,
            event_ns=t,
            data=data,
            checksum=checksum,
        )
    )


def status(symbol: str, seq: int = 1, **kw: Any) -> bytes:
    info = default_info(symbol).to_dict()
    info.update(kw)
    return msg("status", "status", symbol, seq, info)


def l2_snapshot(
    symbol: str, seq: int, bids: list[list[str]], asks: list[list[str]], **kw: Any
) -> bytes:
    return msg("l2_snapshot", "l2", symbol, seq, {"bids": bids, "asks": asks}, **kw)


def l2_update(symbol: str, seq: int, changes: list[list[str]], **kw: Any) -> bytes:
    return msg("l2_update", "l2", symbol, seq, {"changes": changes}, **kw)


def trade(
    symbol: str,
    seq: int,
    trade_id: str,
    price: str,
    size: str,
    side: str = "buy",
    *,
    ts_ns: int | None = None,
    **kw: Any,
) -> bytes:
    from core.codec import iso_from_ns

    t = ts_ns if ts_ns is not None else now_ns()
    return msg(
        "trade",
        "trades",
        symbol,
        seq,
        {"trade_id": trade_id, "price": price, "size": size, "side": side, "time": iso_from_ns(t)},
        ts_ns=t,
        **kw,
    )


def candle(
    symbol: str,
    interval: str,
    seq: int,
    start_iso: str,
    o: str,
    h: str,
    low: str,
    c: str,
    v: str,
    *,
    closed: bool = False,
    trades: int = 1,
    **kw: Any,
) -> bytes:
    return msg(
        "candle",
        f"candles_{interval}",
        symbol,
        seq,
        {
            "interval": interval,
            "start": start_iso,
            "open": o,
            "high": h,
            "low": low,
            "close": c,
            "volume": v,
            "trades": trades,
            "closed": closed,
        },
        **kw,
    )


def ticker(symbol: str, seq: int, **data: Any) -> bytes:
    base = {"bid": "100.00", "bid_size": "1", "ask": "100.50", "ask_size": "2", "last": "100.25"}
    base.update(data)
    return msg("ticker", "ticker", symbol, seq, base)


def stats(symbol: str, seq: int, **data: Any) -> bytes:
    base = {
        "open": "90",
        "high": "110",
        "low": "85",
        "last": "100",
        "volume": "1234.5",
        "change_pct": "11.1",
    }
    base.update(data)
    return msg("stats", "stats", symbol, seq, base)


async def produce(
    producer: AIOKafkaProducer, topic: str, records: Iterable[tuple[str, bytes]]
) -> None:
    """Send ``(key, value)`` records and wait until all are acknowledged."""
    futs = [await producer.send(topic, value=v, key=k.encode()) for k, v in records]
    for f in futs:
        await f


async def produce_stream(
    producer: AIOKafkaProducer, topics: Topics, channel: str, records: Iterable[tuple[str, bytes]]
) -> None:
    await produce(producer, topics.stream(channel), records)
