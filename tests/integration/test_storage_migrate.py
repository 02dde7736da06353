"""`python -m storage migrate` on a fresh database: tables, partitions, idempotence, late rows."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date

import asyncpg
import pytest

from storage.migrate import existing_partitions, maintain_partitions, migrate

pytestmark = pytest.mark.integration


async def test_migrate_twice_is_idempotent(pg_dsn: str) -> None:
    first = await migrate(pg_dsn, mode="auto", today=date(2026, 11, 24))
    assert first.backend == "native"
    assert first.applied == [1, 2, 3, 4]
    assert "trades_p20261124" in first.partitions_created
    second = await migrate(pg_dsn, mode="auto", today=date(2026, 11, 24))
    assert second.applied == [] and second.partitions_created == [] and second.backend == "native"
    conn = await asyncpg.connect(pg_dsn)
    try:
        parts = await existing_partitions(conn, "trades")
        assert {"trades_default", "trades_p20261122", "trades_p20261127"} <= set(parts)
        assert await conn.fetchval("SELECT count(*) FROM md_schema_migrations") == 4
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
        assert "backend=native" in r.stderr


def test_cli_rejects_bad_backend(pg_dsn: str) -> None:
    r = _cli_migrate(MD_PG_DSN=pg_dsn, MD_STORAGE_BACKEND="mongo")
    assert r.returncode != 0 and "MD_STORAGE_BACKEND" in r.stderr
