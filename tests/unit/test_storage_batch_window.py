"""When the database writer ships a batch (storage/db_writer.py ``BatchWindow``): full, or
``max_age_s`` after its first record; never empty."""

from __future__ import annotations

from storage.db_rows import RowBatch
from storage.db_writer import BatchWindow


def _batch(records: int) -> RowBatch:
    b = RowBatch()
    b.records = records
    return b


def test_an_empty_batch_never_ships_and_does_not_start_the_clock() -> None:
    w = BatchWindow(max_records=100, max_age_s=1.0)
    assert not w.due(_batch(0), 10.0)
    assert not w.due(_batch(0), 50.0)
    # the clock starts at the first record seen (t=50), not at the first call
    assert not w.due(_batch(1), 50.0)
    assert not w.due(_batch(1), 50.9)
    assert w.due(_batch(1), 51.0)


def test_a_full_batch_ships_at_once() -> None:
    w = BatchWindow(max_records=100, max_age_s=1.0)
    assert not w.due(_batch(99), 0.0)
    assert w.due(_batch(100), 0.001)


def test_the_clock_restarts_after_shipping() -> None:
    w = BatchWindow(max_records=100, max_age_s=1.0)
    assert w.due(_batch(5), 0.0) is False
    assert w.due(_batch(5), 1.0)
    assert not w.due(_batch(3), 1.5)  # a new batch: its clock starts at 1.5
    assert not w.due(_batch(3), 2.4)
    assert w.due(_batch(3), 2.5)


def test_room_is_what_the_next_fetch_may_bring() -> None:
    w = BatchWindow(max_records=100, max_age_s=1.0)
    assert w.room(_batch(0)) == 100
    assert w.room(_batch(60)) == 40
    assert w.room(_batch(100)) == 1  # never 0: getmany(max_records=0) is refused
