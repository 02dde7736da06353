"""SQL generation for both backends; both also run against the real server (the local cluster
preloads TimescaleDB) in tests/integration/test_storage_migrate.py."""

from __future__ import annotations

from datetime import date

import pytest

from storage.errors import DatabaseUnavailable, is_retriable_db_error
from storage.schema import (
    CANDLES,
    L2_SNAPSHOTS,
    TIME_TABLES,
    TRADES,
    create_partition_sql,
    expired_partitions,
    migrations,
    parse_partition_name,
    partition_for,
    partition_plan,
    time_table_ddl,
)


def _all_sql(backend: str) -> str:
    return "\n".join(s for m in migrations(backend) for s in m.statements)  # type: ignore[arg-type]


def test_timescale_path_creates_hypertables_with_policies() -> None:
    sql = _all_sql("timescale")
    assert sql.index("CREATE EXTENSION IF NOT EXISTS timescaledb") < sql.index("create_hypertable")
    for t in TIME_TABLES:
        assert f"create_hypertable('{t.name}', '{t.time_column}'" in sql
        assert (
            f"chunk_time_interval => INTERVAL '{t.chunk_days} days', if_not_exists => TRUE" in sql
        )
        assert f"add_compression_policy('{t.name}', INTERVAL '{t.compress_after_days} days'" in sql
        assert f"add_retention_policy('{t.name}', INTERVAL '{t.retention_days} days'" in sql
        assert f"ALTER TABLE {t.name} SET (timescaledb.compress" in sql
    assert "PARTITION BY" not in sql
    assert "_default" not in sql


def test_timescale_ddl_order_table_before_hypertable() -> None:
    stmts = time_table_ddl(TRADES, "timescale")
    assert stmts[0].startswith("CREATE TABLE IF NOT EXISTS trades (")
    assert "create_hypertable" in stmts[1]
    assert "compress" in stmts[2] and "add_compression_policy" in stmts[3]
    assert "add_retention_policy" in stmts[4]


def test_native_path_partitions_by_range_with_default() -> None:
    sql = _all_sql("native")
    assert "timescaledb" not in sql
    assert "CREATE TABLE IF NOT EXISTS trades (" in sql and "PARTITION BY RANGE (ts)" in sql
    assert "PARTITION BY RANGE (bucket)" in sql
    for t in TIME_TABLES:
        assert f"CREATE TABLE IF NOT EXISTS {t.name}_default PARTITION OF {t.name} DEFAULT" in sql


def test_every_statement_is_idempotent() -> None:
    for backend in ("native", "timescale"):
        for m in migrations(backend):
            for s in m.statements:
                assert (
                    ("IF NOT EXISTS" in s)
                    or ("if_not_exists => TRUE" in s)
                    or s.startswith("ALTER TABLE")
                ), s


def test_migration_versions_are_increasing_and_same_for_both_backends() -> None:
    n = [m.version for m in migrations("native")]
    t = [m.version for m in migrations("timescale")]
    assert n == t == sorted(set(n))


def test_natural_keys_include_time_column() -> None:
    assert "PRIMARY KEY (symbol, ts, trade_id)" in TRADES.columns
    assert "PRIMARY KEY (symbol, interval, bucket)" in CANDLES.columns
    assert "PRIMARY KEY (symbol, ts, seq)" in L2_SNAPSHOTS.columns


def test_partitions_align_and_cover_plan() -> None:
    p = partition_for(TRADES, date(2026, 11, 24))
    assert (p.start, p.end, p.name) == (date(2026, 11, 24), date(2026, 11, 25), "trades_p20261124")
    plan = partition_plan(TRADES, date(2026, 11, 24), ahead_days=3, behind_days=2)
    assert [x.start.day for x in plan] == [22, 23, 24, 25, 26, 27]
    week = partition_for(CANDLES, date(2026, 11, 24))
    assert (week.end - week.start).days == 7 and week.start <= date(2026, 11, 24) < week.end
    cplan = partition_plan(CANDLES, date(2026, 11, 24))
    for a, b in zip(cplan, cplan[1:], strict=False):
        assert a.end == b.start  # contiguous, no overlap


def test_expired_partitions_respects_retention_and_ignores_others() -> None:
    names = [
        "trades_p20261001",
        "trades_p20261024",
        "trades_p20261025",
        "trades_default",
        "candles_p20261001",
        "trades_p20261399",
        "x",
    ]
    # retention 30 days from 2026-11-24: cutoff 2026-10-25; p20261024 ends 10-25 -> expired
    assert expired_partitions(TRADES, names, date(2026, 11, 24)) == [
        "trades_p20261001",
        "trades_p20261024",
    ]
    assert parse_partition_name("trades_p20261399") is None
    assert parse_partition_name("l2_snapshots_p20261124") == ("l2_snapshots", date(2026, 11, 24))


def test_create_partition_moves_default_rows() -> None:
    stmts = create_partition_sql(TRADES, partition_for(TRADES, date(2026, 11, 24)))
    assert (
        "DELETE FROM trades_default WHERE ts >= '2026-11-24 00:00:00+00' AND ts < '2026-11-25 00:00:00+00'"
        in stmts[1]
    )
    assert "FOR VALUES FROM ('2026-11-24 00:00:00+00') TO ('2026-11-25 00:00:00+00')" in stmts[2]
    assert stmts[3].startswith("INSERT INTO trades SELECT")


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (ConnectionRefusedError(), True),
        (DatabaseUnavailable("x"), True),
        (__import__("asyncpg").exceptions.AdminShutdownError("x"), True),
        (__import__("asyncpg").exceptions.CannotConnectNowError("x"), True),
        (__import__("asyncpg").exceptions.DeadlockDetectedError("x"), True),
        (__import__("asyncpg").exceptions.UniqueViolationError("x"), False),
        (__import__("asyncpg").exceptions.UndefinedTableError("x"), False),
        (ValueError("x"), False),
    ],
)
def test_db_error_classification(exc: BaseException, retriable: bool) -> None:
    assert is_retriable_db_error(exc) is retriable
