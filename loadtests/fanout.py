"""Fan-out benchmark of the WebSocket gateway: many connections, end-to-end latency, msgs/s.

    .venv/bin/python -m loadtests.fanout --connections 1000 --rate 100 --duration 20

What it does, all on an isolated topic prefix beside any running stack:

1. creates the topics and starts ``python -m gateway_ws`` (``--gw-processes`` workers) on a free port;
2. opens ``--connections`` WebSocket connections from ``--client-procs`` client processes, each
   subscribed to ``l2:<symbol>`` (symbols round-robin), and checks every ``seq`` is gapless;
3. publishes contract-conforming ``l2_update`` messages straight to Kafka at ``--rate`` messages
   per second per symbol, each stamped with its publish time (the aggregator's ``timestamp``);
4. every client stamps the receive time against the message's own ``timestamp``: the latency
   is aggregator publish -> Kafka -> gateway -> client, the whole path;
5. prints (and with ``--json`` emits) delivered messages/s, p50/p99/p99.9/max latency, gaps,
   resyncs and the gateway's resident memory per connection.

Everything runs on the same machine (the clients and Kafka compete with the gateway for the
CPU), so the numbers are a floor, not a ceiling. Bounded: ``--duration`` seconds of measure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
import urllib.request
import uuid
from array import array
from typing import Any

import orjson

from core.book import L2Book
from core.channels import data_message
from core.kafka import ensure_topics, make_producer
from core.settings import Settings
from core.topics import Topics
from loadtests.fanout_client import FanoutClient, Stats, open_client
from loadtests.fanout_stats import (
    cpu_seconds,
    listen_drops,
    load_average,
    percentiles,
    rss_kib,
)
from testkit.ports import free_port

# ------------------------------------------------------------------------------ clients


async def _client_main(
    port: int,
    subs: list[str],
    ready: Any,
    go: Any,
    stop_at: Any,
    out: Any,
    idx: int,
    sample_every: int,
    server: str = "gateway",
    wave: int = 200,
    sources: int = 1,
    batch: bool = False,
    storm: Any = None,
) -> None:
    raise_fd_limit()
    stats = Stats()
    stats.sample_every = sample_every
    conns: list[FanoutClient] = []
    cf = server == "centrifugo"

    async def one(i: int, sub: str) -> None:
        ch, sym = sub.split(":")
        # connection i from 127.0.0.(1 + i % sources): each source address has its own ports
        src = f"127.0.0.{1 + i % sources}" if sources > 1 else None
        body: dict[str, Any] | bytes = {"type": "subscribe", "channel": ch, "symbol": sym}
        if cf:  # Centrifugo's JSON protocol: connect, then subscribe, in one frame
            body = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"%s"}}' % (
                centrifugo_channel(ch, sym).encode()
            )
        for attempt in range(5):
            try:
                conns.append(
                    await open_client(
                        "127.0.0.1",
                        port,
                        "/connection/websocket" if cf else "/ws?batch=1" if batch else "/ws",
                        body,
                        stats,
                        centrifugo=cf,
                        source=src,
                        batched=batch,
                    )
                )
                return
            except (OSError, TimeoutError, ConnectionError):
                await asyncio.sleep(0.2 * (attempt + 1))

    if storm is not None:  # every client process starts connecting at the same moment
        ready.put(-1 - idx)
        while not storm.is_set():  # noqa: ASYNC110 - a multiprocessing event
            await asyncio.sleep(0.005)
    for i in range(0, len(subs), wave):  # in waves (--wave); one wave of all = a storm
        await asyncio.gather(*(one(j, subs[j]) for j in range(i, min(i + wave, len(subs)))))
    await asyncio.sleep(1.0)  # snapshots delivered
    ready.put(idx)
    while not go.is_set():  # noqa: ASYNC110 - a multiprocessing event
        await asyncio.sleep(0.05)
    stats.msgs = 0
    stats.measuring = True
    t0 = time.monotonic()
    while time.time() < stop_at.value:  # noqa: ASYNC110 - a shared deadline
        await asyncio.sleep(0.1)
    stats.measuring = False
    elapsed = time.monotonic() - t0
    out.put(
        {
            "idx": idx,
            "msgs": stats.msgs,
            "elapsed": elapsed,
            "lat": stats.lat.tobytes(),
            "gaps": stats.gaps,
            "resyncs": stats.resyncs,
            "closed": stats.closed,
            "close_reasons": dict(stats.close_reasons),  # a copy: the queue pickles later
            "conns": len(conns),
            "setup": stats.setup.tobytes(),
            "upgrade": stats.upgrade.tobytes(),
        }
    )
    for c in conns:
        if c.transport is not None:
            c.transport.abort()


def _client_proc(
    port: int,
    subs: list[str],
    ready: Any,
    go: Any,
    stop_at: Any,
    out: Any,
    idx: int,
    sample_every: int,
    server: str = "gateway",
    wave: int = 200,
    sources: int = 1,
    batch: bool = False,
    storm: Any = None,
) -> None:
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    uvloop.run(
        _client_main(
            port,
            subs,
            ready,
            go,
            stop_at,
            out,
            idx,
            sample_every,
            server,
            wave,
            sources,
            batch,
            storm,
        )
    )


def _merge_counts(counts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit, in this process (and its children); returns it.

    Only the hard limit of the machine's account bounds it (20,000 here: a process cannot hold
    more sockets, so 100,000 connections need several gateway and client processes)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ------------------------------------------------------------------------------ publisher


def centrifugo_channel(channel: str, symbol: str) -> str:
    """``l2:BTC-USD`` as a Centrifugo channel (``:`` is its namespace separator)."""
    return f"{channel}_{symbol}"


def _books(symbols: list[str], levels: int) -> dict[str, L2Book]:
    books = {sym: L2Book() for sym in symbols}
    for b in books.values():
        for i in range(levels):
            b.set("buy", f"{1000 - i}.00", "1.5")
            b.set("sell", f"{1001 + i}.00", "1.5")
    return books


async def _seed(s: Settings, symbols: list[str], levels: int) -> None:
    """Each symbol's l2 snapshot (seq 0) into the snapshot topic, before any client connects.

    So the gateway holds every book when the storm arrives and a subscriber's setup ends at
    its snapshot; published with the first update instead, the snapshot made every client's
    setup time include the wait for the whole storm (seconds, measured before)."""
    t = Topics.from_settings(s)
    prod = make_producer(s, linger_ms=1)
    await prod.start()
    try:
        for sym, b in _books(symbols, levels).items():
            now = time.time_ns()
            snap = data_message(
                type="l2_snapshot",
                channel="l2",
                symbol=sym,
                seq=0,
                epoch=1,
                publish_ns=now,
                event_ns=now,
                data=b.snapshot(),
                checksum=b.checksum(),
            )
            await prod.send_and_wait(t.snapshot, orjson.dumps(snap), key=f"l2:{sym}".encode())
    finally:
        await prod.stop()


async def _publish(
    s: Settings,
    symbols: list[str],
    rate: float,
    until: float,
    levels: int,
    centrifugo: bool = False,
) -> int:
    """``rate`` l2 updates per second per symbol into the stream topic, until ``until``,
    following the snapshots of :func:`_seed` (seq 1, 2, ...).

    ``centrifugo``: each record also carries the ``centrifugo-channels`` header, so Centrifugo's
    Kafka consumer (publication data mode) publishes the same bytes the gateway follows."""
    t = Topics.from_settings(s)
    prod = make_producer(s, linger_ms=1)
    await prod.start()
    books = _books(symbols, levels)
    seqs = dict.fromkeys(symbols, 0)
    headers: dict[str, list[tuple[str, bytes]] | None] = {
        sym: [("centrifugo-channels", centrifugo_channel("l2", sym).encode())]
        if centrifugo
        else None
        for sym in symbols
    }
    n = 0
    try:
        interval = 1.0 / rate
        nxt = time.monotonic()
        i = 0
        while time.time() < until:
            for sym in symbols:
                b = books[sym]
                seqs[sym] += 1
                i += 1
                side = "buy" if i % 2 else "sell"
                px = f"{(1000 - i % levels) if side == 'buy' else (1001 + i % levels)}.00"
                ch = [[side, px, f"{1 + i % 7}.25"]]
                b.apply(ch)
                now = time.time_ns()
                msg = data_message(
                    type="l2_update",
                    channel="l2",
                    symbol=sym,
                    seq=seqs[sym],
                    epoch=1,
                    publish_ns=now,
                    event_ns=now,
                    data={"changes": ch},
                    checksum=b.checksum(),
                )
                await prod.send(
                    t.stream("l2"), orjson.dumps(msg), key=sym.encode(), headers=headers[sym]
                )
                n += 1
            nxt += interval
            delay = nxt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await prod.flush()
    finally:
        await prod.stop()
    return n


# ------------------------------------------------------------------------------ orchestration


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _healthy(port: int, server: str = "gateway") -> bool:
    if server == "picows":  # no HTTP endpoint: the port accepting is the signal
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _gateway_rss(pid: int) -> int:
    kids = _children(pid)
    return sum(rss_kib(p) for p in kids) if kids else rss_kib(pid)


def _gateway_cpu(pid: int) -> float:
    kids = _children(pid)
    return sum(cpu_seconds(p) for p in kids) if kids else cpu_seconds(pid)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Settings.from_env()
    raise_fd_limit()  # inherited by the gateway processes
    tag = uuid.uuid4().hex[:8]
    import dataclasses

    s = dataclasses.replace(
        base, topic_prefix=f"bench.fanout.{tag}", redis_prefix=f"bench:fanout:{tag}"
    )
    await ensure_topics(s, partitions=3)
    port = free_port()
    env = dict(
        os.environ,
        MD_TOPIC_PREFIX=s.topic_prefix,
        MD_REDIS_PREFIX=s.redis_prefix,
        MD_WS_PORT=str(port),
        MD_WS_PROCESSES=str(args.gw_processes),
        MD_LOG_LEVEL="WARNING",
        MD_WS_MAX_CONN_PER_IP="1000000",
        MD_WS_HEARTBEAT_S="0",
        MD_WS_IDLE_S="0",
        MD_WS_MAX_CONNECTIONS="1000000",
        MD_SYMBOLS=",".join(args.symbols),
        MD_WS_PREFRAMED="0" if args.library_framing else "1",
    )
    if args.server == "centrifugo":
        gw = await start_centrifugo(s, port, args.gw_processes, tag)
    else:
        module = "loadtests.fanout_picows" if args.server == "picows" else "gateway_ws"
        # the server's logs go to stderr: stdout carries only the --json result line
        gw = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, env=env, stdout=sys.stderr.fileno()
        )
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # clean up on kill
    procs: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        for _ in range(200):
            if await loop.run_in_executor(None, _healthy, port, args.server):
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("gateway did not become healthy")
        await _seed(s, args.symbols, args.levels)
        await asyncio.sleep(1.0)  # the gateway reads the snapshots
        rss0 = _gateway_rss(gw.pid)
        subs = [f"l2:{args.symbols[i % len(args.symbols)]}" for i in range(args.connections)]
        ctx = mp.get_context("spawn")
        ready, out = ctx.Queue(), ctx.Queue()
        go = ctx.Event()
        storm = ctx.Event()  # set once every client process has started (imports done)
        stop_at = ctx.Value("d", 0.0)
        k = args.client_procs
        for i in range(k):
            p = ctx.Process(
                target=_client_proc,
                args=(
                    port,
                    subs[i::k],
                    ready,
                    go,
                    stop_at,
                    out,
                    i,
                    args.sample_every,
                    args.server,
                    args.wave // k or 1,
                    args.source_ips,
                    args.batch,
                    storm,
                ),
            )
            p.start()
            procs.append(p)
        for _ in range(k):  # each client process is up and waits for the storm
            await loop.run_in_executor(None, ready.get, True, 120)
        t_conn = time.monotonic()
        cpu_c0, drops0 = _gateway_cpu(gw.pid), listen_drops()
        ccpu_c0 = sum(cpu_seconds(p.pid) for p in procs if p.pid)
        storm.set()
        for _ in range(k):
            # 100,000 connections on a shared 2-core box took 500 s to connect
            await asyncio.get_running_loop().run_in_executor(
                None, ready.get, True, max(300, args.connections / 100)
            )
        connect_s = time.monotonic() - t_conn
        # the server's CPU while the clients connected and got their snapshots (+1 s idle)
        setup_cpu, drops = _gateway_cpu(gw.pid) - cpu_c0, listen_drops() - drops0
        clients_setup_cpu = sum(cpu_seconds(p.pid) for p in procs if p.pid) - ccpu_c0
        rss1 = _gateway_rss(gw.pid)
        # warm up, then measure
        start = time.time() + args.warmup
        stop_at.value = start + args.duration
        pub = asyncio.create_task(
            _publish(
                s,
                args.symbols,
                args.rate,
                stop_at.value + 0.5,
                args.levels,
                centrifugo=args.server == "centrifugo",
            )
        )
        await asyncio.sleep(args.warmup)
        go.set()
        cpu0, load0 = _gateway_cpu(gw.pid), load_average()
        ccpu0 = sum(cpu_seconds(p.pid) for p in procs if p.pid)
        await asyncio.sleep(args.duration)
        cpu1, load1 = _gateway_cpu(gw.pid), load_average()
        ccpu1 = sum(cpu_seconds(p.pid) for p in procs if p.pid)
        published = await pub
        results = [
            await asyncio.get_running_loop().run_in_executor(None, out.get, True, 120)
            for _ in range(k)
        ]
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        lat, setup, upgrade = array("q"), array("q"), array("q")
        for r in results:
            u = array("q")
            u.frombytes(r["upgrade"])
            upgrade.extend(u)
            a = array("q")
            a.frombytes(r["lat"])
            lat.extend(a)
            b = array("q")
            b.frombytes(r["setup"])
            setup.extend(b)
        msgs = sum(r["msgs"] for r in results)
        elapsed = max(r["elapsed"] for r in results)
        pct = percentiles(lat, (50, 99, 99.9, 100))
        res = {
            "connections": args.connections,
            "connected": sum(r["conns"] for r in results),
            "gateway_processes": args.gw_processes,
            "server": args.server,
            "framing": "websockets per connection" if args.library_framing else "preframed",
            "batch": args.batch,
            "client_processes": k,
            "symbols": len(args.symbols),
            "rate_per_symbol": args.rate,
            "published": published,
            "delivered": msgs,
            "seconds": round(elapsed, 2),
            "delivered_per_s": round(msgs / elapsed) if elapsed else 0,
            "expected_per_s": round(args.rate * args.connections),
            "latency_ms": {k2: round(v / 1e6, 2) for k2, v in pct.items()},
            "samples": len(lat),
            "gaps": sum(r["gaps"] for r in results),
            "resyncs": sum(r["resyncs"] for r in results),
            "closed": sum(r["closed"] for r in results),
            # why: the server's close codes, "before_upgrade" (includes connection-phase
            # attempts that were retried), "no_close_frame"
            "close_reasons": _merge_counts(r["close_reasons"] for r in results),
            "connect_s": round(connect_s, 1),
            # connect() -> subscribed -> snapshot received (Centrifugo: subscribe reply), per
            # connection, --wave connections at once across the client processes
            "setup_ms": {
                k2: round(v / 1e6, 1) for k2, v in percentiles(setup, (50, 99, 100)).items()
            },
            # its first part: connect() -> the 101 response (the rest is subscribe -> snapshot)
            "upgrade_ms": {
                k2: round(v / 1e6, 1) for k2, v in percentiles(upgrade, (50, 99, 100)).items()
            },
            "setup_cpu_us_per_conn": round(setup_cpu * 1e6 / max(1, args.connections)),
            # the client processes' CPU over the same phase: on one machine the storm's
            # clients compete with the server for the same cores
            "clients_setup_cpu_us_per_conn": round(
                clients_setup_cpu * 1e6 / max(1, args.connections)
            ),
            # SYNs dropped at a full accept queue during the setup (machine-wide counter)
            "listen_drops": drops,
            "gateway_cpu_s": round(cpu1 - cpu0, 2),
            "gateway_cpu_us_per_msg": round((cpu1 - cpu0) * 1e6 / max(1, msgs), 2),
            # the client processes' CPU while measuring: a server that sends one frame per
            # message costs its clients more than one that batches (Centrifugo: 2-6 per frame)
            "client_cpu_s": round(ccpu1 - ccpu0, 2),
            "machine_load_avg": [load0, load1],
            "gateway_rss_mib": round(rss1 / 1024, 1),
            "rss_per_connection_kib": round((rss1 - rss0) / max(1, args.connections), 1),
        }
        return res
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        workers = _children(gw.pid)  # MD_WS_PROCESSES > 1: the supervisor's workers
        with contextlib.suppress(ProcessLookupError):
            gw.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(gw.wait(), 15)
        except TimeoutError:
            gw.kill()
        for pid in workers:  # a worker still closing 16,000 connections outlived a killed parent
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if args.server == "centrifugo":  # its per-run config file
            from loadtests.bench_peer_ws import CENTRIFUGO_BIN

            (CENTRIFUGO_BIN.parent.parent / f"centrifugo-{tag}.json").unlink(missing_ok=True)
        await _delete_topics(s)


async def start_centrifugo(
    s: Settings, port: int, cores: int, tag: str
) -> asyncio.subprocess.Process:
    """Centrifugo on ``port``, consuming the run's l2 stream topic from Kafka (publication data
    mode: the record value is published as is to the channels named in its header), on
    ``cores`` cores (GOMAXPROCS). Anonymous clients may subscribe to any channel, like the
    gateway's default; no history, no presence: plain fan-out, as the gateway does."""
    from loadtests.bench_peer_ws import CENTRIFUGO_BIN, centrifugo_config

    if not CENTRIFUGO_BIN.exists():
        raise RuntimeError(
            f"{CENTRIFUGO_BIN} missing: run python -m loadtests.bench_peer_ws --build"
        )
    cfg_path = CENTRIFUGO_BIN.parent.parent / f"centrifugo-{tag}.json"
    cfg_path.write_bytes(
        orjson.dumps(
            centrifugo_config(port, s.kafka_bootstrap, Topics.from_settings(s).stream("l2"), tag)
        )
    )
    env = dict(os.environ, GOMAXPROCS=str(cores))
    return await asyncio.create_subprocess_exec(
        str(CENTRIFUGO_BIN), "-c", str(cfg_path), env=env, stdout=sys.stderr.fileno()
    )


async def _delete_topics(s: Settings) -> None:
    """Drop this run's topics: every partition costs the broker open files, and a shared
    broker that keeps every benchmark's topics runs out of them."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    try:
        await admin.start()
        await admin.delete_topics(Topics.from_settings(s).all())
    except (KafkaError, OSError) as exc:  # best effort; the numbers are already printed
        print(f"[fanout] could not delete topics: {exc!r}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100.0, help="l2 updates per second per symbol")
    ap.add_argument(
        "--symbols", type=lambda v: v.split(","), default=["BTC-USD", "ETH-USD", "LTC-USD"]
    )
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--gw-processes", type=int, default=1)
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--levels", type=int, default=50)
    ap.add_argument(
        "--wave",
        type=int,
        default=600,
        help="connections opened at once (split across the client processes); "
        "= --connections for a connection storm",
    )
    ap.add_argument(
        "--batch",
        action="store_true",
        help="gateway clients ask for batched frames (/ws?batch=1, NDJSON), as Centrifugo's "
        "protocol always batches",
    )
    ap.add_argument(
        "--source-ips",
        type=int,
        default=1,
        help="connect from 127.0.0.1..N (each address has ~28,000 ephemeral ports to the "
        "server's one port: 100,000 connections need 4)",
    )
    ap.add_argument(
        "--sample-every",
        type=int,
        default=10,
        help="latency sample on messages whose seq is a multiple of this",
    )
    ap.add_argument(
        "--library-framing",
        action="store_true",
        help="gateway frames per connection through websockets (MD_WS_PREFRAMED=0)",
    )
    ap.add_argument(
        "--server",
        choices=["gateway", "picows", "centrifugo"],
        default="gateway",
        help="picows = the minimal picows fan-out server (library comparison); centrifugo = "
        "Centrifugo v6 from var/peers (loadtests/bench_peer_ws.py builds it), GOMAXPROCS = "
        "--gw-processes",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import uvloop

    res = uvloop.run(run(args))
    if args.json:
        print(orjson.dumps(res).decode())
    else:
        for k, v in res.items():
            print(f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
