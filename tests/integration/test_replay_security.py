"""The replay server follows the gateways' production rules (issue 12 for the replay of issue 13):
on a reachable address it refuses development defaults; with production settings it serves
``wss://`` only, lets anonymous clients replay only their channels, takes the live gateway's JWT
(query parameter or ``auth`` message), and signs what it replays. On the real servers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage, InvalidStatus

from core.codec import iso_from_ns
from core.settings import Settings
from core.signing import Signer, Verifier, split_signed, write_keypair
from gateway_ws.replay_server import ReplayConfig, ReplayServer
from tests.conftest import free_port
from tests.helpers import self_signed_cert
from tests.integration.test_replay_ws import _collect, stored  # noqa: F401 - fixture

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MS = 1_000_000
JWT_SECRET = "a-replay-test-secret-long-enough-for-hs256"


def _token(tier: str) -> str:
    claims = {"sub": f"u-{tier}", "tier": tier, "exp": int(time.time() + 120)}
    return jwt.encode(claims, JWT_SECRET, "HS256")


def test_replay_server_refuses_development_defaults_off_loopback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
    env.update(MD_REPLAY_HOST="0.0.0.0", MD_REPLAY_PORT=str(free_port()))
    try:
        r = subprocess.run(
            [sys.executable, "-m", "gateway_ws.replay_server"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"started on 0.0.0.0 with development defaults: {exc.output}"
        ) from None
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    for name in ("MD_ALLOW_INSECURE", "MD_REPLAY_TLS_CERT", "MD_WS_JWT_HS256_SECRET"):
        assert name in out, out


async def test_production_settings_tls_tokens_channels_signatures(
    stored: dict[str, Any],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    cert, key = self_signed_cert(tmp_path)
    signing_key, _ = write_keypair(str(tmp_path / "keys"))
    s = stored["settings"]
    s = dataclasses.replace(
        s,
        extra={
            **s.extra,
            "MD_WS_JWT_HS256_SECRET": JWT_SECRET,
            "MD_WS_ANON_CHANNELS": "trades",
            "MD_SIGNING_KEY": str(signing_key),
        },
    )
    port = free_port()
    server = ReplayServer(
        s, ReplayConfig(host="127.0.0.1", port=port, tls_cert=str(cert), tls_key=str(key))
    )
    await server.start()
    ctx = ssl.create_default_context(cafile=str(cert))
    t0, sym = stored["t0"], stored["sym"]
    trades = {
        "type": "replay",
        "id": "t",
        "channel": "trades",
        "symbol": sym,
        "start": iso_from_ns(t0 + 500 * MS),
        "end": iso_from_ns(t0 + 1500 * MS),
        "speed": 0,
    }
    book = {**trades, "id": "b", "channel": "l2", "end": iso_from_ns(t0 + 2000 * MS)}
    signer = Signer.from_settings(s)
    assert signer is not None
    verifier = Verifier([signer.public_key])
    try:
        # TLS only: a plaintext client gets no WebSocket
        with pytest.raises((InvalidMessage, OSError)):
            async with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5):
                pass
        # a bad token in the upgrade: 401, no connection
        with pytest.raises(InvalidStatus) as exc:
            async with connect(f"wss://localhost:{port}/ws?token=forged", ssl=ctx):
                pass
        assert exc.value.response.status_code == 401

        async with connect(f"wss://localhost:{port}/ws", ssl=ctx) as ws:
            # anonymous: trades (MD_WS_ANON_CHANNELS), each message signed, body as stored
            await ws.send(orjson.dumps(trades).decode())
            got = await _collect(ws, "t")
            assert got[-1]["type"] == "replay_done" and got[-1]["messages"] == 51
            for raw, want in zip(got[1:-1], stored["trades"][24:75], strict=True):
                assert verifier.verify(raw) is None
                parts = split_signed(raw)
                assert parts is not None and parts[0] == want
            # ...but not the book: the live gateway's code for it
            await ws.send(orjson.dumps(book).decode())
            m = orjson.loads(await ws.recv())
            assert (m["type"], m["code"], m["id"]) == ("error", "auth_required", "b")
            # a token in an auth message opens it on the same connection
            await ws.send(orjson.dumps({"type": "auth", "token": "nope", "id": 1}).decode())
            m = orjson.loads(await ws.recv())
            assert (m["type"], m["code"]) == ("error", "auth_failed")
            await ws.send(orjson.dumps({"type": "auth", "token": _token("pro"), "id": 2}).decode())
            m = orjson.loads(await ws.recv())
            assert (m["type"], m["user"], m["tier"]) == ("authenticated", "u-pro", "pro")
            await ws.send(orjson.dumps(book).decode())
            got = await _collect(ws, "b")
            assert orjson.loads(got[1])["type"] == "l2_snapshot"
            assert got[-1]["type"] == "replay_done"

        # the token in the upgrade request works the same
        async with connect(f"wss://localhost:{port}/ws?token={_token('basic')}", ssl=ctx) as ws:
            await ws.send(orjson.dumps(book).decode())
            got = await _collect(ws, "b")
            assert got[-1]["type"] == "replay_done"
    finally:
        await server.stop()


async def _get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as c:
        return await c.get(url)


async def _ready_within(url: str, within: float = 15) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        r = await _get(url)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        await asyncio.sleep(0.2)


async def test_readiness_follows_the_database_and_metrics_leave_the_public_port(
    settings: Settings, pg_dsn: str
) -> None:
    """Ready only while the history database answers (live all the same: a restart would not
    bring the database back); with MD_REPLAY_METRICS_PORT /metrics is only there."""
    port, ops = free_port(), free_port()
    good = dataclasses.replace(settings, pg_dsn=pg_dsn)
    server = ReplayServer(good, ReplayConfig(port=port, metrics_port=ops))
    await server.start()
    try:
        r = await _ready_within(f"http://127.0.0.1:{port}/health/ready")
        assert r.status_code == 200, r.text
        assert r.json()["checks"]["database"]["ok"] is True
        assert (await _get(f"http://127.0.0.1:{port}/metrics")).status_code == 404
        m = await _get(f"http://127.0.0.1:{ops}/metrics")
        assert m.status_code == 200 and "md_replay_total" in m.text
        assert (await _get(f"http://127.0.0.1:{ops}/health/ready")).status_code == 200
    finally:
        await server.stop()

    dead = dataclasses.replace(settings, pg_dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    server = ReplayServer(dead, ReplayConfig(port=port))
    await server.start()
    try:
        deadline = time.monotonic() + 15
        while True:
            r = await _get(f"http://127.0.0.1:{port}/health/ready")
            detail = r.json()["checks"]["database"]["detail"]
            if detail != "not checked yet" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert r.status_code == 503 and r.json()["checks"]["database"]["ok"] is False, r.text
        assert (await _get(f"http://127.0.0.1:{port}/health/live")).status_code == 200
        assert (await _get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
    finally:
        await server.stop()


async def test_connection_limits_per_address_and_per_user(settings: Settings) -> None:
    """The live gateway's limits: anonymous connections per address (MD_WS_MAX_CONN_PER_IP),
    a user's per tier (max_connections); an auth that would pass the user's is refused and the
    connection keeps working as it was."""
    s = dataclasses.replace(
        settings,
        extra={
            **settings.extra,
            "MD_WS_JWT_HS256_SECRET": JWT_SECRET,
            "MD_WS_MAX_CONN_PER_IP": "2",
            "MD_WS_TIERS": '{"solo": {"max_connections": 1}}',
        },
    )
    port = free_port()
    server = ReplayServer(s, ReplayConfig(port=port))
    await server.start()
    url = f"ws://127.0.0.1:{port}/ws"
    solo = _token("solo")
    try:
        async with connect(url), connect(url) as second:
            with pytest.raises(InvalidStatus) as exc:
                async with connect(url):
                    pass
            assert exc.value.response.status_code == 429
            async with connect(f"{url}?token={solo}"):
                with pytest.raises(InvalidStatus) as exc:
                    async with connect(f"{url}?token={solo}"):
                        pass
                assert exc.value.response.status_code == 429
                await second.send(orjson.dumps({"type": "auth", "token": solo, "id": 1}).decode())
                m = orjson.loads(await second.recv())
                assert (m["type"], m["code"]) == ("error", "too_many_connections")
                await second.send('{"type":"ping","id":2}')
                assert orjson.loads(await second.recv()) == {"type": "pong", "id": 2}
        # all closed: the address has its slots back
        for _ in range(50):
            if not server.limits.per_ip and not server.limits.per_user:
                break
            await asyncio.sleep(0.05)
        async with connect(url), connect(url):
            pass
    finally:
        await server.stop()
