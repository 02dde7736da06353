"""``python -m storage migrate`` applies the schema; ``python -m storage run`` runs the writers."""

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
    args = p.parse_args(argv)
    if args.cmd == "migrate":
        return _migrate()
    return _run()


if __name__ == "__main__":
    sys.exit(cli())
