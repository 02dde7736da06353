"""Abuse must not take the REST gateway down (issue 12): a header deadline (slowloris), the ops
endpoints and unknown API keys throttled, a bounded wait for the database pool, TLS 1.2+."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from gateway_rest import store as store_mod
from gateway_rest.app import create_app
from gateway_rest.config import RestConfig
from gateway_rest.store import MarketStore, Unavailable
from tests.conftest import free_port
from tests.helpers import self_signed_cert, wait_http

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _gateway(settings: Settings, tmp: Path, **env: str) -> Iterator[int]:
    port = free_port()
    full = dict(
        os.environ,
        MD_REDIS_URL=settings.redis_url,
        MD_REDIS_PREFIX=settings.redis_prefix,
        MD_REST_PORT=str(port),
        MD_LOG_LEVEL="WARNING",
        **env,
    )
    log = open(tmp / "rest.log", "wb")  # noqa: SIM115 - closed below
    p = subprocess.Popen(
        [sys.executable, "-m", "gateway_rest"], cwd=ROOT, env=full, stdout=log, stderr=log
    )
    try:
        yield port
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()


SERVERS = ["uvicorn", "granian"]  # MD_REST_SERVER: each must keep the same guarantees


@pytest.fixture(params=SERVERS)
def plain_gateway(
    request: pytest.FixtureRequest, redis_settings: Settings, tmp_path: Path
) -> Iterator[tuple[str, int]]:
    it = _gateway(
        redis_settings, tmp_path, MD_REST_HEADER_TIMEOUT_S="1", MD_REST_SERVER=request.param
    )
    port = next(it)
    wait_http(f"http://127.0.0.1:{port}/health/live", {}, within=60)
    yield request.param, port
    next(it, None)


def _until_closed(s: socket.socket) -> bytes:
    got = b""
    while chunk := s.recv(4096):
        got += chunk
    return got


def test_headers_trickling_past_the_deadline_close_the_connection(
    plain_gateway: tuple[str, int],
) -> None:
    """A client that sends part of its headers and then nothing (slowloris) is closed once
    MD_REST_HEADER_TIMEOUT_S passed (at most with a 408); so is one that connects and sends
    nothing. Without the deadline uvicorn keeps both open for ever (the recv times out)."""
    server, port = plain_gateway
    cases = [b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n"]
    if server == "uvicorn":  # granian's deadline starts at the first byte (docs/rest.md)
        cases.append(b"")
    for first in cases:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(20)
            if first:
                s.sendall(first)
            got = _until_closed(s)  # closed by the server
            assert got == b"" or got.startswith(b"HTTP/1.1 408"), got[:100]
    # a complete request on the same server is answered as usual, and keep-alive still works
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
        assert c.get("/health/live").status_code == 200
        assert c.get("/health/live").status_code == 200
    if server == "uvicorn":
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "md_rest_header_timeouts_total 2.0" in text


@pytest.mark.parametrize("server", SERVERS)
def test_rest_tls_option_serves_tls12_and_up_only(
    server: str, redis_settings: Settings, tmp_path: Path
) -> None:
    cert, key = self_signed_cert(tmp_path)
    it = _gateway(
        redis_settings,
        tmp_path,
        MD_REST_TLS_CERT=str(cert),
        MD_REST_TLS_KEY=str(key),
        MD_REST_SERVER=server,
    )
    port = next(it)
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        url = f"https://localhost:{port}/health/live"
        for _ in range(300):
            try:
                r = httpx.get(url, verify=ctx)
                break
            except httpx.ConnectError:
                import time

                time.sleep(0.2)
        assert r.status_code == 200
        # plain HTTP on the TLS port is not served
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health/live")
        # a client that offers at most TLS 1.1 cannot complete the handshake
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(cert))
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", port)) as raw:
            old.wrap_socket(raw, server_hostname="localhost")
        # a TLS 1.2-only client is served
        v12 = ssl.create_default_context(cafile=str(cert))
        v12.maximum_version = ssl.TLSVersion.TLSv1_2
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            v12.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.version() == "TLSv1.2"
    finally:
        next(it, None)


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")  # type: ignore[arg-type]


async def test_ops_endpoints_are_throttled_per_address(redis_settings: Settings) -> None:
    """/health pings Redis and PostgreSQL: a loop hammering it gets 429s after the ops budget
    (MD_REST_OPS_RPS per address and second, counted in the process), with Retry-After."""
    cfg = RestConfig(ops_limit=5)
    app = create_app(redis_settings, config=cfg)
    async with app.router.lifespan_context(app), _client(app) as c:
        codes = [(await c.get("/health/live")).status_code for _ in range(12)]
        assert codes.count(200) >= 5 and 429 in codes
        r = await c.get("/metrics")
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"] == "rate_limited"


async def test_unknown_api_keys_are_throttled(redis_settings: Settings) -> None:
    """Guessing keys: after MD_REST_BAD_KEY_RPS unknown-key requests per address and second the
    answer is 429 (not a 401 per guess at full speed); a known key is not affected."""
    cfg = RestConfig(bad_key_limit=3, api_keys={"good": "pro"})
    app = create_app(redis_settings, config=cfg)
    async with app.router.lifespan_context(app), _client(app) as c:
        codes = [
            (await c.get("/api/v1/market/symbols", headers={"X-API-Key": f"guess{i}"})).status_code
            for i in range(10)
        ]
        assert 401 in codes and 429 in codes
        assert codes.count(401) <= 3 * 2  # at most one budget per window (two if it rolled over)
        r = await c.get("/api/v1/market/symbols", headers={"X-API-Key": "good"})
        assert r.status_code != 429 and r.status_code != 401


async def test_database_pool_wait_is_bounded(
    redis_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every pool connection busy, a request waits at most DB_ACQUIRE_TIMEOUT_S, and no
    more than DB_MAX_WAITERS wait at all: 503 (Unavailable "busy") instead of an unbounded
    queue behind slow history queries."""
    st = MarketStore(redis_settings)
    try:
        hold = [
            asyncio.create_task(st.db("SELECT pg_sleep(3)")) for _ in range(store_mod.DB_POOL_SIZE)
        ]
        await asyncio.sleep(1.0)  # the sleeps hold every connection
        assert not any(t.done() for t in hold)
        monkeypatch.setattr(store_mod, "DB_ACQUIRE_TIMEOUT_S", 0.3)
        monkeypatch.setattr(store_mod, "DB_MAX_WAITERS", 1)
        waiter = asyncio.create_task(st.db("SELECT 1"))
        await asyncio.sleep(0)
        with pytest.raises(Unavailable) as second:  # the waiters' queue is full: at once
            await st.db("SELECT 1")
        assert "busy" in second.value.reason
        with pytest.raises(Unavailable) as first:  # the waiter gives up after its timeout
            await waiter
        assert "busy" in first.value.reason
        await asyncio.gather(*hold)
        assert (await st.db("SELECT 1 AS one"))[0]["one"] == 1  # and the pool serves again
    finally:
        await st.close()
