"""The live market page's protocol code and its mount in gateway_rest, without a browser.

- ``web/test/protocol.test.mjs`` under ``node --test``, fed with book checksum vectors computed
  here by ``core/checksum.py``, so the page's CRC32 checksum and the server's agree exactly;
- ``gateway_rest.web_page.mount_web``: ``/`` serves the bundle, ``/web-config.json`` says where the
  WebSocket gateway is, a missing build answers 503 (not 500) and leaves the API alone.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from core.checksum import book_checksum, checksum_string
from core.settings import Settings
from gateway_rest.web_page import mount_web
from tests.integration.test_web_page import WEB, build_web, ensure_node_modules


def _vectors() -> list[dict]:
    rng = random.Random(7)
    out = []
    for n in (0, 1, 3, 10, 25):
        mid = rng.uniform(0.01, 90000)
        asks = [
            (f"{mid + i * 0.5 + 0.5:.2f}", f"{rng.uniform(0.00000001, 50):.8f}") for i in range(n)
        ]
        bids = [
            (f"{mid - i * 0.5:.2f}", f"{rng.uniform(0.001, 5):.4f}".rstrip("0")) for i in range(n)
        ]
        out.append(
            {
                "asks": asks,
                "bids": bids,
                "string": checksum_string(asks, bids),
                "checksum": book_checksum(asks, bids),
            }
        )
    ex_a, ex_b = (
        [("0.05005", "0.00000500")],
        [("0.05004", "1.2")],
    )  # the core/checksum.py docstring example
    out.append(
        {
            "asks": ex_a,
            "bids": ex_b,
            "string": checksum_string(ex_a, ex_b),
            "checksum": book_checksum(ex_a, ex_b),
        }
    )
    return out


def _run_protocol_tests(vectors: list[dict]) -> subprocess.CompletedProcess[str]:
    """The page's own node tests (web/test/protocol.test.mjs), fed ``vectors`` to check against."""
    ensure_node_modules()
    env = dict(os.environ, CHECKSUM_VECTORS=json.dumps(vectors))
    return subprocess.run(
        ["node", "--test", "test/protocol.test.mjs"],
        cwd=WEB,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_page_protocol_code_agrees_with_core_checksum() -> None:
    r = _run_protocol_tests(_vectors())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout


def test_protocol_tests_fail_on_a_wrong_vector() -> None:
    bad = _vectors()
    bad[1]["checksum"] ^= 1
    r = _run_protocol_tests(bad)
    assert r.returncode != 0


@pytest.fixture(scope="module")
def dist() -> Path:
    return build_web()


def test_mount_web_serves_the_page_and_its_config(
    dist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MD_WEB_DIR", raising=False)
    app = FastAPI()

    @app.get("/api/v1/market/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    s = Settings.from_env({"MD_WS_PORT": "9123", "MD_BOOK_CHECKSUM_DEPTH": "25"})
    mount_web(app, s)
    c = TestClient(app)
    r = c.get("/")
    assert r.status_code == 200 and "Live market" in r.text and 'src="web/app.js"' in r.text
    js = c.get("/web/app.js")
    assert js.status_code == 200 and len(js.content) > 50_000  # lightweight-charts is bundled in
    assert "unpkg" not in js.text and "cdn.jsdelivr" not in js.text
    assert c.get("/web/app.css").status_code == 200
    assert c.get("/web/../../pyproject.toml").status_code == 404
    assert c.get("/web-config.json").json() == {
        "ws_url": None,
        "ws_port": 9123,
        "ws_path": "/ws",
        "checksum_depth": 25,
    }
    assert c.get("/api/v1/market/ping").json() == {"ok": True}

    s2 = Settings.from_env({"MD_WEB_WS_URL": "wss://md.example/ws"})
    app2 = FastAPI()
    mount_web(app2, s2)
    assert TestClient(app2).get("/web-config.json").json()["ws_url"] == "wss://md.example/ws"


def test_mount_web_without_a_build_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MD_WEB_DIR", str(tmp_path / "nothing"))
    app = FastAPI()
    mount_web(app, Settings.from_env({}))
    c = TestClient(app)
    r = c.get("/")
    assert r.status_code == 503 and "npm --prefix web ci" in r.text
    assert c.get("/web/app.js").status_code == 503
