"""Sizes behind docs/scaling.md "Database" and "Redis", read from the running stack (read-only).

    python -m loadtests.scaling_sizes db       # bytes per row (heap + indexes) of the history tables
    python -m loadtests.scaling_sizes redis    # Redis memory, and the largest keys by family

``db`` asks PostgreSQL (``MD_PG_DSN``) for every table of the storage schema with rows: its row
count (``count(*)``, exact), heap and index bytes (``pg_relation_size`` / ``pg_indexes_size``,
partitions summed into their parent) and bytes per row. ``redis`` reads ``INFO memory`` and
``MEMORY USAGE`` of every key under ``MD_REDIS_PREFIX`` (a SCAN, bounded by ``--max-keys``),
grouped by key family (the part before the symbol), largest first.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict

from core.settings import Settings

TABLE_SQL = """
select coalesce(p.relname, c.relname) as name,
       sum(pg_relation_size(c.oid))::bigint as heap,
       sum(pg_indexes_size(c.oid))::bigint as idx
from pg_class c
join pg_namespace n on n.oid = c.relnamespace and n.nspname = current_schema()
left join pg_inherits i on i.inhrelid = c.oid
left join pg_class p on p.oid = i.inhparent
where c.relkind = 'r'
group by 1 order by 2 desc
"""


async def db(s: Settings) -> None:
    import asyncpg

    conn = await asyncpg.connect(s.pg_dsn)
    try:
        print(f"{'table':28s} {'rows':>12s} {'heap MB':>9s} {'index MB':>9s} {'B/row':>7s}")
        for r in await conn.fetch(TABLE_SQL):
            rows = await conn.fetchval(f'select count(*) from "{r["name"]}"')
            if not rows:
                continue
            per = (r["heap"] + r["idx"]) / rows
            print(
                f"{r['name']:28s} {rows:12,d} {r['heap'] / 2**20:9.1f} "
                f"{r['idx'] / 2**20:9.1f} {per:7.0f}"
            )
    finally:
        await conn.close()


async def redis(s: Settings, max_keys: int) -> None:
    import redis.asyncio as aioredis

    r = aioredis.from_url(s.redis_url)
    try:
        info = await r.info("memory")
        print(f"used_memory {info['used_memory'] / 2**20:.1f} MiB")
        fam: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # keys, bytes, largest
        n = 0
        async for key in r.scan_iter(match=f"{s.redis_prefix}:*", count=1000):
            n += 1
            if n > max_keys:
                break
            size = int(await r.memory_usage(key) or 0)
            parts = key.decode().split(":")
            name = ":".join(parts[:3]) if len(parts) > 3 else ":".join(parts[:2])
            f = fam[name]
            f[0] += 1
            f[1] += size
            f[2] = max(f[2], size)
        print(f"{'key family':32s} {'keys':>6s} {'MiB':>8s} {'largest MiB':>12s}")
        for name, (k, b, big) in sorted(fam.items(), key=lambda x: -x[1][1])[:20]:
            print(f"{name:32s} {k:6d} {b / 2**20:8.1f} {big / 2**20:12.2f}")
    finally:
        await r.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("db", "redis"))
    ap.add_argument("--max-keys", type=int, default=100_000)
    a = ap.parse_args()
    s = Settings.from_env()
    asyncio.run(db(s) if a.what == "db" else redis(s, a.max_keys))


if __name__ == "__main__":
    main()
