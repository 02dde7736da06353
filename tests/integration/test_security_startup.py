"""Each gateway process, started on a reachable address with development defaults, refuses to
start and says which settings to set and how to override (issue 12); with the override it starts."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.helpers import self_signed_cert, wait_http

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


def _wait_https(url: str, cafile: Path, proc: subprocess.Popen[bytes], within: float = 90) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"exited with {proc.returncode}: {proc.communicate()[0][-3000:]!r}"
            )
        try:
            ctx = ssl.create_default_context(cafile=str(cafile))
            return httpx.get(url, verify=ctx, timeout=2).status_code
        except httpx.HTTPError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {within}s")


def test_production_settings_start_on_a_reachable_address(
    env_for: dict[str, str], tmp_path: Path
) -> None:
    """The settings the manifests use (TLS, JWT, no anonymous l3; sessions with passwords) pass
    the check: the WebSocket and FIX gateways start on 0.0.0.0 and answer over TLS."""
    cert, key = self_signed_cert(tmp_path)
    sessions = tmp_path / "sessions.toml"
    sessions.write_text('[[session]]\nsender_comp_id = "FUND7"\npassword = "s3cret-fix"\n')
    env = {k: v for k, v in env_for.items() if k != "MD_ALLOW_INSECURE"}
    ws_port, fix_port, fix_http = free_port(), free_port(), free_port()
    env.update(
        MD_WS_HOST="0.0.0.0",
        MD_WS_PORT=str(ws_port),
        MD_WS_PROCESSES="1",
        MD_WS_JWT_HS256_SECRET="x" * 40,
        MD_WS_ANON_CHANNELS="ticker,trades",
        MD_WS_TLS_CERT=str(cert),
        MD_WS_TLS_KEY=str(key),
        MD_FIX_HOST="0.0.0.0",
        MD_FIX_PORT=str(fix_port),
        MD_FIX_HTTP_PORT=str(fix_http),
        MD_FIX_STORE_DIR=str(tmp_path / "store"),
        MD_FIX_SESSIONS_FILE=str(sessions),
        MD_FIX_TLS_CERT=str(cert),
        MD_FIX_TLS_KEY=str(key),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", m],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for m in ("gateway_ws", "fix_gateway")
    ]
    try:
        assert _wait_https(f"https://localhost:{ws_port}/health/live", cert, procs[0]) == 200
        ctx = ssl.create_default_context(cafile=str(cert))
        deadline = 60
        for _ in range(deadline * 5):
            try:
                with (
                    socket.create_connection(("127.0.0.1", fix_port), timeout=2) as raw,
                    ctx.wrap_socket(raw, server_hostname="localhost") as s,
                ):
                    assert s.version() in ("TLSv1.2", "TLSv1.3")
                    break
            except (ConnectionRefusedError, ssl.SSLError):
                assert procs[1].poll() is None, procs[1].communicate()[0][-3000:]
                time.sleep(0.2)
        else:
            raise AssertionError("FIX TLS listener did not answer")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
