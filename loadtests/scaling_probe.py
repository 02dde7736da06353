"""Measurements behind docs/scaling.md, against the running stack (`make up`), read-only.

    python -m loadtests.scaling_probe streams            # records/s and bytes/record per topic
    python -m loadtests.scaling_probe cpu                # CPU per input event of each running service
    python -m loadtests.scaling_probe ws-fanout 20       # CPU per delivered message of a gateway_ws
    python -m loadtests.scaling_probe rest               # CPU per request of a gateway_rest

CPU time comes from /proc/<pid>/stat before and after a window, so the per-event and per-message
costs hold on a busy machine where wall-clock throughput does not. ``ws-fanout`` and ``rest``
start their own gateway process on a free port (reading the live topics / Redis) and stop it.
Bounded: every probe runs for seconds and sends traffic only to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import subprocess
import sys
import time
from pathlib import Path

from testkit.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ("in", "l2", "l3", "trades", "ticker", "candles", "stats", "snapshot")


def cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


async def end_offsets(prefix: str) -> dict[str, list[int]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from core.kafka import partitions_by_topic
    from core.settings import Settings

    c = AIOKafkaConsumer(bootstrap_servers=Settings.from_env().kafka_bootstrap)
    await c.start()
    try:
        # as many partitions as each topic has (stream topics: MD_KAFKA_STREAM_PARTITIONS)
        parts = await partitions_by_topic(c, [f"{prefix}.{t}" for t in TOPICS])
        tps = [TopicPartition(t, p) for t, ps in parts.items() for p in sorted(ps)]
        ends = await c.end_offsets(tps)
        out: dict[str, list[int]] = {t: [0] * len(ps) for t, ps in parts.items()}
        for tp, v in ends.items():
            out[tp.topic][tp.partition] = v
        return out
    finally:
        await c.stop()


def streams(window: float = 30.0) -> dict[str, float]:
    prefix = os.environ.get("MD_TOPIC_PREFIX", "md")
    a = asyncio.run(end_offsets(prefix))
    t0 = time.monotonic()
    time.sleep(window)
    b = asyncio.run(end_offsets(prefix))
    dt = time.monotonic() - t0
    data = Path(os.environ.get("MD_VAR_DIR", ROOT / "var")) / "kafka" / "data"
    rates = {}
    print(
        f"| topic | records/s | bytes/record | partitions with data |  (window {dt:.0f}s, load {os.getloadavg()[0]:.1f})"
    )
    print("| --- | ---: | ---: | --- |")
    for t in b:
        rate = (sum(b[t]) - sum(a[t])) / dt
        rates[t] = rate
        size = sum(os.path.getsize(f) for f in glob.glob(str(data / f"{t}-*" / "*.log")))
        per = f"{size / sum(b[t]):.0f}" if sum(b[t]) and size else "-"
        used = [i for i, v in enumerate(b[t]) if v]
        print(f"| `{t}` | {rate:,.1f} | {per} | {used} |")
    return rates


def stack_pids() -> dict[str, list[int]]:
    """Processes of the `make up` stack (deploy/local/stack.sh pid files) and their children."""
    run_dir = Path(os.environ.get("MD_VAR_DIR", ROOT / "var")) / "run" / "services"
    out: dict[str, list[int]] = {}
    for f in sorted(run_dir.glob("*.pid")):
        stem = f.stem
        name = stem.rsplit("-", 1)[0] if stem.rsplit("-", 1)[-1].isdigit() else stem
        pid = int(f.read_text().split()[0])
        kids = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True
        ).stdout.split()
        out.setdefault(name, []).extend([pid, *map(int, kids)])
    return out


def _cpu_of(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # gone: counts nothing
            total += cpu_seconds(p)
    return total


def cpu(window: float = 30.0) -> None:
    prefix = os.environ.get("MD_TOPIC_PREFIX", "md")
    pids = stack_pids()
    if not pids:
        raise SystemExit("no pid files in var/run/services: start the stack with `make up`")
    a_off = asyncio.run(end_offsets(prefix))
    a = {m: _cpu_of(ps) for m, ps in pids.items()}
    t0 = time.monotonic()
    time.sleep(window)
    b = {m: _cpu_of(ps) for m, ps in pids.items()}
    b_off = asyncio.run(end_offsets(prefix))
    dt = time.monotonic() - t0
    events = sum(b_off[f"{prefix}.in"]) - sum(a_off[f"{prefix}.in"])
    print(f"window {dt:.0f}s, {events / dt:,.0f} input events/s, load {os.getloadavg()[0]:.1f}")
    print(
        "| service | processes | % of a core | CPU µs per input event | input events/s per core |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for m in pids:
        used = b[m] - a[m]
        per = 1e6 * used / events if events else float("nan")
        print(
            f"| {m} | {len(pids[m])} | {100 * used / dt:.0f} | {per:.0f} | {events / used if used else float('nan'):,.0f} |"
        )


async def _ws_client(port: int, counter: list[int], stop: asyncio.Event, subs: list[str]) -> None:
    import orjson
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "channels": subs}))
        while not stop.is_set():
            try:
                await asyncio.wait_for(ws.recv(), 1)
                counter[0] += 1
            except TimeoutError:
                pass


def _wait_health(url: str, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not healthy")


def ws_fanout(clients: int, window: float = 15.0) -> None:
    from core.settings import Settings

    port = free_port()
    env = dict(
        os.environ,
        MD_WS_PORT=str(port),
        MD_WS_PROCESSES="1",
        MD_LOG_LEVEL="WARNING",
        MD_WS_MAX_CONN_PER_IP="100000",
        MD_WS_MAX_CONNECTIONS="100000",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway_ws"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    subs = [f"{ch}:{s}" for s in Settings.from_env().symbols for ch in ("l2", "trades", "ticker")]
    try:
        _wait_health(f"http://127.0.0.1:{port}/health", proc)

        async def run() -> None:
            counter, stop = [0], asyncio.Event()
            tasks = [
                asyncio.create_task(_ws_client(port, counter, stop, subs)) for _ in range(clients)
            ]
            await asyncio.sleep(5)  # connects and snapshots
            c0, n0, t0, load = (
                cpu_seconds(proc.pid),
                counter[0],
                time.monotonic(),
                os.getloadavg()[0],
            )
            await asyncio.sleep(window)
            c1, n1, t1 = cpu_seconds(proc.pid), counter[0], time.monotonic()
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            n, c = n1 - n0, c1 - c0
            print(
                f"{clients} clients x {len(subs)} subscriptions: {n / (t1 - t0):,.0f} msg/s delivered, gateway CPU "
                f"{100 * c / (t1 - t0):.0f}% of a core, {1e6 * c / max(n, 1):.1f} µs per message -> "
                f"{n / max(c, 1e-9):,.0f} msg/s per core (load {load:.1f})"
            )

        asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(10)


def rest(window: float = 8.0) -> None:
    import httpx

    port = free_port()
    env = dict(os.environ, MD_REST_PORT=str(port), MD_REST_ANON_RPS="0", MD_LOG_LEVEL="WARNING")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway_rest"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_health(f"http://127.0.0.1:{port}/health", proc)

        async def run() -> None:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", limits=httpx.Limits(max_connections=16)
            ) as c:
                for path in (
                    "/api/v1/market/BTC-USD/orderbook?depth=20",
                    "/api/v1/market/BTC-USD/ticker",
                    "/api/v1/market/BTC-USD/trades?limit=100",
                ):
                    n, end = 0, time.monotonic() + window
                    c0, t0, load = cpu_seconds(proc.pid), time.monotonic(), os.getloadavg()[0]

                    async def worker(path: str = path, end: float = end) -> None:
                        nonlocal n
                        while time.monotonic() < end:
                            r = await c.get(path)
                            r.raise_for_status()
                            n += 1

                    await asyncio.gather(*[worker() for _ in range(16)])
                    used, dt = cpu_seconds(proc.pid) - c0, time.monotonic() - t0
                    print(
                        f"{path}: {n / dt:,.0f} req/s from one httpx client, gateway {1e6 * used / n:.0f} µs CPU per "
                        f"request -> {n / used:,.0f} req/s per core (load {load:.1f})"
                    )

        asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("streams", "cpu", "ws-fanout", "rest"):
        print(__doc__)
        return 2
    if argv[0] == "streams":
        streams()
    elif argv[0] == "cpu":
        cpu()
    elif argv[0] == "ws-fanout":
        ws_fanout(int(argv[1]) if len(argv) > 1 else 20)
    else:
        rest()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
