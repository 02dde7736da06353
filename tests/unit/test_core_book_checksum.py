from __future__ import annotations

import zlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core import codec
from core.book import L2Book
from core.checksum import book_checksum, checksum_string
from core.codec import iso_from_ns, loads, ns_from_iso
from core.errors import CodecError


def test_checksum_string_follows_documented_example() -> None:
    s = checksum_string([("0.05005", "0.00000500")], [("0.05004", "1.2")])
    assert s == "5005500500412"
    assert book_checksum([("0.05005", "0.00000500")], [("0.05004", "1.2")]) == zlib.crc32(
        b"5005500500412"
    )


def test_empty_book_checksum_is_crc_of_empty_string() -> None:
    assert L2Book().checksum() == 0


def test_book_orders_levels_and_deletes_on_zero() -> None:
    b = L2Book()
    b.apply(
        [
            ["buy", "100.5", "1"],
            ["buy", "101", "2"],
            ["buy", "99.99", "3"],
            ["sell", "102", "1"],
            ["sell", "101.5", "4"],
        ]
    )
    assert [p for p, _ in b.top_bids()] == ["101", "100.5", "99.99"]
    assert [p for p, _ in b.top_asks()] == ["101.5", "102"]
    b.set("buy", "101.00", "0")  # same price, other spelling, removes the level
    assert b.best_bid() == ("100.5", "1")
    assert not b.crossed()
    b.set("sell", "100", "1")
    assert b.crossed()


@pytest.mark.parametrize(
    "change",
    [
        ["buy", "abc", "1"],
        ["buy", "1", "-1"],
        ["up", "1", "1"],
        ["sell", "NaN", "1"],
        ["buy", "0", "1"],
    ],
)
def test_book_rejects_bad_levels_and_stays_intact(change: list[str]) -> None:
    b = L2Book()
    b.set("buy", "10", "1")
    with pytest.raises(ValueError):
        b.apply([change])
    assert b.snapshot() == {"bids": [["10", "1"]], "asks": []}


levels = st.dictionaries(
    st.integers(min_value=1, max_value=10_000),
    st.integers(min_value=1, max_value=10**6),
    max_size=30,
)


@given(levels, levels)
def test_checksum_matches_independent_computation(
    bids: dict[int, int], asks: dict[int, int]
) -> None:
    b = L2Book()
    bid_levels = [(f"{p / 100:.2f}", f"{q / 1000:.3f}") for p, q in bids.items()]
    ask_levels = [(f"{(p + 20_000) / 100:.2f}", f"{q / 1000:.3f}") for p, q in asks.items()]
    b.load(bid_levels, ask_levels)
    top_a = sorted(ask_levels, key=lambda lv: Decimal(lv[0]))[:10]
    top_b = sorted(bid_levels, key=lambda lv: -Decimal(lv[0]))[:10]
    text = "".join(
        p.replace(".", "").lstrip("0") + q.replace(".", "").lstrip("0") for p, q in top_a + top_b
    )
    assert b.checksum(10) == zlib.crc32(text.encode())


def test_timestamps_round_trip_at_microseconds() -> None:
    ns = 1_795_503_050_651_234_000
    text = iso_from_ns(ns)
    assert text == "2026-11-24T06:50:50.651234Z"
    assert ns_from_iso(text) == ns


@given(st.lists(st.integers(min_value=0, max_value=4_102_444_800 * 10**9 - 1), max_size=50))
def test_timestamps_of_interleaved_seconds_format_as_datetime_does(stamps: list[int]) -> None:
    """iso_from_ns remembers recent seconds and instants: a stamp must never get another's text,
    the first time or again, and what it remembers stays bounded."""
    for ns in stamps + [stamps[0] + 1] + stamps if stamps else []:
        want = datetime.fromtimestamp(ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert iso_from_ns(ns) == f"{want}.{ns % 10**9 // 1000:06d}Z"
    assert len(codec._instants) <= codec._INSTANTS_MAX  # noqa: SLF001 - the bound itself
    assert len(codec._seconds) <= codec._SECONDS_MAX  # noqa: SLF001


def test_malformed_json_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        loads(b"{not json")


_ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "size", "fill", "remove", "level", "clear"]),
        st.integers(0, 3),  # order id
        st.sampled_from(["buy", "sell"]),
        st.integers(1, 3),  # price tick
        st.integers(0, 40),  # size
    ),
    max_size=80,
)


_TWO = [("add", 0, "buy", 1, 4), ("add", 1, "buy", 1, 8)]  # two orders at one level


@settings(max_examples=300)
@given(_ops, st.integers(1, 6))
@example([*_TWO, ("remove", 0, "buy", 1, 0)], 3)  # each write of a level's size, once
@example([*_TWO, ("size", 0, "buy", 1, 2)], 3)
@example([*_TWO, ("fill", 0, "buy", 1, 1)], 3)
@example([("level", 0, "buy", 1, 3), ("level", 0, "buy", 1, 5)], 3)
@example([*_TWO, ("add", 2, "buy", 1, 4)], 3)
def test_a_levels_remembered_size_text_is_always_its_size(ops: list[Any], depth: int) -> None:
    """The book formats a level's size once until it changes (``Level.text``): after any
    sequence of operations, every level's text, the top levels, the checksum and the state are
    what formatting the sizes afresh gives."""
    from decimal import Decimal

    from core.checksum import book_checksum
    from core.l3book import Book, fmt

    b = Book()
    for op, oid, side, tick, size in ops:
        px = Decimal(100 + tick) if side == "sell" else Decimal(100 - tick)
        o = f"o{oid}"
        if op == "add":
            b.add(o, side, str(px), px, Decimal(size) / 4)
        elif op == "size":
            b.set_size(o, Decimal(size) / 4)
        elif op == "fill":
            b.fill(o, Decimal(size) / 8)
        elif op == "remove":
            b.remove(o)
        elif op == "level":
            if b.orders:
                continue  # a book is L3 or L2-only (a switch clears it first): never both
            b.set_level(side, str(px), px, Decimal(size) / 2)
        else:
            b.clear()
        b.checksum(depth)  # formats (and remembers) the top levels between operations
        if op == "add":
            b.take_l2_changes()
    for levels in (b.bids, b.asks):
        for lvl in levels.values():
            assert lvl.size_text() == fmt(lvl.total)
    fresh = [(lvl.price, fmt(lvl.total)) for lvl in b.asks.values()][:depth]
    assert b.top("sell", depth) == fresh
    bids = [(lvl.price, fmt(lvl.total)) for lvl in b.bids.values()][:depth]
    assert b.checksum(depth) == book_checksum(fresh, bids)
    assert Book.from_state(b.to_state()).top("buy") == [
        (lvl.price, fmt(lvl.total)) for lvl in b.bids.values()
    ]
