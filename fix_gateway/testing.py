"""Test and benchmark helpers: a ``python -m fix_gateway`` child process, /metrics reads (the fake
aggregator the FIX tests publish with is testkit/fake_aggregator.py's ``Platform``/``Publisher``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def http_get(port: int, path: str) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def metric(port: int, name: str) -> float:
    _, text = http_get(port, "/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class GatewayProcess:
    def __init__(self, env: dict[str, str], fix_port: int, http_port: int, store_dir: Path) -> None:
        self.env = {
            **env,
            "MD_FIX_PORT": str(fix_port),
            "MD_FIX_HTTP_PORT": str(http_port),
            "MD_FIX_STORE_DIR": str(store_dir),
            "MD_LOG_LEVEL": "INFO",
        }
        self.fix_port, self.http_port = fix_port, http_port
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = store_dir.parent / f"fix_gateway_{fix_port}.log"

    async def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: ASYNC230, SIM115 - a log file for the child
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fix_gateway", cwd=ROOT, env=self.env, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"fix_gateway exited: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError, IndexError, ValueError):
                if http_get(self.http_port, "/health")[0] == 200:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"fix_gateway not healthy: {self.log_path.read_text()[-3000:]}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@contextlib.asynccontextmanager
async def gateway(
    env: dict[str, str], fix_port: int, http_port: int, store_dir: Path
) -> AsyncIterator[GatewayProcess]:
    g = GatewayProcess(env, fix_port, http_port, store_dir)
    await g.start()
    try:
        yield g
    finally:
        await g.stop()
