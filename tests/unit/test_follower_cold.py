"""Cold keys of the stream join (``StreamJoin.interest``): a key nobody in the process reads is
kept as bytes and brought up to date when asked. Whatever the join was given, a cold join must
answer exactly what a join that applied everything at once answers."""

from __future__ import annotations

import random

import orjson

from core.follower import Action, Deliver, Reset, StreamJoin
from tests.unit.test_follower_join import Producer, level, tick

KEY = ("l2", "BTC-USD")


def never(channel: str, symbol: str) -> bool:
    return False


def pair(*, trades_keep: int = 100, buffer_max: int = 10_000) -> tuple[StreamJoin, StreamJoin]:
    hot, cold = (StreamJoin(trades_keep=trades_keep, buffer_max=buffer_max) for _ in range(2))
    cold.interest = never
    return hot, cold


def both(hot: StreamJoin, cold: StreamJoin, how: str, *args: object) -> list[Action]:
    getattr(hot, how)(*args)
    acts: list[Action] = getattr(cold, how)(*args)
    return acts


def random_updates(p: Producer, rng: random.Random, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        side = rng.choice(["buy", "sell"])
        px = str(rng.randint(90, 99) if side == "buy" else rng.randint(101, 110))
        out.append(p.update([[side, px, rng.choice(["0", "1", "2.5"])]]))
    return out


def same_book(hot: StreamJoin, cold: StreamJoin) -> None:
    a, b = hot.current(*KEY), cold.current(*KEY)
    assert a is not None and b is not None
    assert (b.seq, b.epoch, b.checksum, b.messages) == (a.seq, a.epoch, a.checksum, a.messages)
    assert cold.seq_of(*KEY) == hot.seq_of(*KEY)


def test_a_cold_book_delivers_nothing_and_answers_like_a_hot_one_at_many_points() -> None:
    rng = random.Random(11)
    p = Producer()
    p.update([level(1)])
    hot, cold = pair()
    both(hot, cold, "on_snapshot", "l2:BTC-USD", p.snapshot(), 0)
    for round_ in range(20):
        for i, m in enumerate(random_updates(p, rng, rng.randint(1, 40))):
            # the direct feed, with Kafka's copy of some of it behind
            assert both(hot, cold, "on_direct", m) == []
            if i % 3 == 0:
                assert both(hot, cold, "on_stream", m, "md.l2", 0) == []
        if round_ % 4 == 1:  # the snapshot topic, once in a while
            both(hot, cold, "on_snapshot", "l2:BTC-USD", p.snapshot(), round_)
        if round_ % 5 == 4:  # a query warms the key; the next message makes it cold again
            same_book(hot, cold)
            assert cold.keys[KEY].held == [] and cold.keys[KEY].held_base is None
    assert cold.held_total > 0 and cold.direct_taken == 0
    same_book(hot, cold)
    assert cold.seq_of(*KEY) == (p.seq, 1, p.book.checksum())
    assert cold.deferred == []


def test_a_snapshot_inside_the_held_run_replaces_what_it_covers() -> None:
    p = Producer()
    p.update([level(1)])
    hot, cold = pair()
    both(hot, cold, "on_snapshot", "l2:BTC-USD", p.snapshot(), 0)
    msgs = random_updates(p, random.Random(3), 100)
    for m in msgs[:80]:
        both(hot, cold, "on_direct", m)
    snap81 = Producer()  # the same book at seq 81, while the stream is at 101
    snap81.update([level(1)])
    for m in msgs[:80]:
        snap81.book.apply(orjson.loads(m)["data"]["changes"])
        snap81.seq += 1
    for m in msgs[80:]:
        both(hot, cold, "on_direct", m)
    both(hot, cold, "on_snapshot", "l2:BTC-USD", snap81.snapshot(), 1)
    st = cold.keys[KEY]
    assert st.held_from == 81 and len(st.held) == 20 and st.held_base is not None
    same_book(hot, cold)


def test_a_held_snapshot_that_does_not_parse_is_a_gap_not_an_old_book_under_a_new_seq() -> None:
    p = Producer()
    p.update([level(1)])
    hot, cold = pair()
    both(hot, cold, "on_snapshot", "l2:BTC-USD", p.snapshot(), 0)
    for m in random_updates(p, random.Random(7), 30):
        both(hot, cold, "on_direct", m)
    good = p.snapshot()  # the book at the stream's head: it replaces all that was held
    garbage = good[: good.index(b'"data"') + 12]  # its head is whole, its body cut off
    assert cold.on_snapshot("l2:BTC-USD", garbage, 1) == []  # kept cold, unparsed
    st = cold.keys[KEY]
    assert st.held_base == garbage and st.held == []
    # asked for, the key has no base: not the book of seq 1 under the seq of the snapshot
    assert cold.current(*KEY) is None and cold.seq_of(*KEY) is None
    assert cold.malformed >= 1 and st.gaps == 1
    # Kafka's copy of a later message waits for a base; the next good snapshot brings it back
    nxt = p.update([level(5)])
    both(hot, cold, "on_stream", nxt, "md.l2", 0)
    assert cold.current(*KEY) is None
    acts = cold.on_snapshot("l2:BTC-USD", good, 2)
    assert [(type(a), a.reason) for a in acts] == [(Reset, "gap")]  # type: ignore[union-attr]
    same_book(hot, cold)
    assert cold.seq_of(*KEY) == (p.seq, 1, p.book.checksum())


def test_a_bad_checksum_held_cold_is_found_when_the_key_is_asked_for() -> None:
    p = Producer()
    p.update([level(1)])
    cold = StreamJoin()
    cold.interest = never
    cold.on_snapshot("l2:BTC-USD", p.snapshot(), 0)
    good = p.update([level(2)])
    m = orjson.loads(p.update([level(3)]))
    m["checksum"] = (m["checksum"] + 1) % 2**32  # corrupted in flight
    bad = orjson.dumps(m)
    assert cold.on_direct(good) == [] and cold.on_direct(bad) == []  # kept, unchecked
    assert cold.current(*KEY) is None  # warming found it: the book waits for a snapshot
    assert cold.deferred == []  # no snapshot at or after the bad message yet
    acts = cold.on_snapshot("l2:BTC-USD", p.snapshot(), 1)
    assert [type(a) for a in acts] == [Reset] and acts[0].reason == "checksum"  # type: ignore[union-attr]
    cur = cold.current(*KEY)
    assert cur is not None and cur.checksum == p.book.checksum() and cur.seq == p.seq


def test_a_gap_on_a_cold_key_takes_the_ordinary_path() -> None:
    p = Producer()
    p.update([level(1)])
    hot, cold = pair()
    both(hot, cold, "on_snapshot", "l2:BTC-USD", p.snapshot(), 0)
    first, _lost, third = p.update([level(2)]), p.update([level(3)]), p.update([level(4)])
    both(hot, cold, "on_stream", first, "md.l2", 0)
    assert both(hot, cold, "on_stream", third, "md.l2", 0) == hot.on_stream(third, "md.l2", 0)
    assert cold.current(*KEY) is None and hot.current(*KEY) is None  # both wait for a base
    acts_hot = hot.on_snapshot("l2:BTC-USD", p.snapshot(), 1)
    acts_cold = cold.on_snapshot("l2:BTC-USD", p.snapshot(), 1)
    assert acts_cold == acts_hot and [a.reason for a in acts_cold] == ["gap"]  # type: ignore[union-attr]
    same_book(hot, cold)


def test_a_key_that_gains_a_reader_is_warmed_then_delivers_in_order() -> None:
    p = Producer()
    p.update([level(1)])
    readers: set[tuple[str, str]] = set()
    j = StreamJoin()
    j.interest = lambda ch, sym: (ch, sym) in readers
    j.on_snapshot("l2:BTC-USD", p.snapshot(), 0)
    for m in random_updates(p, random.Random(5), 30):
        assert j.on_direct(m) == []
    readers.add(KEY)
    nxt = p.update([level(9)])
    acts = j.on_direct(nxt)
    assert [a.seq for a in acts if isinstance(a, Deliver)] == [p.seq]
    assert j.seq_of(*KEY) == (p.seq, 1, p.book.checksum())


def test_cold_trades_and_ticker_keep_only_what_a_subscriber_would_get() -> None:
    hot, cold = pair(trades_keep=5)
    for s in range(1, 40):
        how = "on_stream" if s == 1 else "on_direct"  # Kafka starts a key; the feed follows
        both(hot, cold, how, tick(s, channel="trades", price=str(s)))
        both(hot, cold, how, tick(s, price=str(s)))
    assert len(cold.keys[("trades", "BTC-USD")].held) < 5
    for channel in ("trades", "ticker"):
        a, b = hot.current(channel, "BTC-USD"), cold.current(channel, "BTC-USD")
        assert a is not None and b is not None and b.messages == a.messages and b.seq == a.seq == 39
    # and the kept trades carry on from there once the key is cold again
    both(hot, cold, "on_direct", tick(40, channel="trades", price="40"))
    a, b = hot.current("trades", "BTC-USD"), cold.current("trades", "BTC-USD")
    assert a is not None and b is not None and b.messages == a.messages


def test_a_cold_run_longer_than_the_buffer_is_applied_not_kept_forever() -> None:
    p = Producer()
    p.update([level(1)])
    hot, cold = pair(buffer_max=50)
    both(hot, cold, "on_snapshot", "l2:BTC-USD", p.snapshot(), 0)
    for m in random_updates(p, random.Random(9), 175):
        both(hot, cold, "on_direct", m)
        assert len(cold.keys[KEY].held) <= 50
    assert cold.warmed >= 3
    same_book(hot, cold)
