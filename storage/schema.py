"""The history schema as data, and the SQL for both partitioning paths (pure: no I/O).

Two backends share one logical schema (docs/storage.md "Schema"):

- ``timescale``: when the ``timescaledb`` extension is available, the time-series tables are
  hypertables with compression and retention policies run by TimescaleDB's own jobs;
- ``native``: plain PostgreSQL declarative range partitioning by time. Partitions are created
  ahead (and a few behind, for late data) by :func:`partition_plan`, a ``DEFAULT`` partition
  catches anything outside them so an insert never fails on time, and retention drops whole
  partitions (:func:`expired_partitions`), which costs no vacuum.

Every time-series table's primary key starts with its natural key and includes the time
column (PostgreSQL requires the partition key in every unique constraint), which is what makes
``INSERT ... ON CONFLICT`` idempotent for replayed Kafka records.

Both branches run against the real server in the tests: the local cluster preloads TimescaleDB
2.28.3 (built by deploy/local/install.sh), and ``MD_STORAGE_BACKEND=native`` selects the plain
path on the same server (tests/integration/test_storage_migrate.py).

Book history (docs/storage.md "Book history"): ``stream_messages`` keeps every message of the
history channels (``l2``, ``l3``, ``trades`` by default) exactly as published, and
``book_snapshots`` a full-depth ``l2_snapshot``/``l3_snapshot`` per symbol every few seconds, so
the book after any ``seq`` is the nearest snapshot at or before it plus the updates since.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

Backend = Literal["native", "timescale"]

MIGRATIONS_TABLE = "md_schema_migrations"
META_TABLE = "md_storage_meta"
# pg_advisory_lock key: two `python -m storage migrate` (make run + make test) never interleave
MIGRATE_LOCK_KEY = 0x6D645F6D6967  # "md_mig"


@dataclass(frozen=True, kw_only=True)
class TimeTable:
    """A time-partitioned table: its DDL body, time column, chunk width and policies."""

    name: str
    columns: str  # column list and primary key, inside CREATE TABLE (...)
    time_column: str
    chunk_days: int  # partition / chunk width
    retention_days: int  # partitions entirely older than this are dropped
    compress_after_days: int  # TimescaleDB only
    segment_by: str = "symbol"  # TimescaleDB compression segment
    order_by: str = ""  # TimescaleDB compression order (default: the time column, newest first)


TRADES = TimeTable(
    name="trades",
    columns="""
    symbol     text        NOT NULL,
    trade_id   text        NOT NULL,
    ts         timestamptz NOT NULL,
    price      numeric     NOT NULL,
    size       numeric     NOT NULL,
    side       text        NOT NULL,
    seq        bigint      NOT NULL,
    epoch      bigint      NOT NULL,
    PRIMARY KEY (symbol, ts, trade_id)""",
    time_column="ts",
    chunk_days=1,
    retention_days=30,
    compress_after_days=2,
)

CANDLES = TimeTable(
    name="candles",
    columns="""
    symbol     text        NOT NULL,
    interval   text        NOT NULL,
    bucket     timestamptz NOT NULL,
    open       numeric     NOT NULL,
    high       numeric     NOT NULL,
    low        numeric     NOT NULL,
    close      numeric     NOT NULL,
    volume     numeric     NOT NULL,
    trades     integer     NOT NULL DEFAULT 0,
    closed     boolean     NOT NULL DEFAULT false,
    seq        bigint      NOT NULL,
    epoch      bigint      NOT NULL,
    PRIMARY KEY (symbol, interval, bucket)""",
    time_column="bucket",
    chunk_days=7,
    retention_days=730,
    compress_after_days=30,
)

L2_SNAPSHOTS = TimeTable(
    name="l2_snapshots",
    columns="""
    symbol     text        NOT NULL,
    ts         timestamptz NOT NULL,
    seq        bigint      NOT NULL,
    epoch      bigint      NOT NULL,
    checksum   bigint,
    bids       jsonb       NOT NULL,
    asks       jsonb       NOT NULL,
    PRIMARY KEY (symbol, ts, seq)""",
    time_column="ts",
    chunk_days=1,
    retention_days=7,
    compress_after_days=1,
)


def _message_table(name: str) -> TimeTable:
    """A table of whole messages, the bytes exactly as published; (channel, symbol, epoch, seq)
    identifies a message, ts (its `timestamp`) is in the key because the partition column must
    be. Compressed per (channel, symbol) in stream order, which is how every reader reads them."""
    return TimeTable(
        name=name,
        columns="""
    channel    text        NOT NULL,
    symbol     text        NOT NULL,
    epoch      bigint      NOT NULL,
    seq        bigint      NOT NULL,
    ts         timestamptz NOT NULL,
    msg        bytea       NOT NULL,
    PRIMARY KEY (channel, symbol, epoch, seq, ts)""",
        time_column="ts",
        chunk_days=1,
        retention_days=7,
        compress_after_days=1,
        segment_by="channel, symbol",
        order_by="epoch, seq",
    )


# every message of the history channels (the replay source)
STREAM_MESSAGES = _message_table("stream_messages")
# full-depth book snapshots (l2_snapshot / l3_snapshot messages as published on the snapshot
# topic), sampled every MD_STORAGE_BOOK_SNAPSHOT_S per symbol: the starting points of a rebuild
BOOK_SNAPSHOTS = _message_table("book_snapshots")

TIME_TABLES: tuple[TimeTable, ...] = (
    TRADES,
    CANDLES,
    L2_SNAPSHOTS,
    STREAM_MESSAGES,
    BOOK_SNAPSHOTS,
)
# the tables of the first schema version (migration 2); later tables come with their own
BASE_TIME_TABLES: tuple[TimeTable, ...] = (TRADES, CANDLES, L2_SNAPSHOTS)

SYMBOLS_DDL = """
CREATE TABLE IF NOT EXISTS symbols (
    symbol     text        PRIMARY KEY,
    base       text        NOT NULL,
    quote      text        NOT NULL,
    tick_size  numeric     NOT NULL,
    min_size   numeric     NOT NULL,
    status     text        NOT NULL,
    source     text        NOT NULL,
    channels   text[]      NOT NULL DEFAULT '{}',
    seq        bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
)"""

BOOKKEEPING_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)""",
    f"""CREATE TABLE IF NOT EXISTS {META_TABLE} (
    key   text PRIMARY KEY,
    value text NOT NULL
)""",
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def _interval(days: int) -> str:
    return f"INTERVAL '{days} days'"


def time_table_ddl(t: TimeTable, backend: Backend) -> tuple[str, ...]:
    """CREATE statements for one time-series table on the given backend (all idempotent)."""
    if backend == "native":
        return (
            f"CREATE TABLE IF NOT EXISTS {t.name} ({t.columns}\n) PARTITION BY RANGE ({t.time_column})",
            f"CREATE TABLE IF NOT EXISTS {t.name}_default PARTITION OF {t.name} DEFAULT",
        )
    return (
        f"CREATE TABLE IF NOT EXISTS {t.name} ({t.columns}\n)",
        f"SELECT create_hypertable('{t.name}', '{t.time_column}', "
        f"chunk_time_interval => {_interval(t.chunk_days)}, if_not_exists => TRUE)",
        f"ALTER TABLE {t.name} SET (timescaledb.compress, "
        f"timescaledb.compress_segmentby = '{t.segment_by}', "
        f"timescaledb.compress_orderby = '{t.order_by or t.time_column + ' DESC'}')",
        f"SELECT add_compression_policy('{t.name}', {_interval(t.compress_after_days)}, "
        f"if_not_exists => TRUE)",
        f"SELECT add_retention_policy('{t.name}', {_interval(t.retention_days)}, "
        f"if_not_exists => TRUE)",
    )


def migrations(backend: Backend) -> tuple[Migration, ...]:
    """The ordered, versioned migrations. Append only: never edit an applied version."""
    ext: tuple[str, ...] = (
        ("CREATE EXTENSION IF NOT EXISTS timescaledb",) if backend == "timescale" else ()
    )
    ts_tables: list[str] = []
    for t in BASE_TIME_TABLES:
        ts_tables.extend(time_table_ddl(t, backend))
    return (
        Migration(1, "symbol catalogue", (SYMBOLS_DDL,)),
        Migration(2, f"time-series tables ({backend})", (*ext, *ts_tables)),
        Migration(
            3,
            "candle lookup by interval and time",
            ("CREATE INDEX IF NOT EXISTS candles_interval_bucket ON candles (interval, bucket)",),
        ),
        Migration(4, "candle vwap", ("ALTER TABLE candles ADD COLUMN IF NOT EXISTS vwap numeric",)),
        Migration(
            5,
            f"book history: stream messages and full snapshots ({backend})",
            (
                *time_table_ddl(STREAM_MESSAGES, backend),
                *time_table_ddl(BOOK_SNAPSHOTS, backend),
                # the point-in-time lookup: the last message at or before a time
                "CREATE INDEX IF NOT EXISTS stream_messages_time "
                "ON stream_messages (channel, symbol, ts DESC)",
            ),
        ),
        Migration(
            6,
            "trades compressed in reading order",
            # REST pages a day of trades ascending by (ts, trade_id): compressed in that order,
            # a page decompresses only its own batches (was: the whole day, 270 ms a page)
            ("ALTER TABLE trades SET (timescaledb.compress_orderby = 'ts, trade_id')",)
            if backend == "timescale"
            else (),
        ),
    )


# --- native partitions ---------------------------------------------------------------------

_PART_RE = re.compile(r"^(?P<table>[a-z0-9_]+)_p(?P<day>\d{8})$")
EPOCH_DAY = date(1970, 1, 1)


@dataclass(frozen=True)
class Partition:
    table: str
    start: date  # inclusive
    end: date  # exclusive

    @property
    def name(self) -> str:
        return f"{self.table}_p{self.start:%Y%m%d}"


def partition_start(t: TimeTable, day: date) -> date:
    """Partitions are ``chunk_days`` wide, aligned on 1970-01-01, so every run agrees on bounds."""
    n = (day - EPOCH_DAY).days // t.chunk_days
    return EPOCH_DAY + timedelta(days=n * t.chunk_days)


def partition_for(t: TimeTable, day: date) -> Partition:
    start = partition_start(t, day)
    return Partition(t.name, start, start + timedelta(days=t.chunk_days))


def partition_plan(
    t: TimeTable, today: date, *, ahead_days: int = 3, behind_days: int = 2
) -> list[Partition]:
    """Partitions that should exist: covering ``today - behind_days`` to ``today + ahead_days``.

    Ahead so that midnight never sends a burst of rows into the default partition; behind so a
    late-arriving or replayed record from yesterday lands in a real partition.
    """
    first = partition_start(t, today - timedelta(days=behind_days))
    last = today + timedelta(days=ahead_days)
    out: list[Partition] = []
    d = first
    while d <= last:
        p = partition_for(t, d)
        out.append(p)
        d = p.end
    return out


def parse_partition_name(name: str) -> tuple[str, date] | None:
    m = _PART_RE.match(name)
    if not m:
        return None
    try:
        day = datetime.strptime(m["day"], "%Y%m%d").date()
    except ValueError:
        return None
    return m["table"], day


def expired_partitions(t: TimeTable, existing: list[str], today: date) -> list[str]:
    """Names of ``t``'s partitions whose whole range is older than the retention period."""
    cutoff = today - timedelta(days=t.retention_days)
    out: list[str] = []
    for name in existing:
        parsed = parse_partition_name(name)
        if parsed is None or parsed[0] != t.name:
            continue
        if parsed[1] + timedelta(days=t.chunk_days) <= cutoff:
            out.append(name)
    return sorted(out)


def _ts(d: date) -> str:
    return f"'{d.isoformat()} 00:00:00+00'"


def create_partition_sql(t: TimeTable, p: Partition) -> tuple[str, ...]:
    """Create one partition, moving any rows the default partition already holds for its range.

    PostgreSQL refuses to attach a range that the default partition has rows for, so those rows
    are parked in a temporary table, the partition created, and the rows re-inserted, all in the
    caller's transaction.
    """
    lo, hi, col = _ts(p.start), _ts(p.end), t.time_column
    park = f"_park_{p.name}"
    return (
        f"CREATE TEMP TABLE {park} (LIKE {t.name}) ON COMMIT DROP",
        f"WITH moved AS (DELETE FROM {t.name}_default WHERE {col} >= {lo} AND {col} < {hi} "
        f"RETURNING *) INSERT INTO {park} SELECT * FROM moved",
        f"CREATE TABLE IF NOT EXISTS {p.name} PARTITION OF {t.name} FOR VALUES FROM ({lo}) TO ({hi})",
        f"INSERT INTO {t.name} SELECT * FROM {park}",
    )


def drop_partition_sql(name: str) -> str:
    return f"DROP TABLE IF EXISTS {name}"


def utc_today() -> date:
    return datetime.now(UTC).date()
