"""A FIX gateway with MD_SIGNING_KEY signs its market data (W and X) in the standard trailer
(93/89); a FIX client still accepts the messages, and ``python -m core.verify --fix`` checks a
captured session against the public key (issue 12, docs/security.md "Message signing")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import Settings
from core.signing import write_keypair
from fix_gateway.client import FixClient
from fix_gateway.testing import gateway
from testkit.fake_aggregator import Platform, Publisher
from tests.conftest import free_port
from tests.integration.test_fix_gateway import md_request

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _verify(capture: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.verify", "--fix", str(capture), "--public-key", str(pub)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_market_data_is_signed_end_to_end(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    key, pub = write_keypair(str(tmp_path / "keys"))
    btc = Platform("BTC-USD")
    async with Publisher(settings) as publisher:
        await publisher.seed(btc)
        env = dict(env_for, MD_SIGNING_KEY=str(key))
        async with gateway(env, free_port(), free_port(), tmp_path / "store") as gw:
            c = await FixClient.connect("127.0.0.1", gw.fix_port)
            c.keep_raw = True
            await c.logged_on()
            c.send("V", md_request("md1", ["BTC-USD"], ["0", "1"]))
            types = [(await c.next_app()).msg_type]
            await publisher.l2(btc, [["buy", "99.00", "2"]])
            types.append((await c.next_app()).msg_type)  # the session core accepted them
            await c.logout()
    assert types == ["W", "X"]
    capture = tmp_path / "session.fix"
    capture.write_bytes(b"".join(c.raw_in))
    ok = _verify(capture, pub)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verified 2" in ok.stdout and "control" in ok.stdout  # Logon etc. are not signed
    data = capture.read_bytes()
    w = data.index(b"\x0135=W\x01")
    px = data.index(b"\x01270=", w) + 5  # the first price of the snapshot, one digit changed
    forged = data[:px] + (b"8" if data[px : px + 1] != b"8" else b"7") + data[px + 1 :]
    capture.write_bytes(forged)
    bad = _verify(capture, pub)
    assert bad.returncode == 1 and "bad signature" in bad.stdout, bad.stdout
