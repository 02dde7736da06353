"""REST and FIX write audit lines for refused credentials and logons (issue 12)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import httpx
import pytest

from core.security import fingerprint
from core.settings import Settings
from fix_gateway.client import FixClient
from fix_gateway.config import GatewayConfig
from fix_gateway.server import Gateway as FixGateway
from gateway_rest.app import create_app
from gateway_rest.config import RestConfig
from tests.conftest import free_port
from tests.helpers import eventually

pytestmark = pytest.mark.integration


async def test_rest_audits_refused_and_missing_keys(
    redis_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = RestConfig(api_keys={"good-key-0123456789": "basic"}, require_key=True)
    app = create_app(redis_settings, config=cfg)
    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.INFO, logger="gateway_rest.audit"):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            url = "/api/v1/market/symbols"
            assert (await c.get(url, headers={"X-API-Key": "stolen-key-42"})).status_code == 401
            assert (await c.get(url)).status_code == 401
    events = [
        (vars(r)["event"], getattr(r, "reason", None))
        for r in caplog.records
        if r.name.endswith("audit")
    ]
    assert ("key_refused", "unknown key") in events and ("key_missing", "no API key") in events
    refused = next(r for r in caplog.records if getattr(r, "reason", "") == "unknown key")
    assert vars(refused)["key_id"] == fingerprint("stolen-key-42")
    assert not any("stolen-key-42" in str(r.__dict__) for r in caplog.records)


async def test_fix_audits_logon_and_refusal(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    base = GatewayConfig.from_settings(settings)
    cfg = dataclasses.replace(base, host="127.0.0.1", port=port, store_dir=tmp_path / "store")
    gw = FixGateway(settings, cfg)
    await gw.start()
    try:
        with caplog.at_level(logging.INFO, logger="fix_gateway.audit"):
            ok = await FixClient.connect("127.0.0.1", port)
            await ok.logged_on()
            bad = await FixClient.connect("127.0.0.1", port, sender="INTRUDER")

            def audited() -> set[str]:
                return {vars(r)["event"] for r in caplog.records if r.name == "fix_gateway.audit"}

            await eventually(lambda: {"logon", "logon_refused"} <= audited(), 10)
            await ok.logout()
            await eventually(lambda: "session_end" in audited(), 10)
            if bad.transport:
                bad.transport.close()
    finally:
        await gw.stop()
    logon = next(r for r in caplog.records if getattr(r, "event", "") == "logon")
    assert vars(logon)["session"] == "MDGW-CLIENT1" and "127.0.0.1" in vars(logon)["peer"]
    refused = next(r for r in caplog.records if getattr(r, "event", "") == "logon_refused")
    assert "unknown session" in vars(refused)["reason"]
    await asyncio.sleep(0)
