"""Each gateway process, started on a reachable address with development defaults, refuses to
start and says which settings to set and how to override (issue 12); with the override it starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.helpers import wait_http

ROOT = Path(__file__).resolve().parents[2]

GATEWAYS = [
    ("gateway_ws", {"MD_WS_HOST": "0.0.0.0", "MD_WS_PROCESSES": "1"}, "MD_WS_TLS_CERT"),
    ("gateway_rest", {"MD_REST_HOST": "0.0.0.0"}, "MD_REST_API_KEYS"),
    ("fix_gateway", {"MD_FIX_HOST": "0.0.0.0"}, "MD_FIX_SESSIONS_FILE"),
]


def _run(module: str, extra: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
    env.update(
        MD_WS_PORT=str(free_port()),
        MD_REST_PORT=str(free_port()),
        MD_FIX_PORT=str(free_port()),
        MD_FIX_HTTP_PORT=str(free_port()),
        **extra,
    )
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("module,extra,setting", GATEWAYS, ids=[g[0] for g in GATEWAYS])
def test_gateway_refuses_development_defaults_off_loopback(
    module: str, extra: dict[str, str], setting: str
) -> None:
    r = _run(module, extra, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "MD_ALLOW_INSECURE" in out and setting in out, out


def test_override_lets_a_gateway_start_on_a_reachable_address() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
    port = free_port()
    env.update(MD_REST_HOST="0.0.0.0", MD_REST_PORT=str(port), MD_ALLOW_INSECURE="1")
    p = subprocess.Popen(
        [sys.executable, "-m", "gateway_rest"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", {"gateway_rest": p}, within=60)
    finally:
        p.terminate()
        out = p.communicate(timeout=20)[0].decode()
    assert "development defaults" in out  # started, but said so in its log
