"""The Parquet archive of stored history (docs/storage.md "Archive").

``python -m storage archive`` writes every closed (UTC) day of ``stream_messages`` and
``book_snapshots`` to ``<root>/<channel>/<SYMBOL>/<YYYY-MM-DD>.parquet``: one file per day,
channel and symbol, ``root`` a directory or any fsspec URL (``s3://bucket/md`` with ``s3fs``
installed). Columns: ``kind`` (``message`` | ``snapshot``), ``epoch``, ``seq``, ``ts``
(timestamp µs UTC), ``msg`` (the bytes as published), sorted by ``(epoch, seq)``. A file is
written under a temporary name and moved into place, so a reader never sees half a day, and a
day already archived is skipped: running it again (from cron) is safe. With the days archived,
the database's retention can be short.

``python -m storage restore --day D`` loads a day back (messages, snapshots, and the trades
table rows re-derived from the trade messages), idempotently.

Reading it back is :mod:`core.history.archive` (the file layout is declared there): the
point-in-time book and replay read archived days transparently (``MD_ARCHIVE_URL``).
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq

from core.history.archive import SCHEMA, archive_fs, day_path
from storage.db_rows import RowBatch, RowBuilder

log = logging.getLogger(__name__)

ROW_GROUP = 100_000
SOURCES = (("message", "stream_messages"), ("snapshot", "book_snapshots"))


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return lo, lo + timedelta(days=1)


async def archive(
    dsn: str, url: str, *, today: date | None = None, force: bool = False
) -> list[str]:
    """Write every closed day not archived yet; returns the files written."""
    fs, root = archive_fs(url)
    first_open = today or datetime.now(UTC).date()
    written: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        oldest = await conn.fetchval(
            "SELECT least((SELECT min(ts) FROM stream_messages), (SELECT min(ts) FROM book_snapshots))"
        )
        if oldest is None:
            return written
        day = oldest.astimezone(UTC).date()
        while day < first_open:
            lo, hi = _day_bounds(day)
            pairs = await conn.fetch(
                "SELECT DISTINCT channel, symbol FROM stream_messages WHERE ts >= $1 AND ts < $2 "
                "UNION SELECT DISTINCT channel, symbol FROM book_snapshots "
                "WHERE ts >= $1 AND ts < $2",
                lo,
                hi,
            )
            for p in pairs:
                path = day_path(root, p["channel"], p["symbol"], day)
                if not force and fs.exists(path):
                    continue
                n = await _write_day(conn, fs, path, p["channel"], p["symbol"], lo, hi)
                written.append(path)
                log.info("day archived", extra={"file": path, "rows": n})
            day += timedelta(days=1)
    finally:
        await conn.close()
    return written


async def _write_day(
    conn: asyncpg.Connection,
    fs: Any,
    path: str,
    channel: str,
    symbol: str,
    lo: datetime,
    hi: datetime,
) -> int:
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    n = 0
    with fs.open(tmp, "wb") as f, pq.ParquetWriter(f, SCHEMA, compression="zstd") as w:
        for kind, table in SOURCES:
            async with conn.transaction():
                cur = conn.cursor(
                    f"SELECT epoch, seq, ts, msg FROM {table} WHERE channel = $1 AND symbol = $2 "
                    "AND ts >= $3 AND ts < $4 ORDER BY epoch, seq",
                    channel,
                    symbol,
                    lo,
                    hi,
                    prefetch=10_000,
                )
                rows: list[Any] = []
                async for r in cur:
                    rows.append(r)
                    if len(rows) >= ROW_GROUP:
                        w.write_table(_table(kind, rows))
                        n += len(rows)
                        rows = []
                if rows:
                    w.write_table(_table(kind, rows))
                    n += len(rows)
    fs.mv(tmp, path)
    return n


def _table(kind: str, rows: list[Any]) -> pa.Table:
    return pa.table(
        {
            "kind": [kind] * len(rows),
            "epoch": [r["epoch"] for r in rows],
            "seq": [r["seq"] for r in rows],
            "ts": [r["ts"] for r in rows],
            "msg": [bytes(r["msg"]) for r in rows],
        },
        schema=SCHEMA,
    )


def _ts_us(ts: datetime) -> int:
    return int(ts.timestamp()) * 1_000_000 + ts.microsecond


async def restore(dsn: str, url: str, day: date) -> int:
    """Load one archived day back into the database (every channel and symbol of it);
    re-delivered rows are skipped, so restoring twice is harmless. Returns the rows read."""
    from core.settings import Settings
    from storage.db_writer import DbWriter, DbWriterConfig

    fs, root = archive_fs(url)
    files = sorted(fs.glob(posixpath.join(root, "*", "*", f"{day.isoformat()}.parquet")))
    s = Settings.from_env()
    import dataclasses

    w = DbWriter(dataclasses.replace(s, pg_dsn=dsn), DbWriterConfig(group_id="restore"))
    total = 0
    try:
        for path in files:
            channel = posixpath.basename(posixpath.dirname(posixpath.dirname(path)))
            rb = RowBuilder(snapshot_topic="-", history_channels=(channel,))
            with fs.open(path, "rb") as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=5000):
                    b = RowBatch()
                    for r in batch.to_pylist():
                        total += 1
                        if r["kind"] == "snapshot":
                            sym = posixpath.basename(posixpath.dirname(path))
                            b.book_snapshots.append(
                                (channel, sym, r["epoch"], r["seq"], _ts_us(r["ts"]), r["msg"])
                            )
                        else:
                            rb.add(b, "archive", 0, total, None, r["msg"])
                    await w.write(b)
    finally:
        if w._pool is not None:  # noqa: SLF001 - the writer is used as a library here
            await w._pool.close()  # noqa: SLF001
    return total
