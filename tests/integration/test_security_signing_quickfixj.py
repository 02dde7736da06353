"""Signed FIX market data (93/89 in the trailer, core/signing_fix.py) is still FIX 4.4 to an
independent engine: QuickFIX/J, validating every message against its dictionary, logs on,
rebuilds the books from signed W/X messages and neither sends nor receives a reject."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from core.settings import Settings
from core.signing import write_keypair
from fix_gateway.testing import GatewayProcess, metric
from testkit.fake_aggregator import Platform, Publisher
from tests.conftest import free_port
from tests.integration.test_fix_quickfixj import (
    Harness,
    book_equal,
    churn,
    fixclient_jar,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.integration


@pytest.mark.timeout(420)  # a first run builds the harness with Maven
async def test_quickfixj_accepts_signed_market_data(
    settings: Settings,
    env_for: dict[str, str],
    tmp_path: Path,
    fixclient_jar: Path,  # noqa: F811
) -> None:
    key, _ = write_keypair(str(tmp_path / "keys"))
    btc = Platform("BTC-USD")
    fix_port, http = free_port(), free_port()
    async with Publisher(settings) as pub:
        await pub.seed(btc)
        env = dict(env_for, MD_SIGNING_KEY=str(key))
        gw = GatewayProcess(env, fix_port, http, tmp_path / "store")
        await gw.start()
        h = await Harness.start(fixclient_jar, fix_port, tmp_path / "qfj", heartbeat=2)
        try:
            await h.wait_line("EV LOGON", 30)
            await h.cmd("subscribe md1 BTC-USD 0 0,1,2", "SUBSCRIBED")
            await book_equal(h, btc)
            await churn(pub, random.Random(7), [btc], 20)
            await book_equal(h, btc)
            st = await h.stats()
            assert st["snapshots"] == 1 and st["incrementals"] >= 20
            assert (st["rejects_received"], st["rejects_sent"], st["md_rejects"]) == (0, 0, 0), st
            assert not any(line.startswith(("EV ERROR", "EV UNEXPECTED")) for line in h.lines)
            assert metric(http, "fix_rejects_total") == 0
        finally:
            await h.close()
            await gw.stop()
