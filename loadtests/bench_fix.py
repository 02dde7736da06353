"""FIX gateway benchmark: incremental refreshes delivered to many sessions, publish -> FIX send latency.

    .venv/bin/python -m loadtests.bench_fix [--sessions 100] [--updates 3000] [--rate 100]

Runs on the real Kafka with its own topic prefix (beside a running stack), a ``python -m
fix_gateway`` child with ``--sessions`` configured sessions (BENCH1..N), and N FIX sessions
that each subscribe to BTC-USD full depth, incremental: ``--measured`` of them (default 5) are
full FIX clients (our asyncio initiator: every message parsed and checked, latency taken), the
others are light raw-socket clients that log on, subscribe, heartbeat and count the X frames
they receive, so that the client side costs little of the shared CPU.
This process plays the aggregator: contract-conforming ``l2_update`` messages on ``l2``.

Phase 1 (latency): ``--rate`` updates/s for ``--seconds``; per X message, the latency from the
platform message's publish time (``timestamp``, known to this process by RptSeq) to the FIX
SendingTime(52) the gateway stamped (ms resolution), and to receipt by the client.
Phase 2 (throughput): ``--updates`` updates produced as fast as Kafka takes them; incremental
refreshes delivered per second to all sessions, first to last.

Clients, gateway, Kafka and this producer share the machine's cores, so the numbers are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

from core.kafka import ensure_topics
from core.settings import Settings
from fix_gateway.client import FixClient
from fix_gateway.codec import Message, parse_utc_timestamp
from fix_gateway.testing import GatewayProcess, metric
from loadtests.bench_fix_clients import (
    Counts,
    LightClient,
    cpu_seconds,
    l2_change,
    pct,
    write_sessions,
)
from loadtests.cleanup import drop_topics_at_exit
from testkit.fake_aggregator import Platform, Publisher
from testkit.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


class Stats:
    def __init__(self) -> None:
        self.received = 0
        self.first = 0.0
        self.last = 0.0
        self.send_lat: list[float] = []
        self.recv_lat: list[float] = []
        self.publish_ns: dict[int, int] = {}
        self.measure = True

    def on_app(self, m: Message) -> None:
        if m.msg_type != "X":
            return
        now = time.time_ns()
        if not self.received:
            self.first = time.perf_counter()
        self.received += 1
        self.last = time.perf_counter()
        if not self.measure:
            return
        raw = m.fields
        seq = 0
        for tag, val in reversed(raw):
            if tag == 83:
                seq = int(val)
                break
        pub = self.publish_ns.get(seq)
        if pub is None:
            return
        st = m.get(52)
        if st:
            self.send_lat.append((parse_utc_timestamp(st) - pub) / 1e6)
        self.recv_lat.append((now - pub) / 1e6)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--updates", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--measured", type=int, default=5)
    args = ap.parse_args()

    base = Settings.from_env()
    tag = uuid.uuid4().hex[:8]
    s = dataclasses.replace(base, topic_prefix=f"bench.fix.{tag}", redis_prefix=f"bench:fix:{tag}")
    atexit.register(drop_topics_at_exit, s)  # a run leaves no topics on the broker
    await ensure_topics(s, partitions=3)
    work = ROOT / "var" / "cache" / f"bench_fix_{tag}"
    work.mkdir(parents=True, exist_ok=True)
    sessions = write_sessions(work / "sessions.toml", args.sessions)
    env = dict(
        os.environ,
        MD_TOPIC_PREFIX=s.topic_prefix,
        MD_REDIS_PREFIX=s.redis_prefix,
        MD_FIX_SESSIONS_FILE=str(sessions),
        MD_LOG_LEVEL="WARNING",
    )
    btc = Platform("BTC-USD")
    stats = Stats()
    async with Publisher(s) as pub:
        await pub.seed(btc, levels=20)
        gw = GatewayProcess(env, free_port(), free_port(), work / "store")
        await gw.start()
        clients: list[FixClient] = []
        light: list[LightClient] = []
        light_count = Counts(measure=False)
        loop = asyncio.get_running_loop()
        try:
            for i in range(1, args.sessions + 1):
                if i <= args.measured:
                    c = await FixClient.connect(
                        "127.0.0.1",
                        gw.fix_port,
                        sender=f"BENCH{i}",
                        heartbeat=30,
                        on_app=stats.on_app,
                    )
                    clients.append(c)
                else:
                    _, lc = await loop.create_connection(
                        partial(LightClient, f"BENCH{i}", light_count, "L"),
                        "127.0.0.1",
                        gw.fix_port,
                    )
                    light.append(lc)
            for c in clients:
                await c.logged_on()
            await asyncio.wait_for(asyncio.gather(*(lc.logged_on for lc in light)), 60)
            for lc in light:
                lc.subscribe()
            for i, c in enumerate(clients):
                c.send(
                    "V",
                    [
                        (262, f"b{i}"),
                        (263, "1"),
                        (264, 0),
                        (265, "1"),
                        (267, 2),
                        (269, "0"),
                        (269, "1"),
                        (146, 1),
                        (55, "BTC-USD"),
                    ],
                )
            await asyncio.sleep(1.0)

            def delivered() -> int:
                return stats.received + light_count.received

            # phase 1: paced, latency
            n1 = int(args.rate * args.seconds)
            t0 = time.perf_counter()
            for i in range(n1):
                raw = btc.update(l2_change(i))
                stats.publish_ns[btc.seq] = _ts(raw)
                await pub.prod.send(pub.t.stream("l2"), raw, key=b"BTC-USD")
                delay = t0 + (i + 1) / args.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await _until(lambda: delivered() >= n1 * args.sessions, 60)
            lat_send, lat_recv = list(stats.send_lat), list(stats.recv_lat)
            phase1 = delivered()

            # phase 2: burst, throughput
            stats.measure = False
            stats.received = 0
            light_count.received = 0
            first: list[float] = []

            async def watch() -> None:
                while not delivered():  # noqa: ASYNC110 - polling a plain counter
                    await asyncio.sleep(0.001)
                first.append(time.perf_counter())

            watcher = asyncio.create_task(watch())
            assert gw.proc is not None
            cpu0 = cpu_seconds([gw.proc.pid])
            t_prod = time.perf_counter()
            futs = []
            for i in range(args.updates):
                futs.append(
                    await pub.prod.send(
                        pub.t.stream("l2"), btc.update(l2_change(n1 + i)), key=b"BTC-USD"
                    )
                )
            await asyncio.gather(*futs)
            prod_s = time.perf_counter() - t_prod
            want = args.updates * args.sessions
            await _until(lambda: delivered() >= want, 300)
            burst_s = time.perf_counter() - first[0]
            gw_cpu = cpu_seconds([gw.proc.pid]) - cpu0
            await watcher
            out_total = metric(gw.http_port, "fix_messages_out_total")
        finally:
            for c in clients:
                c.close()
            for lc in light:
                lc.close()
            await gw.stop()

    cpu = _cpu_name()
    print(
        f"machine: {os.cpu_count()} cores {cpu}, Python {platform.python_version()}, {sys.platform}"
    )
    print(
        f"sessions: {args.sessions} ({args.measured} full FIX clients measuring latency, the rest light counters)"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"phase 1 (latency): {n1} l2 updates at {args.rate:g}/s -> {phase1} X messages")
    print(
        f"  publish -> FIX SendingTime ms: p50 {pct(lat_send, 0.5):.1f}  p99 {pct(lat_send, 0.99):.1f}  max {max(lat_send or [0]):.1f}"
    )
    print(
        f"  publish -> client receipt  ms: p50 {pct(lat_recv, 0.5):.1f}  p99 {pct(lat_recv, 0.99):.1f}  max {max(lat_recv or [0]):.1f}"
    )
    print(
        f"phase 2 (throughput): {args.updates} l2 updates produced in {prod_s:.2f}s -> {want} X messages in {burst_s:.2f}s "
        f"= {want / burst_s:,.0f} msg/s to {args.sessions} sessions ({args.updates / burst_s:,.0f} updates/s)"
    )
    print(
        f"gateway CPU during phase 2: {gw_cpu:.2f} s -> {want / gw_cpu:,.0f} X messages per gateway CPU-second"
    )
    print(f"gateway fix_messages_out_total: {out_total:,.0f}")
    print(f"mean send latency {statistics.fmean(lat_send) if lat_send else float('nan'):.1f} ms")


def _cpu_name() -> str:
    r = subprocess.run(
        ["bash", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True
    )
    return r.stdout.strip()


def _ts(raw: bytes) -> int:
    import orjson

    from core.codec import ns_from_iso

    return ns_from_iso(orjson.loads(raw)["timestamp"])


async def _until(cond, limit: float) -> None:
    async with asyncio.timeout(limit):
        while not cond():  # noqa: ASYNC110 - polling a plain predicate
            await asyncio.sleep(0.01)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
