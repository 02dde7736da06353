"""``max_spread`` is the widest spread since start (seed 000), beside the mid window's widest."""

from __future__ import annotations

from decimal import Decimal as D

from aggregator.book import Book
from aggregator.stats_window import StatsWindows


def book(bid: str, ask: str) -> Book:
    b = Book()
    b.set_level("buy", bid, D(bid), D("1"))
    b.set_level("sell", ask, D(ask), D("1"))
    return b


def test_running_maximum_outlives_the_window_and_the_checkpoint() -> None:
    w = StatsWindows(mid_window=2, vwap_window=10)
    for bid, ask in (("100", "110"), ("100", "101"), ("100", "102"), ("100", "101.5")):
        w.on_top((D(bid), D(ask)))
    d = w.data(book("100", "101.5"))
    assert d is not None
    assert d["max_spread"] == "10" and d["max_spread_window"] == "2"  # 110-100 left the window
    again = StatsWindows(mid_window=2, vwap_window=10)
    again.restore(w.to_state(), D(0))  # a standby or a replay from the checkpoint
    assert again.data(book("100", "101.5")) == d
    again.on_top((D("100"), D("120")))
    out = again.data(book("100", "120"))
    assert out is not None and out["max_spread"] == "20"


def test_checkpoint_of_an_older_version_starts_from_the_window() -> None:
    w = StatsWindows(mid_window=3, vwap_window=10)
    w.on_top((D("100"), D("103")))
    st = w.to_state()
    del st["max_spread"]
    again = StatsWindows(mid_window=3, vwap_window=10)
    again.restore(st, D(0))
    out = again.data(book("100", "103"))
    assert out is not None and out["max_spread"] == out["max_spread_window"] == "3"
