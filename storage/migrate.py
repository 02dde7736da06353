"""Apply the schema (``python -m storage migrate``): versioned, idempotent, safe to run concurrently.

- A session advisory lock serialises concurrent runs (``make run`` and ``make test`` both migrate).
- The backend (``timescale`` or ``native``) is chosen once per database and recorded in
  ``md_storage_meta``; later runs keep it, because a partitioned table cannot become a hypertable
  in place. ``MD_STORAGE_BACKEND=auto|native|timescale`` (default ``auto``: TimescaleDB when the
  extension is installed and preloaded; otherwise native, with a warning that says why).
- Each version runs in its own transaction and is recorded in ``md_schema_migrations``.
- On the native backend every run (and the writer, periodically) creates partitions ahead and
  drops expired ones (:func:`maintain_partitions`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from datetime import date
from typing import cast

import asyncpg

from core.backoff import Backoff
from core.errors import ConfigError
from storage.errors import DatabaseUnavailable, is_retriable_db_error
from storage.schema import (
    BOOKKEEPING_DDL,
    META_TABLE,
    MIGRATE_LOCK_KEY,
    MIGRATIONS_TABLE,
    TIME_TABLES,
    Backend,
    create_partition_sql,
    drop_partition_sql,
    expired_partitions,
    migrations,
    partition_plan,
    utc_today,
)

log = logging.getLogger(__name__)

BACKEND_MODES = ("auto", "native", "timescale")


@dataclass
class MigrateResult:
    backend: Backend
    applied: list[int] = field(default_factory=list)
    partitions_created: list[str] = field(default_factory=list)
    partitions_dropped: list[str] = field(default_factory=list)


async def connect_with_retry(dsn: str, *, wait_s: float = 30.0) -> asyncpg.Connection:
    """Connect, waiting while the server is starting or restarting (retriable errors only)."""
    backoff = Backoff(initial=0.1, maximum=2.0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        try:
            return await asyncpg.connect(dsn, timeout=5)
        except Exception as exc:
            if not is_retriable_db_error(exc) or loop.time() >= deadline:
                if is_retriable_db_error(exc):
                    raise DatabaseUnavailable(f"database not reachable: {exc!r}") from exc
                raise
            await asyncio.sleep(backoff.next())


async def timescale_status(conn: asyncpg.Connection) -> tuple[bool, str]:
    """(usable, why not): TimescaleDB can be created in this database only when the server has
    the extension installed *and* loads it at start (``shared_preload_libraries``); without the
    preload ``CREATE EXTENSION`` fails with 'extension "timescaledb" must be preloaded'."""
    if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        return True, ""
    if not await conn.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"):
        return False, "the timescaledb extension is not installed on the server"
    preload = str(await conn.fetchval("SELECT current_setting('shared_preload_libraries')"))
    if "timescaledb" not in [p.strip() for p in preload.split(",")]:
        return False, (
            "the timescaledb extension is installed but not in shared_preload_libraries "
            f"(currently {preload!r}); add it and restart the server to use TimescaleDB"
        )
    return True, ""


async def choose_backend(conn: asyncpg.Connection, mode: str) -> Backend:
    if mode not in BACKEND_MODES:
        raise ConfigError("MD_STORAGE_BACKEND", f"expected one of {BACKEND_MODES}, got {mode!r}")
    recorded = await conn.fetchval(f"SELECT value FROM {META_TABLE} WHERE key = 'backend'")
    if recorded is not None:
        if mode != "auto" and mode != recorded:
            raise ConfigError(
                "MD_STORAGE_BACKEND",
                f"database already uses the {recorded!r} backend; `python -m storage convert` "
                f"moves a native database to TimescaleDB (docs/storage.md)",
            )
        if recorded == "native" and (await timescale_status(conn))[0]:
            # created before TimescaleDB was there: say how to move it, do not do it unasked
            # (it copies every row: minutes for a few GB, with the writers stopped)
            log.warning(
                "storage backend: this database predates TimescaleDB on the server; "
                "`python -m storage convert` moves it (docs/storage.md)"
            )
            # `make up` shows a one-shot step's WARNING lines (deploy/local/stack.sh)
            print(
                "[storage] WARNING: this database uses the native backend (made before "
                "TimescaleDB was installed); the server has TimescaleDB: stop the writers "
                "(make stop) and run `.venv/bin/python -m storage convert` to move it "
                '(docs/storage.md "Moving to TimescaleDB")',
                file=sys.stderr,
            )
        return cast(Backend, recorded)
    ok, why = await timescale_status(conn)
    if mode == "auto":
        if ok:
            return "timescale"
        log.warning(
            "storage backend: plain PostgreSQL (native partitions), not TimescaleDB",
            extra={"reason": why},
        )
        print(f"[storage] WARNING: using the native backend: {why}", file=sys.stderr)
        return "native"
    if mode == "timescale" and not ok:
        raise ConfigError("MD_STORAGE_BACKEND", f"timescale requested but {why}")
    return cast(Backend, mode)


async def existing_partitions(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent
           WHERE p.relname = $1 AND p.relnamespace = 'public'::regnamespace""",
        table,
    )
    return [r["relname"] for r in rows]


async def maintain_partitions(
    conn: asyncpg.Connection, today: date | None = None
) -> tuple[list[str], list[str]]:
    """Native backend: create the planned partitions that are missing, drop expired ones."""
    day = today or utc_today()
    created: list[str] = []
    dropped: list[str] = []
    for t in TIME_TABLES:
        have = set(await existing_partitions(conn, t.name))
        for p in partition_plan(t, day):
            if p.name in have:
                continue
            async with conn.transaction():
                for sql in create_partition_sql(t, p):
                    await conn.execute(sql)
            created.append(p.name)
        for name in expired_partitions(t, sorted(have), day):
            await conn.execute(drop_partition_sql(name))
            dropped.append(name)
    if created or dropped:
        log.info(
            "partitions maintained",
            extra={"partitions_created": created, "partitions_dropped": dropped},
        )
    return created, dropped


async def migrate(dsn: str, *, mode: str = "auto", today: date | None = None) -> MigrateResult:
    conn = await connect_with_retry(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK_KEY)
        try:
            return await migrate_locked(conn, mode=mode, today=today)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK_KEY)
    finally:
        await conn.close()


async def migrate_locked(
    conn: asyncpg.Connection, *, mode: str = "auto", today: date | None = None
) -> MigrateResult:
    """:func:`migrate` on a connection that holds the migration lock."""
    for ddl in BOOKKEEPING_DDL:
        await conn.execute(ddl)
    backend = await choose_backend(conn, mode)
    await conn.execute(
        f"INSERT INTO {META_TABLE} (key, value) VALUES ('backend', $1) ON CONFLICT (key) DO NOTHING",
        backend,
    )
    result = MigrateResult(backend=backend)
    done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {MIGRATIONS_TABLE}")}
    for m in migrations(backend):
        if m.version in done:
            continue
        async with conn.transaction():
            for sql in m.statements:
                await conn.execute(sql)
            await conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES ($1, $2)",
                m.version,
                m.name,
            )
        result.applied.append(m.version)
        log.info("migration applied", extra={"version": m.version, "migration": m.name})
    if backend == "native":
        result.partitions_created, result.partitions_dropped = await maintain_partitions(
            conn, today
        )
    return result


async def recorded_backend(conn: asyncpg.Connection) -> Backend | None:
    try:
        v = await conn.fetchval(f"SELECT value FROM {META_TABLE} WHERE key = 'backend'")
    except asyncpg.exceptions.UndefinedTableError:
        return None
    return cast(Backend | None, v)
