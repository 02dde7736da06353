"""The pure snapshot+stream join (core.follower.StreamJoin): no Kafka, no clock."""

from __future__ import annotations

import orjson

from core.book import L2Book
from core.channels import data_message
from core.follower import Deliver, Reset, Rewind, StreamJoin
from core.messages import MessageType
from core.stream_state import HEAD
from testkit.fake_aggregator import Platform
from tests.helpers import eventually

T0 = 1_795_503_050_000_000_000


class Producer(Platform):
    """testkit's fake aggregator on this module's fixed clock (seq s published at T0 + s µs)."""

    def __init__(self, symbol: str = "BTC-USD", epoch: int = 1) -> None:
        super().__init__(symbol, epoch, t0=T0)


def tick(seq: int, epoch: int = 1, channel: str = "ticker", price: str = "100") -> bytes:
    return orjson.dumps(
        data_message(
            type="ticker",
            channel=channel,
            symbol="BTC-USD",
            seq=seq,
            epoch=epoch,
            publish_ns=T0 + epoch * 10**9 + seq * 1000,
            event_ns=T0,
            data={"price": price},
        )
    )


def l3(seq: int, typ: MessageType) -> bytes:
    """An empty l3 snapshot or update at ``seq``, for the tail-channel (l3) join tests."""
    return orjson.dumps(
        data_message(
            type=typ,
            channel="l3",
            symbol="BTC-USD",
            seq=seq,
            epoch=1,
            publish_ns=T0 + seq,
            event_ns=T0,
            data={},
        )
    )


def level(i: int) -> list[str]:
    return [
        "buy" if i % 2 else "sell",
        str(100 + (i % 7) if i % 2 == 0 else 90 - (i % 5)),
        str(i + 1),
    ]


def delivered(actions: list) -> list[int]:
    return [a.seq for a in actions if isinstance(a, Deliver)]


def test_snapshot_then_stream_drops_old_and_delivers_in_order() -> None:
    p = Producer()
    updates = [p.update([level(i)]) for i in range(5)]
    snap = p.snapshot()  # seq 5
    updates += [p.update([level(i)]) for i in range(5, 10)]
    j = StreamJoin()
    acts = j.on_snapshot(b"l2:BTC-USD", snap, 1000)
    assert [type(a) for a in acts] == [Reset]
    seqs: list[int] = []
    for u in updates:  # the stream is read from before the snapshot
        seqs += delivered(j.on_stream(u, "t", 0))
    assert seqs == [6, 7, 8, 9, 10]
    cur = j.current("l2", "BTC-USD")
    assert cur is not None and cur.seq == 10
    got = orjson.loads(cur.messages[0])
    assert got["type"] == "l2_snapshot" and got["checksum"] == p.book.checksum()
    assert got["data"] == p.book.snapshot()


def test_duplicates_are_dropped() -> None:
    p = Producer()
    j = StreamJoin()
    j.on_snapshot("l2:BTC-USD", p.snapshot(), 0)
    u1 = p.update([["buy", "10", "1"]])
    assert delivered(j.on_stream(u1)) == [1]
    assert j.on_stream(u1) == []
    assert j.dropped_dup == 1


def test_updates_before_snapshot_are_buffered_then_joined() -> None:
    p = Producer()
    p.update([["buy", "10", "1"]])
    snap = p.snapshot()
    ups = [p.update([level(i)]) for i in range(3)]
    j = StreamJoin()
    for u in ups:
        assert j.on_stream(u, "t", 1) == []  # no base yet: nothing delivered
    assert j.current("l2", "BTC-USD") is None
    acts = j.on_snapshot("l2:BTC-USD", snap, 5)
    assert len(acts) == 1 and isinstance(acts[0], Reset) and acts[0].seq == 4
    assert j.current("l2", "BTC-USD").checksum == p.book.checksum()  # type: ignore[union-attr]


def test_snapshot_older_than_buffer_asks_for_rewind_once() -> None:
    p = Producer()
    snap = p.snapshot()  # seq 0
    p.update([["buy", "10", "1"]])  # seq 1, never seen by the join
    late = [p.update([level(i)]) for i in range(2)]  # seq 2, 3
    j = StreamJoin(margin_ms=100)
    for u in late:
        j.on_stream(u, "md.l2", 2)
    acts = j.on_snapshot("l2:BTC-USD", snap, 5_000)
    assert acts == [Rewind("md.l2", 2, 4_900)]
    assert j.on_snapshot("l2:BTC-USD", snap, 5_000) == []  # asked once for this snapshot


def test_gap_resnapshots_from_a_snapshot_covering_the_hole() -> None:
    p = Producer()
    j = StreamJoin()
    j.on_snapshot("l2:BTC-USD", p.snapshot(), 0)
    assert delivered(j.on_stream(p.update([["buy", "10", "1"]]))) == [1]
    p.update([["buy", "11", "1"]])  # seq 2 lost
    u3 = p.update([["sell", "12", "1"]])
    assert j.on_stream(u3) == []  # gap: no delivery, no rewind (cannot help)
    assert j.current("l2", "BTC-USD") is None
    u4 = p.update([["sell", "13", "2"]])
    j.on_stream(u4)
    # an old snapshot (seq 0) cannot bridge the hole; a snapshot at seq 3 can
    p_old = Producer()
    assert j.on_snapshot("l2:BTC-USD", p_old.snapshot(), 0) == []
    snap3 = Producer()
    snap3.book, snap3.seq = L2Book(), 3
    snap3.book.load([("11", "1"), ("10", "1")], [("12", "1")])
    acts = j.on_snapshot("l2:BTC-USD", snap3.snapshot(), 9)
    assert [(type(a), a.reason) for a in acts] == [(Reset, "gap")]  # type: ignore[union-attr]
    cur = j.current("l2", "BTC-USD", resync=True)
    assert cur is not None and cur.seq == 4 and cur.checksum == p.book.checksum()
    assert orjson.loads(cur.messages[0])["resync"] is True


def test_bad_checksum_triggers_resnapshot() -> None:
    p = Producer()
    j = StreamJoin()
    j.on_snapshot("l2:BTC-USD", p.snapshot(), 0)
    bad = orjson.loads(p.update([["buy", "10", "1"]]))
    bad["checksum"] = 12345
    assert delivered(j.on_stream(orjson.dumps(bad))) == []
    assert j.current("l2", "BTC-USD") is None


def test_new_epoch_on_stream_waits_for_that_epochs_snapshot_and_retires_old() -> None:
    p = Producer(epoch=1)
    j = StreamJoin()
    j.on_snapshot("l2:BTC-USD", p.snapshot(), 0)
    j.on_stream(p.update([["buy", "10", "1"]]))
    q = Producer(epoch=2)
    q_snap = q.snapshot()
    first = q.update([["sell", "20", "1"]])
    assert j.on_stream(first) == []
    assert j.on_stream(p.update([["buy", "9", "1"]])) == []  # late message of the old epoch
    acts = j.on_snapshot("l2:BTC-USD", q_snap, 10)
    assert [(type(a), a.epoch, a.seq) for a in acts] == [(Reset, 2, 1)]  # type: ignore[union-attr]
    assert delivered(j.on_stream(q.update([["sell", "21", "1"]]))) == [2]


def test_idle_stream_adopts_newer_snapshot_of_new_epoch() -> None:
    j = StreamJoin()
    j.on_snapshot("ticker:BTC-USD", tick(5, epoch=1), 0)
    assert delivered(j.on_stream(tick(6, epoch=1))) == [6]
    acts = j.on_snapshot("ticker:BTC-USD", tick(3, epoch=2), 10)
    assert [(type(a), a.reason) for a in acts] == [(Reset, "epoch")]  # type: ignore[union-attr]
    assert j.on_stream(tick(7, epoch=1)) == []  # retired
    assert delivered(j.on_stream(tick(4, epoch=2))) == [4]


def test_self_contained_channels_need_no_snapshot_and_rebase_on_gap() -> None:
    j = StreamJoin()
    acts = j.on_stream(tick(10))
    assert [type(a) for a in acts] == [Reset]
    assert delivered(j.on_stream(tick(11))) == [11]
    acts = j.on_stream(tick(13, price="101"))
    assert [(type(a), a.reason) for a in acts] == [(Reset, "gap")]  # type: ignore[union-attr]
    cur = j.current("ticker", "BTC-USD")
    assert (
        cur is not None
        and cur.seq == 13
        and orjson.loads(cur.messages[0])["data"]["price"] == "101"
    )


def test_trades_keep_last_n() -> None:
    j = StreamJoin(trades_keep=3)
    for s in range(1, 8):
        j.on_stream(tick(s, channel="trades"))
    cur = j.current("trades", "BTC-USD", last=2)
    assert cur is not None and [orjson.loads(m)["seq"] for m in cur.messages] == [6, 7]
    assert j.current("trades", "BTC-USD", last=0).messages == []  # type: ignore[union-attr]


def test_tail_channel_serves_snapshot_plus_updates_and_compacts() -> None:
    j = StreamJoin()
    j.on_snapshot("l3:BTC-USD", l3(2, "l3_snapshot"), 0)
    for s in (1, 2, 3, 4, 5):
        j.on_stream(l3(s, "l3_update"))
    cur = j.current("l3", "BTC-USD")
    assert cur is not None and [orjson.loads(m)["seq"] for m in cur.messages] == [2, 3, 4, 5]
    j.on_snapshot("l3:BTC-USD", l3(4, "l3_snapshot"), 1)
    cur = j.current("l3", "BTC-USD")
    assert cur is not None and [orjson.loads(m)["seq"] for m in cur.messages] == [4, 5]


def test_unknown_private_and_malformed_records_are_ignored() -> None:
    j = StreamJoin()
    assert j.on_snapshot("agg:state:BTC-USD", b"{}", 0) == []
    assert j.on_snapshot("l2:BTC-USD", b"not json", 0) == []
    assert j.on_stream(b"[1,2]") == []
    assert j.on_snapshot("l2:BTC-USD", None, 0) == []
    assert j.malformed == 2
    assert j.keys == {}


def test_filters_channels_and_symbols() -> None:
    j = StreamJoin(channels=["ticker"], symbols=["ETH-USD"])
    assert j.on_stream(tick(1)) == []
    assert j.keys == {}


def test_random_stream_matches_reference_book() -> None:
    import random

    rng = random.Random(7)
    p = Producer()
    j = StreamJoin()
    msgs: list[bytes] = []
    snap_at = 50
    snap = b""
    for i in range(200):
        side = rng.choice(["buy", "sell"])
        px = str(rng.randint(90, 99) if side == "buy" else rng.randint(101, 110))
        msgs.append(p.update([[side, px, rng.choice(["0", "1", "2.5"])]]))
        if i == snap_at:
            snap = p.snapshot()
    j.on_snapshot("l2:BTC-USD", snap, 0)
    seqs: list[int] = []
    for m in msgs:
        seqs += delivered(j.on_stream(m))
    assert seqs == list(range(snap_at + 2, 201))
    assert j.seq_of("l2", "BTC-USD") == (200, 1, p.book.checksum())


def test_tail_rebases_when_the_stream_catches_up_with_a_newer_snapshot() -> None:
    j = StreamJoin()
    j.on_snapshot("l3:BTC-USD", l3(2, "l3_snapshot"), 0)
    j.on_snapshot("l3:BTC-USD", l3(5, "l3_snapshot"), 1)  # ahead of the stream we have read
    for s in (3, 4):
        j.on_stream(l3(s, "l3_update"))
    cur = j.current("l3", "BTC-USD")
    assert cur is not None and [orjson.loads(m)["seq"] for m in cur.messages] == [2, 3, 4]
    j.on_stream(l3(5, "l3_update"))
    cur = j.current("l3", "BTC-USD")
    assert cur is not None and [orjson.loads(m)["type"] for m in cur.messages] == ["l3_snapshot"]
    assert cur.seq == 5


# ------------------------------------------------------------------ direct feed arbitration


def synced_l2() -> tuple[StreamJoin, Producer]:
    p = Producer()
    p.update([level(1)])
    j = StreamJoin()
    j.on_snapshot(b"l2:BTC-USD", p.snapshot(), 0)
    assert j.seq_of("l2", "BTC-USD") is not None
    return j, p


def test_direct_next_seq_is_delivered_and_its_kafka_copy_dropped() -> None:
    j, p = synced_l2()
    msg = p.update([level(2)])
    acts = j.on_direct(msg)
    assert len(acts) == 1 and isinstance(acts[0], Deliver) and acts[0].seq == p.seq
    assert j.on_stream(msg, "md.l2", 0) == []  # the Kafka copy arrives later: dropped
    assert j.dropped_dup == 1 and j.direct_taken == 1


def test_direct_never_creates_a_gap_kafka_fills_it_and_direct_is_back_in_step() -> None:
    j, p = synced_l2()
    first, second = p.update([level(2)]), p.update([level(3)])
    assert j.on_direct(second) == []  # direct lost `first`: held, no resnapshot
    assert j.seq_of("l2", "BTC-USD")[0] == p.seq - 2  # type: ignore[index]
    got = j.on_stream(first, "md.l2", 0)  # Kafka fills the hole: the held one follows at once
    assert [a.seq for a in got if isinstance(a, Deliver)] == [p.seq - 1, p.seq]
    assert not any(isinstance(a, Reset) for a in got)
    assert j.on_stream(second, "md.l2", 0) == []  # its Kafka copy: dropped
    third = p.update([level(4)])
    assert [type(a) for a in j.on_direct(third)] == [Deliver]  # in step again


def test_direct_ahead_by_many_stays_in_step_while_kafka_lags() -> None:
    """A follower that joined from Kafka is behind the direct feed: without holding, every
    direct message would stay one ahead of Kafka's latest and never be taken (measured: l2
    150 ms late for good after a gateway restart)."""
    j, p = synced_l2()
    msgs = [p.update([level(i)]) for i in range(5, 25)]
    for raw in msgs[5:]:
        assert j.on_direct(raw) == []  # Kafka is 5 behind
    got = []
    for raw in msgs[:5]:
        got += j.on_stream(raw, "md.l2", 0)
    assert [a.seq for a in got if isinstance(a, Deliver)] == list(range(p.seq - 19, p.seq + 1))
    nxt = p.update([level(40)])
    assert [type(a) for a in j.on_direct(nxt)] == [Deliver]


def test_direct_before_the_key_is_synced_or_of_another_epoch_is_ignored() -> None:
    j = StreamJoin()
    assert j.on_direct(tick(1)) == []  # no base yet: Kafka + snapshot decide
    j.on_snapshot(b"ticker:BTC-USD", tick(1), 0)
    assert j.on_direct(tick(2, epoch=2)) == []  # a new epoch only ever comes through Kafka
    assert [type(a) for a in j.on_direct(tick(2))] == [Deliver]
    assert j.direct_skipped == 2


def test_direct_message_whose_checksum_disagrees_resnapshots_like_kafka() -> None:
    j, p = synced_l2()
    bad = orjson.loads(p.update([level(2)]))
    bad["checksum"] = (bad["checksum"] + 1) % 2**32
    acts = j.on_direct(orjson.dumps(bad))
    assert not any(isinstance(a, Deliver) for a in acts)
    assert j.seq_of("l2", "BTC-USD") is None  # out of sync until a snapshot: never a bad book


def test_copy_detection_reads_only_the_head_and_falls_back_to_parsing() -> None:
    j, p = synced_l2()
    msg = p.update([level(2)])
    j.on_stream(msg, "md.l2", 0)
    assert j._already_have(HEAD.match(msg))  # noqa: SLF001 - the fast path itself
    other = b'{"channel":"l2","type":"x"}'
    assert not j._already_have(HEAD.match(other))  # noqa: SLF001 - other layout
    assert j.on_stream(b"not json", "md.l2", 0) == [] and j.malformed == 1


async def test_a_dead_follower_loop_fails_health() -> None:
    import asyncio
    import contextlib

    from core.follower import StreamFollower
    from core.settings import Settings

    f = StreamFollower(Settings())
    f.ready.set()

    async def loop_that_crashes() -> None:
        raise RuntimeError("bug")

    async def loop_that_runs() -> None:
        await asyncio.sleep(60)

    alive = asyncio.create_task(loop_that_runs(), name="follower-streams")
    f._tasks = [alive]  # noqa: SLF001 - the loops the follower started
    assert f.health()[0]
    crashed = asyncio.create_task(loop_that_crashes(), name="follower-snapshots")
    f._tasks.append(crashed)  # noqa: SLF001
    await asyncio.sleep(0)
    ok, detail = f.health()
    assert not ok and detail["dead_loops"] == ["follower-snapshots"]
    alive.cancel()
    with contextlib.suppress(asyncio.CancelledError, RuntimeError):
        await alive
        await crashed


def beat(heads: dict[str, list[int]], ts_ms: int = 1_000) -> bytes:
    return orjson.dumps({"type": "feed_heartbeat", "ts_ms": ts_ms, "heads": heads})


def test_feed_heartbeat_finds_the_feed_whole_only_when_every_key_reached_its_head() -> None:
    j, p = synced_l2()
    head = p.seq
    assert j.on_direct(beat({"l2:BTC-USD": [1, head]}, 5)) == []  # consumed, never delivered
    assert j.feed_whole_at == 5 and j.in_sync()
    assert j.on_direct(beat({"l2:BTC-USD": [1, head + 1]}, 6)) == []  # one message missing
    assert j.feed_whole_at is None
    j.on_direct(p.update([level(2)]))
    j.on_direct(beat({"l2:BTC-USD": [1, head + 1]}, 7))
    assert j.feed_whole_at == 7


def test_feed_heartbeat_needs_kafka_for_unknown_keys_and_new_epochs_not_for_retired_ones() -> None:
    j, p = synced_l2()
    j.on_direct(beat({"l2:BTC-USD": [1, p.seq], "l2:ETH-USD": [1, 3]}))
    assert j.feed_whole_at is None  # a key this follower has no base for: Kafka + snapshot
    j.on_direct(beat({"l2:BTC-USD": [2, 1]}))
    assert j.feed_whole_at is None  # a new epoch only ever comes through Kafka
    j.keys[("l2", "BTC-USD")].retired.append(0)
    j.on_direct(beat({"l2:BTC-USD": [1, p.seq], "l2:BTC-USD-OLD": [0, 9]}, 9))
    assert j.feed_whole_at is None  # unknown key again (BTC-USD-OLD): not whole
    j.on_direct(beat({"l2:BTC-USD": [0, 10**6]}, 10))  # an old leader's stale head: ignored
    assert j.feed_whole_at == 10


def test_feed_heartbeat_ignores_keys_the_follower_does_not_want_and_refuses_garbage() -> None:
    j = StreamJoin(channels=["ticker"])
    j.on_snapshot(b"ticker:BTC-USD", tick(4), 0)
    j.on_direct(beat({"ticker:BTC-USD": [1, 4], "l2:BTC-USD": [1, 99]}, 3))
    assert j.feed_whole_at == 3
    before = j.malformed
    assert j.on_direct(b'{"type":"feed_heartbeat","ts_ms":"x"}') == []
    assert j.feed_whole_at is None and j.malformed == before + 1


def test_a_hole_held_for_kafka_means_not_in_sync() -> None:
    j, p = synced_l2()
    p.update([level(2)])
    j.on_direct(p.update([level(3)]))  # the one before it was lost: held
    assert not j.in_sync()


def test_a_snapshot_of_a_synced_key_is_kept_as_bytes_and_still_heals_a_later_gap() -> None:
    j, p = synced_l2()
    j.on_stream(p.update([level(2)]), "md.l2", 0)
    j.on_snapshot(b"l2:BTC-USD", p.snapshot(), 0)  # in sync: kept unparsed
    snap = j.keys[("l2", "BTC-USD")].latest_snap
    assert snap is not None and snap.msg is None and snap.raw
    p.update([level(3)])  # lost
    acts = j.on_stream(p.update([level(4)]), "md.l2", 0)  # a gap: the kept snapshot is too old
    assert j.seq_of("l2", "BTC-USD") is None and not any(isinstance(a, Deliver) for a in acts)
    acts = j.on_snapshot(b"l2:BTC-USD", p.snapshot(), 0)  # out of sync: parsed, rebased
    assert [a.reason for a in acts if isinstance(a, Reset)] == ["gap"]
    assert j.seq_of("l2", "BTC-USD")[0] == p.seq  # type: ignore[index]


def test_a_kept_snapshot_that_is_garbage_counts_as_malformed_and_never_becomes_the_book() -> None:
    j, p = synced_l2()
    good = p.snapshot()
    j.on_snapshot(b"l2:BTC-USD", good[:-3] + b"!!}", 0)  # its head is fine: kept unparsed
    before = j.malformed
    p.update([level(2)])  # lost
    acts = j.on_stream(p.update([level(3)]), "md.l2", 0)  # a gap: now the snapshot is needed
    assert j.malformed == before + 1 and not acts
    assert j.keys[("l2", "BTC-USD")].latest_snap is None
    assert j.seq_of("l2", "BTC-USD") is None  # out of sync, not rebuilt from garbage
    acts = j.on_snapshot(b"l2:BTC-USD", p.snapshot(), 0)
    assert [a.reason for a in acts if isinstance(a, Reset)] == ["gap"]


def test_direct_messages_of_streams_not_followed_are_skipped_unparsed() -> None:
    j = StreamJoin(channels=["ticker"])
    j.on_snapshot(b"ticker:BTC-USD", tick(1), 0)
    before = j.malformed
    # an l2 message with a valid head and a broken body: never parsed, so never malformed
    assert j.on_direct(tick(2, channel="l2")[:-2] + b"!}") == []
    assert j.malformed == before and ("l2", "BTC-USD") not in j.keys
    assert [type(a) for a in j.on_direct(tick(2))] == [Deliver]


async def test_a_broker_that_stops_answering_is_declared_lost_and_found_again() -> None:
    """A probe that hangs (a cut network, not a refused connection) counts as failed after 3/4
    of a watchdog period on a responsive loop, the generous timeout only on a late loop (issue
    11: a 10 s cut used to end before two 5 s timeouts declared it)."""
    import asyncio

    from core.follower import StreamFollower
    from core.settings import Settings

    class Broker:
        answering = asyncio.Event()

        async def end_offsets(self, tps: list[object]) -> dict[object, int]:
            await self.answering.wait()
            return {}

    f = StreamFollower(Settings(), watchdog_s=2.0)
    assert f.probe_timeout(late=0.01) == 1.5 and f.probe_timeout(late=1.0) == 5.0
    f = StreamFollower(Settings(), watchdog_s=0.2)
    broker = Broker()
    f._stream_consumer = broker  # noqa: SLF001 - the probed consumer
    task = asyncio.create_task(f._watchdog())  # noqa: SLF001
    try:
        await eventually(lambda: not f.connected, 10)
        broker.answering.set()
        await eventually(lambda: f.connected, 10)
    finally:
        task.cancel()


async def test_a_paused_backup_wakes_on_a_heartbeat_that_is_not_whole_not_on_a_clock() -> None:
    """While the feed is whole, Kafka is looked at again only when a heartbeat says it must be
    (or after half the feed timeout): not every MD_FOLLOWER_BACKUP_WAIT_MS."""
    import asyncio

    from core.follower import StreamFollower
    from core.settings import Settings

    f = StreamFollower(Settings())
    f.feed_timeout_s = 120.0  # the clock alone would keep the wait for a minute
    p = Producer()
    p.update([level(1)])
    f.join.on_snapshot("l2:BTC-USD", p.snapshot(), 0)
    waiting = asyncio.create_task(f._wait_while_whole())  # noqa: SLF001
    f._on_direct(beat({"l2:BTC-USD": [1, p.seq]}))  # noqa: SLF001 - whole: nothing to do
    await asyncio.sleep(0.05)
    assert not waiting.done()
    f._on_direct(beat({"l2:BTC-USD": [1, p.seq + 5]}))  # noqa: SLF001 - five seqs missing
    await asyncio.wait_for(waiting, 5)  # woken by the heartbeat
    assert f.join.feed_whole_at is None
