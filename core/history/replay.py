"""Stored messages of a time range, in stream order, for replay (docs/websocket.md "Replay").

:func:`replay_messages` yields the messages of ``channel:symbol`` between ``start`` and ``end``
exactly as they were published (the bytes kept in ``stream_messages``), in ``(epoch, seq)``
order, a page at a time (keyset pagination: no connection is held between pages, so a slow
reader costs the database nothing). Book channels start with an ``l2_snapshot``/``l3_snapshot``
of the book as of ``start`` (rebuilt by :mod:`core.history.book`, full depth, in the live envelope),
and a new epoch inside the range starts with that epoch's first stored snapshot, as a live
client would resnapshot. A gap in the stored book history ends the replay with
:class:`~core.history.book.HistoryError` rather than sending a wrong book.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from core.history.book import (
    BOOK_CHANNELS,
    SNAPSHOT_TYPES,
    Fetcher,
    HistoryError,
    Target,
    rebuild,
    resolve_target,
)
from core.history.sql import (
    SQL_FIRST_SNAPSHOT_AFTER,
    SQL_FIRST_SNAPSHOT_OF_EPOCH,
    SQL_PAGE,
    dt_from_ns,
)

PAGE = 2000
# a book message just after the snapshot may carry a publish time a little before `start`
# (clock of another aggregator after a takeover): the page query looks back this much
LOOKBACK_NS = 60 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class Item:
    """One message to send: its publish time (for pacing) and its bytes."""

    ts_ns: int
    raw: bytes


def _ns(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def snapshot_message(book: Any) -> bytes:
    """The rebuilt book as the ``*_snapshot`` message a live client gets on subscribe."""
    body = book.body(depth=10**9)
    data = {"bids": body["bids"], "asks": body["asks"]}
    msg = {
        "type": SNAPSHOT_TYPES[book.channel],
        "channel": book.channel,
        "symbol": book.symbol,
        "seq": book.seq,
        "epoch": book.epoch,
        "timestamp": book.timestamp,
        "event_time": book.event_time,
        "data": data,
        "checksum": book.checksum,
    }
    return orjson.dumps(msg)


async def replay_messages(
    db: Fetcher, channel: str, symbol: str, start_ns: int, end_ns: int, *, page: int = PAGE
) -> AsyncIterator[Item]:
    book = channel in BOOK_CHANNELS
    pos = (-1, -1)  # keyset: (epoch, seq) of the last message sent
    lo = start_ns
    if book:
        try:
            target = await resolve_target(db, channel, symbol, at_ns=start_ns)
        except HistoryError:
            target = None
        if target is not None:
            rebuilt = await rebuild(db, channel, symbol, target)
            yield Item(start_ns, snapshot_message(rebuilt))
            pos = (target.epoch, target.seq)
        else:  # the range starts before the stored history: from its first snapshot on
            row = await db.fetchrow(
                SQL_FIRST_SNAPSHOT_AFTER, channel, symbol, dt_from_ns(start_ns), dt_from_ns(end_ns)
            )
            if row is None:
                raise HistoryError(f"no stored {channel} history of {symbol} in that range")
            yield Item(_ns(row["ts"]), bytes(row["msg"]))
            pos = (int(row["epoch"]), int(row["seq"]))
        lo = start_ns - LOOKBACK_NS
    while True:
        rows = await db.fetch(
            SQL_PAGE,
            channel,
            symbol,
            dt_from_ns(lo),
            dt_from_ns(end_ns),
            pos[0],
            pos[1],
            page,
        )
        for r in rows:
            epoch, seq = int(r["epoch"]), int(r["seq"])
            if book and epoch != pos[0]:
                # a new epoch: the client must resnapshot; send its first stored snapshot and
                # continue after it
                snap = await db.fetchrow(SQL_FIRST_SNAPSHOT_OF_EPOCH, channel, symbol, epoch)
                if snap is None:
                    raise HistoryError(f"no stored snapshot of epoch {epoch} of {symbol}")
                yield Item(_ns(r["ts"]), bytes(snap["msg"]))
                pos = (epoch, int(snap["seq"]))
                break  # re-page from the snapshot's seq
            if epoch == pos[0] and seq <= pos[1]:
                continue
            if book and seq != pos[1] + 1:
                raise HistoryError(
                    f"stored {channel} history of {symbol} has a gap after seq {pos[1]}"
                )
            yield Item(_ns(r["ts"]), bytes(r["msg"]))
            pos = (epoch, seq)
        else:
            if len(rows) < page:
                return
            continue


__all__ = ["Item", "Target", "replay_messages", "snapshot_message"]
