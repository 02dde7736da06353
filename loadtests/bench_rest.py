"""REST ceiling benchmark: ``orderbook?depth=20`` and ``ticker`` with a raw load tool (wrk).

    .venv/bin/python -m loadtests.bench_rest [--processes 2] [--duration 10] [--connections 64]

Isolated like a test: its own topic and Redis prefix, a cache filled through the real cache
writer (a 100-level book per side from the snapshot topic), then ``python -m gateway_rest`` with
``MD_REST_PROCESSES`` workers on a free port, and ``wrk`` against it (``apt-get install wrk``).
Runs each endpoint with rate limiting off (the ceiling) and on (one Redis ``INCR`` per request,
anonymous tier with a limit no run reaches). Prints a Markdown table for docs/benchmarks.md.

wrk runs on the same machine as the gateway, Redis and Kafka, so all compete for the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import httpx

from core.kafka import ensure_topics, make_producer
from core.settings import Settings
from core.topics import Topics
from loadtests.cleanup import drop_topics_at_exit
from storage.cache_writer import CacheWriter
from testkit import fake_aggregator as T
from testkit.ports import free_port

SYM = "BTC-USD"


async def fill_cache(s: Settings) -> None:
    await ensure_topics(s, partitions=3)
    p = make_producer(s)
    await p.start()
    bids = [[f"{50000 - i * 0.5:.2f}", f"{1 + i % 7}.{i:04d}"] for i in range(100)]
    asks = [[f"{50000.5 + i * 0.5:.2f}", f"{2 + i % 5}.{i:04d}"] for i in range(100)]
    try:
        await T.produce(
            p,
            Topics.from_settings(s).snapshot,
            [
                (f"status:{SYM}", T.status(SYM, 1)),
                (f"l2:{SYM}", T.l2_snapshot(SYM, 1000, bids, asks, checksum=1)),
                (f"ticker:{SYM}", T.ticker(SYM, 900)),
            ],
        )
    finally:
        await p.stop()
    w = CacheWriter(s)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    await asyncio.wait_for(w.ready.wait(), 60)
    await asyncio.sleep(1.0)  # the snapshot records were produced before the writer started
    stop.set()
    await task


def parse_wrk(out: str) -> dict[str, float]:
    def lat(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        v, unit = float(m[1]), m[2]
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": float(rps[1]) if rps else float("nan"),
        "p50_ms": lat("50"),
        "p99_ms": lat("99"),
        "non2xx": float(non2xx[1]) if non2xx else 0.0,
    }


def run_wrk(url: str, duration: int, connections: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


def start_gateway(
    s: Settings, port: int, processes: int, limit_on: bool, microcache_ms: int = 0
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        MD_TOPIC_PREFIX=s.topic_prefix,
        MD_REDIS_PREFIX=s.redis_prefix,
        MD_REST_PORT=str(port),
        MD_REST_PROCESSES=str(processes),
        MD_LOG_LEVEL="WARNING",
        MD_REST_RATE_LIMIT="1" if limit_on else "0",
        MD_REST_ANON_RPS="100000000",
        MD_REST_MICROCACHE_MS=str(microcache_ms),
    )
    p = subprocess.Popen(
        [sys.executable, "-m", "gateway_rest"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if (
                httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/market/{SYM}/orderbook", timeout=1
                ).status_code
                == 200
            ):
                return p
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    p.kill()
    raise SystemExit("gateway did not start")


def stop_gateway(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--microcache-ms",
        type=int,
        default=10,
        help="also run with MD_REST_MICROCACHE_MS=this (0: skip)",
    )
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    tag = uuid.uuid4().hex[:8]
    s = dataclasses.replace(
        Settings.from_env(), topic_prefix=f"bench.{tag}", redis_prefix=f"bench:{tag}"
    )
    atexit.register(drop_topics_at_exit, s)  # a run leaves no topics on the broker
    asyncio.run(fill_cache(s))
    rows = []
    configs = [(False, 0), (True, 0)]
    if args.microcache_ms:
        configs += [(False, args.microcache_ms), (True, args.microcache_ms)]
    for limit_on, micro in configs:
        port = free_port()
        gw = start_gateway(s, port, args.processes, limit_on, micro)
        label = ("limits on" if limit_on else "limits off") + (
            f", microcache {micro} ms" if micro else ""
        )
        try:
            for name, path in (
                ("orderbook?depth=20", f"/api/v1/market/{SYM}/orderbook?depth=20"),
                ("ticker", f"/api/v1/market/{SYM}/ticker"),
            ):
                run_wrk(
                    f"http://127.0.0.1:{port}{path}", 2, args.connections, args.threads
                )  # warm-up
                r = run_wrk(
                    f"http://127.0.0.1:{port}{path}", args.duration, args.connections, args.threads
                )
                rows.append((name, label, r))
                print(
                    f"{name:20s} {label:30s} {r['rps']:9.0f} req/s p50 {r['p50_ms']:.2f} ms "
                    f"p99 {r['p99_ms']:.2f} ms non-2xx {int(r['non2xx'])}",
                    file=sys.stderr,
                )
        finally:
            stop_gateway(gw)
    print(
        "\n| endpoint | configuration | req/s | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- |"
    )
    for name, lim, r in rows:
        print(f"| `{name}` | {lim} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    print(
        f"\n{args.processes} gateway processes, wrk -t{args.threads} -c{args.connections} -d{args.duration}s"
    )


if __name__ == "__main__":
    main()
