"""``python -m storage convert`` on the real server (storage/convert.py): a database made on the
``native`` backend, holding rows in every time-series table (several daily partitions and the
default one), becomes TimescaleDB hypertables with the same rows; the writer and the readers
work on it; an interrupted conversion resumes; a database without schema gets a clear error."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import date

import asyncpg
import pytest

from core.history.book import book_at
from storage.convert import OLD_SUFFIX, ConvertError, convert_to_timescale
from storage.migrate import migrate
from storage.schema import TIME_TABLES
from testkit import fake_aggregator as T

pytestmark = pytest.mark.integration
SYM = "CV-USD"
DAY = date(2026, 11, 24)
SNAP = T.l2_snapshot(SYM, 5, [["100", "2"]], [["101", "1"]], ts_ns=1_795_996_800 * 10**9)
UPD = T.l2_update(SYM, 6, [["buy", "100", "3"]], ts_ns=1_795_996_801 * 10**9)

ROWS = [
    # two days of trades (two partitions), one far ahead (the default partition)
    "INSERT INTO trades VALUES ('CV-USD','t1','2026-11-23 10:00+00',1.5,2,'buy',1,1)",
    "INSERT INTO trades VALUES ('CV-USD','t2','2026-11-24 10:00+00',1.6,3,'sell',2,1)",
    "INSERT INTO trades VALUES ('CV-USD','t3','2027-03-01 10:00+00',1.7,4,'buy',3,1)",
    "INSERT INTO candles (symbol, interval, bucket, open, high, low, close, volume, seq, epoch,"
    " vwap) VALUES ('CV-USD','1m','2026-11-24 10:00+00',1,2,0.5,1.5,10,7,1,1.25)",
    "INSERT INTO l2_snapshots VALUES ('CV-USD','2026-11-24 10:00+00',5,1,42,'[]','[]')",
]


async def _state(conn: asyncpg.Connection) -> dict[str, list[tuple[object, ...]]]:
    out = {}
    for t in TIME_TABLES:
        rows = await conn.fetch(f"SELECT * FROM {t.name} ORDER BY 1, 2, 3, 4")
        out[t.name] = [tuple(r) for r in rows]
    return out


async def _fill(conn: asyncpg.Connection) -> None:
    for sql in ROWS:
        await conn.execute(sql)
    for table, seq, raw in (("book_snapshots", 5, SNAP), ("stream_messages", 6, UPD)):
        await conn.execute(
            f"INSERT INTO {table} VALUES ('l2', $1, 1, $2, to_timestamp($3), $4)",
            SYM,
            seq,
            1_795_996_800 + seq - 5,
            raw,
        )


async def _hypertables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT hypertable_name FROM timescaledb_information.hypertables")
    return {r["hypertable_name"] for r in rows}


async def test_native_database_moves_to_timescale_with_every_row(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await migrate(pg_dsn, mode="native", today=DAY)).backend == "native"
    # the next migrate keeps native, and names the way out
    assert (await migrate(pg_dsn, today=DAY)).backend == "native"
    assert "python -m storage convert" in capsys.readouterr().err
    conn = await asyncpg.connect(pg_dsn)
    try:
        await _fill(conn)
        before = await _state(conn)
        assert sum(len(v) for v in before.values()) == 7

        r = await convert_to_timescale(pg_dsn)
        assert set(r.renamed) == {t.name for t in TIME_TABLES}
        assert r.rows_copied["trades"] == 3 and sum(r.rows_copied.values()) == 7
        assert await _state(conn) == before
        assert await conn.fetchval("SELECT value FROM md_storage_meta WHERE key='backend'") == (
            "timescale"
        )
        assert await _hypertables(conn) == {t.name for t in TIME_TABLES}
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname LIKE $1", f"%{OLD_SUFFIX}%"
        )
        assert left == 0  # the native tables, their partitions and indexes are gone
        # the migrations see a complete timescale schema; the readers work on it
        again = await migrate(pg_dsn)
        assert again.backend == "timescale" and again.applied == []
        body = await book_at(conn, SYM, seq=6)
        assert body["seq"] == 6 and body["bids"] == [["100", "3"]]
        # a second run has nothing left to do
        r2 = await convert_to_timescale(pg_dsn)
        assert r2.renamed == [] and r2.rows_copied == {}
    finally:
        await conn.close()


async def test_interrupted_conversion_resumes(pg_dsn: str) -> None:
    admin = pg_dsn.rsplit("/", 1)[0] + "/postgres"
    name = "test_convert_resume"
    a = await asyncpg.connect(admin)
    await a.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await a.execute(f'CREATE DATABASE "{name}"')
    dsn = pg_dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        await migrate(dsn, mode="native", today=DAY)
        conn = await asyncpg.connect(dsn)
        try:
            await _fill(conn)
            before = await _state(conn)
            # the copy fails part way (a view on one partition: its DROP, in the same
            # transaction as its copy, is refused), as a crash would stop it
            await conn.execute("CREATE VIEW pin AS SELECT * FROM trades_p20261124")
            with pytest.raises(asyncpg.DependentObjectsStillExistError):
                await convert_to_timescale(dsn)
            # what was copied is gone from the native side, what was not is still there
            assert await conn.fetchval("SELECT count(*) FROM trades_native") == 1
            assert await conn.fetchval("SELECT count(*) FROM trades") == 2
            await conn.execute("DROP VIEW pin")
            r = await convert_to_timescale(dsn)
            assert r.renamed == []  # step 1 was done by the first run
            assert await _state(conn) == before
        finally:
            await conn.close()
    finally:
        await a.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await a.close()


async def test_no_schema_is_a_clear_error(pg_dsn: str) -> None:
    admin = pg_dsn.rsplit("/", 1)[0] + "/postgres"
    name = "test_convert_empty"
    a = await asyncpg.connect(admin)
    await a.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await a.execute(f'CREATE DATABASE "{name}"')
    dsn = pg_dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        with pytest.raises(ConvertError, match="run `python -m storage migrate`"):
            await convert_to_timescale(dsn)
        env = {**os.environ, "MD_PG_DSN": dsn}
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "storage", "convert", env=env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(p.communicate(), 60)
        assert p.returncode == 2 and b"storage migrate" in err
    finally:
        await a.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await a.close()


async def _cli(dsn: str, *args: str) -> tuple[int, str]:
    """``python -m storage <args>`` as the operator runs it (docs/storage.md)."""
    p = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "storage",
        *args,
        env={**os.environ, "MD_PG_DSN": dsn},
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(p.communicate(), 120)
    return p.returncode or 0, err.decode()


async def test_operator_is_warned_then_the_documented_command_converts(pg_dsn: str) -> None:
    """The steps of docs/storage.md on a database made native: ``migrate`` (as ``make up`` runs
    it) warns with the command, ``python -m storage convert`` moves every row, and the next
    ``migrate`` is quiet on TimescaleDB."""
    admin = pg_dsn.rsplit("/", 1)[0] + "/postgres"
    name = "test_convert_cli"
    a = await asyncpg.connect(admin)
    await a.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await a.execute(f'CREATE DATABASE "{name}"')
    dsn = pg_dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        await migrate(dsn, mode="native", today=DAY)
        conn = await asyncpg.connect(dsn)
        try:
            await _fill(conn)
            rc, err = await _cli(dsn, "migrate")
            warning = [ln for ln in err.splitlines() if ln.startswith("[storage] WARNING")]
            assert rc == 0 and "backend=native" in err
            assert len(warning) == 1 and "python -m storage convert" in warning[0]
            before = await _state(conn)  # after today's retention (the fill's days are old)
            rows = sum(len(v) for v in before.values())
            assert rows >= 5
            rc, err = await _cli(dsn, "convert")
            assert rc == 0, err
            assert "backend=timescale" in err and f" {rows} row(s) copied" in err
            assert await _state(conn) == before
            assert await _hypertables(conn) == {t.name for t in TIME_TABLES}
            rc, err = await _cli(dsn, "migrate")
            assert rc == 0 and "backend=timescale" in err and "WARNING" not in err
        finally:
            await conn.close()
    finally:
        await a.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await a.close()
