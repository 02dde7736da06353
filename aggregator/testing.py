"""Independent checkers for tests and benchmarks: read topics, verify streams, rebuild references.

Deliberately *not* built on :mod:`aggregator.book`/:mod:`aggregator.state`: the reference book is
a plain dict of orders summed per price, and the client book is ``core.book.L2Book``, so a bug in
the aggregator's book cannot hide itself in the check.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from aiokafka import TopicPartition

from aggregator import events as ev
from aggregator.recovery import stop_consumer
from core.book import L2Book
from core.kafka import delete_prefix_topics, make_consumer, partitions_of
from core.messages import MessageError
from core.messages import check as check_message
from core.settings import Settings


async def read_topic(settings: Settings, topic: str, *, limit_s: float = 30.0) -> list[Any]:
    """Every committed record of ``topic`` (all partitions) up to its current end."""
    c = make_consumer(settings, group_id=None)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(c, topic))]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + limit_s
        while True:
            pos = {tp: await c.position(tp) for tp in tps}
            if all(pos[tp] >= ends[tp] for tp in tps):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}")
            batch = await c.getmany(timeout_ms=200, max_records=20_000)
            for tp, recs in batch.items():
                out.extend(r for r in recs if r.offset < ends[tp])
        return out
    finally:
        await stop_consumer(c)


async def delete_topics(settings: Settings, prefix: str | None = None) -> None:
    """Delete every topic of a test/benchmark prefix (``core.kafka.delete_prefix_topics``)."""
    await delete_prefix_topics(settings, prefix)


def reference_books(records: list[Any]) -> dict[str, dict[str, dict[Decimal, Decimal]]]:
    """Books rebuilt directly from input records: symbol -> {"buy"/"sell": {price: size}}."""
    orders: dict[str, dict[str, tuple[str, Decimal, Decimal]]] = defaultdict(dict)
    l2: dict[str, dict[str, dict[Decimal, Decimal]]] = defaultdict(lambda: {"buy": {}, "sell": {}})
    l2_only: set[str] = set()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        try:
            events = ev.decode_record(r.value)
        except ev.EventError:
            continue
        for e in events:
            _reference_apply(e, orders, l2, l2_only)
    return _reference_result(orders, l2, l2_only)


def _reference_apply(e: Any, orders: Any, l2: Any, l2_only: set[str]) -> None:
    o = orders[e.symbol]
    if isinstance(e, ev.Open):
        o.setdefault(e.order_id, (e.side, e.px, e.qty))
    elif isinstance(e, ev.Change) and e.order_id in o:
        sd, px, _ = o[e.order_id]
        if e.qty > 0:
            o[e.order_id] = (sd, px, e.qty)
        else:
            del o[e.order_id]
    elif isinstance(e, ev.Done):
        o.pop(e.order_id, None)
    elif isinstance(e, ev.Match) and e.maker_order_id in o:
        sd, px, q = o[e.maker_order_id]
        if q - e.qty > 0:
            o[e.maker_order_id] = (sd, px, q - e.qty)
        else:
            del o[e.maker_order_id]
    elif isinstance(e, ev.Reset):
        o.clear()
        l2[e.symbol] = {"buy": {}, "sell": {}}
    elif isinstance(e, ev.BookSnapshot):
        l2_only.add(e.symbol)
        l2[e.symbol] = {
            "buy": {px: q for _, px, _, q in e.bids},
            "sell": {px: q for _, px, _, q in e.asks},
        }
    elif isinstance(e, ev.BookUpdate):
        l2_only.add(e.symbol)
        for sd, _, px, _, q in e.changes:
            if q == 0:
                l2[e.symbol][sd].pop(px, None)
            else:
                l2[e.symbol][sd][px] = q


def _reference_result(
    orders: Any, l2: Any, l2_only: set[str]
) -> dict[str, dict[str, dict[Decimal, Decimal]]]:
    out: dict[str, dict[str, dict[Decimal, Decimal]]] = {}
    for sym in set(orders) | set(l2):
        if sym in l2_only:
            out[sym] = l2[sym]
            continue
        book: dict[str, dict[Decimal, Decimal]] = {"buy": {}, "sell": {}}
        for sd, px, q in orders[sym].values():
            book[sd][px] = book[sd].get(px, Decimal(0)) + q
        out[sym] = book
    return out


def l2book_as_dict(book: L2Book) -> dict[str, dict[Decimal, Decimal]]:
    return {
        "buy": {Decimal(p): Decimal(q) for p, q in book.top_bids()},
        "sell": {Decimal(p): Decimal(q) for p, q in book.top_asks()},
    }


@dataclass
class StreamCheck:
    """Per (channel, symbol): seq gapless/no dup within an epoch; books rebuilt and verified."""

    depth: int = 10
    check_crossed: bool = True  # off for feeds that may legitimately publish a crossed book
    last_seq: dict[tuple[str, str], int] = field(default_factory=dict)
    epochs: dict[tuple[str, str], int] = field(default_factory=dict)
    books: dict[str, L2Book] = field(default_factory=dict)
    # l3 client books: symbol -> order_id -> (side, price, size)
    orders: dict[str, dict[str, tuple[str, str, Decimal]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # a consumer drops seq <= last (two publishers during a takeover write identical messages);
    # every dropped copy must equal the message first seen with that seq
    duplicates: int = 0
    seen: dict[tuple[str, str, int], bytes] = field(default_factory=dict)

    def feed(self, value: bytes) -> dict[str, Any]:
        m = orjson.loads(value)
        key = (m["channel"], m["symbol"])
        last = self.last_seq.get(key)
        body = orjson.dumps([m["epoch"], m["data"], m.get("checksum"), m["type"]])
        if last is not None and self.epochs.get(key) == m["epoch"] and m["seq"] <= last:
            self.duplicates += 1
            first = self.seen.get((*key, m["seq"]))
            if first is not None and first != body:
                self.errors.append(f"{key}: duplicate seq {m['seq']} differs from the first copy")
            return m
        self.seen[(*key, m["seq"])] = body
        self.counts[m["channel"]] += 1
        if key in self.epochs and self.epochs[key] != m["epoch"]:
            self.errors.append(f"{key}: epoch changed {self.epochs[key]} -> {m['epoch']}")
        self.epochs[key] = m["epoch"]
        expected = 1 if last is None else last + 1
        if m["seq"] != expected:
            self.errors.append(f"{key}: seq {m['seq']} expected {expected}")
        self.last_seq[key] = m["seq"]
        try:
            check_message(m)
        except MessageError as exc:
            self.errors.append(f"{key} seq {m['seq']}: not a declared message: {exc}")
        if m["type"] == "l2_update":
            self._l2_update(key, m)
        elif m["type"] == "l3_update":
            self._l3_update(key, m)
        return m

    def _l2_update(self, key: tuple[str, str], m: dict[str, Any]) -> None:
        b = self.books.setdefault(m["symbol"], L2Book())
        b.apply(m["data"]["changes"])
        if self.check_crossed and b.crossed():
            self.errors.append(f"{key} seq {m['seq']}: book crossed")
        if b.checksum(self.depth) != m["checksum"]:
            self.errors.append(f"{key} seq {m['seq']}: checksum mismatch")

    def _l3_update(self, key: tuple[str, str], m: dict[str, Any]) -> None:
        o = self.orders.setdefault(m["symbol"], {})
        for e in m["data"]["events"]:
            op, oid = e["op"], e["order_id"]
            if op == "add":
                if oid in o:
                    self.errors.append(f"{key} seq {m['seq']}: add of resting order {oid}")
                o[oid] = (e["side"], e["price"], Decimal(e["size"]))
            elif oid not in o:
                self.errors.append(f"{key} seq {m['seq']}: {op} of unknown order {oid}")
            elif op == "change":
                o[oid] = (o[oid][0], o[oid][1], Decimal(e["size"]))
            elif op == "fill":
                rest = o[oid][2] - Decimal(e["size"])
                if rest != Decimal(e["remaining"]):
                    self.errors.append(f"{key} seq {m['seq']}: fill remaining mismatch for {oid}")
                if rest > 0:
                    o[oid] = (o[oid][0], o[oid][1], rest)
                else:
                    del o[oid]
            elif op == "delete":
                del o[oid]
        if self.l3_as_l2(m["symbol"]).checksum(self.depth) != m["checksum"]:
            self.errors.append(f"{key} seq {m['seq']}: l3 checksum mismatch")

    def l3_as_l2(self, symbol: str) -> L2Book:
        """The l3 client book summed per price (sizes printed as the aggregator prints sums)."""
        sums: dict[tuple[str, str], Decimal] = {}
        for side, price, size in self.orders.get(symbol, {}).values():
            sums[(side, price)] = sums.get((side, price), Decimal(0)) + size
        b = L2Book()
        for (side, price), size in sums.items():
            b.set(side, price, format(size, "f"))
        return b
