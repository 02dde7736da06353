"""Book history without a database: what the writer keeps, and the rebuild from a snapshot plus
updates (gaps refused, L3 events applied in time priority)."""

from __future__ import annotations

import orjson
import pytest

from core.history.book import BookRebuild, HistoryError, cut_levels
from storage.db_rows import RowBatch, RowBuilder
from testkit import fake_aggregator as T


def test_history_messages_are_the_published_bytes() -> None:
    """stream_messages keeps the record byte for byte (the replay relies on it); full book
    snapshots are sampled once per interval per (channel, symbol)."""
    rb = RowBuilder(snapshot_topic="x.snapshot", book_every_s=10)
    b = RowBatch()
    upd = T.l2_update("AAA-USD", 7, [["buy", "1.5", "2"]], checksum=5)
    rb.add(b, "x.l2", 0, 0, b"AAA-USD", upd)
    snap = T.l2_snapshot("AAA-USD", 7, [["1.5", "2"]], [], checksum=5)
    rb.add(b, "x.snapshot", 0, 0, b"l2:AAA-USD", snap)
    rb.add(b, "x.snapshot", 0, 1, b"l2:AAA-USD", snap)  # same 10 s bucket: sampled once
    assert [m[5] for m in b.messages] == [upd]
    assert [(m[0], m[1], m[3], m[5]) for m in b.book_snapshots] == [("l2", "AAA-USD", 7, snap)]
    for bad in (
        {"type": "l2_update", "channel": "l2", "symbol": "A", "timestamp": "x", "seq": 8},
        {"type": "l2_update", "channel": "l2", "symbol": "A", "seq": 8},  # no timestamp
        {"type": "l2_update", "channel": "l2", "symbol": "A", "timestamp": "2026-01-01T00:00:00Z"},
    ):
        rb.add(b, "x.l2", 0, 1, b"AAA-USD", orjson.dumps(bad))
    assert b.bad == 3 and len(b.messages) == 1


def test_channels_outside_the_history_setting_are_not_kept() -> None:
    rb = RowBuilder(snapshot_topic="x.snapshot", history_channels=("l2",))
    b = RowBatch()
    rb.add(b, "x.trades", 0, 0, b"AAA-USD", T.trade("AAA-USD", 1, "t1", "1", "1"))
    assert len(b.trades) == 1 and b.messages == []


def _l2(seq: int, changes: list[list[str]], epoch: int = T.EPOCH) -> bytes:
    return T.l2_update("AAA-USD", seq, changes, epoch=epoch, checksum=seq)


def test_l2_rebuild_applies_updates_and_refuses_a_gap() -> None:
    b = BookRebuild("l2", T.l2_snapshot("AAA-USD", 3, [["10", "1"], ["9", "2"]], [["11", "1"]]))
    b.apply(_l2(4, [["buy", "10", "0"], ["sell", "12", "3"]]))
    body = b.body(depth=5)
    assert body["seq"] == 4 and body["checksum"] == 4 and body["source"] == "history"
    assert body["bids"] == [["9", "2"]] and body["asks"] == [["11", "1"], ["12", "3"]]
    with pytest.raises(HistoryError, match="gap after seq 4"):
        b.apply(_l2(6, []))
    with pytest.raises(HistoryError, match="gap"):
        b.apply(_l2(5, [], epoch=T.EPOCH + 1))  # another epoch is not a continuation


def test_l3_rebuild_keeps_time_priority_and_applies_every_op() -> None:
    snap = T.msg(
        "l3_snapshot",
        "l3",
        "AAA-USD",
        10,
        {"bids": [["10", "1", "a"], ["10", "2", "b"]], "asks": [["11", "1", "c"]]},
    )
    b = BookRebuild("l3", snap)
    ev = [
        {"op": "add", "order_id": "d", "side": "buy", "price": "10", "size": "3"},
        {"op": "change", "order_id": "a", "side": "buy", "price": "10", "size": "0.5"},
        {
            "op": "fill",
            "order_id": "b",
            "side": "buy",
            "price": "10",
            "size": "2",
            "remaining": "0",
        },
        {"op": "delete", "order_id": "c", "side": "sell", "price": "11", "reason": "canceled"},
        {"op": "add", "order_id": "e", "side": "buy", "price": "9.5", "size": "1"},
    ]
    b.apply(T.msg("l3_update", "l3", "AAA-USD", 11, {"events": ev}))
    body = b.body(depth=1)
    assert body["level"] == 3 and body["seq"] == 11
    assert body["bids"] == [["10", "0.5", "a"], ["10", "3", "d"]]  # priority kept, b filled
    assert body["asks"] == []
    assert b.body(depth=2)["bids"][-1] == ["9.5", "1", "e"]


def test_cut_levels_keeps_every_order_of_the_best_levels() -> None:
    rows = [["3", "1", "a"], ["3", "1", "b"], ["2", "1", "c"], ["1", "1", "d"]]
    assert cut_levels(rows, 1) == rows[:2]
    assert cut_levels(rows, 2) == rows[:3]
    assert cut_levels(rows, 9) == rows


def test_a_snapshot_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(HistoryError):
        BookRebuild("l2", _l2(1, []))
    with pytest.raises(ValueError):
        BookRebuild("trades", _l2(1, []))
