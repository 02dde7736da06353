"""Test and benchmark helpers: contract-conforming platform messages on the test's topics (playing
the aggregator, docs/internals.md), a ``python -m fix_gateway`` child process, /metrics reads."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from core.book import L2Book
from core.channels import data_message
from core.codec import now_ns
from core.kafka import make_producer
from core.settings import Settings
from core.symbols import default_info
from core.topics import Topics

ROOT = Path(__file__).resolve().parents[1]


class Platform:
    """Plays the aggregator for one symbol: l2 snapshot/updates, trades and status on the test's topics."""

    def __init__(self, symbol: str, epoch: int = 1) -> None:
        self.symbol = symbol
        self.epoch = epoch
        self.book = L2Book()
        self.seq = 0
        self.trade_seq = 0

    def _msg(
        self, type_: str, channel: str, seq: int, data: object, checksum: int | None = None
    ) -> bytes:
        ns = now_ns()
        return orjson.dumps(
            data_message(
                type=type_,
                channel=channel,
                symbol=self.symbol,
                seq=seq,
                epoch=self.epoch,
                publish_ns=ns,
                event_ns=ns,
                data=data,
                checksum=checksum,
            )
        )

    def snapshot(self) -> bytes:
        return self._msg("l2_snapshot", "l2", self.seq, self.book.snapshot(), self.book.checksum())

    def update(self, changes: list[list[str]]) -> bytes:
        self.book.apply(changes)
        self.seq += 1
        return self._msg("l2_update", "l2", self.seq, {"changes": changes}, self.book.checksum())

    def trade(self, price: str, size: str) -> bytes:
        self.trade_seq += 1
        return self._msg(
            "trade",
            "trades",
            self.trade_seq,
            {
                "trade_id": str(self.trade_seq),
                "price": price,
                "size": size,
                "side": "buy",
                "time": "2026-11-24T06:51:12.123456Z",
            },
        )

    def status(self) -> bytes:
        return self._msg("status", "status", 1, default_info(self.symbol).to_dict())


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.t = Topics.from_settings(settings)
        self.prod = make_producer(settings)

    async def __aenter__(self) -> Publisher:
        await self.prod.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.prod.stop()

    async def seed(self, p: Platform, levels: int = 5) -> None:
        """Status, an initial book and its snapshot record."""
        await self.prod.send_and_wait(self.t.stream("status"), p.status(), key=p.symbol.encode())
        await self.prod.send_and_wait(
            self.t.snapshot, p.status(), key=f"status:{p.symbol}".encode()
        )
        for i in range(levels):
            await self.l2(p, [["buy", f"{100 - i}.00", "1"], ["sell", f"{101 + i}.00", "2"]])
        await self.prod.send_and_wait(self.t.snapshot, p.snapshot(), key=f"l2:{p.symbol}".encode())

    async def l2(self, p: Platform, changes: list[list[str]]) -> None:
        await self.prod.send_and_wait(self.t.stream("l2"), p.update(changes), key=p.symbol.encode())

    async def trade(self, p: Platform, price: str, size: str) -> None:
        await self.prod.send_and_wait(
            self.t.stream("trades"), p.trade(price, size), key=p.symbol.encode()
        )


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
