"""Every SQL read of the history tables (storage/schema.py), declared once: the REST gateway's
trades and candles and its fallbacks while Redis is down, the point-in-time book (core/history/book.py), replay
(core/history/replay.py) and the archive's answers to the same queries (core/history/archive.py,
which recognises each statement by identity).

Statements are plain constants with positional parameters; the two REST reads whose conditions
depend on the request are built by :func:`trades_range_query` and :func:`candles_query`, which
return the statement and its arguments (values are always parameters, never spliced in).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def dt_from_ns(ns: int) -> datetime:
    """A UTC ``datetime`` (µs) of ``ns`` since the epoch: what asyncpg binds to ``timestamptz``."""
    s, rem = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(s, UTC).replace(microsecond=rem // 1000)


# --- the book at a past moment (core/history/book.py) --------------------------------------

# the newest epoch that has message `seq`: only epochs with a stored snapshot can be rebuilt,
# and there are few of them, so each is checked by a primary-key lookup (a scan for `seq`
# alone would read every message of the symbol: the key starts with the epoch)
SQL_SEQ_EPOCH = """
SELECT e.epoch FROM (SELECT DISTINCT epoch FROM book_snapshots WHERE channel = $1 AND symbol = $2) e
WHERE EXISTS (SELECT 1 FROM stream_messages m
              WHERE m.channel = $1 AND m.symbol = $2 AND m.epoch = e.epoch AND m.seq = $3)
   OR EXISTS (SELECT 1 FROM book_snapshots b
              WHERE b.channel = $1 AND b.symbol = $2 AND b.epoch = e.epoch AND b.seq = $3)
ORDER BY e.epoch DESC LIMIT 1"""
SQL_AT = """
SELECT epoch, seq, ts FROM (
  (SELECT epoch, seq, ts FROM stream_messages WHERE channel = $1 AND symbol = $2 AND ts <= $3
   ORDER BY ts DESC, seq DESC LIMIT 1)
  UNION ALL
  (SELECT epoch, seq, ts FROM book_snapshots WHERE channel = $1 AND symbol = $2 AND ts <= $3
   ORDER BY ts DESC, seq DESC LIMIT 1)
) u ORDER BY ts DESC, epoch DESC, seq DESC LIMIT 1"""
SQL_SNAPSHOT = """
SELECT seq, msg FROM book_snapshots WHERE channel = $1 AND symbol = $2 AND epoch = $3 AND seq <= $4
ORDER BY seq DESC LIMIT 1"""
SQL_UPDATES = """
SELECT seq, msg FROM stream_messages
WHERE channel = $1 AND symbol = $2 AND epoch = $3 AND seq >= $4 AND seq <= $5 ORDER BY seq"""


# --- replay (core/history/replay.py) --------------------------------------------------------

# a page of stored messages of a time range in stream order (keyset pagination on (epoch, seq))
SQL_PAGE = """
SELECT epoch, seq, ts, msg FROM stream_messages
WHERE channel = $1 AND symbol = $2 AND ts >= $3 AND ts <= $4 AND (epoch, seq) > ($5, $6)
ORDER BY epoch, seq LIMIT $7"""
SQL_FIRST_SNAPSHOT_OF_EPOCH = """
SELECT seq, msg FROM book_snapshots WHERE channel = $1 AND symbol = $2 AND epoch = $3
ORDER BY seq LIMIT 1"""
SQL_FIRST_SNAPSHOT_AFTER = """
SELECT epoch, seq, ts, msg FROM book_snapshots
WHERE channel = $1 AND symbol = $2 AND ts >= $3 AND ts <= $4 ORDER BY ts, epoch, seq LIMIT 1"""


# --- REST: trades and candles (gateway_rest/store.py) ---------------------------------------

# trades as the strings the REST body carries, rendered by PostgreSQL (numeric text is exactly
# the stored digits; the time in the messages' ISO form, µs, "Z"): no Decimal or datetime object
# per row in the gateway, which was most of a 1,000-trade page's time
TRADE_FIELDS = (
    "trade_id, price::text AS price, size::text AS size, side, seq, epoch, "
    """to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS time"""
)
CANDLE_FIELDS = "bucket, open, high, low, close, volume, trades, closed, seq, epoch, vwap"


def trades_range_query(
    symbol: str,
    start_ns: int | None,
    end_ns: int | None,
    limit: int,
    cursor: tuple[int, str] | None,
    *,
    newest_first: bool = False,
) -> tuple[str, list[Any]]:
    """A page of ``symbol``'s trades in ``[start, end)``, ascending by ``(ts, trade_id)`` after
    ``cursor`` (or newest first), ``limit + 1`` rows so the caller knows whether more follow."""
    conds = ["symbol = $1"]
    args: list[Any] = [symbol]
    if start_ns is not None:
        args.append(dt_from_ns(start_ns))
        conds.append(f"ts >= ${len(args)}")
    if end_ns is not None:
        args.append(dt_from_ns(end_ns))
        conds.append(f"ts < ${len(args)}")
    if cursor is not None:
        args.append(dt_from_ns(cursor[0]))
        args.append(cursor[1])
        conds.append(f"(ts, trade_id) > (${len(args) - 1}, ${len(args)})")
        # the same bound on ts alone: TimescaleDB prunes compressed batches by their min/max ts
        # only with a plain comparison (a day's page: 270 ms -> 8 ms, docs/benchmarks.md)
        conds.append(f"ts >= ${len(args) - 1}")
    order = "ts DESC, trade_id DESC" if newest_first else "ts, trade_id"
    args.append(limit + 1)
    return (
        f"SELECT {TRADE_FIELDS} FROM trades WHERE {' AND '.join(conds)} "
        f"ORDER BY {order} LIMIT ${len(args)}",
        args,
    )


def candles_query(
    symbol: str, interval: str, start_ns: int | None, end_ns: int | None, limit: int
) -> tuple[str, list[Any]]:
    """Stored candles of ``symbol`` and ``interval`` in ``[start, end)``: the first ``limit``
    from ``start``, or the newest ``limit`` when there is no start."""
    conds = ["symbol = $1", "interval = $2"]
    args: list[Any] = [symbol, interval]
    if start_ns is not None:
        args.append(dt_from_ns(start_ns))
        conds.append(f"bucket >= ${len(args)}")
    if end_ns is not None:
        args.append(dt_from_ns(end_ns))
        conds.append(f"bucket < ${len(args)}")
    args.append(limit)
    order = "bucket" if start_ns is not None else "bucket DESC"
    return (
        f"SELECT {CANDLE_FIELDS} FROM candles WHERE {' AND '.join(conds)} "
        f"ORDER BY {order} LIMIT ${len(args)}",
        args,
    )


# the REST fallbacks while Redis is down or empty (gateway_rest/store.py): the symbol catalogue
# and the latest sampled L2 snapshot of a symbol
SQL_SYMBOLS = (
    "SELECT symbol, base, quote, tick_size, min_size, status, source, channels, seq FROM symbols"
)
SQL_LATEST_L2_SNAPSHOT = """
SELECT ts, seq, epoch, checksum, bids, asks FROM l2_snapshots WHERE symbol = $1
ORDER BY ts DESC, seq DESC LIMIT 1"""
