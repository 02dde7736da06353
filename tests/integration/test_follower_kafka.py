"""StreamFollower on the real Kafka: snapshot topic joined with the stream topic."""

from __future__ import annotations

import asyncio

import pytest

from core.follower import Reset, StreamFollower
from core.kafka import make_producer
from core.settings import Settings
from core.topics import Topics
from tests.helpers import eventually
from tests.integration.ws_helpers import drop_topics  # noqa: F401 - autouse: topics deleted after each test
from tests.unit.test_follower_join import Producer, tick

pytestmark = pytest.mark.integration


async def test_follower_joins_snapshot_and_stream_and_follows_live(settings: Settings) -> None:
    t = Topics.from_settings(settings)
    p = Producer("BTC-USD")
    prod = make_producer(settings)
    await prod.start()
    try:
        for i in range(5):  # history before the snapshot
            await prod.send_and_wait(
                t.stream("l2"), p.update([["buy", str(100 + i), "1"]]), key=b"BTC-USD"
            )
        await prod.send_and_wait(t.snapshot, p.snapshot(), key=b"l2:BTC-USD")
        for i in range(3):  # after the snapshot, before the follower starts
            await prod.send_and_wait(
                t.stream("l2"), p.update([["sell", str(200 + i), "2"]]), key=b"BTC-USD"
            )
        await prod.send_and_wait(t.stream("ticker"), tick(1), key=b"BTC-USD")

        f = StreamFollower(settings, channels=["l2", "ticker"], watchdog_s=0.5)
        got: list[tuple[str, int]] = []
        resets: list[Reset] = []
        f.add_callback(lambda ch, sym, seq, raw, parsed: got.append((ch, seq)))
        f.add_reset_callback(resets.append)
        await f.start()
        try:
            await asyncio.wait_for(f.ready.wait(), 10)
            cur = f.current("l2", "BTC-USD")
            assert cur is not None and cur.seq == 8 and cur.checksum == p.book.checksum()
            assert [g for g in got if g[0] == "l2"] == [("l2", 6), ("l2", 7), ("l2", 8)]
            assert f.current("ticker", "BTC-USD") is not None
            for i in range(4):  # live
                await prod.send_and_wait(
                    t.stream("l2"), p.update([["buy", str(300 + i), "1"]]), key=b"BTC-USD"
                )
            await eventually(
                lambda: f.seq_of("l2", "BTC-USD") == (12, 1, p.book.checksum()), 10, interval=0.02
            )
            assert [s for c, s in got if c == "l2"] == list(range(6, 13))

            # the aggregator restarts without state: new epoch, snapshot published after its first update
            q = Producer("BTC-USD", epoch=2)
            q_snap = q.snapshot()
            await prod.send_and_wait(
                t.stream("l2"), q.update([["sell", "500", "1"]]), key=b"BTC-USD"
            )
            await asyncio.sleep(0.2)
            assert f.current("l2", "BTC-USD") is None  # waits for the new epoch's snapshot
            await prod.send_and_wait(t.snapshot, q_snap, key=b"l2:BTC-USD")
            await eventually(
                lambda: f.seq_of("l2", "BTC-USD") == (1, 2, q.book.checksum()), 10, interval=0.02
            )
            assert any(r.reason == "epoch" and r.epoch == 2 for r in resets)
            assert f.health()[0] is True
        finally:
            await f.stop()
    finally:
        await prod.stop()


async def test_follower_rewinds_when_snapshot_arrives_after_its_updates(settings: Settings) -> None:
    """Started with no snapshot at all: the book waits, then rewinds to the snapshot's time."""
    t = Topics.from_settings(settings)
    prod = make_producer(settings)
    await prod.start()
    f = StreamFollower(settings, channels=["l2"], watchdog_s=0.5)
    await f.start()
    try:
        await asyncio.wait_for(f.ready.wait(), 10)
        p = Producer("ETH-USD")
        await prod.send_and_wait(t.stream("l2"), p.update([["buy", "10", "1"]]), key=b"ETH-USD")
        snap = p.snapshot()  # seq 1, published late (after seq 2 and 3)
        for i in range(2):
            await prod.send_and_wait(
                t.stream("l2"), p.update([["buy", str(11 + i), "1"]]), key=b"ETH-USD"
            )
        await asyncio.sleep(0.3)
        await prod.send_and_wait(t.snapshot, snap, key=b"l2:ETH-USD")
        await eventually(
            lambda: f.seq_of("l2", "ETH-USD") == (3, 1, p.book.checksum()), 10, interval=0.02
        )
    finally:
        await f.stop()
        await prod.stop()
