"""REST per core beside its ceiling: ``gateway_rest`` vs a bare uvicorn route (issue 17).

    .venv/bin/python -m loadtests.bench_peer_rest [--duration 10] [--runs 3] [--conns 8,64]
    make bench-peer-rest

One server process each, pinned to core 0 (``taskset``), the same load generator for each
(``wrk -t2 --latency``, pinned to core 1), ``GET /api/v1/market/BTC-USD/orderbook?depth=20``:

- ``bare uvicorn``: a raw ASGI callable answering the gateway's own body for that URL, read
  once at start (precomputed bytes: what uvicorn + httptools + uvloop cost, nothing else);
- ``gateway_rest``: ``python -m gateway_rest`` with its defaults (rate limits on, counted in
  Redis for an anonymous tier whose limit no run reaches; micro-cache 10 ms), the cache filled by
  the project's own cache writer (``loadtests.bench_rest.fill_cache``);
- ``--servers`` chooses among ``bare-uvicorn``, ``gateway`` (the default server),
  ``gateway-uvicorn`` / ``gateway-granian`` (``python -m gateway_rest`` with that
  ``MD_REST_SERVER``) and ``bare-granian`` (the bare callable behind granian); the first listed
  is the ceiling the ratios divide by.

Per configuration and connection count: ``--runs`` runs of ``--duration`` s after a 2 s
warm-up; the medians of req/s, p99 and the server's CPU per request (user+sys of the server's
process tree from ``/proc``, divided by wrk's request count). Prints a Markdown table with two
ratios to the ceiling for docs/benchmarks.md: req/s, and per core (the ceiling's CPU per request
over the server's: the steadier one on a shared machine). Redis and whatever else runs on the machine share
the cores; the numbers say so by printing the load average.
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
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx

from core.settings import Settings
from loadtests.bench_rest import SYM, fill_cache, parse_wrk
from loadtests.cleanup import drop_topics_at_exit
from testkit.ports import free_port

PATH = f"/api/v1/market/{SYM}/orderbook?depth=20"
SERVER_CORE = "0"
LOAD_CORE = "1"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def bare_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ceiling: the body from ``BENCH_PEER_BODY`` (a file) for any HTTP request."""
    body = Path(os.environ["BENCH_PEER_BODY"]).read_bytes()
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    done = {"type": "http.response.body", "body": body}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send(start)
        await send(done)

    return app


def tree_cpu(pid: int) -> float:
    """User+sys CPU seconds of ``pid`` and its live descendants (/proc stat fields 14, 15)."""
    total = 0.0
    todo = [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for t in Path(f"/proc/{p}/task").iterdir():
                kids = (t / "children").read_text().split()
                todo.extend(int(k) for k in kids)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def run_wrk(url: str, duration: int, conns: int) -> dict[str, float]:
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency", url]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", LOAD_CORE, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = parse_wrk(out)
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = float(m[1]) if m else r["rps"] * duration
    return r


@dataclasses.dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None  # a file for the server's stderr (the tail is shown when it fails)

    def start(self, port: int) -> None:
        argv = [a.replace("{port}", str(port)) for a in self.argv]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open while it runs; stop() closes it
        if shutil.which("taskset"):
            argv = ["taskset", "-c", SERVER_CORE, *argv]
        self.proc = subprocess.Popen(
            argv,
            env={k: v.replace("{port}", str(port)) for k, v in self.env.items()},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 30
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}: {self._tail()}")
            try:
                r = httpx.get(f"http://127.0.0.1:{port}{PATH}", timeout=1)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        tail = self._tail()
        self.stop()
        raise SystemExit(f"{self.name} did not start: {last} {tail}")

    def _tail(self) -> str:
        self.log.seek(0)
        return str(self.log.read()[-2000:].decode(errors="replace"))

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None


def servers(s: Settings, body_file: Path, wanted: list[str]) -> list[Server]:
    py = sys.executable
    base = dict(os.environ, MD_LOG_LEVEL="WARNING", BENCH_PEER_BODY=str(body_file))
    gw_env = dict(
        base,
        MD_TOPIC_PREFIX=s.topic_prefix,
        MD_REDIS_PREFIX=s.redis_prefix,
        MD_REST_PORT="{port}",
        MD_REST_PROCESSES="1",
        MD_REST_ANON_RPS="100000000",  # limits on (a Redis counter per IP), never reached
    )
    uv = [py, "-m", "uvicorn", "--port", "{port}", "--loop", "uvloop", "--http", "httptools"]
    uv += ["--no-access-log", "--log-level", "warning", "--factory"]
    gr = [py, "-m", "granian", "--interface", "asgi", "--port", "{port}", "--workers", "1"]
    gr += ["--loop", "uvloop", "--no-access-log", "--log-level", "warning", "--factory"]
    gw = [py, "-m", "gateway_rest"]  # the production entry point, MD_REST_SERVER chooses
    table = {
        "bare-uvicorn": Server(
            "bare uvicorn", [*uv, "--lifespan", "off", "loadtests.bench_peer_rest:bare_app"], base
        ),
        "gateway": Server("gateway_rest (defaults)", gw, gw_env),
        "gateway-uvicorn": Server(
            "gateway_rest on uvicorn", gw, dict(gw_env, MD_REST_SERVER="uvicorn")
        ),
        "bare-granian": Server("bare granian", [*gr, "loadtests.bench_peer_rest:bare_app"], base),
        "gateway-granian": Server(
            "gateway_rest on granian", gw, dict(gw_env, MD_REST_SERVER="granian")
        ),
    }
    for name in wanted:
        if name not in table:
            raise SystemExit(f"unknown server {name!r}: one of {', '.join(table)}")
    return [table[n] for n in wanted]


def measure(srv: Server, conns: int, duration: int, runs: int) -> dict[str, float]:
    port = free_port()
    srv.start(port)
    assert srv.proc is not None
    url = f"http://127.0.0.1:{port}{PATH}"
    try:
        run_wrk(url, 2, conns)  # warm-up
        rows = []
        for _ in range(runs):
            c0 = tree_cpu(srv.proc.pid)
            r = run_wrk(url, duration, conns)
            r["cpu_us"] = (tree_cpu(srv.proc.pid) - c0) / max(1.0, r["requests"]) * 1e6
            rows.append(r)
            print(
                f"  {srv.name:28s} c={conns:3d} {r['rps']:9.0f} req/s p99 {r['p99_ms']:6.2f} ms "
                f"{r['cpu_us']:6.1f} CPU us/req non-2xx {int(r['non2xx'])}",
                file=sys.stderr,
            )
    finally:
        srv.stop()
    return {k: statistics.median(r[k] for r in rows) for k in ("rps", "p99_ms", "cpu_us")}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--conns", default="8,64")
    ap.add_argument(
        "--servers",
        default="bare-uvicorn,gateway",
        help="comma list of bare-uvicorn, gateway (the default server), gateway-uvicorn, "
        "bare-granian, gateway-granian; the first is the ceiling the ratios divide by",
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
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body.json"
        gw = servers(s, body_file, ["gateway"])[0]
        port = free_port()
        gw.start(port)
        try:
            body = httpx.get(f"http://127.0.0.1:{port}{PATH}").content
            body_file.write_bytes(body)
        finally:
            gw.stop()
        conns = [int(c) for c in args.conns.split(",")]
        results: dict[tuple[str, int], dict[str, float]] = {}
        srvs = servers(s, body_file, args.servers.split(","))
        for c in conns:
            for srv in srvs:  # interleaved per connection count: drift hits both alike
                results[(srv.name, c)] = measure(srv, c, args.duration, args.runs)
    ceiling = srvs[0].name
    print(
        f"\nmachine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; "
        f"GET {PATH} ({len(body):,}-byte body); wrk -t2 -d{args.duration}s x{args.runs} "
        f"(medians), server on core {SERVER_CORE}, wrk on core {LOAD_CORE}\n"
    )
    # "x ceiling": req/s over the ceiling's req/s; "per core": the ceiling's CPU per request over
    # this server's (req/s per core when both had a whole core: the steadier figure when the
    # machine is shared, where a server with more threads takes a larger share of a busy core)
    head = "| server |" + "".join(
        f" {c} conns req/s | p99 ms | CPU µs/req | x {ceiling} | per core x {ceiling} |"
        for c in conns
    )
    print(head)
    print("| --- |" + " ---: | ---: | ---: | ---: | ---: |" * len(conns))
    for srv in srvs:
        cells = ""
        for c in conns:
            r, base = results[(srv.name, c)], results[(ceiling, c)]
            cells += (
                f" {r['rps']:,.0f} | {r['p99_ms']:.2f} | {r['cpu_us']:.0f} |"
                f" {r['rps'] / base['rps']:.2f} | {base['cpu_us'] / r['cpu_us']:.2f} |"
            )
        print(f"| {srv.name} |{cells}")


if __name__ == "__main__":
    main()
