"""The Parquet archive on the real database: closed days written once per (day, channel,
symbol), the book and the replay answer the same from the archive after the database dropped
the day, and one command restores the day."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pyarrow.parquet as pq
import pytest

from core.book import L2Book
from core.history.archive import ArchiveFetcher, HistoryFetcher
from core.history.book import HistoryError, book_at
from core.history.replay import replay_messages
from storage.archive import archive, restore
from storage.db_rows import RowBatch, RowBuilder
from storage.db_writer import DbWriter, DbWriterConfig
from storage.migrate import migrate
from testkit import fake_aggregator as T
from tests.conftest import BASE

pytestmark = pytest.mark.integration

SYM = "ARC-USD"
S = 1_000_000_000


async def _store(dsn: str, t_yesterday: int, t_today: int) -> list[bytes]:
    """An l2 stream across midnight (snapshot + updates each day) and trades; returns the l2
    messages in order."""
    rb = RowBuilder(snapshot_topic="x.snapshot", book_every_s=1)
    b = RowBatch()
    book = L2Book()
    l2: list[bytes] = []
    seq = 0
    for t0 in (t_yesterday, t_today):
        snap = book.snapshot()
        rb.add(
            b,
            "x.snapshot",
            0,
            seq,
            f"l2:{SYM}".encode(),
            T.l2_snapshot(SYM, seq, snap["bids"], snap["asks"], ts_ns=t0, checksum=book.checksum()),
        )
        for i in range(1, 51):
            seq += 1
            ch = [["buy", f"{100 - i % 5}", str(i)], ["sell", f"{101 + i % 3}", str(i % 4)]]
            book.apply(ch)
            m = T.l2_update(SYM, seq, ch, ts_ns=t0 + i * S // 10, checksum=book.checksum())
            l2.append(m)
            rb.add(b, "x.l2", 0, seq, SYM.encode(), m)
            rb.add(
                b,
                "x.trades",
                0,
                seq,
                SYM.encode(),
                T.trade(SYM, seq, f"a{seq}", "100", "1", ts_ns=t0 + i * S // 10),
            )
    w = DbWriter(dataclasses.replace(BASE, pg_dsn=dsn), DbWriterConfig(group_id="x"))
    try:
        assert await w.write(b)
    finally:
        if w._pool is not None:  # noqa: SLF001
            await w._pool.close()  # noqa: SLF001
    return l2


async def _replayed(db: object, start: int, end: int) -> list[bytes]:
    return [i.raw async for i in replay_messages(db, "l2", SYM, start, end)]  # type: ignore[arg-type]


async def test_archive_read_back_and_restore(pg_dsn: str, tmp_path: Path) -> None:
    await migrate(pg_dsn)
    today = datetime.now(UTC).date()
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    t_y = int((midnight - timedelta(hours=2)).timestamp()) * S
    t_t = int(midnight.timestamp()) * S + 60 * S
    l2 = await _store(pg_dsn, t_y, t_t)
    yesterday = today - timedelta(days=1)
    url = str(tmp_path / "archive")

    files = await archive(pg_dsn, url, today=today)
    assert sorted(Path(f).relative_to(url).as_posix() for f in files) == [
        f"l2/{SYM}/{yesterday}.parquet",
        f"trades/{SYM}/{yesterday}.parquet",
    ]
    assert await archive(pg_dsn, url, today=today) == []  # a day is archived once
    t = pq.read_table(f"{url}/l2/{SYM}/{yesterday}.parquet")
    assert t.column_names == ["kind", "epoch", "seq", "ts", "msg"]
    msgs = [r["msg"] for r in t.to_pylist() if r["kind"] == "message"]
    assert msgs == l2[:50]  # the bytes as published, in seq order
    assert t.to_pylist()[-1]["kind"] == "snapshot"

    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        both = HistoryFetcher(pool, ArchiveFetcher(url))
        want_book = await book_at(pool, SYM, seq=30, depth=50)
        want_replay = await _replayed(pool, t_y, t_t + 10 * S)
        assert len(want_replay) == 1 + 100  # snapshot, then every update of both days
        assert await _replayed(both, t_y, t_t + 10 * S) == want_replay  # both sources: no dups

        # retention drops yesterday from the database: the archive answers instead
        for table in ("stream_messages", "book_snapshots", "trades"):
            await pool.execute(f"DELETE FROM {table} WHERE ts < $1", midnight)
        with pytest.raises(HistoryError):
            await book_at(pool, SYM, seq=30, depth=50)
        assert await book_at(both, SYM, seq=30, depth=50) == want_book
        at = await book_at(both, SYM, at_ns=t_y + 35 * S // 10, depth=50)
        assert at["seq"] == 35
        assert await _replayed(both, t_y, t_t + 10 * S) == want_replay

        # one command brings the day back
        n = await restore(pg_dsn, url, yesterday)
        assert n == 50 + 1 + 50  # l2 messages + snapshot, trade messages
        assert await book_at(pool, SYM, seq=30, depth=50) == want_book
        assert await pool.fetchval("SELECT count(*) FROM trades WHERE ts < $1", midnight) == 50
        await restore(pg_dsn, url, yesterday)  # twice is harmless
        assert await pool.fetchval("SELECT count(*) FROM stream_messages") == 200
    finally:
        await pool.close()


def test_cli_archive_needs_a_destination(pg_dsn: str) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MD_ARCHIVE_URL"}
    r = subprocess.run(
        [sys.executable, "-m", "storage", "archive"],
        env={**env, "MD_PG_DSN": pg_dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "MD_ARCHIVE_URL" in r.stderr


def test_archive_paths() -> None:
    from core.history.archive import day_path

    assert day_path("s3://b/md", "l2", "BTC-USD", date(2026, 12, 5)) == (
        "s3://b/md/l2/BTC-USD/2026-12-05.parquet"
    )
