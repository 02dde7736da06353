"""Side by side: gateway_ws against Centrifugo v6, same Kafka stream, same clients (issue 16).

    .venv/bin/python -m loadtests.bench_peer_ws --build          # once: Centrifugo into var/peers
    .venv/bin/python -m loadtests.bench_peer_ws --connections 1000,5000 --rate-total 200000
    .venv/bin/python -m loadtests.bench_peer_ws --storm --connections 1000,5000,10000

``--storm``: connection storms instead (issue 16 item 4): all N clients connect at the same
moment (the client processes start first and wait for one signal), per connection the time
from ``connect()`` to the subscribe's answer (the gateway: its ``l2_snapshot``; Centrifugo:
its subscribe reply, it has no snapshot) and the 101 part of it, and the CPU of the server
and of the clients over the connection phase, per connection.

For each connection count and core count it runs ``loadtests/fanout.py`` twice in a row, once
against ``python -m gateway_ws`` (``MD_WS_PROCESSES`` = cores) and once against Centrifugo
(``GOMAXPROCS`` = cores) consuming the same l2 stream topic through its Kafka consumer
(publication data mode: the record value, the aggregator's bytes, is what its clients get).
The clients are the same lean client (``loadtests/fanout_client.py``) speaking each server's
protocol; 4 symbols, connections spread evenly. Printed per run: delivered msg/s, latency
p50/p99 (publish -> Kafka -> server -> client), server CPU-seconds per million delivered
messages and RSS per connection, and the gateway/Centrifugo ratios.

Centrifugo is built from the Go module proxy (``go install
github.com/centrifugal/centrifugo/v6@<version>``) into ``var/peers/bin`` (gitignored), never
into the source tree. Everything runs on one machine: the clients and Kafka take CPU from the
servers, the same for both.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
from typing import Any

import orjson

ROOT = pathlib.Path(__file__).resolve().parents[1]
CENTRIFUGO_VERSION = "v6.9.1"
CENTRIFUGO_BIN = ROOT / "var" / "peers" / "bin" / "centrifugo"
SYMBOLS = ["BTC-USD", "ETH-USD", "LTC-USD", "SOL-USD"]


def build(version: str = CENTRIFUGO_VERSION) -> pathlib.Path:
    """``go install`` Centrifugo into var/peers/bin (a no-op when that version is there)."""
    stamp = CENTRIFUGO_BIN.parent / ".centrifugo-version"
    if CENTRIFUGO_BIN.exists() and stamp.exists() and stamp.read_text().strip() == version:
        return CENTRIFUGO_BIN
    CENTRIFUGO_BIN.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOBIN=str(CENTRIFUGO_BIN.parent), GOFLAGS="-buildvcs=false")
    subprocess.run(
        ["go", "install", f"github.com/centrifugal/centrifugo/v6@{version}"],
        check=True,
        env=env,
        cwd="/",
    )
    stamp.write_text(version + "\n")
    return CENTRIFUGO_BIN


def centrifugo_config(port: int, brokers: str, topic: str, tag: str) -> dict[str, Any]:
    """A fan-out-only Centrifugo: anonymous subscribe to any channel, Kafka in, no history."""
    return {
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "error"},
        "health": {"enabled": True},
        "client": {"insecure": True},
        "consumers": [
            {
                "enabled": True,
                "name": "kafka",
                "type": "kafka",
                "kafka": {
                    "brokers": brokers.split(","),
                    "topics": [topic],
                    "consumer_group": f"bench-peer-{tag}",
                    "publication_data_mode": {"enabled": True},
                },
            }
        ],
    }


def _run_one(server: str, connections: int, rate: float, cores: int, a: argparse.Namespace) -> Any:
    """One fanout.py run; ``gateway-websockets`` = the gateway on python-websockets' server
    (``MD_WS_SERVER=websockets``), the accept path before gateway_ws/listener.py."""
    env = dict(os.environ)
    if server == "gateway-websockets":
        server, env["MD_WS_SERVER"] = "gateway", "websockets"
    cmd = [
        sys.executable,
        "-m",
        "loadtests.fanout",
        "--server",
        server,
        "--connections",
        str(connections),
        "--rate",
        str(rate),
        "--symbols",
        ",".join(SYMBOLS),
        "--duration",
        str(a.duration),
        "--warmup",
        str(a.warmup),
        "--gw-processes",
        str(cores),
        "--client-procs",
        str(a.client_procs),
        "--sample-every",
        str(a.sample_every),
        "--json",
    ]
    if server == "gateway" and a.batch:
        cmd.append("--batch")
    if a.storm:
        cmd += ["--wave", str(connections)]
    # stderr (the servers' logs) is not captured: a leftover server process holding it cannot
    # keep this run waiting for end of file
    out = subprocess.run(
        cmd,
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env,
    )
    for line in reversed(out.stdout.strip().splitlines()):
        if line.startswith("{") and '"delivered"' in line:
            return orjson.loads(line)
    raise RuntimeError(f"no result from {' '.join(cmd)}")


def _fmt(r: dict[str, Any]) -> str:
    cpu_per_m = r["gateway_cpu_s"] * 1e6 / max(1, r["delivered"])
    lat = r["latency_ms"]
    return (
        f"{r['delivered_per_s']:>8,} msg/s  p50 {lat['p50']:>8.2f} ms  p99 {lat['p99']:>8.2f} ms"
        f"  {cpu_per_m:5.2f} CPU-s/M  {r['rss_per_connection_kib']:6.1f} KiB/conn"
        f"  clients {r.get('client_cpu_s', 0) * 1e6 / max(1, r['delivered']):5.2f} CPU-s/M"
        f"  setup p50 {r['setup_ms']['p50']:.0f} / p99 {r['setup_ms']['p99']:.0f} ms"
        f"  gaps {r['gaps']} closed {r['closed']}"
    )


def _fmt_storm(r: dict[str, Any]) -> str:
    su, up = r["setup_ms"], r["upgrade_ms"]
    return (
        f"setup p50 {su['p50']:>7.1f} / p99 {su['p99']:>7.1f} ms"
        f"  upgrade p50 {up['p50']:>7.1f} / p99 {up['p99']:>7.1f} ms"
        f"  server {r['setup_cpu_us_per_conn']:>4} us/conn"
        f"  clients {r.get('clients_setup_cpu_us_per_conn', 0):>4} us/conn"
        f"  connected {r['connected']} drops {r['listen_drops']}"
        f"  load {r['machine_load_avg'][0]}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--build", action="store_true", help="build Centrifugo and exit")
    ap.add_argument("--connections", default="1000,5000")
    ap.add_argument("--cores", default="1", help="comma list: 1 = one process / GOMAXPROCS=1")
    ap.add_argument(
        "--rate-total",
        type=float,
        default=200_000,
        help="target delivered msg/s: the per-symbol rate is this / connections",
    )
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--client-procs", type=int, default=3)
    ap.add_argument("--sample-every", type=int, default=10)
    ap.add_argument(
        "--servers",
        default="gateway,centrifugo",
        help="comma list of gateway, gateway-websockets (MD_WS_SERVER=websockets), centrifugo",
    )
    ap.add_argument(
        "--batch", action="store_true", help="gateway clients use /ws?batch=1 (NDJSON frames)"
    )
    ap.add_argument(
        "--storm",
        action="store_true",
        help="connection storms: all N connect at once (setup time, CPU per connection)",
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.storm:  # the connection phase is the measurement: a short, light data phase
        a.duration, a.warmup, a.rate_total = min(a.duration, 2.0), min(a.warmup, 1.0), 0
    build()
    if a.build:
        print(CENTRIFUGO_BIN)
        return
    results = []
    for n in (int(x) for x in a.connections.split(",")):
        # every connection gets every message of its symbol; a storm publishes 2/s per symbol
        rate = a.rate_total / n if a.rate_total else 2.0
        for cores in (int(x) for x in a.cores.split(",")):
            row: dict[str, Any] = {"connections": n, "cores": cores, "target": a.rate_total}
            for server in a.servers.split(","):
                r = _run_one(server, n, rate, cores, a)
                row[server] = r
                line = _fmt_storm(r) if a.storm else _fmt(r)
                print(f"{n:>6} conns {cores} core(s) {server:>10}: {line}", flush=True)
            g, c = row.get("gateway"), row.get("centrifugo")
            if g and c and not a.storm:
                g_cpu = g["gateway_cpu_s"] / max(1, g["delivered"])
                c_cpu = c["gateway_cpu_s"] / max(1, c["delivered"])
                row["ratio_rate"] = round(g["delivered_per_s"] / max(1, c["delivered_per_s"]), 2)
                row["ratio_cpu_per_msg"] = round(g_cpu / c_cpu, 2) if c_cpu else None
                print(
                    f"{'':>6} ratio gateway/centrifugo: rate {row['ratio_rate']}x, "
                    f"CPU per msg {row['ratio_cpu_per_msg']}x",
                    flush=True,
                )
            results.append(row)
    if a.json:
        print(orjson.dumps(results).decode())


if __name__ == "__main__":
    main()
