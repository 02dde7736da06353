"""Simulator -> md.in -> aggregator -> md.l2 / md.snapshot on the real broker.

Asserts what a client relies on: every stream's seq is gapless from 1 in one epoch, the book
rebuilt from the l2 stream is never crossed and matches every checksum, and it equals both the
published l2 snapshot and a reference rebuilt independently from the input topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from decimal import Decimal
from typing import Any

import orjson
import pytest

from aggregator.service import Aggregator, ServiceConfig
from aggregator.sources.simulator import run_simulator
from aggregator.testing import (
    StreamCheck,
    l2book_as_dict,
    read_topic,
    reference_books,
)
from core.book import L2Book
from core.kafka import make_consumer, partitions_of
from core.settings import Settings
from core.topics import Topics

pytestmark = pytest.mark.integration


async def wait_caught_up(settings: Settings, group: str, limit_s: float = 60.0) -> None:
    """Until the aggregator group's committed offsets reach the end of the input topic."""
    from aiokafka import TopicPartition

    t = Topics.from_settings(settings)
    c = make_consumer(settings, group_id=None)
    await c.start()
    try:
        parts = await partitions_of(c, t.input)
        tps = [TopicPartition(t.input, p) for p in parts]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            while True:
                ends = await c.end_offsets(tps)
                committed = await admin.list_consumer_group_offsets(group)
                if all(
                    committed.get(tp) is not None and committed[tp].offset >= ends[tp]
                    for tp in tps
                    if ends[tp] > 0
                ):
                    return
                if loop.time() > deadline:
                    raise TimeoutError(f"aggregator not caught up: {committed} vs {ends}")
                await asyncio.sleep(0.2)
        finally:
            await admin.close()
    finally:
        await c.stop()


def as_dec(book: dict[str, dict[Decimal, Decimal]]) -> dict[str, dict[Decimal, Decimal]]:
    return {k: dict(sorted(v.items())) for k, v in book.items()}


async def test_simulator_to_l2_stream_and_snapshot(settings: Settings) -> None:
    s = dataclasses.replace(settings, sim_rate=3000.0)
    cfg = dataclasses.replace(ServiceConfig.from_settings(s), snapshot_ms=100)
    stop_agg = asyncio.Event()
    agg = Aggregator(s, cfg)
    agg_task = asyncio.create_task(agg.run(stop_agg))
    try:
        published = await run_simulator(s, asyncio.Event(), steps=400, ops=False)
        assert published > 3 * 400
        await wait_caught_up(s, cfg.group)
    finally:
        stop_agg.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(agg_task, 30)
    t = Topics.from_settings(s)

    check = StreamCheck(depth=s.book_checksum_depth)
    for r in await read_topic(s, t.stream("l2")):
        check.feed(r.value)
    assert not check.errors, check.errors[:10]
    assert set(check.books) == set(s.symbols)

    ref = reference_books(await read_topic(s, t.input))
    snaps: dict[str, Any] = {}
    for r in await read_topic(s, t.snapshot):
        snaps[r.key.decode()] = orjson.loads(r.value) if r.value else None
    for sym in s.symbols:
        got = l2book_as_dict(check.books[sym])
        assert got["buy"] and got["sell"], f"{sym}: empty book"
        assert as_dec(got) == as_dec(ref[sym]), f"{sym}: stream book differs from input reference"
        snap = snaps[f"l2:{sym}"]
        assert snap["type"] == "l2_snapshot"
        assert snap["seq"] == check.last_seq[("l2", sym)]
        sb = L2Book()
        sb.load(snap["data"]["bids"], snap["data"]["asks"])
        assert as_dec(l2book_as_dict(sb)) == as_dec(got)
        assert snap["checksum"] == sb.checksum(s.book_checksum_depth)
        status = snaps[f"status:{sym}"]
        assert status["type"] == "status" and status["data"]["symbol"] == sym
        assert status["data"]["status"] == "online" and "l3" in status["data"]["channels"]


async def test_restarts_of_aggregator_and_simulator_continue_every_stream(
    settings: Settings,
) -> None:
    """Graceful restart of the aggregator (state from agg: keys, same epoch, seq continues) and a
    restarted simulator (its ``reset`` empties the book through ordinary updates)."""
    s = dataclasses.replace(settings, sim_rate=3000.0)
    cfg = dataclasses.replace(
        ServiceConfig.from_settings(s), checkpoint_ms=10_000_000
    )  # force replay
    for _round in range(2):
        stop_agg = asyncio.Event()
        agg = Aggregator(s, cfg)
        task = asyncio.create_task(agg.run(stop_agg))
        try:
            await run_simulator(s, asyncio.Event(), steps=150, ops=False)
            await wait_caught_up(s, cfg.group)
        finally:
            stop_agg.set()
            await asyncio.wait_for(task, 30)
    t = Topics.from_settings(s)
    check = StreamCheck(depth=s.book_checksum_depth)
    for topic in t.all_streams():
        for r in sorted(await read_topic(s, topic), key=lambda r: (r.partition, r.offset)):
            check.feed(r.value)
    assert not check.errors, check.errors[:10]
    resets = [
        e
        for m in [orjson.loads(r.value) for r in await read_topic(s, t.stream("l3"))]
        for e in m["data"]["events"]
        if e.get("reason") == "reset"
    ]
    assert resets, "the second simulator run must have deleted the first run's orders"
    ref = reference_books(await read_topic(s, t.input))
    for sym in s.symbols:
        assert as_dec(l2book_as_dict(check.books[sym])) == as_dec(ref[sym])
        assert as_dec(l2book_as_dict(check.l3_as_l2(sym))) == as_dec(ref[sym])


async def test_garbage_on_the_input_topic_is_counted_and_skipped(settings: Settings) -> None:
    from aggregator import events as ev
    from aggregator.service import MALFORMED
    from core.codec import now_ns
    from core.kafka import make_producer

    t = Topics.from_settings(settings)
    prod = make_producer(settings)
    await prod.start()
    ts = now_ns()
    for value in (
        b"\x00garbage",
        b'{"type":"open","symbol":"BTC-USD"}',
        ev.encode(ev.open_("BTC-USD", ts, "good-1", "buy", "100.00", "1.0")),
        b'{"type":"open","symbol":"BTC-USD","ts":1,"order_id":"x","side":"buy","price":"-5","size":"1"}',
        ev.encode(ev.open_("BTC-USD", ts, "good-2", "sell", "101.00", "2.0")),
    ):
        await prod.send_and_wait(t.input, value=value, key=b"BTC-USD")
    await prod.stop()
    before = MALFORMED._value.get()
    cfg = ServiceConfig.from_settings(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(Aggregator(settings, cfg).run(stop))
    try:
        await wait_caught_up(settings, cfg.group)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert MALFORMED._value.get() - before == 3
    check = StreamCheck()
    for r in await read_topic(settings, t.stream("l2")):
        check.feed(r.value)
    assert not check.errors
    assert check.books["BTC-USD"].top_bids() == [("100.00", "1.0")]
    assert check.books["BTC-USD"].top_asks() == [("101.00", "2.0")]
