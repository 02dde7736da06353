"""The cache writer's pure core: snapshot + stream join, conflation, resume-window decisions."""

from __future__ import annotations

import orjson
import pytest

from storage.cache_model import CacheModel, HistAction, hist_action
from storage.db_rows import RowBatch, RowBuilder
from storage.errors import BadRecord
from storage.messages import candle_of, parse_envelope, trades_of
from testkit import fake_aggregator as T

S = "BTC-USD"


@pytest.mark.parametrize(
    ("last", "epoch", "seq", "action"),
    [
        (None, 1, 5, HistAction.ADD),
        ((1, 4), 1, 5, HistAction.ADD),
        ((1, 5), 1, 5, HistAction.SKIP),
        ((1, 5), 1, 3, HistAction.SKIP),
        ((1, 5), 1, 7, HistAction.RESET),  # gap: the window must not claim continuity
        ((1, 5), 2, 1, HistAction.RESET),  # new epoch: delete, start over
        ((2, 5), 1, 9, HistAction.SKIP),  # retired epoch's late message
    ],
)
def test_hist_action(
    last: tuple[int, int] | None, epoch: int, seq: int, action: HistAction
) -> None:
    assert hist_action(last, epoch, seq) is action


def _book(m: CacheModel, depth: int = 5) -> dict[str, object]:
    return orjson.loads(m.take_writes().books[S][f"d{depth}"])


def test_snapshot_then_stream_drops_included_updates_and_conflates() -> None:
    m = CacheModel(book_depth=5)
    m.on_snapshot_record(b"l2:BTC-USD", T.l2_snapshot(S, 10, [["100", "1"]], [["101", "1"]]))
    m.on_stream_record(T.l2_update(S, 9, [["buy", "100", "5"]]))  # included in the snapshot
    m.on_stream_record(T.l2_update(S, 10, [["buy", "100", "5"]]))
    m.on_stream_record(T.l2_update(S, 11, [["buy", "99", "2"]]))
    m.on_stream_record(T.l2_update(S, 12, [["sell", "101", "0"], ["sell", "102", "3"]]))
    w = m.take_writes()
    assert list(w.books) == [S]  # one render for three messages
    b = orjson.loads(w.books[S]["d5"])
    assert (
        b["seq"] == 12 and b["bids"] == [["100", "1"], ["99", "2"]] and b["asks"] == [["102", "3"]]
    )
    assert set(w.books[S]) == {"seq", "epoch", "d1", "d5"}
    assert [h[3] for h in w.hist] == [9, 10, 11, 12]  # every stream message goes to the window
    assert m.counters.stale_dropped == 2
    assert m.take_writes().empty()


def test_gap_unsyncs_book_until_next_snapshot() -> None:
    m = CacheModel(book_depth=5)
    m.on_snapshot_record(b"l2:BTC-USD", T.l2_snapshot(S, 1, [["100", "1"]], []))
    m.take_writes()
    m.on_stream_record(T.l2_update(S, 3, [["buy", "99", "1"]]))  # seq 2 missing
    assert m.counters.book_gaps == 1 and not m.take_writes().books
    m.on_stream_record(T.l2_update(S, 4, [["buy", "98", "1"]]))
    assert not m.take_writes().books
    m.on_snapshot_record(
        b"l2:BTC-USD", T.l2_snapshot(S, 4, [["98", "1"], ["99", "1"], ["100", "1"]], [])
    )
    assert _book(m)["seq"] == 4


def test_new_epoch_needs_its_snapshot() -> None:
    m = CacheModel()
    m.on_snapshot_record(b"l2:BTC-USD", T.l2_snapshot(S, 50, [["100", "1"]], [], epoch=1))
    m.take_writes()
    m.on_stream_record(T.l2_update(S, 1, [["buy", "1", "1"]], epoch=2))
    assert not m.take_writes().books
    m.on_snapshot_record(b"l2:BTC-USD", T.l2_snapshot(S, 1, [["1", "1"]], [], epoch=2))
    b = _book(m, 1)
    assert (b["epoch"], b["seq"], b["bids"]) == (2, 1, [["1", "1"]])


def test_latest_values_keep_newest_and_trades_snapshot_seeds_once() -> None:
    m = CacheModel(trades_len=3)
    m.on_stream_record(T.ticker(S, 5, last_price="2"))
    m.on_snapshot_record(b"ticker:BTC-USD", T.ticker(S, 4, last_price="1"))  # older: dropped
    m.on_snapshot_record(b"status:BTC-USD", T.status(S, 1))
    m.on_snapshot_record(b"agg:state:BTC-USD", b"{}")
    snap = T.msg(
        "trades_snapshot",
        "trades",
        S,
        2,
        {
            "trades": [
                {
                    "trade_id": "1",
                    "price": "1",
                    "size": "1",
                    "side": "buy",
                    "time": "2026-11-24T00:00:00Z",
                },
                {
                    "trade_id": "2",
                    "price": "1",
                    "size": "1",
                    "side": "sell",
                    "time": "2026-11-24T00:00:01Z",
                },
            ]
        },
    )
    m.on_snapshot_record(b"trades:BTC-USD", snap)
    for i in (2, 3, 4, 5):
        m.on_stream_record(T.trade(S, i, str(i), "1", "1"))
    w = m.take_writes()
    assert orjson.loads(w.strings[f"ticker:{S}"])["last_price"] == "2"
    assert orjson.loads(w.symbols[S])["tick_size"] == "0.01"
    assert [orjson.loads(x)["trade_id"] for x in m.recent[S]] == ["3", "4", "5"]  # capped at 3
    assert S in w.trades_replace and w.trades_pos[S][1] == 5
    m.on_snapshot_record(b"trades:BTC-USD", snap)  # a later copy of the same epoch: ignored
    assert S not in m.take_writes().trades
    assert m.counters.unknown_keys == 1
    full = m.full_writes()
    assert set(full.strings) == {f"ticker:{S}"} and S in full.symbols and len(full.trades[S]) == 3


def test_bad_records_are_counted_not_raised() -> None:
    m = CacheModel()
    for raw in (
        b"nope",
        b"[]",
        b'{"type":"l2_update"}',
        T.l2_snapshot(S, 1, [["x", "1"]], []),
        T.msg("status", "status", S, 1, {"symbol": S}),
    ):
        m.on_stream_record(raw)
    assert m.counters.bad_records == 5


def test_candle_and_trade_parsing() -> None:
    c = candle_of(
        parse_envelope(
            T.candle(S, "5m", 3, "2026-11-24T07:00:00.000000Z", "1", "2", "0.5", "1.5", "10")
        )
    )
    assert (c.interval, c.close, c.seq) == ("5m", "1.5", 3)
    with pytest.raises(BadRecord):
        candle_of(
            parse_envelope(T.msg("candle", "candles_2m", S, 1, {"start": "2026-11-24T07:00:00Z"}))
        )
    with pytest.raises(BadRecord):
        trades_of(
            parse_envelope(
                T.msg(
                    "trade",
                    "trades",
                    S,
                    1,
                    {"trade_id": "1", "price": "1", "size": "1", "side": "up"},
                )
            )
        )
    ts = trades_of(parse_envelope(T.msg("trades_snapshot", "trades", S, 1, {"trades": []})))
    assert ts == []


def test_row_builder_merges_candles_and_samples_snapshots() -> None:
    rb = RowBuilder(snapshot_topic="p.snapshot", l2_every_s=10)
    b = RowBatch()
    for seq, close in ((1, "1"), (3, "3"), (2, "2")):
        b_ = T.candle(S, "1m", seq, "2026-11-24T07:00:00Z", "1", "3", "1", close, "1")
        rb.add(b, "p.candles", 0, seq, S.encode(), b_)
    assert len(b.candles) == 1 and next(iter(b.candles.values()))[1][6] == 3  # highest seq wins
    base = 1_795_500_000 * 10**9
    for i in range(4):
        rb.add(
            b,
            "p.snapshot",
            1,
            10 + i,
            b"l2:BTC-USD",
            T.l2_snapshot(S, i, [["1", "1"]], [], ts_ns=base + i * 4 * 10**9),
        )
    assert len(b.snapshots) == 2  # 0 s, 4 s, 8 s in one 10 s bucket; 12 s in the next
    rb.add(b, "p.snapshot", 1, 20, b"ticker:BTC-USD", T.ticker(S, 1))
    rb.add(b, "p.trades", 2, 7, S.encode(), b"garbage")
    assert b.bad == 1 and b.offsets == {
        ("p.candles", 0): 4,
        ("p.snapshot", 1): 21,
        ("p.trades", 2): 8,
    }


def test_trade_rows_fast_path_matches_general_parser() -> None:
    from core.codec import ns_from_iso

    rb = RowBuilder(snapshot_topic="p.snapshot")
    for t in ("2026-11-24T06:51:12.123456Z", "1970-01-01T00:00:00.000001Z", "2026-11-24T06:51:12Z"):
        assert rb._us(t) == rb._us(t) == ns_from_iso(t) // 1000
    b = RowBatch()
    good = T.trade(S, 5, "abc", "100.10", "0.5000", "sell", ts_ns=1_795_503_072_123_456_000)
    rb.add(b, "p.trades", 0, 0, None, good)
    assert b.trades == [(S, "abc", 1_795_503_072_123_456, "100.10", "0.5000", "sell", 5, T.EPOCH)]
    for bad in (
        T.trade(S, 6, "x", "NaN", "1"),
        T.trade(S, 7, "y", "1e", "1"),
        T.trade(S, 8, "", "1", "1"),
    ):
        rb.add(b, "p.trades", 0, 1, None, bad)
    assert b.bad == 3 and len(b.trades) == 1
    # a list of trades in one message is not what the aggregator sends (core/messages.py): refused
    rb.add(
        b,
        "p.trades",
        0,
        2,
        None,
        T.msg(
            "trade",
            "trades",
            S,
            9,
            [
                {
                    "trade_id": "l1",
                    "price": "1",
                    "size": "1",
                    "side": "buy",
                    "time": "2026-11-24T00:00:00.000000Z",
                }
            ],
        ),
    )
    assert b.trades[-1][1] == "abc" and b.bad == 4


def test_snapshot_records_the_streams_carry_are_skipped_once_they_are_followed() -> None:
    m = CacheModel()
    m.on_snapshot_record(f"ticker:{S}".encode(), T.ticker(S, 3, last_price="10"))
    assert m.take_writes().strings  # at start the snapshot topic is the state
    m.follow_streams()
    for key in (f"ticker:{S}", f"stats:{S}", f"candles_1m:{S}", f"candles_1d:{S}"):
        m.on_snapshot_record(key.encode(), b"not json")  # not even parsed
    assert m.counters.snapshot_skipped == 4 and m.counters.bad_records == 0
    # the book, L3, trades and the catalogue still come from the snapshot topic
    for key in (f"l2:{S}", f"l3:{S}", f"trades:{S}", f"status:{S}"):
        m.on_snapshot_record(key.encode(), b"not json")
    assert m.counters.bad_records == 4
    # the streams still update what is skipped there
    m.on_stream_record(T.ticker(S, 4, last_price="11"))
    assert b'"last_price":"11"' in next(iter(m.take_writes().strings.values()))
