"""Kafka -> PostgreSQL writer on the real servers: every table, partition boundaries, and
idempotent re-delivery (a second consumer group replays the whole topic range: counts unchanged)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from core.codec import iso_from_ns
from core.kafka import make_producer
from core.settings import Settings
from core.topics import Topics
from storage.db_writer import DbWriter, DbWriterConfig
from storage.migrate import migrate
from testkit import fake_aggregator as T
from tests.conftest import BASE as BASE_SETTINGS
from tests.helpers import run_until

pytestmark = pytest.mark.integration

SYM = "DBW-USD"


def _ns(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


async def _run_until(w: DbWriter, done: Callable[[], object], wait_s: float = 20.0) -> None:
    await run_until(w, done, wait_s, lambda: f"writer did not finish: {w.counters}")


async def _produce_history(s: Settings, n_trades: int) -> datetime:
    """Trades straddling midnight UTC (two daily partitions), candle updates, snapshots, status."""
    t = Topics.from_settings(s)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = midnight - timedelta(seconds=n_trades // 2)
    p = make_producer(s)
    await p.start()
    try:
        await T.produce_stream(p, t, "status", [(SYM, T.status(SYM, 1))])
        await T.produce_stream(p, t, "status", [(SYM, T.status(SYM, 2, status="halted"))])
        await T.produce_stream(
            p,
            t,
            "trades",
            [
                (
                    SYM,
                    T.trade(
                        SYM,
                        i + 1,
                        f"t{i}",
                        f"{100 + i % 7}.5",
                        "0.25",
                        "buy" if i % 2 else "sell",
                        ts_ns=_ns(first + timedelta(seconds=i)),
                    ),
                )
                for i in range(n_trades)
            ],
        )
        b0 = iso_from_ns(_ns(midnight))
        await T.produce_stream(
            p,
            t,
            "candles_1m",
            [
                (SYM, T.candle(SYM, "1m", 1, b0, "100", "101", "99", "100.5", "1")),
                (SYM, T.candle(SYM, "1m", 2, b0, "100", "103", "98", "102", "3")),
                (SYM, T.candle(SYM, "1m", 3, b0, "100", "103", "98", "101", "4", closed=True)),
                (SYM, T.candle(SYM, "5m", 1, b0, "100", "103", "98", "101", "4")),
            ],
        )
        snaps = []
        base = _ns(datetime.now(UTC).replace(microsecond=0))
        for i in range(5):  # 5 snapshots 3 s apart: one per 10 s bucket is kept (2 or 3)
            snaps.append(
                (
                    f"l2:{SYM}",
                    T.l2_snapshot(
                        SYM,
                        10 + i,
                        [["100", str(i + 1)]],
                        [["101", "1"]],
                        ts_ns=base + i * 3_000_000_000,
                    ),
                )
            )
        snaps.append(("agg:state:" + SYM, b'{"private":true}'))
        await T.produce(p, t.snapshot, snaps)
        await T.produce_stream(
            p,
            t,
            "trades",
            [(SYM, b"not json"), (SYM, T.msg("trade", "trades", SYM, 9999, {"price": "1"}))],
        )
    finally:
        await p.stop()
    return midnight


async def _counts(dsn: str) -> dict[str, int]:
    c = await asyncpg.connect(dsn)
    try:
        return {
            "trades": await c.fetchval("SELECT count(*) FROM trades WHERE symbol = $1", SYM),
            "candles": await c.fetchval("SELECT count(*) FROM candles WHERE symbol = $1", SYM),
            "snapshots": await c.fetchval(
                "SELECT count(*) FROM l2_snapshots WHERE symbol = $1", SYM
            ),
            "symbols": await c.fetchval("SELECT count(*) FROM symbols WHERE symbol = $1", SYM),
            "messages": await c.fetchval(
                "SELECT count(*) FROM stream_messages WHERE symbol = $1", SYM
            ),
            "book_snapshots": await c.fetchval(
                "SELECT count(*) FROM book_snapshots WHERE symbol = $1", SYM
            ),
        }
    finally:
        await c.close()


async def test_history_written_once_and_replay_changes_nothing(
    settings: Settings, pg_dsn: str
) -> None:
    await migrate(pg_dsn, mode="native")  # the partition layout is asserted below
    s = dataclasses.replace(settings, pg_dsn=pg_dsn)
    n = 400
    midnight = await _produce_history(s, n)
    total = n + 2 + 4 + 6 + 2  # trades, status, candles, snapshot records, bad records

    w = DbWriter(s, DbWriterConfig(group_id=f"{s.topic_prefix}.g1", batch_records=150))
    await _run_until(
        w, lambda: w.counters.records >= total and w.queue.empty() and w.counters.commits > 0
    )
    assert w.counters.trades_inserted == n and w.counters.trades_duplicate == 0
    assert w.counters.bad_records == 2  # malformed JSON, trade without trade_id
    first = await _counts(pg_dsn)
    assert first["trades"] == n and first["candles"] == 2 and first["symbols"] == 1
    assert 2 <= first["snapshots"] <= 3
    c = await asyncpg.connect(pg_dsn)
    try:
        # both sides of midnight, each in its own daily partition
        parts = await c.fetch(
            "SELECT tableoid::regclass::text AS part, count(*) FROM trades WHERE symbol = $1 GROUP BY 1 ORDER BY 1",
            SYM,
        )
        assert [r["part"] for r in parts] == [
            f"trades_p{(midnight - timedelta(days=1)):%Y%m%d}",
            f"trades_p{midnight:%Y%m%d}",
        ]
        row = await c.fetchrow("SELECT * FROM candles WHERE symbol = $1 AND interval = '1m'", SYM)
        assert row["closed"] is True and str(row["close"]) == "101" and row["seq"] == 3
        sym = await c.fetchrow("SELECT * FROM symbols WHERE symbol = $1", SYM)
        assert sym["status"] == "halted" and sym["seq"] == 2 and str(sym["tick_size"]) == "0.01"
    finally:
        await c.close()

    # re-delivery: a fresh group reads the same topic range from the start
    w2 = DbWriter(s, DbWriterConfig(group_id=f"{s.topic_prefix}.g2", batch_records=1000))
    await _run_until(
        w2, lambda: w2.counters.records >= total and w2.queue.empty() and w2.counters.commits > 0
    )
    assert first["messages"] == n  # every trade message kept whole, for replay
    assert 1 <= first["book_snapshots"] <= 5
    assert w2.counters.trades_inserted == 0 and w2.counters.trades_duplicate == n
    assert w2.counters.messages_inserted == 0 and w2.counters.messages_duplicate == n
    assert w2.counters.candles_written == 0  # stored candles are not older than the replayed ones
    assert await _counts(pg_dsn) == first

    # the first group committed its offsets: restarting it reads nothing again
    w3 = DbWriter(s, DbWriterConfig(group_id=f"{s.topic_prefix}.g1"))
    stop = asyncio.Event()
    task = asyncio.create_task(w3.run(stop))
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.wait_for(task, 15)
    assert w3.counters.records == 0


async def test_row_the_database_rejects_is_counted_and_the_rest_written(pg_dsn: str) -> None:
    from storage.db_rows import RowBatch, RowBuilder

    await migrate(pg_dsn, mode="native")
    s = dataclasses.replace(BASE_SETTINGS, pg_dsn=pg_dsn)
    rb = RowBuilder(snapshot_topic="x")
    b = RowBatch()
    for i, tid in enumerate(["ok1", "bad\u0000id", "ok2"]):  # PostgreSQL text cannot hold NUL
        rb.add(b, "t", 0, i, None, T.trade("REJ-USD", i + 1, tid, "1.5", "2"))
    w = DbWriter(s, DbWriterConfig(group_id="unused"))
    assert await w.write(b)
    assert (w.counters.trades_inserted, w.counters.rows_rejected, w.counters.db_retries) == (
        2,
        1,
        0,
    )
    c = await asyncpg.connect(pg_dsn)
    try:
        ids = await c.fetch(
            "SELECT trade_id FROM trades WHERE symbol = 'REJ-USD' ORDER BY trade_id"
        )
        assert [r["trade_id"] for r in ids] == ["ok1", "ok2"]
    finally:
        await c.close()
        if w._pool is not None:  # noqa: SLF001
            await w._pool.close()  # noqa: SLF001


async def test_writer_commits_durably_whatever_the_server_default(pg_dsn: str) -> None:
    """Offsets are committed to Kafka right after COMMIT: the writer's own sessions must use
    synchronous_commit=on even where the server (the local cluster) defaults to off."""
    c = await asyncpg.connect(pg_dsn)
    try:
        server_default = await c.fetchval("SHOW synchronous_commit")
    finally:
        await c.close()
    w = DbWriter(dataclasses.replace(BASE_SETTINGS, pg_dsn=pg_dsn), DbWriterConfig(group_id="x"))
    pool = await w._get_pool()  # noqa: SLF001 - the writer's own pool
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await pool.close()
    assert server_default == "off"  # the case this guards against is the one we run


async def test_copy_keeps_awkward_values_exactly_and_a_redelivered_batch_once(
    pg_dsn: str,
) -> None:
    """The COPY fast path: ids with COPY's special characters, exact decimals and µs times come
    back unchanged; the same batch written again (a re-delivery) falls back to ON CONFLICT and
    adds nothing."""
    from storage.db_rows import RowBatch, RowBuilder

    await migrate(pg_dsn, mode="native")
    s = dataclasses.replace(BASE_SETTINGS, pg_dsn=pg_dsn)
    rb = RowBuilder(snapshot_topic="x")
    b = RowBatch()
    ids = ["tab\there", "back\\slash", "new\nline", "cr\rx", "plain"]
    t0 = 1_795_503_050_123_456_000
    for i, tid in enumerate(ids):
        rb.add(
            b,
            "t",
            0,
            i,
            None,
            T.trade("CPY-USD", i + 1, tid, "0.00000001", "12345.678900", ts_ns=t0),
        )
    rb.add(b, "t", 0, 9, None, T.l2_update("CPY-USD", 1, [["buy", "1", "1"]], ts_ns=t0))
    w = DbWriter(s, DbWriterConfig(group_id="unused"))
    try:
        assert await w.write(b)
        assert w.counters.trades_inserted == 5 and w.counters.copy_conflicts == 0
        assert await w.write(b)
        assert w.counters.trades_inserted == 5 and w.counters.trades_duplicate == 5
        assert w.counters.messages_duplicate == 6 and w.counters.copy_conflicts >= 2
        c = await asyncpg.connect(pg_dsn)
        try:
            rows = await c.fetch(
                "SELECT trade_id, price::text, size::text, ts FROM trades WHERE symbol = 'CPY-USD'"
            )
            assert sorted(r["trade_id"] for r in rows) == sorted(ids)
            assert {(r["price"], r["size"]) for r in rows} == {("0.00000001", "12345.678900")}
            assert {r["ts"] for r in rows} == {datetime(2026, 11, 24, 6, 50, 50, 123456, UTC)}
            msgs = await c.fetch("SELECT msg FROM stream_messages WHERE symbol = 'CPY-USD'")
            assert {bytes(m["msg"]) for m in msgs} == {r[5] for r in b.messages}
        finally:
            await c.close()
    finally:
        if w._pool is not None:  # noqa: SLF001
            await w._pool.close()  # noqa: SLF001
