"""Property tests of the matching engine and the aggregator's book/state (no I/O).

For any sequence of orders: the engine's book is never crossed and conserves size; the
aggregator's L2 (from the engine's events) equals the engine's own levels; L1 equals the top of
L2; the l2_update stream applied to an independent client book reproduces it with matching
checksums; the L3 stream summed per price equals L2; and a state checkpointed mid-stream and
replayed with different batching ends identical (the exactly-once recovery relies on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import events as ev
from aggregator.sources.matching import MatchingEngine
from aggregator.state import SymbolState
from aggregator.testing import StreamCheck
from core.book import L2Book
from core.checksum import book_checksum

SYM = "BTC-USD"

op = st.one_of(
    st.tuples(
        st.just("limit"),
        st.sampled_from(["buy", "sell"]),
        st.integers(990, 1010),
        st.integers(1, 50),
    ),
    st.tuples(st.just("market"), st.sampled_from(["buy", "sell"]), st.integers(1, 80), st.just(0)),
    st.tuples(st.just("cancel"), st.integers(0, 200), st.just(0), st.just(0)),
    st.tuples(st.just("reduce"), st.integers(0, 200), st.integers(1, 49), st.just(0)),
)


def run_ops(ops: list[tuple]) -> tuple[MatchingEngine, list[list[ev.AnyEvent]]]:
    e = MatchingEngine(SYM, price_decimals=2, size_decimals=2)
    per_op: list[list[ev.AnyEvent]] = []
    n = 0
    for i, (kind, a, b, c) in enumerate(ops):
        ts = 1_700_000_000_000_000_000 + i * 7_000_000_000  # 7 s apart: candles close
        if kind == "limit":
            n += 1
            out = e.limit(f"o{n}", a, b, c, ts)
        elif kind == "market":
            n += 1
            out = e.market(f"o{n}", a, b, ts)
        elif kind == "cancel":
            out = e.cancel(f"o{a}", ts)
        else:
            o = e.orders.get(f"o{a}")
            out = e.reduce(f"o{a}", min(b, o.size - 1), ts) if o is not None and o.size > 1 else []
        per_op.append(out)
        bb, ba = e.best_bid(), e.best_ask()
        assert bb is None or ba is None or bb < ba, "engine book crossed"
    return e, per_op


def engine_levels(e: MatchingEngine) -> dict[str, list[tuple[str, str]]]:
    bids = sorted(e.level_sizes("buy").items(), reverse=True)
    asks = sorted(e.level_sizes("sell").items())
    return {
        "buy": [(e.px(p), e.sz(q)) for p, q in bids],
        "sell": [(e.px(p), e.sz(q)) for p, q in asks],
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=120), st.integers(1, 9))
def test_book_properties(ops: list[tuple], flush_every: int) -> None:
    engine, per_op = run_ops(ops)
    state = SymbolState(SYM, 1)
    check = StreamCheck(depth=10)
    events = [x for out in per_op for x in out]
    opened = sum(x.qty for x in events if isinstance(x, ev.Open))
    for i, out in enumerate(per_op):
        for x in out:
            state.apply(ev.decode(ev.encode(x)))  # through the wire codec, as in production
        if i % flush_every == 0 or i == len(per_op) - 1:
            for _ch, msg in state.flush(0):
                check.feed(_bytes(msg))
            assert not state.book.crossed()
    assert not check.errors, check.errors[:5]

    # L2 equals the engine's own levels (independent aggregation, in ints)
    lv = engine_levels(engine)
    assert state.book.top("buy") == lv["buy"]
    assert state.book.top("sell") == lv["sell"]
    # the client book from the l2 stream equals it, and so does the l3 stream summed per price
    client = check.books.get(SYM, L2Book())
    assert client.top_bids() == lv["buy"] and client.top_asks() == lv["sell"]
    l3 = check.l3_as_l2(SYM)
    assert [Decimal(q) for _, q in l3.top_bids()] == [Decimal(q) for _, q in lv["buy"]]
    assert [Decimal(q) for _, q in l3.top_asks()] == [Decimal(q) for _, q in lv["sell"]]
    # checksum against an independent computation from the engine's strings
    assert state.book.checksum(10) == book_checksum(lv["sell"][:10], lv["buy"][:10])
    # L1 equals the top of L2
    t = state.ticker_data()
    assert (t["best_bid"], t["best_bid_size"]) == (lv["buy"][0] if lv["buy"] else (None, None))
    assert (t["best_ask"], t["best_ask_size"]) == (lv["sell"][0] if lv["sell"] else (None, None))
    # conservation: what rests = opened - filled from resting - canceled/reduced away
    resting = sum(o.size for o in engine.orders.values())
    assert Decimal(resting) / 100 <= opened
    # trades: one message per match, taker side as sent
    matches = [x for x in events if isinstance(x, ev.Match)]
    assert check.counts["trades"] == len(matches)


def _bytes(msg: Mapping[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(msg)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=2, max_size=100), st.data())
def test_checkpoint_and_replay_give_identical_messages_and_state(
    ops: list[tuple], data: st.DataObject
) -> None:
    """The sequencer's premise (docs/aggregator.md "Sequencer and failover"): one input record
    (the events of one action) is one flush, so an instance restored from a checkpoint at any
    record boundary derives the very same messages, seq for seq, as one that never stopped."""
    _, per_op = run_ops(ops)
    records = [[ev.decode(ev.encode(x)) for x in out] for out in per_op if out]
    k = data.draw(st.integers(0, len(records)))
    a = SymbolState(SYM, 7)
    msgs_a = []
    for rec in records:
        for x in rec:
            a.apply(x)
        msgs_a.extend(a.flush(0))
    b = SymbolState(SYM, 7)
    msgs_b = []
    for rec in records[:k]:
        for x in rec:
            b.apply(x)
        msgs_b.extend(b.flush(0))
    c = SymbolState.from_state(_roundtrip(b.to_state()))
    for rec in records[k:]:
        for x in rec:
            c.apply(x)
        msgs_b.extend(c.flush(0))
    assert msgs_a == msgs_b
    assert a.to_state() == c.to_state()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=2, max_size=100), st.data())
def test_discard_spends_the_same_seqs_as_flush(ops: list[tuple], data: st.DataObject) -> None:
    """A standby discards the records the leader already published (``SymbolState.discard``
    builds no message and no checksum) and flushes the others: what it flushes must be the
    leader's messages, seq for seq, and its state the leader's, whichever records it skipped."""
    _, per_op = run_ops(ops)
    records = [[ev.decode(ev.encode(x)) for x in out] for out in per_op if out]
    skip = data.draw(st.lists(st.booleans(), min_size=len(records), max_size=len(records)))
    leader, standby = SymbolState(SYM, 7), SymbolState(SYM, 7)
    for rec, skipped in zip(records, skip, strict=True):
        for x in rec:
            leader.apply(x)
            standby.apply(x)
        published = leader.flush(5)
        if skipped:
            standby.discard()
        else:
            assert standby.flush(5) == published
    assert standby.seq == leader.seq
    assert standby.to_state() == leader.to_state()


def _roundtrip(d: dict) -> dict:
    import orjson

    return orjson.loads(orjson.dumps(d))


inconsistent = st.one_of(
    st.builds(
        lambda o, s, p, q: ev.open_(SYM, 1, f"x{o}", s, f"{p}.00", f"{q}.0"),
        st.integers(0, 15),
        st.sampled_from(["buy", "sell"]),
        st.integers(95, 105),
        st.integers(1, 5),
    ),
    st.builds(
        lambda o, q: ev.change(SYM, 2, f"x{o}", "buy", f"{q}.0"),
        st.integers(0, 15),
        st.integers(0, 5),
    ),
    st.builds(lambda o: ev.done(SYM, 3, f"x{o}", "sell", "canceled"), st.integers(0, 15)),
    st.builds(
        lambda t, o, q: ev.match(SYM, 4, str(t), f"x{o}", "taker", "buy", "100.00", f"{q}.0"),
        st.integers(0, 99),
        st.integers(0, 15),
        st.integers(1, 9),
    ),
    st.builds(lambda r: ev.reset(SYM, 5, r), st.just("test")),
    st.builds(
        lambda s, p, q: ev.book_update(SYM, 6, [[s, f"{p}.00", f"{q}.0"]]),
        st.sampled_from(["buy", "sell"]),
        st.integers(95, 105),
        st.integers(0, 3),
    ),
    st.builds(
        lambda p: ev.book_snapshot(SYM, 7, [[f"{p}.00", "1.0"]], [[f"{p + 1}.00", "2.0"]]),
        st.integers(95, 105),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(inconsistent, max_size=60), st.integers(1, 5))
def test_inconsistent_order_events_never_corrupt_the_book(
    evs: list[ev.AnyEvent], flush_every: int
) -> None:
    """Duplicate opens, changes/fills/dones of unknown orders, overfills, resets: no exception,
    L2 always equals the sum of the resting orders, and the published streams reproduce both.
    (Such a feed can rest crossing orders; the aggregator reports the book as the source has it.)"""
    state = SymbolState(SYM, 1)
    check = StreamCheck(depth=10, check_crossed=False)
    for i, e in enumerate(evs):
        state.apply(e)
        if i % flush_every == 0 or i == len(evs) - 1:
            for _ch, msg in state.flush(0):
                check.feed(_bytes(msg))
            levels = {
                (side, Decimal(p)): Decimal(q)
                for side in ("buy", "sell")
                for p, q in state.book.top(side)
            }
            if state.l2_only:
                assert not state.book.orders
            else:
                sums: dict[tuple[str, Decimal], Decimal] = {}
                for o in state.book.orders.values():
                    sums[(o.side, abs(o.key))] = sums.get((o.side, abs(o.key)), Decimal(0)) + o.size
                assert levels == sums
            assert all(q > 0 for q in levels.values())
    assert not check.errors, check.errors[:5]
    if evs:
        client = check.books.get(SYM, L2Book())
        assert client.top_bids() == state.book.top("buy") and client.top_asks() == state.book.top(
            "sell"
        )
