"""The supervisor of `make up` / `make run` (deploy/local/stack.sh): the real script on a tiny
services file (MD_SERVICES_CONF) in its own MD_VAR_DIR, so it runs beside a live stack.

A killed service comes back (new pid in its pid file, /health answers, a supervisor log line
with the exit status and the delay), the children it left behind are stopped, and
`stack.sh stop-services` stops the supervisor before the service so that nothing is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "local" / "stack.sh"

# serves /health and starts one child that outlives it when it is killed (like gateway_ws workers)
SERVICE = """
import http.server, subprocess, sys
from pathlib import Path
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
Path(sys.argv[2]).write_text(str(child.pid))
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan that exited stays one until init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(cond: Callable[[], object], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {within}s: {what}")


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def tiny_stack(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, int]]:
    port = free_port()
    (tmp_path / "svc.py").write_text(SERVICE)
    conf = tmp_path / "services.conf"
    conf.write_text(
        "# name | health | command\n"
        f"web | http://127.0.0.1:{port}/health | python {tmp_path}/svc.py {port} {tmp_path}/child\n"
    )
    var = tmp_path / "var"
    env = dict(os.environ, MD_VAR_DIR=str(var), MD_SERVICES_CONF=str(conf))
    try:
        yield env, var, port
    finally:  # whatever happened above, leave nothing running
        subprocess.run([STACK, "stop-services"], env=env, capture_output=True, timeout=60)


def stack(env: dict[str, str], cmd: str) -> None:
    r = subprocess.run([STACK, cmd], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"stack.sh {cmd}: {r.stderr}"


def test_killed_service_is_restarted_and_stop_leaves_nothing(
    tiny_stack: tuple[dict[str, str], Path, int],
) -> None:
    env, var, port = tiny_stack
    pidfile = var / "run/services/web.pid"
    sup_pidfile = var / "run/supervisor/web.pid"
    sup_log = var / "log/services/supervisor.log"
    stack(env, "up-services")  # returns once /health answers
    assert healthy(port)
    pid, sup = int(pidfile.read_text()), int(sup_pidfile.read_text())
    child = int((var.parent / "child").read_text())
    assert running(pid) and running(sup) and running(child)

    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: int(pidfile.read_text()) != pid, "a new pid in web.pid")
    new = int(pidfile.read_text())
    wait_for(lambda: healthy(port), "/health of the restarted service")
    assert running(new) and not running(pid)
    assert not running(child), "the child the killed service left behind is still running"
    lines = [orjson.loads(x) for x in sup_log.read_text().splitlines() if x.startswith("{")]
    restart = next(x for x in lines if x["msg"] == "exited, restarting")
    assert restart["service"] == "web" and restart["status"] == 128 + signal.SIGKILL
    assert restart["signal"] == "KILL" and restart["restarts"] == 1
    assert 0.1 <= restart["delay_s"] <= 0.2  # first restart: 0.2 s with jitter
    assert any(x["msg"] == "started" and x["pid"] == new for x in lines)
    service_log = (var / "log/services/web.log").read_text()
    assert '"msg":"exited, restarting"' in service_log  # in the service's own log as well
    assert (var / "run/supervisor/web.restarts").read_text().strip() == "1"

    new_child = int((var.parent / "child").read_text())
    stack(env, "stop-services")
    wait_for(
        lambda: not any(running(p) for p in (sup, new, new_child)),
        "supervisor, service and its child stopped",
        within=5,
    )
    assert not pidfile.exists() and not sup_pidfile.exists()
    time.sleep(1)  # long enough for a restart, had the supervisor fought the stop
    assert not healthy(port)
    assert int((var.parent / "child").read_text()) == new_child, "started again after the stop"
    assert sup_log.read_text().splitlines()[-1].find('"msg":"supervision stopped"') > 0
