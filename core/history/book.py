"""The book at any past moment, rebuilt from stored history (docs/storage.md "Book history").

``book_snapshots`` holds a full-depth ``l2_snapshot``/``l3_snapshot`` per symbol every
``MD_STORAGE_BOOK_SNAPSHOT_S``; ``stream_messages`` every ``l2_update``/``l3_update`` exactly as
published. The book after message ``seq`` N of an epoch is the newest snapshot of that epoch
with ``seq <= N`` plus the updates ``snapshot.seq + 1 .. N`` applied in order: the same book,
``seq`` and checksum a client following the live stream held after N. A missing update in
that range (a gap in storage) is an error, never a silently wrong book.

The rebuild (:class:`BookRebuild`) is pure; :func:`book_at` does the three queries
(core/history/sql.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import orjson

from core.book import L2Book
from core.errors import MarketDataError
from core.history.sql import SQL_AT, SQL_SEQ_EPOCH, SQL_SNAPSHOT, SQL_UPDATES, dt_from_ns
from core.l3book import Book

BOOK_CHANNELS = ("l2", "l3")
UPDATE_TYPES = {"l2": "l2_update", "l3": "l3_update"}
SNAPSHOT_TYPES = {"l2": "l2_snapshot", "l3": "l3_snapshot"}


class HistoryError(MarketDataError):
    """A point-in-time request that stored history cannot answer (an HTTP 404)."""

    retriable = False


class Fetcher(Protocol):
    """What :func:`book_at` needs of an ``asyncpg`` pool or connection."""

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]: ...  # noqa: ASYNC109

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any: ...  # noqa: ASYNC109


@dataclass(frozen=True, slots=True)
class Target:
    """The message after which the book is wanted."""

    epoch: int
    seq: int


class BookRebuild:
    """A snapshot message plus update messages -> the book after the last one applied."""

    def __init__(self, channel: str, snapshot: bytes) -> None:
        if channel not in BOOK_CHANNELS:
            raise ValueError(f"not a book channel: {channel!r}")
        m = orjson.loads(snapshot)
        if m.get("type") != SNAPSHOT_TYPES[channel]:
            raise HistoryError(f"stored snapshot is a {m.get('type')!r}, not a book snapshot")
        self.channel = channel
        self.symbol: str = m["symbol"]
        self.epoch: int = m["epoch"]
        self.seq: int = m["seq"]
        self.timestamp: str = m["timestamp"]
        self.event_time: str = m.get("event_time") or m["timestamp"]
        self.checksum: int | None = m.get("checksum")
        d = m["data"]
        if channel == "l2":
            self.l2 = L2Book()
            self.l2.load(((p, q) for p, q, *_ in d["bids"]), ((p, q) for p, q, *_ in d["asks"]))
        else:
            self.l3 = Book()
            for side, rows in (("buy", d["bids"]), ("sell", d["asks"])):
                for price, size, oid in rows:
                    self.l3.add(oid, side, price, Decimal(price), Decimal(size))
            self.l3.discard_changes()

    def apply(self, raw: bytes) -> None:
        """Apply the next update message; it must be ``seq + 1`` of the same epoch."""
        m = orjson.loads(raw)
        if m.get("epoch") != self.epoch or m.get("seq") != self.seq + 1:
            raise HistoryError(
                f"stored history of {self.channel}:{self.symbol} has a gap after seq "
                f"{self.seq} (epoch {self.epoch}): next stored message is seq {m.get('seq')}"
            )
        if m.get("type") != UPDATE_TYPES[self.channel]:
            raise HistoryError(f"unexpected {m.get('type')!r} in the {self.channel} history")
        d = m["data"]
        if self.channel == "l2":
            self.l2.apply(d["changes"])
        else:
            self._l3_events(d["events"])
        self.seq = m["seq"]
        self.timestamp = m["timestamp"]
        self.event_time = m.get("event_time") or m["timestamp"]
        self.checksum = m.get("checksum")

    def stamp(self, raw: bytes) -> None:
        """The stream message the snapshot ends with: the book is already after it, but the
        live client saw that message's own ``timestamp`` (a snapshot is published later)."""
        m = orjson.loads(raw)
        if m.get("epoch") == self.epoch and m.get("seq") == self.seq:
            self.timestamp = m["timestamp"]
            self.event_time = m.get("event_time") or m["timestamp"]
            self.checksum = m.get("checksum", self.checksum)

    def _l3_events(self, events: list[dict[str, Any]]) -> None:
        b = self.l3
        for e in events:
            op, oid = e["op"], e["order_id"]
            if op == "add":
                b.add(oid, e["side"], e["price"], Decimal(e["price"]), Decimal(e["size"]))
            elif op == "change":
                b.set_size(oid, Decimal(e["size"]))
            elif op == "fill":
                b.set_size(oid, Decimal(e["remaining"]))
            elif op == "delete":
                b.remove(oid)
        b.discard_changes()

    def body(self, depth: int) -> dict[str, Any]:
        """The REST orderbook body of the live book (gateway_rest), marked ``source: history``."""
        out: dict[str, Any] = {
            "symbol": self.symbol,
            "seq": self.seq,
            "epoch": self.epoch,
            "timestamp": self.timestamp,
            "checksum": self.checksum,
            "depth": depth,
        }
        if self.channel == "l2":
            snap = self.l2.snapshot(depth)
            out["bids"], out["asks"] = snap["bids"], snap["asks"]
        else:
            snap = self.l3.l3_snapshot()
            out["level"] = 3
            out["bids"] = cut_levels(snap["bids"], depth)
            out["asks"] = cut_levels(snap["asks"], depth)
        out["source"] = "history"
        return out


def cut_levels(orders: list[list[str]], depth: int) -> list[list[str]]:
    """Every order of the best ``depth`` price levels (orders are best price first)."""
    prices: set[str] = set()
    for i, o in enumerate(orders):
        if o[0] not in prices:
            if len(prices) == depth:
                return orders[:i]
            prices.add(o[0])
    return orders


async def resolve_target(
    db: Fetcher,
    channel: str,
    symbol: str,
    *,
    seq: int | None = None,
    epoch: int | None = None,
    at_ns: int | None = None,
) -> Target:
    """``seq`` (of ``epoch``, default the newest epoch that has it) or the last message at or
    before ``at_ns``."""
    if seq is not None:
        if epoch is None:
            epoch = await _fetchval(db, SQL_SEQ_EPOCH, channel, symbol, seq)
            if epoch is None:
                raise HistoryError(
                    f"no stored {channel} message of {symbol} with seq {seq} "
                    "(outside the retained history, or never published)"
                )
        return Target(epoch, seq)
    if at_ns is None:
        raise ValueError("seq or at_ns is required")
    row = await db.fetchrow(SQL_AT, channel, symbol, dt_from_ns(at_ns))
    if row is None:
        raise HistoryError(
            f"no stored {channel} history of {symbol} at or before that time "
            "(outside the retained history)"
        )
    return Target(int(row["epoch"]), int(row["seq"]))


async def rebuild(db: Fetcher, channel: str, symbol: str, target: Target) -> BookRebuild:
    snap = await db.fetchrow(SQL_SNAPSHOT, channel, symbol, target.epoch, target.seq)
    if snap is None:
        raise HistoryError(
            f"no stored {channel} snapshot of {symbol} at or before seq {target.seq} "
            f"(epoch {target.epoch}): outside the retained history"
        )
    book = BookRebuild(channel, bytes(snap["msg"]))
    for r in await db.fetch(
        SQL_UPDATES, channel, symbol, target.epoch, book.seq, target.seq, timeout=30
    ):
        if r["seq"] == book.seq:
            book.stamp(bytes(r["msg"]))
        else:
            book.apply(bytes(r["msg"]))
    if book.seq != target.seq:
        raise HistoryError(
            f"stored history of {channel}:{symbol} ends at seq {book.seq}, before {target.seq}"
        )
    return book


async def book_at(
    db: Fetcher,
    symbol: str,
    *,
    level: int = 2,
    depth: int = 20,
    seq: int | None = None,
    epoch: int | None = None,
    at_ns: int | None = None,
) -> dict[str, Any]:
    """The REST orderbook body of ``symbol``'s book after ``seq`` / as of ``at_ns``."""
    channel = "l3" if level == 3 else "l2"
    target = await resolve_target(db, channel, symbol, seq=seq, epoch=epoch, at_ns=at_ns)
    return (await rebuild(db, channel, symbol, target)).body(depth)


async def _fetchval(db: Fetcher, query: str, *args: Any) -> Any:
    row = await db.fetchrow(query, *args)
    return None if row is None else row[0]
