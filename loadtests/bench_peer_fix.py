"""FIX per core beside its peer: ``fix_gateway`` vs a QuickFIX/J acceptor (issue 17).

    .venv/bin/python -m loadtests.bench_peer_fix [--sessions 100] [--rates 5000,20000,80000]
    make bench-peer-fix

The same ``--sessions`` raw-socket clients (Logon with ResetSeqNumFlag=Y, one
MarketDataRequest(V) for BTC-USD full depth, incremental; they count the ``35=X`` frames and
take SendingTime(52) -> receipt of the last X of each read) log on to each server in turn:

- ``fix_gateway``: ``python -m fix_gateway`` (``--gateways`` processes, the sessions split
  between them; ``--gateway-stores file,memory`` runs it with each ``MD_FIX_STORE``), fed by
  this process playing the aggregator: ``rate / sessions`` one-change ``l2_update`` messages
  per second on the real Kafka and, as ``make up`` runs it, on the aggregator's direct feed
  with its heartbeats (``--feed direct``, the default: the gateway then leaves Kafka unread
  while the feed is whole; ``--feed kafka``: Kafka alone, a fetch per update), so each update
  is one X per session;
- ``QuickFIX/J memory`` and ``QuickFIX/J file``: ``peer.PeerAcceptor``
  (``loadtests/peers/quickfixj``, QuickFIX/J 2.3.2 from Maven Central, built once into
  ``var/peers/quickfixj``) with its MemoryStore or FileStore, sending the same X (one entry:
  279/269/55/270/271/83 after 262) to every subscribed session at the same update rate.

Per rate, ``--seconds`` of sending: the X messages delivered, the server's CPU (user+sys of its
processes from ``/proc``, from the first update until the last X arrived) per delivered X, and the
p50/p99 of SendingTime -> receipt, with both servers stamping SendingTime(52) in microseconds
(``--timestamps micros``, the default: ``MD_FIX_TIMESTAMP_PRECISION`` and QuickFIX/J's
``TimeStampPrecision``; a millisecond stamp is truncated and reads ~0.5 ms high on average).
The clients and the producer share the machine with the servers (Kafka too), so the CPU per
message is the figure to compare; the delivered rate says whether a server kept up, and the
cores busy (server, this harness, the whole machine) say what held it back when it did not.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

from core.feed import FeedServer
from core.kafka import ensure_topics
from core.settings import Settings
from fix_gateway.codec import TIMESTAMP_PRECISIONS
from fix_gateway.testing import GatewayProcess, metric
from loadtests.bench_fix_clients import (
    Counts,
    CpuWindow,
    LightClient,
    l2_change,
    pct,
    write_sessions,
)
from loadtests.cleanup import drop_topics_at_exit
from testkit.fake_aggregator import Platform, Publisher
from testkit.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
PEER_SRC = ROOT / "loadtests" / "peers" / "quickfixj"
PEER_OUT = ROOT / "var" / "peers" / "quickfixj"
PEER_JAR = PEER_OUT / "peer-quickfixj-1.0.jar"


def build_peer() -> Path:
    """``mvn package`` into var/peers/quickfixj when the jar is missing or older than its sources."""
    sources = [PEER_SRC / "pom.xml", *PEER_SRC.glob("src/**/*.java")]
    if PEER_JAR.exists() and all(PEER_JAR.stat().st_mtime >= s.stat().st_mtime for s in sources):
        return PEER_JAR
    if not shutil.which("mvn") or not shutil.which("javac"):
        raise SystemExit("the QuickFIX/J peer needs a Java 17 JDK and Maven (openjdk-17-jdk maven)")
    subprocess.run(["mvn", "-B", "-q", "package", "-DskipTests"], cwd=PEER_SRC, check=True)
    return PEER_JAR


class DirectFeed:
    """The aggregator's direct feed (core/feed.py), which ``make up`` gives every gateway
    (``MD_AGG_FEED``): each update is pushed to the gateway as it is produced to Kafka, and a
    heartbeat every 100 ms names the heads, so that the gateway's follower leaves Kafka unread
    while the feed is whole, as in the running stack (``--feed kafka``: Kafka alone)."""

    def __init__(self, p: Platform) -> None:
        self.p = p
        self.server = FeedServer("127.0.0.1", free_port())
        self._beats: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def start(self) -> None:
        await self.server.start()
        self.server.heads[("l2", self.p.symbol)] = (self.p.epoch, self.p.seq)  # the seeded book
        self._beats = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            self.server.heartbeat(int(time.time() * 1000))
            await asyncio.sleep(0.1)

    def push(self, raw: bytes) -> None:
        self.server.publish(raw, (("l2", self.p.symbol), self.p.epoch, self.p.seq))
        self.server.flush()

    async def stop(self) -> None:
        if self._beats is not None:
            self._beats.cancel()
        await self.server.stop()


@dataclasses.dataclass
class Row:
    rate: int
    delivered: int
    expected: int
    cpu: CpuWindow  # the server's processes, this harness, the machine, first update -> last X
    lat: list[float]

    @property
    def seconds(self) -> float:
        return self.cpu.wall_s

    @property
    def us_per_x(self) -> float:
        return self.cpu.server_s / max(1, self.delivered) * 1e6

    @property
    def harness_us_per_x(self) -> float:
        return self.cpu.harness_s / max(1, self.delivered) * 1e6

    def pct(self, p: float) -> float:
        return pct(self.lat, p)


async def connect_all(ports: list[int], sessions: int, stats: Counts) -> list[LightClient]:
    loop = asyncio.get_running_loop()
    clients = []
    for i in range(1, sessions + 1):
        port = ports[(i - 1) % len(ports)]
        _, c = await loop.create_connection(
            partial(LightClient, f"BENCH{i}", stats), "127.0.0.1", port
        )
        clients.append(c)
    await asyncio.wait_for(asyncio.gather(*(c.logged_on for c in clients)), 60)
    for c in clients:
        c.subscribe()
    await asyncio.sleep(1.5)
    return clients


async def wait_delivered(stats: Counts, want: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    last, still = -1, time.monotonic()
    while stats.received < want and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if stats.received != last:
            last, still = stats.received, time.monotonic()
        elif time.monotonic() - still > 3:
            return  # nothing new for 3 s: what arrived is what was delivered


async def run_gateway(
    args: argparse.Namespace, rates: list[int], store: str, work: Path
) -> list[Row]:
    tag = uuid.uuid4().hex[:8]
    s = dataclasses.replace(
        Settings.from_env(), topic_prefix=f"bench.pfix.{tag}", redis_prefix=f"bench:pfix:{tag}"
    )
    atexit.register(drop_topics_at_exit, s)  # a run leaves no topics on the broker
    await ensure_topics(s, partitions=3)
    sessions_file = write_sessions(work / "sessions.toml", args.sessions)
    env = dict(
        os.environ,
        MD_TOPIC_PREFIX=s.topic_prefix,
        MD_REDIS_PREFIX=s.redis_prefix,
        MD_FIX_SESSIONS_FILE=str(sessions_file),
        MD_FIX_STORE=store,
        MD_FIX_TIMESTAMP_PRECISION=args.timestamps,
    )
    btc = Platform("BTC-USD")
    rows: list[Row] = []
    feed = DirectFeed(btc) if args.feed == "direct" else None
    async with Publisher(s) as pub:
        await pub.seed(btc, levels=20)
        if feed is not None:
            await feed.start()
            env["MD_AGG_FEED"] = feed.address
        gws = [
            GatewayProcess(env, free_port(), free_port(), work / f"{store}{g}")
            for g in range(args.gateways)
        ]
        for gw in gws:
            await gw.start()
        stats = Counts()
        clients: list[LightClient] = []
        try:
            clients = await connect_all([g.fix_port for g in gws], args.sessions, stats)
            pids = [g.proc.pid for g in gws if g.proc is not None]
            i = 0
            phases = [(rates[0], args.warmup, True)] if args.warmup > 0 else []
            phases += [(r, args.seconds, False) for r in rates]
            for rate, secs, warm in phases:  # a warm-up first, not kept
                ups = rate / args.sessions
                n = int(ups * secs)
                stats.reset()
                spy = None
                if args.profile and not warm:
                    spy = await _profile(args.profile, pids[0], store, rate, secs)
                resumed = _kafka_resumes(gws)
                cpu, t0 = CpuWindow(pids).start(), time.perf_counter()
                for k in range(n):
                    i += 1
                    raw = btc.update(l2_change(i))
                    if feed is not None:
                        feed.push(raw)
                    await pub.prod.send(pub.t.stream("l2"), raw, key=b"BTC-USD")
                    delay = t0 + (k + 1) / ups - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await wait_delivered(stats, n * args.sessions, args.seconds + 30)
                cpu.stop()
                if spy is not None:
                    await spy.wait()
                if warm:
                    continue
                rows.append(Row(rate, stats.received, n * args.sessions, cpu, stats.latencies()))
                paused = metric(gws[0].http_port, "md_follower_kafka_backup_paused")
                resumed = _kafka_resumes(gws) - resumed
                print(
                    f"  fix_gateway {rate:>6} X/s: {_line(rows[-1])}; feed {args.feed}, Kafka "
                    f"{'left unread' if paused else 'read'} at the end, read again {resumed} "
                    "time(s) during the phase (a late feed heartbeat: a Kafka fetch per update "
                    "meanwhile)",
                    file=sys.stderr,
                )
        finally:
            for c in clients:
                c.close()
            for gw in gws:
                await gw.stop()
            if feed is not None:
                await feed.stop()
    return rows


def _kafka_resumes(gws: list[GatewayProcess]) -> int:
    """How often the gateways' followers went back to reading Kafka (their logs): with a late
    direct-feed heartbeat (a starved harness) a gateway fetches Kafka per update for a while,
    which costs CPU the run then shows."""
    n = 0
    for g in gws:
        with contextlib.suppress(OSError):
            n += g.log_path.read_text(errors="replace").count("kafka backup resumed")
    return n


async def run_peer(args: argparse.Namespace, rates: list[int], store: str, work: Path) -> list[Row]:
    jar = build_peer()
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        "java",
        "-Xms256m",
        "-Xmx1g",
        "-cp",
        f"{jar}{os.pathsep}{PEER_OUT / 'lib' / '*'}",
        "peer.PeerAcceptor",
        str(port),
        str(args.sessions),
        store,
        str(work / f"qfj-{store}"),
        args.timestamps.upper(),  # QuickFIX/J's TimeStampPrecision: MILLIS or MICROS
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None

    async def ask(line: str) -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line.encode() + b"\n")
        await proc.stdin.drain()
        return (await proc.stdout.readline()).decode().strip()

    rows: list[Row] = []
    stats = Counts()
    clients: list[LightClient] = []
    try:
        if (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() != b"READY":
            raise SystemExit("the QuickFIX/J peer did not start")
        clients = await connect_all([port], args.sessions, stats)
        subs = await ask("subs")
        if subs != f"OK subs {args.sessions}":
            raise SystemExit(f"QuickFIX/J peer: {subs}")
        if args.warmup > 0:  # the JIT compiles the send path: not part of the figures
            ups = max(1, round(rates[0] / args.sessions))
            sent = await ask(f"run {ups} {args.warmup}")
            await wait_delivered(stats, int(sent.split()[-1]), 30)
        for rate in rates:
            ups = max(1, round(rate / args.sessions))
            stats.reset()
            cpu = CpuWindow([proc.pid]).start()
            sent = await ask(f"run {ups} {args.seconds}")
            await wait_delivered(stats, int(sent.split()[-1]), 30)
            cpu.stop()
            expected = int(ups * args.seconds) * args.sessions
            rows.append(Row(rate, stats.received, expected, cpu, stats.latencies()))
            print(f"  QuickFIX/J {store:6} {rate:>6} X/s: {_line(rows[-1])}", file=sys.stderr)
    finally:
        for c in clients:
            c.close()
        if proc.returncode is None:
            proc.stdin.write(b"quit\n")
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return rows


async def _profile(
    out: Path, pid: int, store: str, rate: int, secs: float
) -> asyncio.subprocess.Process:
    """py-spy (the venv's) sampling the first gateway process for the phase, as raw stacks
    (``--profile DIR``: ``DIR/fix_gateway-<store>-<rate>.txt``, one ``stack count`` a line)."""
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(secs))),
        "--rate",
        "200",
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(out / f"fix_gateway-{store}-{rate}.txt"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def _line(r: Row) -> str:
    return (
        f"{r.delivered:,}/{r.expected:,} X in {r.seconds:.1f} s, {r.us_per_x:.1f} CPU us/X, "
        f"p50 {r.pct(0.5):.1f} ms p99 {r.pct(0.99):.1f} ms; {r.cpu.summary()}"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--rates", default="5000,20000,80000", help="X messages per second in all")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds at the first rate, not kept")
    ap.add_argument("--gateways", type=int, default=1, help="fix_gateway processes")
    ap.add_argument(
        "--gateway-stores", default="file", help="MD_FIX_STORE of fix_gateway runs: file,memory"
    )
    ap.add_argument("--peers", default="memory,file", help="QuickFIX/J stores to run (or none)")
    ap.add_argument(
        "--feed",
        choices=["direct", "kafka"],
        default="direct",
        help="how fix_gateway gets the updates: the direct feed ahead of Kafka, as make up "
        "runs it (MD_AGG_FEED), or Kafka alone",
    )
    ap.add_argument(
        "--timestamps",
        choices=TIMESTAMP_PRECISIONS,
        default="micros",
        help="SendingTime(52) precision of both servers (MD_FIX_TIMESTAMP_PRECISION and "
        "QuickFIX/J's TimeStampPrecision): micros, or millis, FIX 4.4's own, whose truncation "
        "adds ~0.5 ms to every measured latency",
    )
    ap.add_argument(
        "--profile", type=Path, default=None, help="py-spy raw stacks of fix_gateway per rate here"
    )
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()[0]  # what else the machine ran, printed with the results
    work = ROOT / "var" / "cache" / f"bench_peer_fix_{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    results: dict[str, list[Row]] = {}
    try:
        for store in args.gateway_stores.split(","):
            name = f"fix_gateway x{args.gateways} {store} store"
            results[name] = await run_gateway(args, rates, store, work)
        for store in [p for p in args.peers.split(",") if p and p != "none"]:
            results[f"QuickFIX/J {store}"] = await run_peer(args, rates, store, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nmachine: {os.cpu_count()} cores, load average {load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end; "
        f"{args.sessions} sessions, {args.seconds:g} s per rate, SendingTime(52) in "
        f"{args.timestamps} on every server run\n"
    )
    peer = "QuickFIX/J memory" if "QuickFIX/J memory" in results else None
    # cores busy: what limited a run (a server near 1.0 per process, the harness near 1.0, or the
    # machine near its core count with neither saturated: they shared the cores)
    print(
        "| server | X/s asked | delivered | CPU µs per X | x QuickFIX/J memory | p50 ms | p99 ms "
        "| cores: server / harness / machine | harness µs per X |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, rows in results.items():
        for i, r in enumerate(rows):
            ratio = f"{r.us_per_x / results[peer][i].us_per_x:.2f}" if peer is not None else "n/a"
            c = r.cpu
            print(
                f"| {name} | {r.rate:,} | {r.delivered / r.seconds:,.0f}/s "
                f"({r.delivered / max(1, r.expected):.0%}) | {r.us_per_x:.1f} | {ratio} | "
                f"{r.pct(0.5):.1f} | {r.pct(0.99):.1f} | {c.cores(c.server_s):.2f} / "
                f"{c.cores(c.harness_s):.2f} / {c.cores(c.machine_busy_s):.2f} | "
                f"{r.harness_us_per_x:.1f} |"
            )
    for name, rows in results.items():
        lat = [x for r in rows for x in r.lat]
        if lat:
            print(f"{name}: median latency over all rates {statistics.median(lat):.2f} ms")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
