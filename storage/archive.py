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

:class:`ArchiveFetcher` answers the history queries of :mod:`storage.history` and
:mod:`storage.replay` from the files, and :class:`HistoryFetcher` merges it with the database,
so the point-in-time book and replay read archived days transparently (``MD_ARCHIVE_URL``).
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from storage.db_rows import RowBatch, RowBuilder, dt_from_ns
from storage.history import SQL_AT, SQL_SEQ_EPOCH, SQL_SNAPSHOT, SQL_UPDATES
from storage.replay import SQL_FIRST_SNAPSHOT_AFTER, SQL_FIRST_SNAPSHOT_OF_EPOCH, SQL_PAGE

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("epoch", pa.int64()),
        ("seq", pa.int64()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("msg", pa.binary()),
    ]
)
ROW_GROUP = 100_000
SOURCES = (("message", "stream_messages"), ("snapshot", "book_snapshots"))


def day_path(root: str, channel: str, symbol: str, day: date) -> str:
    return posixpath.join(root, channel, symbol, f"{day.isoformat()}.parquet")


def _fs(url: str) -> tuple[Any, str]:
    fs, root = fsspec.core.url_to_fs(url)
    return fs, root.rstrip("/")


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return lo, lo + timedelta(days=1)


async def archive(
    dsn: str, url: str, *, today: date | None = None, force: bool = False
) -> list[str]:
    """Write every closed day not archived yet; returns the files written."""
    fs, root = _fs(url)
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

    fs, root = _fs(url)
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


# --- reading the archive as a history source ---------------------------------------------


class _Row(dict[str, Any]):
    """A dict that also answers ``row[0]``, like an asyncpg Record."""

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, int):
            return list(self.values())[k]
        return super().__getitem__(k)


class ArchiveFetcher:
    """The history queries answered from the Parquet files (pyarrow datasets, pruned by the
    files' statistics); only the queries :mod:`storage.history` and :mod:`storage.replay` make."""

    def __init__(self, url: str) -> None:
        self.fs, self.root = _fs(url)

    def _rows(self, channel: str, symbol: str, flt: Any) -> list[_Row]:
        base = posixpath.join(self.root, channel, symbol)
        if not self.fs.exists(base):
            return []
        files = [p for p in self.fs.glob(posixpath.join(base, "*.parquet"))]
        if not files:
            return []
        ds = pads.dataset(files, schema=SCHEMA, format="parquet", filesystem=self.fs)
        return [_Row(r) for r in ds.to_table(filter=flt).to_pylist()]

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:  # noqa: ASYNC109
        return list(self._query(query, args))

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        return next(iter(self._query(query, args)), None)

    def _query(self, query: str, a: tuple[Any, ...]) -> Iterator[_Row]:
        f = pads.field
        msg, snap = f("kind") == "message", f("kind") == "snapshot"
        key = lambda r: (r["epoch"], r["seq"])  # noqa: E731
        if query == SQL_SEQ_EPOCH:
            rows = self._rows(a[0], a[1], f("seq") == a[2])
            yield from sorted((_Row(epoch=r["epoch"]) for r in rows), key=lambda r: -r["epoch"])[:1]
        elif query == SQL_AT:
            rows = self._rows(a[0], a[1], f("ts") <= a[2])
            best = max(rows, key=lambda r: (r["ts"], r["epoch"], r["seq"]), default=None)
            if best is not None:
                yield _Row(epoch=best["epoch"], seq=best["seq"], ts=best["ts"])
        elif query == SQL_SNAPSHOT:
            rows = self._rows(a[0], a[1], snap & (f("epoch") == a[2]) & (f("seq") <= a[3]))
            yield from sorted(rows, key=key, reverse=True)[:1]
        elif query == SQL_UPDATES:
            flt = msg & (f("epoch") == a[2]) & (f("seq") >= a[3]) & (f("seq") <= a[4])
            yield from sorted(self._rows(a[0], a[1], flt), key=key)
        elif query == SQL_PAGE:
            after = (f("epoch") > a[4]) | ((f("epoch") == a[4]) & (f("seq") > a[5]))
            flt = msg & (f("ts") >= a[2]) & (f("ts") <= a[3]) & after
            yield from sorted(self._rows(a[0], a[1], flt), key=key)[: a[6]]
        elif query == SQL_FIRST_SNAPSHOT_OF_EPOCH:
            yield from sorted(self._rows(a[0], a[1], snap & (f("epoch") == a[2])), key=key)[:1]
        elif query == SQL_FIRST_SNAPSHOT_AFTER:
            rows = self._rows(a[0], a[1], snap & (f("ts") >= a[2]) & (f("ts") <= a[3]))
            yield from sorted(rows, key=lambda r: (r["ts"], r["epoch"], r["seq"]))[:1]
        else:
            raise ValueError("not a history query")


class HistoryFetcher:
    """The database and the archive as one history: each query asks both and merges the
    answers by the query's own order (days still in the database and days only archived, or
    a day in both while retention has not dropped it yet, all answer the same way)."""

    def __init__(self, db: Any, archive: ArchiveFetcher) -> None:
        self.db = db
        self.archive = archive

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:  # noqa: ASYNC109
        rows = [*(await self.db.fetch(query, *args)), *(await self.archive.fetch(query, *args))]
        return _merge(query, args, rows)

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        rows = [await self.db.fetchrow(query, *args), await self.archive.fetchrow(query, *args)]
        return next(iter(_merge(query, args, [r for r in rows if r is not None])), None)


def _merge(query: str, args: tuple[Any, ...], rows: list[Any]) -> list[Any]:
    if query == SQL_SEQ_EPOCH:
        return sorted(rows, key=lambda r: -r[0])[:1]
    if query == SQL_AT:
        return sorted(rows, key=lambda r: (r["ts"], r["epoch"], r["seq"]), reverse=True)[:1]
    if query == SQL_SNAPSHOT:
        return sorted(rows, key=lambda r: r["seq"], reverse=True)[:1]
    if query in (SQL_UPDATES, SQL_PAGE, SQL_FIRST_SNAPSHOT_OF_EPOCH):
        seen: dict[tuple[int, int], Any] = {}
        for r in rows:
            seen.setdefault((r["epoch"] if "epoch" in r.keys() else args[2], r["seq"]), r)
        out = [seen[k] for k in sorted(seen)]
        if query == SQL_PAGE:
            return out[: args[6]]
        if query == SQL_FIRST_SNAPSHOT_OF_EPOCH:
            return out[:1]
        return out
    if query == SQL_FIRST_SNAPSHOT_AFTER:
        return sorted(rows, key=lambda r: (r["ts"], r["epoch"], r["seq"]))[:1]
    return rows


def history_source(db: Any, archive_url: str | None) -> Any:
    """What the REST gateway and the replay server read: the database, plus the archive when
    ``MD_ARCHIVE_URL`` is set."""
    return HistoryFetcher(db, ArchiveFetcher(archive_url)) if archive_url else db


__all__ = [
    "ArchiveFetcher",
    "HistoryFetcher",
    "archive",
    "day_path",
    "dt_from_ns",
    "history_source",
    "restore",
]
