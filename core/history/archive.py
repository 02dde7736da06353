"""The Parquet archive (written by ``python -m storage archive``, docs/storage.md "Archive") read
as one more history source: its file layout, and :class:`ArchiveFetcher`, which answers the
history queries of core/history/sql.py from the files (pyarrow datasets, pruned by the files'
statistics); :class:`HistoryFetcher` merges it with the database, so the point-in-time book and
replay read archived days transparently (``MD_ARCHIVE_URL``)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from datetime import date
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads

from core.history.sql import (
    SQL_AT,
    SQL_FIRST_SNAPSHOT_AFTER,
    SQL_FIRST_SNAPSHOT_OF_EPOCH,
    SQL_PAGE,
    SQL_SEQ_EPOCH,
    SQL_SNAPSHOT,
    SQL_UPDATES,
)

# one file per (channel, symbol, UTC day): <root>/<channel>/<SYMBOL>/<YYYY-MM-DD>.parquet, rows
# sorted by (epoch, seq); kind is "message" (stream_messages) or "snapshot" (book_snapshots)
SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("epoch", pa.int64()),
        ("seq", pa.int64()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("msg", pa.binary()),
    ]
)


def day_path(root: str, channel: str, symbol: str, day: date) -> str:
    return posixpath.join(root, channel, symbol, f"{day.isoformat()}.parquet")


def archive_fs(url: str) -> tuple[Any, str]:
    fs, root = fsspec.core.url_to_fs(url)
    return fs, root.rstrip("/")


class _Row(dict[str, Any]):
    """A dict that also answers ``row[0]``, like an asyncpg Record."""

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, int):
            return list(self.values())[k]
        return super().__getitem__(k)


class ArchiveFetcher:
    """The history queries answered from the Parquet files (pyarrow datasets, pruned by the
    files' statistics); only the queries :mod:`core.history.book` and :mod:`core.history.replay` make."""

    def __init__(self, url: str) -> None:
        self.fs, self.root = archive_fs(url)

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
            # .keys(): `in` on an asyncpg Record looks at the values
            seen.setdefault((r["epoch"] if "epoch" in r.keys() else args[2], r["seq"]), r)  # noqa: SIM118
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
