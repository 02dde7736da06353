"""An independent FIX engine against ``python -m fix_gateway``: QuickFIX/J (tests/fixclient).

One JVM run does every scenario in order, so the suite pays one JVM start-up: logon, security
list, snapshot + incremental subscription with the book rebuilt by QuickFIX/J equal to the
platform's book and to the REST book (storage cache writer -> Redis -> gateway_rest, in-process)
at the same seq, a forced sequence gap answered by a correct resend, a heartbeat
timeout (the gateway frozen with SIGSTOP: QuickFIX/J's own timer detects it), a gateway restart
with sequence numbers continued from the file store, logout -- and not a single reject either
way, with QuickFIX/J validating every message against the FIX 4.4 dictionary.

The harness is built once by Maven into tests/fixclient/target/ (git-ignored) when missing or
older than its sources.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from core.settings import Settings
from fix_gateway.testing import GatewayProcess, metric
from testkit.fake_aggregator import Platform, Publisher
from tests.conftest import free_port


@pytest.fixture
async def rest(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The platform's REST view of the same topics: cache writer + gateway_rest, in-process."""
    from gateway_rest.app import create_app
    from storage.cache_writer import CacheWriter

    w = CacheWriter(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    await asyncio.wait_for(w.ready.wait(), 20)
    app = create_app(settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rest"
    ) as c:
        yield c
    stop.set()
    await asyncio.wait_for(task, 10)


pytestmark = pytest.mark.integration
FIXCLIENT = Path(__file__).resolve().parents[1] / "fixclient"
JAR = FIXCLIENT / "target" / "fixclient-1.0.jar"


@pytest.fixture(scope="session")
def fixclient_jar() -> Path:
    sources = [FIXCLIENT / "pom.xml", *FIXCLIENT.glob("src/**/*.java")]
    if JAR.exists() and all(JAR.stat().st_mtime >= s.stat().st_mtime for s in sources):
        return JAR
    mvn = shutil.which("mvn")
    if mvn is None or shutil.which("java") is None or shutil.which("javac") is None:
        pytest.fail(
            "the QuickFIX/J harness needs a Java 17 JDK (javac) and Maven (Debian: openjdk-17-jdk-headless maven)"
        )
    r = subprocess.run(
        [mvn, "-B", "-q", "package", "-DskipTests"],
        cwd=FIXCLIENT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        pytest.fail(f"mvn package failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return JAR


class Harness:
    """The JVM, its stdin commands and its stdout lines (``OK ...`` answers, ``EV ...`` events)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self._cursor: dict[str, int] = {}

    @classmethod
    async def start(cls, jar: Path, port: int, work: Path, heartbeat: int) -> Harness:
        cp = f"{jar}{os.pathsep}{jar.parent / 'lib' / '*'}"
        proc = await asyncio.create_subprocess_exec(
            "java",
            "-Xms64m",
            "-Xmx256m",
            "-XX:TieredStopAtLevel=1",
            "-cp",
            cp,
            "fixclient.Harness",
            "127.0.0.1",
            str(port),
            str(work),
            str(heartbeat),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip())
            self._new.set()

    async def wait_line(self, prefix: str, limit: float = 20.0, key: str | None = None) -> str:
        """The next line starting with ``prefix`` after the last one returned for ``key``."""
        key = key or prefix
        async with asyncio.timeout(limit):
            while True:
                for i in range(self._cursor.get(key, 0), len(self.lines)):
                    if self.lines[i].startswith(prefix):
                        self._cursor[key] = i + 1
                        return self.lines[i]
                if self.proc.returncode is not None and self._reader.done():
                    raise AssertionError(f"harness exited: {self.lines[-30:]}")
                self._new.clear()
                await self._new.wait()

    async def cmd(self, line: str, answer: str, limit: float = 20.0) -> str:
        assert self.proc.stdin is not None
        self._cursor["OK "] = len(self.lines)
        self.proc.stdin.write((line + "\n").encode())
        await self.proc.stdin.drain()
        return await self.wait_line("OK " + answer, limit, key="OK ")

    async def book(self, symbol: str) -> tuple[int, dict[str, list[list[str]]]]:
        line = await self.cmd(f"book {symbol}", "BOOK")
        _, _, sym, seq, body = line.split(" ", 4)
        assert sym == symbol
        return int(seq), orjson.loads(body)

    async def stats(self) -> dict[str, int]:
        line = await self.cmd("stats", "STATS")
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}

    async def close(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._reader


def plain(book: dict[str, list[list[str]]]) -> dict[str, list[tuple[str, str]]]:
    """Compare numerically-equal prices/sizes as published strings after BigDecimal round trip."""
    from decimal import Decimal

    return {
        k: [(str(Decimal(p).normalize()), str(Decimal(q).normalize())) for p, q in v]
        for k, v in book.items()
    }


async def book_equal(h: Harness, p: Platform, limit: float = 15.0) -> None:
    async with asyncio.timeout(limit):
        while True:
            seq, book = await h.book(p.symbol)
            if seq == p.seq:
                assert plain(book) == plain(p.book.snapshot()), (p.symbol, seq)
                return
            await asyncio.sleep(0.1)


async def rest_book_equal(
    h: Harness, rest: httpx.AsyncClient, p: Platform, limit: float = 15.0
) -> None:
    """QuickFIX/J's book equals what REST serves for the same seq."""
    async with asyncio.timeout(limit):
        while True:
            r = await rest.get(f"/api/v1/market/{p.symbol}/orderbook", params={"depth": 100})
            if r.status_code == 200 and r.json()["seq"] == p.seq:
                break
            await asyncio.sleep(0.1)
    body = r.json()
    seq, book = await h.book(p.symbol)
    assert seq == body["seq"]
    assert plain(book) == plain({"bids": body["bids"], "asks": body["asks"]})


async def churn(pub: Publisher, rng: random.Random, platforms: list[Platform], n: int) -> None:
    for i in range(n):
        p = platforms[i % len(platforms)]
        side = rng.choice(["buy", "sell"])
        px = f"{(94 if side == 'buy' else 101) + rng.randint(0, 9)}.{rng.choice(['00', '50'])}"
        await pub.l2(p, [[side, px, rng.choice(["0", "0.25", "1.5", "4"])]])
        if i % 8 == 0:
            await pub.trade(p, "100.00", "0.1")


@pytest.mark.timeout(420)  # a first run builds the harness with Maven (resolves QuickFIX/J once)
async def test_quickfixj_full_session(
    settings: Settings,
    env_for: dict[str, str],
    tmp_path: Path,
    fixclient_jar: Path,
    rest: httpx.AsyncClient,
) -> None:
    btc, eth = Platform("BTC-USD"), Platform("ETH-USD")
    rng = random.Random(42)
    fix_port, http = free_port(), free_port()
    store = tmp_path / "gateway_store"
    async with Publisher(settings) as pub:
        await pub.seed(btc)
        await pub.seed(eth)
        gw = GatewayProcess(env_for, fix_port, http, store)
        await gw.start()
        h = await Harness.start(fixclient_jar, fix_port, tmp_path / "qfj", heartbeat=2)
        try:
            # logon
            logon = await h.wait_line("EV LOGON", 30)
            assert logon == "EV LOGON sender=2 target=2", logon
            # security list
            assert await h.cmd("seclist", "SECLIST") == "OK SECLIST BTC-USD,ETH-USD"
            # snapshot + incremental, book rebuilt by QuickFIX/J equals the platform's at the same seq
            await h.cmd("subscribe md1 BTC-USD,ETH-USD 0 0,1,2", "SUBSCRIBED")
            await book_equal(h, btc)
            await churn(pub, rng, [btc, eth], 40)
            await book_equal(h, btc)
            await book_equal(h, eth)
            await rest_book_equal(h, rest, btc)
            await rest_book_equal(h, rest, eth)
            st = await h.stats()
            assert st["snapshots"] == 2 and st["incrementals"] >= 40 and st["trades"] >= 5

            # forced sequence gap: QuickFIX/J asks for a resend, the gateway resends with PossDupFlag=Y
            await h.cmd("gap 6", "GAP")
            await churn(pub, rng, [btc], 3)
            async with asyncio.timeout(15):
                while (st := await h.stats())["possdup_received"] == 0 or st[  # noqa: ASYNC110
                    "resend_requests_sent"
                ] == 0:
                    await asyncio.sleep(0.1)
            await book_equal(h, btc)
            assert metric(http, "fix_resent_total") >= 1

            # heartbeat timeout: freeze the gateway; QuickFIX/J's heartbeat timer must disconnect
            assert gw.proc is not None
            os.kill(gw.proc.pid, signal.SIGSTOP)
            try:
                await h.wait_line("EV LOGOUT", 30)
            finally:
                os.kill(gw.proc.pid, signal.SIGCONT)
            await h.wait_line("EV LOGON", 30)  # QuickFIX/J reconnects, sequence numbers continue
            await h.cmd("subscribe md2 BTC-USD 0 0,1", "SUBSCRIBED")
            await churn(pub, rng, [btc], 5)
            await book_equal(h, btc)

            # gateway restart: the file store continues both sequence numbers; the new process
            # stamps SendingTime(52) in microseconds (MD_FIX_TIMESTAMP_PRECISION=micros), which
            # QuickFIX/J, validating against its FIX 4.4 dictionary, must take without a reject
            before = await h.cmd("seqs", "SEQS")
            await gw.stop()
            assert (await h.wait_line("EV PEER_LOGOUT_TEXT", 15)).endswith("gateway shutting down")
            await h.wait_line("EV LOGOUT", 15)
            micros_env = {**env_for, "MD_FIX_TIMESTAMP_PRECISION": "micros"}
            gw = GatewayProcess(micros_env, fix_port, free_port(), store)
            http = gw.http_port
            await gw.start()
            again = await h.wait_line("EV LOGON", 30)
            b_target = int(re.search(r"target=(\d+)", before).group(1))  # type: ignore[union-attr]
            a_target = int(re.search(r"target=(\d+)", again).group(1))  # type: ignore[union-attr]
            assert a_target > b_target > 10, (before, again)  # continued, not reset to 1
            await h.cmd("subscribe md3 BTC-USD,ETH-USD 0 0,1", "SUBSCRIBED")
            await churn(pub, rng, [btc, eth], 10)
            await book_equal(h, btc)
            await book_equal(h, eth)
            # what it was sent after the restart carried 6 fraction digits (the store's records)
            sent = (store / "MDGW-CLIENT1" / "messages.log").read_bytes()
            assert re.search(rb"\n\d+ X \d{8}-\d\d:\d\d:\d\d\.\d{6} ", sent), "no µs stamp"
            assert re.search(rb"\n\d+ X \d{8}-\d\d:\d\d:\d\d\.\d{3} ", sent)  # before it

            # logout, and not a single reject either way
            logouts = sum(line == "EV LOGOUT" for line in h.lines)
            await h.cmd("logout", "LOGOUT_SENT")
            async with asyncio.timeout(15):
                while sum(line == "EV LOGOUT" for line in h.lines) == logouts:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            st = await h.stats()
            assert (
                st["rejects_received"],
                st["rejects_sent"],
                st["business_rejects"],
                st["md_rejects"],
            ) == (0, 0, 0, 0), st
            assert not any(
                line.startswith(("EV RPTSEQ_GAP", "EV ERROR", "EV UNEXPECTED")) for line in h.lines
            ), h.lines
            assert metric(http, "fix_rejects_total") == 0
        finally:
            print("harness output:\n" + "\n".join(h.lines))  # shown by pytest on failure
            await h.close()
            await gw.stop()
