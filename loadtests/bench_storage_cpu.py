"""CPU of the storage process at a live rate, with no client (issue 13 item 1, issue 10's budget).

    flock /tmp/md-bench.lock .venv/bin/python -m loadtests.bench_storage_cpu \
        [--window 60] [--runs 2] [--rate 200] [--compare-tree DIR] \
        [--variant NAME:MD_X=1,MD_Y=2 ...]

Isolated: its own topics (``MD_TOPIC_PREFIX``), Redis prefix and database (dropped afterwards),
ports 186xx. It starts a simulator and an aggregator at ``--rate`` (the default simulator rate),
then ``python -m storage run`` of this tree and, with ``--compare-tree``, the ``storage``
package of another checkout (e.g. ``git archive <commit> storage | tar -x -C DIR``) side by
side on the same live topics, each with its own database, Redis prefix and consumer group;
each ``--variant`` adds one more ``python -m storage run`` of this tree with those settings (an
A/B of a setting in the same minutes, which a shared machine's drifting load needs).
After a warm-up, CPU (utime + stime of ``/proc/<pid>/stat``) over ``--window`` seconds, ``--runs``
times; also the messages per second the storage consumers see and the rows stored. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg

from core.settings import Settings
from loadtests.bench_e2e import CLK_TCK, cpu_ticks
from loadtests.bench_storage import drop_topics

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _env(prefix: str, dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
    env.update(
        MD_TOPIC_PREFIX=prefix,
        MD_REDIS_PREFIX=prefix,
        MD_PG_DSN=dsn,
        MD_AGGREGATOR_HTTP_PORT="18611",
        MD_SIMULATOR_HTTP_PORT="18613",
        MD_STORAGE_HTTP_PORT="18612",
        MD_AGG_FEED_PORT="0",
        MD_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


async def _sql(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _stored(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        n = await conn.fetchval(
            "SELECT (SELECT count(*) FROM stream_messages) + (SELECT count(*) FROM trades)"
        )
        return int(n)
    finally:
        await conn.close()


async def _drop_keys(url: str, prefix: str) -> None:
    """The cache writers' keys (``<prefix>now:*``, ``<prefix>compare:*``, one per variant)."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in r.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 500):
            await r.delete(*keys[i : i + 500])
    finally:
        await r.aclose()


def _start(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _args() -> tuple[argparse.Namespace, dict[str, dict[str, str]]]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--window", type=float, default=60.0, help="measured seconds per run")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=25.0, help="seconds before the first run")
    ap.add_argument("--rate", default="200", help="MD_SIM_RATE (the default: 200)")
    ap.add_argument("--compare-tree", help="a directory holding another version's storage/")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:MD_X=v,MD_Y=w: one more storage process of this tree with these settings",
    )
    args = ap.parse_args()
    variants: dict[str, dict[str, str]] = {}
    for v in args.variant:
        name, _, pairs = v.partition(":")
        variants[name] = dict(p.split("=", 1) for p in pairs.split(",") if p)
    return args, variants


def main() -> int:
    args, variants = _args()

    tag = uuid.uuid4().hex[:8]
    prefix = f"bcpu{tag}"
    base = os.environ.get("MD_PG_DSN", "postgresql://postgres@127.0.0.1:15432/marketdata")
    server = base.rsplit("/", 1)[0]
    dbs = {"now": f"bcpu_{tag}_now"}
    if args.compare_tree:
        dbs["compare"] = f"bcpu_{tag}_cmp"
    for i, name in enumerate(variants):
        dbs[name] = f"bcpu_{tag}_v{i}"
    logs = ROOT / "var" / "log" / "bench_storage_cpu"
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for db in dbs.values():
            asyncio.run(_sql(f"{server}/postgres", f'CREATE DATABASE "{db}"'))
        env0 = _env(prefix, f"{server}/{dbs['now']}", MD_SIM_RATE=args.rate)
        subprocess.run([PY, "-m", "core.bootstrap"], env=env0, cwd=ROOT, check=True)
        for name, db in dbs.items():
            tree = ROOT if name != "compare" else Path(args.compare_tree or ".").resolve()
            env = _env(prefix, f"{server}/{db}", PYTHONPATH=f"{tree}:{ROOT}")
            subprocess.run([PY, "-m", "storage", "migrate"], env=env, cwd=tree, check=True)
        procs["simulator"] = _start(
            [PY, "-m", "aggregator.sources.simulator"], env0, ROOT, logs / "sim.log"
        )
        procs["aggregator"] = _start([PY, "-m", "aggregator"], env0, ROOT, logs / "agg.log")
        for i, (name, db) in enumerate(dbs.items()):
            tree = ROOT if name != "compare" else Path(args.compare_tree or ".").resolve()
            extra = {
                "PYTHONPATH": f"{tree}:{ROOT}",
                "MD_REDIS_PREFIX": f"{prefix}{name}",
                "MD_STORAGE_DB_GROUP": f"{prefix}.{name}",
                "MD_STORAGE_HTTP_PORT": str(18612 + 10 * i),
            }
            extra.update(variants.get(name, {}))  # a variant may set PYTHONPATH too
            env = _env(prefix, f"{server}/{db}", **extra)
            procs[f"storage {name}"] = _start(
                [PY, "-m", "storage", "run"], env, tree, logs / f"storage_{name}.log"
            )
        time.sleep(args.warmup)
        with open("/proc/loadavg") as fh:
            load0 = fh.read().split()[0]
        results: dict[str, list[float]] = {n: [] for n in procs}
        stored: list[float] = []
        for _ in range(args.runs):
            for n, p in procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{n} exited with {p.returncode} (see {logs})")
            t0 = {n: cpu_ticks(p.pid) or 0 for n, p in procs.items()}
            s0, w0 = asyncio.run(_stored(f"{server}/{dbs['now']}")), time.monotonic()
            time.sleep(args.window)
            t1 = {n: cpu_ticks(p.pid) or 0 for n, p in procs.items()}
            dt = time.monotonic() - w0
            stored.append((asyncio.run(_stored(f"{server}/{dbs['now']}")) - s0) / dt)
            for n in procs:
                results[n].append(100 * (t1[n] - t0[n]) / CLK_TCK / dt)
        with open("/proc/loadavg") as fh:
            load1 = fh.read().split()[0]
        print(
            f"\nMD_SIM_RATE={args.rate}, {args.window:.0f} s per run, load average {load0} -> {load1}, "
            f"rows stored/s (now): {', '.join(f'{x:,.0f}' for x in stored)}\n"
        )
        print("| process | " + " | ".join(f"run {i + 1}" for i in range(args.runs)) + " |")
        print("| --- |" + " ---: |" * args.runs)
        for n, vals in results.items():
            print(f"| {n} | " + " | ".join(f"{v:.1f} %" for v in vals) + " |")
        return 0
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for db in dbs.values():
            asyncio.run(_sql(f"{server}/postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        settings = dataclasses.replace(Settings.from_env(), topic_prefix=prefix)
        asyncio.run(drop_topics(settings))
        asyncio.run(_drop_keys(settings.redis_url, prefix))


if __name__ == "__main__":
    sys.exit(main())
