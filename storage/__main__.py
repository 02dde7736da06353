"""``python -m storage migrate`` applies the schema; ``python -m storage run`` runs the writers;
``archive`` writes closed days to Parquet and ``restore --day D`` loads one back
(storage/archive.py); ``convert`` moves a database made before TimescaleDB onto it
(storage/convert.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from core.logs import setup_logging
from core.settings import Settings

log = logging.getLogger("storage")


def _migrate() -> int:
    from storage.migrate import migrate

    s = Settings.from_env()
    setup_logging("storage-migrate", s.log_level)
    mode = s.get("MD_STORAGE_BACKEND", str, "auto")
    result = asyncio.run(migrate(s.pg_dsn, mode=mode))
    print(
        f"[storage] schema ready: backend={result.backend} applied={result.applied} "
        f"partitions created={len(result.partitions_created)} dropped={len(result.partitions_dropped)}",
        file=sys.stderr,
    )
    return 0


def _convert() -> int:
    from storage.convert import ConvertError, convert_to_timescale

    s = Settings.from_env()
    setup_logging("storage-convert", s.log_level)
    try:
        r = asyncio.run(convert_to_timescale(s.pg_dsn))
    except ConvertError as exc:
        print(f"[storage] {exc}", file=sys.stderr)
        return 2
    print(
        f"[storage] backend=timescale: {r.partitions_copied} partition(s), "
        f"{sum(r.rows_copied.values())} row(s) copied in {r.seconds:.1f} s {r.rows_copied}",
        file=sys.stderr,
    )
    return 0


def _archive_url(s: Settings, given: str | None) -> str:
    url = given or s.get("MD_ARCHIVE_URL", str, "")
    if not url:
        from core.errors import ConfigError

        raise ConfigError("MD_ARCHIVE_URL", "set it (a directory or fsspec URL) or pass --url")
    return url


def _archive(url: str | None, force: bool) -> int:
    from storage.archive import archive

    s = Settings.from_env()
    setup_logging("storage-archive", s.log_level)
    files = asyncio.run(archive(s.pg_dsn, _archive_url(s, url), force=force))
    print(f"[storage] archived {len(files)} file(s)", file=sys.stderr)
    return 0


def _restore(url: str | None, day: str) -> int:
    from datetime import date

    from storage.archive import restore

    s = Settings.from_env()
    setup_logging("storage-restore", s.log_level)
    n = asyncio.run(restore(s.pg_dsn, _archive_url(s, url), date.fromisoformat(day)))
    print(f"[storage] restored {n} row(s) of {day}", file=sys.stderr)
    return 0


def _run() -> int:
    from core.service import run
    from storage.service import main

    run(main, service="storage")
    return 0


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m storage", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("migrate", help="apply schema migrations to MD_PG_DSN (idempotent)")
    sub.add_parser("run", help="run the Kafka -> PostgreSQL and Kafka -> Redis writers")
    sub.add_parser(
        "convert",
        help="move a native database to TimescaleDB (writers stopped; resumable)",
    )
    a = sub.add_parser("archive", help="write closed days to Parquet (MD_ARCHIVE_URL or --url)")
    a.add_argument("--url", help="directory or fsspec URL (s3://bucket/prefix with s3fs)")
    a.add_argument("--force", action="store_true", help="rewrite days already archived")
    r = sub.add_parser("restore", help="load one archived day back into the database")
    r.add_argument("--day", required=True, help="YYYY-MM-DD (UTC)")
    r.add_argument("--url", help="directory or fsspec URL (default MD_ARCHIVE_URL)")
    args = p.parse_args(argv)
    if args.cmd == "migrate":
        return _migrate()
    if args.cmd == "convert":
        return _convert()
    from core.errors import ConfigError

    try:
        if args.cmd == "archive":
            return _archive(args.url, args.force)
        if args.cmd == "restore":
            return _restore(args.url, args.day)
    except ConfigError as exc:  # a setting to fix: one clear line, no traceback
        print(f"[storage] {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # --day not a date
        print(f"[storage] {exc}", file=sys.stderr)
        return 2
    return _run()


if __name__ == "__main__":
    sys.exit(cli())
