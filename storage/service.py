"""``python -m storage run``: the cache writer and the database writer in one process, with
``/health`` (``/health/live``, ``/health/ready``) and ``/metrics`` on ``MD_STORAGE_HTTP_PORT``
(8012) through core.ops_http.

The two writers are independent: Redis down never stops history being written, and the
database down never stops the cache. ``MD_STORAGE_WRITERS=cache,db`` (default both) picks them,
so they can also be scaled as separate deployments. When both run here the database writer
takes its records from the cache writer's fetches (``MD_STORAGE_DB_FEED=shared``, the default;
storage/db_feed.py) and fetches for itself only what that feed cannot give it (a backlog, a
stall); ``own`` keeps two fetches.

Health: each writer's dependency is a readiness check (``cache_writer``: snapshot loaded, Redis
written within 30 s; ``db_writer``: PostgreSQL reachable), so an outage of either shows as
not ready and never restarts the process, which would stop the other writer too. Liveness is
the process itself: a writer task that ended while the process is not stopping
(``writers``), the cache writer's loop not turning for 30 s (``cache_loop``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from core.health import LIVENESS, READINESS, Health, progressing, tasks_alive
from core.ops_http import start_ops_server
from core.settings import Settings, parse_list
from storage.cache_writer import CacheWriter
from storage.metrics import register_storage_metrics

log = logging.getLogger(__name__)


LOOP_STUCK_S = 30.0


def build_health(
    cache: CacheWriter | None,
    db: object | None,
    tasks: Callable[[], Iterable[asyncio.Task[None]]] | None = None,
) -> Health:
    h = Health("storage")
    if cache is not None:
        c = cache

        def cache_check() -> tuple[bool, object]:
            # the loop touches Redis every 100 ms (a flush or an idle check): silence means stuck
            fresh = c.last_flush_at > 0 and time.monotonic() - c.last_flush_at < 30
            ok = c.ready.is_set() and c.redis_ok and fresh
            return ok, {
                "snapshot_loaded": c.ready.is_set(),
                "redis": "up" if c.redis_ok else "down",
                "since_flush_s": round(time.monotonic() - c.last_flush_at, 3)
                if c.last_flush_at
                else None,
            }

        h.add("cache_writer", cache_check, kind=READINESS)
        h.add("cache_loop", progressing(lambda: c.last_turn_at, LOOP_STUCK_S), kind=LIVENESS)
    if db is not None:
        h.add("db_writer", db.health_check, kind=READINESS)  # type: ignore[attr-defined]
    if tasks is not None:
        h.add("writers", tasks_alive(tasks), kind=LIVENESS)
    return h


async def main(stop: asyncio.Event) -> None:
    s = Settings.from_env()
    default: tuple[str, ...] = ("cache", "db")
    which = set(s.get("MD_STORAGE_WRITERS", parse_list, default))
    cache = CacheWriter(s) if "cache" in which else None
    db = None
    if "db" in which:
        from storage.db_writer import DbWriter

        db = DbWriter(s)
    if cache is not None and db is not None and db.config.feed == "shared":
        # one Kafka fetch of the shared topics for both writers (storage/db_feed.py)
        cache.tap = db
        db.shared_feed = True
    register_storage_metrics(cache, db)
    host = s.get("MD_STORAGE_HTTP_HOST", str, "127.0.0.1")
    tasks: list[asyncio.Task[None]] = []
    # a writer that ends is dead unless the process is stopping
    health = build_health(cache, db, lambda: [] if stop.is_set() else tasks)
    server = await start_ops_server(health, host, s.storage_http_port)
    tasks += [
        asyncio.create_task(w.run(stop), name=type(w).__name__)
        for w in (cache, db)
        if w is not None
    ]
    try:
        done, _ = await asyncio.wait(
            [*tasks, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        for t in done:
            if t in tasks and t.exception() is not None:
                log.error("writer failed", exc_info=t.exception())
                stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        server.close()
        await server.wait_closed()
