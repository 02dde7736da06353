"""The live market page in a real browser, against a real stack this test starts itself.

simulator -> Kafka -> aggregator -> Kafka -> storage (Redis, PostgreSQL) -> gateway_rest (serves
the page at /) and gateway_ws (the page's WebSocket), all as separate processes on free ports with
this test's own topic prefix, Redis prefix and database, beside any running stack.

Headless Debian Chromium (``/usr/bin/chromium``; installed with apt-get when missing) is driven
by Playwright (npm ``playwright-core``) through ``web/test/e2e.mjs``: the book ladder renders,
updates arrive with matching checksums, and after the test restarts gateway_ws the page
reconnects on its own and receives updates again; the symbol picker switches the page to another
symbol. Screenshots go to ``test-artifacts/``.
``npm ci`` and the esbuild bundle are run here, so a fresh clone needs only Node.js and npm.

gateway_rest is started exactly as in production (``python -m gateway_rest``): the page must be
served by the app's own wiring (``mount_web`` in gateway_rest/app.py), so losing that line fails
this test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.helpers import wait_http

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))

pytestmark = pytest.mark.timeout(240)


# ---------------------------------------------------------------- build tooling (also used by test_web_protocol)
def run(cmd: list[str], timeout: float, cwd: Path = WEB) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (
        f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    )


def ensure_node_modules() -> None:
    """``npm ci`` from the committed package-lock.json when node_modules is missing or stale."""
    if not shutil.which("npm") or not shutil.which("node"):
        pytest.fail(
            "Node.js and npm are required for the live market page (Debian: apt-get install nodejs npm)"
        )
    stamp = WEB / "node_modules" / ".package-lock.json"
    lock = WEB / "package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        run(["npm", "ci", "--no-audit", "--no-fund"], timeout=600)


def build_web() -> Path:
    ensure_node_modules()
    run(["npm", "run", "build"], timeout=120)
    dist = WEB / "dist"
    assert (dist / "index.html").is_file() and (dist / "web" / "app.js").is_file()
    return dist


def ensure_chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        r = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert r.returncode == 0, f"apt-get install chromium failed:\n{r.stderr[-2000:]}"
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: apt-get install chromium (or set CHROMIUM=/path/to/chromium)"
        )
    return CHROMIUM


# ---------------------------------------------------------------- the stack
class Stack:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, *args],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )

    def stop(self, name: str, timeout: float = 20) -> None:
        p = self.procs.pop(name)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)  # gateway_ws may supervise workers: the whole group
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@pytest.fixture
def stack(
    env_for: dict[str, str], pg_dsn: str, tmp_path: Path
) -> Iterator[tuple[Stack, dict[str, int]]]:
    ports = {k: free_port() for k in ("rest", "ws", "agg", "storage", "sim")}
    env = dict(env_for)
    env.update(
        MD_PG_DSN=pg_dsn,
        MD_REST_PORT=str(ports["rest"]),
        MD_WS_PORT=str(ports["ws"]),
        MD_WS_PROCESSES="1",
        MD_AGGREGATOR_HTTP_PORT=str(ports["agg"]),
        MD_STORAGE_HTTP_PORT=str(ports["storage"]),
        MD_SIMULATOR_HTTP_PORT=str(ports["sim"]),
        MD_SIM_RATE="20",
        MD_WS_HEARTBEAT_S="2",  # the page checks seq and book checksum against each heartbeat
        MD_LOG_LEVEL="WARNING",
    )
    subprocess.run(
        [sys.executable, "-m", "storage", "migrate"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    st = Stack(env, tmp_path)
    try:
        st.start("simulator", ["-m", "aggregator.sources.simulator"])
        st.start("aggregator", ["-m", "aggregator"])
        st.start("storage", ["-m", "storage", "run"])
        st.start("gateway_ws", ["-m", "gateway_ws"])
        st.start("gateway_rest", ["-m", "gateway_rest"])
        for key in ("sim", "agg", "storage", "ws", "rest"):
            wait_http(f"http://127.0.0.1:{ports[key]}/health", st.procs, tmp_path, interval=0.25)
        yield st, ports
    finally:
        st.stop_all()


# ---------------------------------------------------------------- the test
def test_live_page_renders_updates_and_reconnects(
    stack: tuple[Stack, dict[str, int]], tmp_path: Path
) -> None:
    st, ports = stack
    build_web()
    chromium = ensure_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    base = f"http://127.0.0.1:{ports['rest']}"

    # served by gateway_rest: the page, its bundle, and where to find the WebSocket gateway
    index = httpx.get(base + "/", timeout=5)
    assert index.status_code == 200 and "Live market" in index.text
    assert httpx.get(base + "/web/app.js", timeout=5).status_code == 200
    assert httpx.get(base + "/web-config.json", timeout=5).json()["ws_port"] == ports["ws"]

    e2e = subprocess.Popen(
        ["node", str(WEB / "test" / "e2e.mjs"), f"{base}/?symbol=BTC-USD", str(ARTIFACTS)],
        cwd=WEB,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, CHROMIUM=str(chromium), E2E_STEP_MS="30000"),
    )
    assert e2e.stdin and e2e.stdout
    steps: list[dict] = []
    try:
        for line in e2e.stdout:
            step = json.loads(line)
            steps.append(step)
            print(line.rstrip())
            if step["step"] == "restart":
                st.stop("gateway_ws")  # SIGTERM: the page sees its socket close
                st.start("gateway_ws", ["-m", "gateway_ws"])
                wait_http(
                    f"http://127.0.0.1:{ports['ws']}/health", st.procs, tmp_path, interval=0.25
                )
                e2e.stdin.write("go\n")
                e2e.stdin.flush()
            if step["step"] in ("done", "fail"):
                break
        rc = e2e.wait(timeout=60)
    finally:
        if e2e.poll() is None:
            e2e.kill()
    err = e2e.stderr.read() if e2e.stderr else ""
    by = {s["step"]: s for s in steps}
    assert "fail" not in by, f"{by['fail']}\n{err[-2000:]}"
    assert rc == 0 and "done" in by, f"e2e exited {rc}: {steps}\n{err[-2000:]}"

    live = by["live"]
    assert live["bids"] > 0 and live["asks"] > 0  # the ladder rendered
    assert live["l2Updates"] >= 3 and live["checksumOk"] > 0 and live["checksumBad"] == 0
    assert live["wsUrl"] == f"ws://127.0.0.1:{ports['ws']}/ws"  # found through /web-config.json
    back = by["reconnected"]
    assert back["reconnects"] >= 1 and back["conn"] == "live"
    assert back["l2Updates"] >= live["l2Updates"] + 3  # updates arrive again after the restart
    assert back["checksumBad"] == 0
    assert back["heartbeats"] > 0 and back["feed"] == "ok"  # heartbeats checked, none disagreed
    switched = by["switched"]  # the symbol picker lists the REST catalogue and switches every panel
    assert len(switched["options"]) >= 2 and switched["symbol"] != "BTC-USD"
    assert f"symbol={switched['symbol']}" in switched["url"] and switched["bids"] > 0
    assert (ARTIFACTS / "web-live-market.png").stat().st_size > 10_000
