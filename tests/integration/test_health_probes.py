"""Readiness apart from liveness, on the real servers (issue 11).

- PostgreSQL unreachable (the services point at a closed port; the shared server is never
  touched): ``python -m storage run`` is live and not ready (history waits in Kafka) while its
  cache writer keeps filling Redis, and ``python -m gateway_rest`` stays ready and serves the hot
  routes from Redis. Only the history routes answer 503.
- Kafka lost (the follower's broker probe fails, injected in the client) is a readiness failure
  (no new clients) that heals by itself, not a liveness one; a dead loop is a liveness failure:
  ``/health/live`` 503 on the gateway_ws and FIX gateway listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError

from core.kafka import make_producer
from core.settings import Settings
from core.topics import Topics
from testkit import fake_aggregator as T
from tests.conftest import free_port
from tests.helpers import eventually, stop_procs
from tests.integration.ws_helpers import running_gateway

pytestmark = pytest.mark.integration
SYM = "HLT-USD"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started: dict[str, subprocess.Popen[bytes]] = {}
    yield started
    stop_procs(started.values(), 15)


def _start(
    procs: dict[str, subprocess.Popen[bytes]],
    name: str,
    args: list[str],
    env: dict[str, str],
    logs: Path,
) -> None:
    procs[name] = subprocess.Popen(
        [sys.executable, "-m", *args],
        env=env,
        stdout=(logs / f"{name}.log").open("wb"),
        stderr=subprocess.STDOUT,
        cwd=os.getcwd(),
    )


async def _seed(s: Settings, ticker_seq: int) -> None:
    t = Topics.from_settings(s)
    p = make_producer(s)
    await p.start()
    try:
        await T.produce(
            p,
            t.snapshot,
            [
                (f"status:{SYM}", T.status(SYM, 1)),
                (f"l2:{SYM}", T.l2_snapshot(SYM, 3, [["10", "1"]], [["11", "2"]])),
                (f"ticker:{SYM}", T.ticker(SYM, ticker_seq)),
            ],
        )
    finally:
        await p.stop()


async def _ticker_on_stream(s: Settings, ticker_seq: int) -> None:
    p = make_producer(s)
    await p.start()
    try:
        await T.produce_stream(
            p, Topics.from_settings(s), "ticker", [(SYM, T.ticker(SYM, ticker_seq))]
        )
    finally:
        await p.stop()


async def test_postgres_unreachable_rest_ready_storage_live_not_ready(
    settings: Settings, env_for: dict[str, str], tmp_path: Path, procs: dict[str, Any]
) -> None:
    closed = free_port()  # nothing listens here: every connection is refused at once
    dsn = f"postgresql://postgres@127.0.0.1:{closed}/marketdata"
    ops, rest = free_port(), free_port()
    env = dict(
        env_for,
        MD_PG_DSN=dsn,
        MD_STORAGE_HTTP_HOST="127.0.0.1",
        MD_STORAGE_HTTP_PORT=str(ops),
        MD_REST_HOST="127.0.0.1",
        MD_REST_PORT=str(rest),
        MD_REST_MICROCACHE_MS="0",
    )
    await _seed(settings, ticker_seq=2)
    _start(procs, "storage", ["storage", "run"], env, tmp_path)
    _start(procs, "gateway_rest", ["gateway_rest"], env, tmp_path)
    st, gw = f"http://127.0.0.1:{ops}", f"http://127.0.0.1:{rest}"
    api = f"{gw}/api/v1/market/{SYM}"

    async with httpx.AsyncClient(timeout=5) as c:

        async def get(url: str) -> httpx.Response | None:
            for name, p in procs.items():
                if p.poll() is not None:
                    raise AssertionError(
                        f"{name} exited {p.returncode}: {(tmp_path / f'{name}.log').read_text()[-3000:]}"
                    )
            try:
                return await c.get(url)
            except httpx.TransportError:
                return None

        async def answers(url: str, code: int) -> bool:
            r = await get(url)
            return r is not None and r.status_code == code

        # storage: live at once, and stays live; not ready, because of the database only
        await eventually(lambda: answers(f"{st}/health/live", 200), 30)

        async def cache_written() -> bool:
            r = await get(f"{st}/health/ready")
            return r is not None and r.json()["checks"]["cache_writer"]["ok"] is True

        await eventually(cache_written, 30)
        r = await c.get(f"{st}/health/ready")
        body = r.json()
        assert r.status_code == 503 and body["status"] == "degraded" and body["live"] is True
        assert body["checks"]["db_writer"]["ok"] is False
        assert body["checks"]["db_writer"]["kind"] == "readiness"
        assert body["checks"]["db_writer"]["detail"]["database"] == "down"
        assert (await c.get(f"{st}/health")).status_code == 503  # combined = readiness
        live = (await c.get(f"{st}/health/live")).json()
        assert live["status"] == "ok" and set(live["checks"]) == {"cache_loop", "writers"}

        # gateway_rest: ready on Redis alone, the database reported as info
        await eventually(lambda: answers(f"{gw}/health/live", 200), 30)
        for path in ("/health/ready", "/health"):
            r = await c.get(f"{gw}{path}")
            body = r.json()
            assert r.status_code == 200 and body["status"] == "ok" and body["ready"], body
            assert body["checks"]["redis"] == {"ok": True, "kind": "readiness", "detail": "up"}
            assert body["checks"]["database"]["ok"] is False
            assert body["checks"]["database"]["kind"] == "info"
        r = await c.get(f"{api}/orderbook?depth=5")
        assert r.status_code == 200 and r.json()["seq"] == 3 and "source" not in r.json()
        r = await c.get(f"{api}/ticker")
        assert r.status_code == 200 and r.json()["seq"] == 2
        # history needs the database: 503 naming it, while the hot routes keep answering
        r = await c.get(f"{api}/trades?start=2020-01-01T00:00:00Z")
        assert r.status_code == 503 and "database" in r.json()["message"]

        # the cache writer keeps running without the database: a new ticker reaches REST (on
        # its stream, as the aggregator publishes it: once the streams are followed the cache
        # writer skips the snapshot topic's ticker records, storage/cache_model.py)
        await _ticker_on_stream(settings, ticker_seq=5)

        async def new_ticker() -> bool:
            r = await get(f"{api}/ticker")
            return r is not None and r.status_code == 200 and r.json()["seq"] == 5

        await eventually(new_ticker, 20)
        assert (await c.get(f"{st}/health/live")).status_code == 200
        assert (await c.get(f"{gw}/health/ready")).status_code == 200

    # and neither process restarted or died meanwhile
    assert all(p.poll() is None for p in procs.values())


async def test_rest_not_ready_without_redis_but_live(settings: Settings) -> None:
    """Redis and the database both unreachable: nothing hot can be served -> not ready; the
    process itself is fine -> live (no restart)."""
    from gateway_rest.app import create_app

    s = dataclasses.replace(
        settings,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        pg_dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/marketdata",
    )
    app = create_app(s)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "degraded"
        assert r.json()["checks"]["redis"]["ok"] is False
        r = await c.get("/health/live")
        assert r.status_code == 200 and r.json() == {
            "status": "ok",
            "service": "gateway_rest",
            "live": True,
            "checks": {},
        }


@contextlib.contextmanager
def kafka_unreachable(follower: Any) -> Iterator[None]:
    """The follower's broker probe fails as if Kafka were cut off (fault injected in the client:
    the shared broker is never touched); its watchdog then declares the feed lost by itself."""
    tc = follower._stream_consumer  # noqa: SLF001 - the consumer the watchdog probes

    async def unreachable(*_: Any, **__: Any) -> Any:
        raise KafkaConnectionError("injected: broker unreachable")

    tc.end_offsets = unreachable
    try:
        yield
    finally:
        del tc.end_offsets  # the class's method again


async def _http(port: int, path: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as c:
        r = await c.get(f"http://127.0.0.1:{port}{path}")
        return r.status_code, r.json()


async def test_gateway_ws_kafka_lost_not_ready_dead_loop_not_live(settings: Settings) -> None:
    async with running_gateway(settings) as gw:
        port = gw.cfg.port
        for path in ("/health/live", "/health/ready", "/health"):
            assert (await _http(port, path))[0] == 200
        # Kafka lost (the watchdog's verdict): leave the load balancer, keep running
        with kafka_unreachable(gw.follower):
            await eventually(lambda: not gw.follower.connected, 15)
            code, body = await _http(port, "/health/ready")
            assert code == 503 and body["status"] == "degraded" and body["live"] is True
            assert body["checks"]["kafka"]["kind"] == "readiness"
            assert body["checks"]["kafka"]["detail"]["kafka"] == "lost"
            assert (await _http(port, "/health"))[0] == 503
            code, body = await _http(port, "/health/live")
            assert code == 200 and set(body["checks"]) == {"follower_loops", "hub_ticker"}
        await eventually(lambda: gw.follower.connected, 15)  # back by itself, no restart
        assert (await _http(port, "/health/ready"))[0] == 200
        # a follower loop dies: the books it feeds freeze, only a restart helps
        stream_loop = next(
            t
            for t in gw.follower._tasks  # noqa: SLF001 - the loops the follower started
            if t.get_name() == "follower-streams"
        )
        stream_loop.cancel()
        await asyncio.sleep(0.05)
        code, body = await _http(port, "/health/live")
        assert code == 503 and body["status"] == "failing" and body["live"] is False
        assert body["checks"]["follower_loops"] == {
            "ok": False,
            "kind": "liveness",
            "detail": {"dead_loops": ["follower-streams"]},
        }
        code, body = await _http(port, "/health/ready")
        assert code == 503 and body["status"] == "failing"


async def test_fix_gateway_kafka_lost_not_ready_dead_ticker_not_live(
    settings: Settings, tmp_path: Path
) -> None:
    from core.ops_http import start_ops_server
    from fix_gateway.config import GatewayConfig
    from fix_gateway.server import Gateway

    base = GatewayConfig.from_settings(settings)
    cfg = dataclasses.replace(
        base, host="127.0.0.1", port=free_port(), http_port=free_port(), store_dir=tmp_path
    )
    gw = Gateway(settings, cfg)
    ops = await start_ops_server(gw.health(), "127.0.0.1", cfg.http_port)
    try:
        # starting: live (the startup and liveness probes pass), not ready (no listener yet)
        code, body = await _http(cfg.http_port, "/health/ready")
        assert code == 503 and body["live"] is True and body["checks"]["listener"]["ok"] is False
        assert (await _http(cfg.http_port, "/health/live"))[0] == 200
        await gw.start()
        await asyncio.wait_for(gw.follower.ready.wait(), 10)
        assert (await _http(cfg.http_port, "/health/ready"))[0] == 200
        with kafka_unreachable(gw.follower):
            await eventually(lambda: not gw.follower.connected, 15)
            code, body = await _http(cfg.http_port, "/health/ready")
            assert code == 503 and body["checks"]["kafka_feed"]["detail"]["kafka"] == "lost"
            assert (await _http(cfg.http_port, "/health/live"))[0] == 200
        await eventually(lambda: gw.follower.connected, 15)
        assert (await _http(cfg.http_port, "/health/ready"))[0] == 200
        gw._ticker.cancel()  # noqa: SLF001 - the session ticker (heartbeats, timeouts) dies
        await asyncio.sleep(0.05)
        code, body = await _http(cfg.http_port, "/health/live")
        assert code == 503 and body["checks"]["session_ticker"]["detail"] == {
            "dead": {"fix-ticker": "cancelled"}
        }
    finally:
        if gw.server is not None:
            await gw.stop()
        ops.close()
        await ops.wait_closed()
