"""A WebSocket client of a gateway with MD_SIGNING_KEY gets signed data messages (snapshot, live
updates) that ``python -m core.verify`` accepts, and GET /keys serves the key to check them with."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from core import signing
from core.settings import Settings
from core.signing import Verifier, write_keypair
from tests.integration.ws_helpers import (
    Feed,
    drop_topics,  # noqa: F401 - autouse: topics deleted after each test
    recv,
    recv_until,
    running_gateway,
    send,
    url,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _verify_cli(capture: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.verify", str(capture), "--public-key", str(pub)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_data_messages_are_signed_end_to_end(settings: Settings, tmp_path: Path) -> None:
    key, _ = write_keypair(str(tmp_path / "keys"))
    s = dataclasses.replace(settings, extra={**settings.extra, "MD_SIGNING_KEY": str(key)})
    captured: list[bytes] = []
    try:
        async with Feed(s) as feed:
            await feed.snapshot("BTC-USD")
            await feed.updates("BTC-USD", 5)
            async with running_gateway(s) as gw, connect(url(gw)) as ws:
                async with httpx.AsyncClient() as c:
                    doc = (await c.get(f"http://127.0.0.1:{gw.cfg.port}/keys")).json()
                verifier = Verifier.from_document(doc)
                await send(ws, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD"})
                assert (await recv(ws))["type"] == "subscribed"
                await feed.updates("BTC-USD", 10, start=5)
                while True:
                    raw = await asyncio.wait_for(ws.recv(), 5)
                    captured.append(raw if isinstance(raw, bytes) else raw.encode())
                    if orjson.loads(captured[-1]).get("seq") == 15:
                        break
        data = [m for m in captured if b'"seq":' in m]
        assert orjson.loads(data[0])["type"] == "l2_snapshot" and len(data) >= 11
        assert all(verifier.verify(m) is None for m in data)
        capture = tmp_path / "capture.ndjson"
        capture.write_bytes(b"\n".join(captured) + b"\n")
        pub = tmp_path / "keys" / "signing.pub"
        r = await asyncio.to_thread(_verify_cli, capture, pub)
        assert r.returncode == 0, r.stdout + r.stderr
        tampered = tmp_path / "tampered.ndjson"
        tampered.write_bytes(capture.read_bytes().replace(b'"seq":12,', b'"seq":13,', 1))
        r = await asyncio.to_thread(_verify_cli, tampered, pub)
        assert r.returncode == 1 and "bad signature" in r.stdout
    finally:
        signing.install(None)


async def test_unsigned_by_default(settings: Settings) -> None:
    async with Feed(settings) as feed:
        await feed.snapshot("BTC-USD")
        async with running_gateway(settings) as gw, connect(url(gw)) as ws:
            await send(ws, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD"})
            snap = await recv_until(ws, lambda m: m["type"] == "l2_snapshot")
            assert "sig" not in snap and "kid" not in snap
            async with httpx.AsyncClient() as c:
                assert (await c.get(f"http://127.0.0.1:{gw.cfg.port}/keys")).json() == {"keys": []}
