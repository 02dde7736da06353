"""The whole pipeline as separate processes on the real servers, as `make run` starts it:
simulator -> Kafka -> aggregator -> Kafka -> storage cache writer -> Redis -> REST, and
aggregator -> Kafka -> WebSocket gateway. Nothing is faked; the test only isolates itself
(own topic/Redis prefix, own database, free ports) so it can run beside a live stack.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import websockets

from core.book import L2Book
from tests.conftest import free_port
from tests.helpers import wait_http

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(env_for: dict[str, str], pg_dsn: str, tmp_path: Path) -> Iterator[dict[str, int]]:
    ports = {
        "rest": free_port(),
        "ws": free_port(),
        "agg": free_port(),
        "storage": free_port(),
        "sim": free_port(),
    }
    env = dict(env_for)
    env.update(
        MD_PG_DSN=pg_dsn,
        MD_REST_PORT=str(ports["rest"]),
        MD_WS_PORT=str(ports["ws"]),
        MD_AGGREGATOR_HTTP_PORT=str(ports["agg"]),
        MD_STORAGE_HTTP_PORT=str(ports["storage"]),
        MD_SIMULATOR_HTTP_PORT=str(ports["sim"]),
        MD_SIM_RATE="50",
        MD_LOG_LEVEL="WARNING",
    )
    subprocess.run([sys.executable, "-m", "storage", "migrate"], env=env, cwd=ROOT, check=True)
    cmds = {
        "simulator": ["aggregator.sources.simulator"],
        "aggregator": ["aggregator"],
        "storage": ["storage", "run"],
        "gateway_ws": ["gateway_ws"],
        "gateway_rest": ["gateway_rest"],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, args in cmds.items():
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", *args], env=env, cwd=ROOT, stdout=log, stderr=log
            )
        for _name, port in (
            ("sim", ports["sim"]),
            ("agg", ports["agg"]),
            ("storage", ports["storage"]),
            ("ws", ports["ws"]),
            ("rest", ports["rest"]),
        ):
            wait_http(f"http://127.0.0.1:{port}/health", procs)
        yield ports
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            try:
                rc = p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                raise AssertionError(f"{name} ignored SIGTERM for 20s") from None
            if os.environ.get("E2E_SHOW_LOGS"):
                print((tmp_path / f"{name}.log").read_text()[-3000:])
            assert rc in (0, -signal.SIGTERM), (
                f"{name} exited {rc} on SIGTERM: {(tmp_path / f'{name}.log').read_text()[-2000:]}"
            )


async def test_ws_snapshot_then_gapless_updates_and_rest_book(stack: dict[str, int]) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{stack['ws']}/ws") as ws:
        # malformed input first: clear errors, session stays usable
        await ws.send("{not json")
        err = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert err["type"] == "error" and err["message"]
        await ws.send(orjson.dumps({"type": "subscribe", "channel": "l2", "symbol": "NOPE-USD"}))
        err = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert err["type"] == "error" and "NOPE-USD" in err["message"]

        await ws.send(orjson.dumps({"type": "subscribe", "channel": "l2", "symbol": "btc/usd"}))
        msgs: list[dict] = []
        while not msgs or msgs[-1]["type"] != "l2_snapshot":
            m = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
            if m["type"] != "heartbeat":
                msgs.append(m)
        assert msgs[0]["type"] == "subscribed"
        snap = msgs[-1]
        assert snap["symbol"] == "BTC-USD" and snap["channel"] == "l2"
        book = L2Book()
        book.load(snap["data"]["bids"], snap["data"]["asks"])
        assert book.checksum() == snap["checksum"]
        seq = snap["seq"]
        updates = 0
        while updates < 30:
            m = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
            if m["type"] != "l2_update":
                continue
            assert m["seq"] == seq + 1, f"gap or duplicate: {seq} -> {m['seq']}"
            seq = m["seq"]
            book.apply(m["data"]["changes"])
            assert book.checksum() == m["checksum"]
            assert not book.crossed()
            updates += 1

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack['rest']}") as http:
        for _ in range(50):
            r = await http.get("/api/v1/market/BTC-USD/orderbook", params={"depth": 10})
            if r.status_code == 200:
                break
            await asyncio.sleep(0.2)
        assert r.status_code == 200, r.text
        body = r.json()
        bids = [float(p) for p, _ in body["bids"]]
        asks = [float(p) for p, _ in body["asks"]]
        assert bids and asks and len(bids) <= 10 and len(asks) <= 10
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
        assert bids[0] < asks[0]
        assert isinstance(body["seq"], int)
        r = await http.get("/api/v1/market/NOPE-USD/orderbook")
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
        r = await http.get("/api/v1/market/symbols")
        assert {"BTC-USD", "ETH-USD", "LTC-USD"} <= {s["symbol"] for s in r.json()["symbols"]}
