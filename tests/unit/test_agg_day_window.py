"""The 24h window's saved form (aggregator/day_window.py): the rows it keeps between
checkpoints must always read as a fresh save of the buckets would, whatever changed a minute
(a trade in the current minute, a late trade in an older one, the day's eviction)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.book import fmt
from aggregator.day_window import DAY_MINUTES, MINUTE_NS, DayWindow

T0 = 29_000_000 * MINUTE_NS  # a minute boundary in 2025


def fresh(w: DayWindow) -> list[list[object]]:
    return [[m, *map(fmt, b)] for m, b in sorted(w.buckets.items())]


steps = st.lists(
    st.tuples(
        # minutes forward from the latest trade (0: same minute; a day and more: eviction),
        # or back (a late trade in an older minute)
        st.one_of(st.integers(0, 3), st.integers(-5, -1), st.integers(DAY_MINUTES - 2, 2000)),
        st.integers(1, 10**6),  # price in cents
        st.integers(1, 10**4),  # size in 1e-4
        st.booleans(),  # save after this trade
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_a_saved_window_reads_as_a_fresh_save_after_any_trades(seq: list[tuple]) -> None:
    w = DayWindow()
    latest = T0
    for dm, cents, units, save in seq:
        ts = latest + dm * MINUTE_NS + 1
        latest = max(latest, ts)
        w.add(ts, Decimal(cents) / 100, Decimal(units) / 10_000)
        if save:
            assert w.to_state() == fresh(w)
    saved = w.to_state()
    assert saved == fresh(w)
    assert set(w.rows) <= set(w.buckets)  # evicted minutes leave nothing behind
    back = DayWindow.from_state(saved)
    assert back.to_state() == saved
    assert (back.high, back.low, back.volume) == (w.high, w.low, w.volume)


def test_a_trade_in_an_older_minute_changes_its_saved_row() -> None:
    w = DayWindow()
    w.add(T0 + 1, Decimal("10"), Decimal("1"))
    w.add(T0 + MINUTE_NS + 1, Decimal("11"), Decimal("1"))
    first = w.to_state()
    w.add(T0 + 2, Decimal("12"), Decimal("2"))  # late: the first minute again
    row = w.to_state()[0]
    assert row == [T0 // MINUTE_NS, "10", "12", "10", "12", "3"]
    assert row != first[0]
