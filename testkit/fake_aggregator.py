"""The fake aggregator: contract-conforming output messages for tests and benchmarks.

One place plays the aggregator (it was four: storage's builders, the FIX gateway's ``Platform``,
and copies in tests). The named builders check what they build against core/messages.py, so a
fake cannot drift from what the aggregator publishes; :func:`msg` builds anything (for tests
of bad input). :class:`Platform` keeps one symbol's l2 book, seq and checksum, and
:class:`Publisher` sends its records to the test's topics.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from core.book import L2Book
from core.channels import CANDLE_INTERVALS, data_message
from core.codec import dumps, iso_from_ns, now_ns, ns_from_iso
from core.kafka import make_producer
from core.messages import CandleData, StatsData, TickerData
from core.messages import check as check_message
from core.settings import Settings
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
    event_ns: int | None = None,
    checksum: int | None = None,
) -> bytes:
    """Any message (no check): publish time ``ts_ns`` (now), event time ``event_ns`` (the same)."""
    t = ts_ns if ts_ns is not None else now_ns()
    return dumps(
        data_message(
            type=type,  # type: ignore[arg-type]  # any string: tests of bad input use it too
            channel=channel,
            symbol=symbol,
            seq=seq,
            epoch=epoch,
            publish_ns=t,
            event_ns=t if event_ns is None else event_ns,
            data=data,
            checksum=checksum,
        )
    )


def _checked(raw: bytes) -> bytes:
    check_message(orjson.loads(raw))
    return raw


def status(symbol: str, seq: int = 1, *, epoch: int = EPOCH, **kw: Any) -> bytes:
    """The catalogue entry of ``symbol``; ``kw`` overrides its fields."""
    info = default_info(symbol).to_dict()
    info.update(kw)
    info["state"] = "live" if "l3" in info["channels"] else "l2_only"  # type: ignore[operator]
    return _checked(msg("status", "status", symbol, seq, info, epoch=epoch))


def l2_snapshot(
    symbol: str, seq: int, bids: list[list[str]], asks: list[list[str]], **kw: Any
) -> bytes:
    return _checked(msg("l2_snapshot", "l2", symbol, seq, {"bids": bids, "asks": asks}, **kw))


def l2_update(symbol: str, seq: int, changes: list[list[str]], **kw: Any) -> bytes:
    return _checked(msg("l2_update", "l2", symbol, seq, {"changes": changes}, **kw))


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
    t = ts_ns if ts_ns is not None else now_ns()
    return _checked(
        msg(
            "trade",
            "trades",
            symbol,
            seq,
            {
                "trade_id": trade_id,
                "price": price,
                "size": size,
                "side": side,
                "time": iso_from_ns(t),
            },
            ts_ns=t,
            **kw,
        )
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
    end_ns = ns_from_iso(start_iso) + CANDLE_INTERVALS[interval] * 1_000_000_000
    data: CandleData = {
        "interval": interval,
        "start": start_iso,
        "end": iso_from_ns(end_ns),
        "open": o,
        "high": h,
        "low": low,
        "close": c,
        "volume": v,
        "vwap": c,
        "trades": trades,
        "closed": closed,
    }
    return _checked(msg("candle", f"candles_{interval}", symbol, seq, data, **kw))


def ticker(symbol: str, seq: int, **data: Any) -> bytes:
    base: TickerData = {
        "best_bid": "100.00",
        "best_bid_size": "1",
        "best_ask": "100.50",
        "best_ask_size": "2",
        "last_price": "100.25",
        "last_size": "0.5",
        "last_side": "buy",
        "last_trade_id": "1",
        "open_24h": "90",
        "high_24h": "110",
        "low_24h": "85",
        "volume_24h": "1234.5",
        "change_24h": "10.25",
        "change_pct_24h": "11.38888889",
    }
    base.update(data)  # type: ignore[typeddict-item]
    return _checked(msg("ticker", "ticker", symbol, seq, base))


def stats(symbol: str, seq: int, **data: Any) -> bytes:
    base: StatsData = {
        "spread": "0.50",
        "mid": "100.25",
        "max_spread": "1.00",
        "max_spread_window": "1.00",
        "mid_sma": "100.2",
        "mid_sma_window": 10,
        "vwap": "100.1",
        "vwap_window": 200,
    }
    base.update(data)  # type: ignore[typeddict-item]
    return _checked(msg("stats", "stats", symbol, seq, base))


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


class Platform:
    """Plays the aggregator for one symbol: l2 snapshot/updates (seq, checksum), trades and
    status, each a checked message. With ``t0`` its clock is fixed: l2 message ``seq`` s is
    published at ``t0`` + s µs with event time ``t0`` (tests that resume by time rely on it)."""

    def __init__(self, symbol: str, epoch: int = 1, *, t0: int | None = None) -> None:
        self.symbol = symbol
        self.epoch = epoch
        self.t0 = t0
        self.book = L2Book()
        self.seq = 0
        self.trade_seq = 0

    def _times(self) -> dict[str, int]:
        return {} if self.t0 is None else {"ts_ns": self.t0 + self.seq * 1000, "event_ns": self.t0}

    def snapshot(self) -> bytes:
        snap = self.book.snapshot()
        return l2_snapshot(
            self.symbol,
            self.seq,
            snap["bids"],
            snap["asks"],
            epoch=self.epoch,
            checksum=self.book.checksum(),
            **self._times(),
        )

    def update(self, changes: list[list[str]]) -> bytes:
        self.book.apply(changes)
        self.seq += 1
        return l2_update(
            self.symbol,
            self.seq,
            changes,
            epoch=self.epoch,
            checksum=self.book.checksum(),
            **self._times(),
        )

    def trade(self, price: str, size: str) -> bytes:
        self.trade_seq += 1
        return trade(
            self.symbol,
            self.trade_seq,
            str(self.trade_seq),
            price,
            size,
            epoch=self.epoch,
        )

    def status(self) -> bytes:
        return status(self.symbol, 1, epoch=self.epoch)


class Publisher:
    """Sends a :class:`Platform`'s records to the stream and snapshot topics of ``settings``."""

    def __init__(self, settings: Settings) -> None:
        self.t = Topics.from_settings(settings)
        self.prod = make_producer(settings)

    async def __aenter__(self) -> Publisher:
        await self.prod.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.prod.stop()

    async def seed(self, p: Platform, levels: int = 5) -> None:
        """Status, an initial book and its snapshot record."""
        await self.prod.send_and_wait(self.t.stream("status"), p.status(), key=p.symbol.encode())
        await self.prod.send_and_wait(
            self.t.snapshot, p.status(), key=f"status:{p.symbol}".encode()
        )
        for i in range(levels):
            await self.l2(p, [["buy", f"{100 - i}.00", "1"], ["sell", f"{101 + i}.00", "2"]])
        await self.prod.send_and_wait(self.t.snapshot, p.snapshot(), key=f"l2:{p.symbol}".encode())

    async def l2(self, p: Platform, changes: list[list[str]]) -> None:
        await self.prod.send_and_wait(self.t.stream("l2"), p.update(changes), key=p.symbol.encode())

    async def trade(self, p: Platform, price: str, size: str) -> None:
        await self.prod.send_and_wait(
            self.t.stream("trades"), p.trade(price, size), key=p.symbol.encode()
        )
