"""The WebSocket and FIX listeners use core.tls's policy: a TLS 1.2 client offering only CBC
suites is refused, a TLS 1.3 client is served (issue 12; the policy itself:
tests/unit/test_security_tls.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from core.settings import Settings
from fix_gateway.config import GatewayConfig
from fix_gateway.server import Gateway as FixGateway
from tests.conftest import free_port
from tests.helpers import self_signed_cert
from tests.integration.ws_helpers import drop_topics, running_gateway  # noqa: F401


def _cbc_client(cert: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cert)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext) -> str | None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        return s.version()


async def _check(port: int, cert: Path) -> None:
    modern = ssl.create_default_context(cafile=str(cert))
    assert await asyncio.to_thread(_handshake, port, modern) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(_handshake, port, _cbc_client(cert))


async def test_websocket_listener_uses_the_tls_policy(settings: Settings, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    async with running_gateway(settings, tls_cert=str(cert), tls_key=str(key)) as gw:
        await _check(gw.cfg.port, cert)


@asynccontextmanager
async def _fix(
    settings: Settings, change: Callable[[GatewayConfig], GatewayConfig]
) -> AsyncIterator[FixGateway]:
    gw = FixGateway(settings, change(GatewayConfig.from_settings(settings)))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def test_fix_listener_uses_the_tls_policy(settings: Settings, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    port = free_port()

    def change(c: GatewayConfig) -> GatewayConfig:
        return dataclasses.replace(
            c,
            host="127.0.0.1",
            port=port,
            store_dir=tmp_path / "store",
            certfile=str(cert),
            keyfile=str(key),
        )

    async with _fix(settings, change):
        await _check(port, cert)
