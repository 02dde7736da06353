"""``python -m storage convert``: move a ``native`` database to TimescaleDB in place.

The backend is chosen once per database (storage/migrate.py): a database created before the
server had TimescaleDB keeps plain partitions, and a partitioned table cannot become a hypertable.
This command does the move, with the writers stopped (docs/storage.md "Moving to TimescaleDB"):

1. One transaction: each time-series table ``T`` is renamed ``T_native`` (its primary key and
   named indexes too), the migrations that made the time-series tables are forgotten and the
   recorded backend becomes ``timescale``; then the migrations run again and create ``T`` as a
   hypertable with its compression and retention policies. A failure here changes nothing.
2. Row copy, one native partition per transaction: ``INSERT INTO T SELECT ... FROM partition
   ON CONFLICT DO NOTHING``, then the partition is dropped in the same transaction; last the
   empty ``T_native``. Interrupted (a crash, Ctrl-C), running the command again resumes where it
   stopped: the copied partitions are gone, the rest are still there, and a row copied twice is
   absorbed by the primary key.

Chunks older than each table's ``compress_after_days`` are compressed by TimescaleDB's policy
jobs afterwards, not by this command.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import asyncpg

from storage.errors import StorageError
from storage.migrate import (
    connect_with_retry,
    existing_partitions,
    migrate_locked,
    recorded_backend,
    timescale_status,
)
from storage.schema import META_TABLE, MIGRATE_LOCK_KEY, MIGRATIONS_TABLE, TIME_TABLES

log = logging.getLogger(__name__)

OLD_SUFFIX = "_native"
# indexes created by name in the migrations (storage/schema.py): renamed with their table so the
# migrations can create them again on the hypertables
NAMED_INDEXES = ("candles_interval_bucket", "stream_messages_time")
FIRST_TIME_TABLE_MIGRATION = 2  # migration 1 is the symbol catalogue, kept as it is


class ConvertError(StorageError):
    """The database cannot be converted (no schema, or no usable TimescaleDB): exit 2."""

    retriable = False


@dataclass
class ConvertResult:
    renamed: list[str] = field(default_factory=list)  # tables moved aside by this run
    rows_copied: dict[str, int] = field(default_factory=dict)  # table -> rows inserted
    partitions_copied: int = 0
    seconds: float = 0.0


async def _table_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"public.{name}"))


async def _move_aside(conn: asyncpg.Connection) -> list[str]:
    """Step 1's renames and bookkeeping (the caller's transaction)."""
    renamed = []
    for t in TIME_TABLES:
        if not await _table_exists(conn, t.name):
            continue  # a table a later migration adds: created fresh, nothing to copy
        old = t.name + OLD_SUFFIX
        await conn.execute(f"ALTER TABLE {t.name} RENAME TO {old}")
        await conn.execute(f"ALTER TABLE {old} RENAME CONSTRAINT {t.name}_pkey TO {old}_pkey")
        renamed.append(t.name)
    for ix in NAMED_INDEXES:
        await conn.execute(f"ALTER INDEX IF EXISTS {ix} RENAME TO {ix}{OLD_SUFFIX}")
    await conn.execute(
        f"DELETE FROM {MIGRATIONS_TABLE} WHERE version >= $1", FIRST_TIME_TABLE_MIGRATION
    )
    await conn.execute(f"UPDATE {META_TABLE} SET value = 'timescale' WHERE key = 'backend'")
    return renamed


async def _columns(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum",
        f"public.{table}",
    )
    return [r["attname"] for r in rows]


async def _copy_back(conn: asyncpg.Connection, result: ConvertResult) -> None:
    """Step 2: every remaining native partition into its hypertable, then the empty parents."""
    for t in TIME_TABLES:
        old = t.name + OLD_SUFFIX
        if not await _table_exists(conn, old):
            continue
        cols = ", ".join(await _columns(conn, old))
        for part in sorted(await existing_partitions(conn, old)):
            async with conn.transaction():
                status = await conn.execute(
                    f"INSERT INTO {t.name} ({cols}) SELECT {cols} FROM {part} ON CONFLICT DO NOTHING"
                )
                await conn.execute(f"DROP TABLE {part}")
            n = int(status.rsplit(" ", 1)[1])
            result.rows_copied[t.name] = result.rows_copied.get(t.name, 0) + n
            result.partitions_copied += 1
            log.info("partition copied", extra={"partition": part, "rows": n})
        await conn.execute(f"DROP TABLE {old}")


async def convert_to_timescale(dsn: str) -> ConvertResult:
    """Move a ``native`` database to TimescaleDB (or finish an interrupted move)."""
    t0 = time.monotonic()
    conn = await connect_with_retry(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK_KEY)
        try:
            backend = await recorded_backend(conn)
            if backend is None:
                raise ConvertError("no schema in this database: run `python -m storage migrate`")
            result = ConvertResult()
            if backend == "native":
                ok, why = await timescale_status(conn)
                if not ok:
                    raise ConvertError(f"cannot move to TimescaleDB: {why}")
                async with conn.transaction():
                    result.renamed = await _move_aside(conn)
                    await migrate_locked(conn, mode="timescale")
            await _copy_back(conn, result)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK_KEY)
    finally:
        await conn.close()
    result.seconds = time.monotonic() - t0
    return result
