"""Kafka records -> database rows, per batch (pure: no I/O).

A :class:`RowBatch` collects one batch's rows and the Kafka offsets they came from. Idempotence
is the database's job (natural primary keys, ``ON CONFLICT``), but rows that would hit the
same key twice *inside one statement* are merged here first, because PostgreSQL refuses an
``ON CONFLICT DO UPDATE`` that touches a row twice.

L2 snapshots are sampled from the snapshot topic's ``l2:<symbol>`` records (the aggregator
publishes them every ``MD_AGG_SNAPSHOT_MS``): one per symbol per ``l2_every_s`` bucket of the
message's own publish time, so a replay samples the same messages again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import orjson

from core.codec import ns_from_iso
from core.errors import CodecError
from core.symbols import SymbolInfo
from storage.errors import BadRecord
from storage.messages import Envelope, candle_of, levels_of, parse_envelope, trades_of


def dt_from_ns(ns: int) -> datetime:
    s, rem = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(s, UTC).replace(microsecond=rem // 1000)


TradeRow = tuple[str, str, datetime, Decimal, Decimal, str, int, int]
CandleRow = tuple[
    str, str, datetime, Decimal, Decimal, Decimal, Decimal, Decimal, int, bool, int, int
]
SnapshotRow = tuple[str, datetime, int, int, int | None, str, str]
SymbolRow = tuple[str, str, str, Decimal, Decimal, str, str, list[str], int]


@dataclass
class RowBatch:
    trades: list[TradeRow] = field(default_factory=list)
    candles: dict[tuple[str, str, datetime], tuple[tuple[int, int], CandleRow]] = field(
        default_factory=dict
    )
    snapshots: dict[tuple[str, datetime, int], SnapshotRow] = field(default_factory=dict)
    symbols: dict[str, tuple[tuple[int, int], SymbolRow]] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(
        default_factory=dict
    )  # (topic, partition) -> next offset
    records: int = 0
    bad: int = 0

    def rows(self) -> int:
        return len(self.trades) + len(self.candles) + len(self.snapshots) + len(self.symbols)


class RowBuilder:
    def __init__(self, *, snapshot_topic: str, l2_every_s: int = 10, l2_depth: int = 50) -> None:
        self.snapshot_topic = snapshot_topic
        self.l2_every_ns = max(1, l2_every_s) * 1_000_000_000
        self.l2_depth = l2_depth
        self._l2_bucket: dict[str, int] = {}  # symbol -> last sampled bucket

    def add(
        self,
        b: RowBatch,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
    ) -> None:
        b.records += 1
        k = (topic, partition)
        b.offsets[k] = max(b.offsets.get(k, 0), offset + 1)
        if value is None:
            return
        try:
            if topic == self.snapshot_topic:
                k = (key or b"").decode("utf-8", "replace")
                if k.startswith("l2:"):
                    self._snapshot(b, parse_envelope(value))
                elif k.startswith("status:"):
                    self._status(b, parse_envelope(value))
                return  # other snapshot keys: the streams carry them
            env = parse_envelope(value)
            if env.channel == "trades":
                for t in trades_of(env):
                    b.trades.append(
                        (
                            t.symbol,
                            t.trade_id,
                            dt_from_ns(t.ts_ns),
                            Decimal(t.price),
                            Decimal(t.size),
                            t.side,
                            t.seq,
                            t.epoch,
                        )
                    )
            elif env.channel.startswith("candles_"):
                self._candle(b, env)
            elif env.channel == "status" or env.type == "status":
                self._status(b, env)
        except (BadRecord, CodecError, ValueError, KeyError, TypeError, ArithmeticError):
            b.bad += 1

    def _candle(self, b: RowBatch, env: Envelope) -> None:
        c = candle_of(env)
        bucket = dt_from_ns(c.bucket_ns)
        row: CandleRow = (
            c.symbol,
            c.interval,
            bucket,
            Decimal(c.open),
            Decimal(c.high),
            Decimal(c.low),
            Decimal(c.close),
            Decimal(c.volume),
            c.trades,
            c.closed,
            c.seq,
            c.epoch,
            Decimal(c.vwap) if c.vwap is not None else None,
        )
        k = (c.symbol, c.interval, bucket)
        cur = b.candles.get(k)
        if cur is None or env.pos > cur[0]:
            b.candles[k] = (env.pos, row)

    def _status(self, b: RowBatch, env: Envelope) -> None:
        if not isinstance(env.data, dict):
            raise BadRecord("status data is not an object")
        info = SymbolInfo.from_dict(env.data)
        row: SymbolRow = (
            info.symbol,
            info.base,
            info.quote,
            info.tick_size,
            info.min_size,
            info.status,
            info.source,
            list(info.channels),
            env.seq,
        )
        cur = b.symbols.get(info.symbol)
        if cur is None or env.pos >= cur[0]:
            b.symbols[info.symbol] = (env.pos, row)

    def _snapshot(self, b: RowBatch, env: Envelope) -> None:
        if env.type != "l2_snapshot" or not isinstance(env.data, dict):
            return
        ns = ns_from_iso(env.timestamp)
        bucket = ns // self.l2_every_ns
        if self._l2_bucket.get(env.symbol) == bucket:
            return
        self._l2_bucket[env.symbol] = bucket
        n = self.l2_depth
        bids = [list(x) for x in levels_of(env.data.get("bids", []), "bids")[:n]]
        asks = [list(x) for x in levels_of(env.data.get("asks", []), "asks")[:n]]
        ts = dt_from_ns(ns)
        b.snapshots[(env.symbol, ts, env.seq)] = (
            env.symbol,
            ts,
            env.seq,
            env.epoch,
            env.checksum,
            orjson.dumps(bids).decode(),
            orjson.dumps(asks).decode(),
        )
