"""`python -m storage migrate` on a fresh database, both backends on the real server: TimescaleDB
(the local cluster preloads it) with hypertables, compression and policies; native partitions
(tables, idempotence, late rows, retention); and the fallback to native, with the reason, on a
server that has the extension installed but not preloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import date

import asyncpg
import pytest

from core.errors import ConfigError
from storage.migrate import existing_partitions, maintain_partitions, migrate
from storage.schema import TIME_TABLES
from tests.conftest import BASE, unique

pytestmark = pytest.mark.integration


async def test_migrate_twice_is_idempotent(pg_dsn: str) -> None:
    first = await migrate(pg_dsn, mode="native", today=date(2026, 11, 24))
    assert first.backend == "native"
    assert first.applied == [1, 2, 3, 4, 5, 6]
    assert "trades_p20261124" in first.partitions_created
    second = await migrate(pg_dsn, mode="auto", today=date(2026, 11, 24))
    assert second.applied == [] and second.partitions_created == [] and second.backend == "native"
    conn = await asyncpg.connect(pg_dsn)
    try:
        parts = await existing_partitions(conn, "trades")
        assert {"trades_default", "trades_p20261122", "trades_p20261127"} <= set(parts)
        assert await conn.fetchval("SELECT count(*) FROM md_schema_migrations") == 6
    finally:
        await conn.close()


async def test_late_rows_in_default_move_into_new_partition_and_retention_drops(
    pg_dsn: str,
) -> None:
    await migrate(pg_dsn, today=date(2026, 11, 24))
    conn = await asyncpg.connect(pg_dsn)
    try:
        # a row far in the future lands in the default partition, never fails
        await conn.execute(
            "INSERT INTO trades VALUES ('BTC-USD','t1','2026-12-10 10:00+00',1,1,'buy',1,1)"
        )
        assert await conn.fetchval("SELECT count(*) FROM trades_default") == 1
        created, _ = await maintain_partitions(conn, today=date(2026, 12, 9))
        assert "trades_p20261210" in created
        assert await conn.fetchval("SELECT count(*) FROM trades_default") == 0
        assert await conn.fetchval("SELECT count(*) FROM trades_p20261210") == 1
        # 40 days later the November partitions are past the 30-day retention
        _, dropped = await maintain_partitions(conn, today=date(2027, 1, 2))
        assert "trades_p20261122" in dropped
        assert "trades_p20261210" not in dropped
    finally:
        await conn.close()


def _cli_migrate(**env: str) -> subprocess.CompletedProcess[str]:
    """``python -m storage migrate`` as deploy runs it, with ``env`` added to ours."""
    return subprocess.run(
        [sys.executable, "-m", "storage", "migrate"],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_migrate_exits_zero(pg_dsn: str) -> None:
    for _ in range(2):
        r = _cli_migrate(MD_PG_DSN=pg_dsn)
        assert r.returncode == 0, r.stderr
        assert "backend=native" in r.stderr  # recorded by the first test of this module


def test_cli_rejects_bad_backend(pg_dsn: str) -> None:
    r = _cli_migrate(MD_PG_DSN=pg_dsn, MD_STORAGE_BACKEND="mongo")
    assert r.returncode != 0 and "MD_STORAGE_BACKEND" in r.stderr


@pytest.fixture
async def fresh_dsn() -> AsyncIterator[str]:
    name = unique("test_mig_")
    admin = BASE.pg_dsn.rsplit("/", 1)[0] + "/postgres"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    try:
        yield BASE.pg_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def test_auto_picks_timescaledb_with_hypertables_compression_and_policies(
    fresh_dsn: str,
) -> None:
    result = await migrate(fresh_dsn)  # auto, as make run / make test do
    assert result.backend == "timescale" and result.applied == [1, 2, 3, 4, 5, 6]
    assert result.partitions_created == []
    conn = await asyncpg.connect(fresh_dsn)
    try:
        version = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        )
        assert version == "2.28.3"
        hyper = {
            r["hypertable_name"]: r["compression_enabled"]
            for r in await conn.fetch(
                "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
            )
        }
        assert hyper == {t.name: True for t in TIME_TABLES}
        seg = {
            (r["hypertable_name"], r["attname"])
            for r in await conn.fetch(
                "SELECT hypertable_name, attname FROM timescaledb_information.compression_settings "
                "WHERE segmentby_column_index IS NOT NULL"
            )
        }
        assert ("trades", "symbol") in seg and ("stream_messages", "channel") in seg
        order = [
            r["attname"]
            for r in await conn.fetch(
                "SELECT attname FROM timescaledb_information.compression_settings "
                "WHERE hypertable_name = 'trades' AND orderby_column_index IS NOT NULL "
                "ORDER BY orderby_column_index"
            )
        ]
        assert order == ["ts", "trade_id"]  # the order REST pages a day in
        jobs = {
            (r["proc_name"], r["hypertable_name"])
            for r in await conn.fetch(
                "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs "
                "WHERE hypertable_name IS NOT NULL"
            )
        }
        for t in TIME_TABLES:
            assert ("policy_compression", t.name) in jobs
            assert ("policy_retention", t.name) in jobs
        # a row goes in, and a compressed chunk still answers (and takes the same row's replay)
        await conn.execute(
            "INSERT INTO trades VALUES ('BTC-USD','t1', now() - interval '3 days',1,1,'buy',1,1)"
        )
        n = await conn.fetchval(
            "SELECT count(compress_chunk(c)) FROM show_chunks('trades', older_than => "
            "interval '2 days') c"
        )
        assert n == 1
        await conn.execute(
            "INSERT INTO trades SELECT symbol, trade_id, ts, price, size, side, seq, epoch "
            "FROM trades ON CONFLICT DO NOTHING"
        )
        assert await conn.fetchval("SELECT count(*) FROM trades") == 1
    finally:
        await conn.close()
    again = await migrate(fresh_dsn)
    assert again.backend == "timescale" and again.applied == []


async def test_an_explicit_backend_cannot_switch_a_database_in_place(fresh_dsn: str) -> None:
    await migrate(fresh_dsn, mode="native")
    with pytest.raises(ConfigError, match="already uses the 'native' backend"):
        await migrate(fresh_dsn, mode="timescale")


def test_extension_installed_but_not_preloaded_falls_back_to_native_with_the_reason() -> None:
    """The situation of the issue: `make up` against a server with the extension files but no
    preload failed at migrate; now it runs on native partitions and says why."""
    from tests.integration.test_storage_db_outage import ThrowawayPostgres

    pg = ThrowawayPostgres()  # its own cluster: no shared_preload_libraries
    pg.start()
    try:
        r = _cli_migrate(MD_PG_DSN=pg.dsn)
        assert r.returncode == 0, r.stderr
        assert "backend=native" in r.stderr
        assert "not in shared_preload_libraries" in r.stderr
        forced = _cli_migrate(MD_PG_DSN=pg.dsn, MD_STORAGE_BACKEND="timescale")
        assert forced.returncode != 0 and "MD_STORAGE_BACKEND" in forced.stderr
    finally:
        pg.stop()
        pg.destroy()
