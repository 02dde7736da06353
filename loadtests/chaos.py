"""Chaos run on the running stack (``make chaos``): kill or stop one piece at a time while a
verifying WebSocket client streams, and prove what the client saw (issue 11).

    .venv/bin/python -m loadtests.chaos [--only agg-leader,ws-worker] [--no-doc]

Runs against a stack that is already up (``make up``; loopback only) and at the simulator's own
rate (``MD_SIM_RATE``, default 200 order events/s per symbol). It never stops the stack; every
process it kills is started again by the supervisor of ``deploy/local/stack.sh`` (services), by
``python -m gateway_ws`` (its workers), or by this script with ``deploy/local/*.sh start``
(Redis, Kafka, PostgreSQL). Scenarios, one after another, each bounded in time:

1. ``agg-leader``: ``kill -9`` of the aggregator that leads (``/health`` on 8011 / 8021,
   ``checks.consumer.detail.role``); a new leader must take over (by design the hot standby;
   which one did is noted) and the pair must be whole again.
2. ``agg-standby``: ``kill -9`` of the standby; the leader keeps leading.
3. ``ws-worker``: ``kill -9`` of the gateway_ws worker serving the verifying client (found by
   the connection's local port: ``/proc/net/tcp`` inode -> ``/proc/<worker>/fd``), twice (the
   second time usually the other or the freshly restarted worker); the client reconnects with
   backoff and resumes every subscription with ``since_seq`` + ``epoch``.
4. ``redis-restart``: ``kill -9`` of Redis, its dump/AOF files removed, started again empty by
   ``deploy/local/redis.sh start``; REST ``/orderbook`` must answer 200 again and the storage
   cache writer must have rebuilt (``/health`` on 8012, ``rebuilds`` counter).
5. ``kafka-restart``: ``deploy/local/kafka.sh stop`` (graceful) then ``start``; every stream
   must flow again.
6. ``pg-outage``: ``deploy/local/postgres.sh stop`` (``pg_ctl -m fast``), 30 s down, ``start``;
   REST hot reads (orderbook, ticker) polled throughout must answer 200.

The verifying client (:class:`VerifyingClient`, the reference client of docs/websocket.md)
subscribes to ``l2``, ``trades`` and ``ticker`` of BTC-USD and ETH-USD. Per (channel, symbol) it
checks ``seq`` +1 within an ``epoch`` and, for l2, the book checksum after every update
(``core.book.L2Book`` exactly as ``aggregator.testing.StreamCheck``; snapshots set the base).
It reconnects with exponential backoff and full jitter (``core.backoff.Backoff``) and resumes
each subscription with ``since_seq``. Per scenario: gaps (a data message or a snapshot whose seq
skips past last + 1 in the same epoch: messages the client never received), duplicates (seq <=
last in the same epoch), epoch changes, resyncs (snapshots flagged ``resync``), checksum errors,
and the inter-arrival of data messages (all subscriptions together): p50 and max, the longest
pause in delivery. After every scenario the trades of ``md.trades`` published in its window
(read_uncommitted, deduplicated by (symbol, seq, epoch)) are looked up in PostgreSQL's ``trades``
table: rows lost (missing) and doubled (more than one row).

Prints a table and writes ``docs/reliability.md``; the exit status is 1 when any scenario fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from core.backoff import Backoff
from core.book import L2Book
from core.settings import Settings
from core.topics import Topics
from fix_gateway.client import FixClient
from fix_gateway.codec import Message
from fix_gateway.store import MemoryStore
from loadtests.bench_e2e import CONTROL  # the gateway's own message types
from loadtests.faultproxy import FaultProxy
from testkit.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
VAR = Path(os.environ.get("MD_VAR_DIR", ROOT / "var"))
LOCAL = ROOT / "deploy" / "local"
SYMBOLS = ("BTC-USD", "ETH-USD")
CHANNELS = ("l2", "trades", "ticker")
PAUSE_LIMIT_S = 1.0
# pause <= 1 s is part of passing
PAUSE_BOUND = (
    "agg-leader",
    "agg-leader-sigterm",
    "agg-standby",
    "ws-worker",
    "broker-kill",
    "ws-kafka-cut",
)
NO_EPOCH_CHANGE = ("agg-leader", "agg-leader-sigterm", "agg-standby", "broker-kill")
NO_RESYNC = (
    "agg-leader",
    "agg-leader-sigterm",
    "agg-standby",
    "ws-worker",
    "broker-kill",
    "ws-kafka-cut",
    "ws-kafka-cut-nofeed",
)
KAFKA_CUT_S = 10.0
# MD_KAFKA_BROKERS=3 make up: a local cluster (deploy/local/kafka.sh), brokers 1..N
BROKERS = int(os.environ.get("MD_KAFKA_BROKERS", "1") or "1")
CLUSTER_ONLY = ("broker-kill",)
PG_DOWN_S = 30.0
TOTAL_BUDGET_S = 900.0  # the whole run stays under 15 minutes (10 scenarios)

Key = tuple[str, str]


def now_s() -> float:
    return time.monotonic()


# ------------------------------------------------------------------------------ per scenario


@dataclass
class Window:
    """What one scenario saw; the client counts into the current window."""

    name: str
    action: str = ""
    t0: float = field(default_factory=now_s)
    wall0: float = field(default_factory=time.time)
    t1: float | None = None
    wall1: float | None = None
    messages: int = 0
    gaps: int = 0
    missed: int = 0  # seqs skipped by the gaps
    duplicates: int = 0
    epoch_changes: int = 0
    resyncs: int = 0
    resync_reasons: Counter[str] = field(default_factory=Counter)
    checksum_errors: int = 0
    protocol_errors: list[str] = field(default_factory=list)
    reconnects: int = 0
    resumes: int = 0  # subscriptions re-sent with since_seq after a reconnect
    inter: array[float] = field(default_factory=lambda: array("d"))
    sim_events_per_s: float | None = None
    trades_expected: int | None = None
    rows_lost: int | None = None
    rows_doubled: int | None = None
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    log_lines: dict[str, list[str]] = field(default_factory=dict)
    log_counts: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # observations that do not fail the scenario
    went_back: int = 0  # snapshots older than the client's state (it re-receives what it had)
    extra: dict[str, Any] = field(default_factory=dict)
    longest: tuple[float, float] = (0.0, 0.0)  # the longest pause and when it ended (+s)

    def event(self, what: str) -> None:
        t = now_s() - self.t0
        self.timeline.append((t, what))
        print(f"  [{self.name} +{t:6.2f}s] {what}", flush=True)

    def note(self, what: str) -> None:
        self.notes.append(what)
        self.event(f"note: {what}")

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((what, ok, detail))
        self.event(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}")
        return ok

    def close(self) -> None:
        if self.t1 is None:
            self.t1, self.wall1 = now_s(), time.time()

    @property
    def duration(self) -> float:
        return (self.t1 or now_s()) - self.t0

    def pause(self) -> tuple[float | None, float | None]:
        if not self.inter:
            return None, None
        return statistics.median(self.inter), max(self.inter)

    def failures(self) -> list[str]:
        out = []
        if self.messages == 0:
            out.append("no data message received")
        if self.gaps:
            out.append(f"{self.gaps} gaps ({self.missed} messages skipped)")
        if self.duplicates:
            out.append(f"{self.duplicates} duplicates")
        if self.checksum_errors:
            out.append(f"{self.checksum_errors} checksum errors")
        if self.protocol_errors:
            out.append(f"{len(self.protocol_errors)} protocol errors: {self.protocol_errors[:3]}")
        if self.name in NO_EPOCH_CHANGE and self.epoch_changes:
            out.append(f"{self.epoch_changes} epoch changes")
        if self.name in NO_RESYNC and self.resyncs:
            out.append(f"{self.resyncs} resyncs {dict(self.resync_reasons)}")
        _, mx = self.pause()
        if self.name in PAUSE_BOUND and mx is not None and mx > PAUSE_LIMIT_S:
            gap, end = self.longest
            at = f" (from +{end - gap:.2f} s to +{end:.2f} s)" if gap == mx else ""
            out.append(f"pause {mx:.3f} s > {PAUSE_LIMIT_S} s{at}")
        if self.rows_lost:
            out.append(f"{self.rows_lost} trade rows lost")
        if self.rows_doubled:
            out.append(f"{self.rows_doubled} trade rows doubled")
        out += [
            f"{what}: {detail}" if detail else what for what, ok, detail in self.checks if not ok
        ]
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()


# ------------------------------------------------------------------------------ the client


@dataclass
class KeyState:
    seq: int | None = None
    epoch: int | None = None
    book: L2Book | None = None
    book_ok: bool = False
    ack_id: int | None = None  # data is ignored until this subscribe is acknowledged
    expect_base: bool = True  # the next data message is the subscription's snapshot
    resubscribing: bool = False  # after a gap/checksum error: waiting for what we asked for
    last_at: float = 0.0


class VerifyingClient:
    """The reference client of docs/websocket.md, counting everything into ``window``.

    Per (channel, symbol): a snapshot (the first message after a plain subscribe, or any
    message flagged ``resync``) sets the base; every other message must be ``seq == last + 1``
    in the same ``epoch``; l2 updates are applied to an :class:`L2Book` and its checksum over
    the top ``depth`` levels must equal the message's. On a gap or a checksum mismatch it
    re-subscribes (``since_seq`` for a gap, a fresh snapshot for a bad book). When the
    connection drops it reconnects with exponential backoff and full jitter and re-subscribes
    every target with ``since_seq`` and ``epoch``.
    """

    def __init__(
        self,
        url: str,
        symbols: Iterable[str] = SYMBOLS,
        channels: Iterable[str] = CHANNELS,
        *,
        depth: int = 10,
    ) -> None:
        self.url = url
        self.keys: list[Key] = [(ch, s) for s in symbols for ch in channels]
        self.state: dict[Key, KeyState] = {k: KeyState() for k in self.keys}
        self.depth = depth
        self.window = Window("warm-up")
        self.ws: ClientConnection | None = None
        self.local_port: int | None = None
        self.connections = 0
        self.connected = asyncio.Event()
        self.last_arrival: float | None = None
        self.disconnected_at: float | None = None
        self._ids = 0
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    # -- lifecycle
    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run(), name="verifying-client")

    async def close(self) -> None:
        self._stop.set()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 3)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    def synced(self) -> bool:
        """Every subscription has a base and is not waiting for an answer."""
        return self.ws is not None and all(
            st.seq is not None and st.ack_id is None and not st.resubscribing
            for st in self.state.values()
        )

    def live_since(self, t: float) -> bool:
        """Every subscription received a data message after monotonic time ``t``."""
        return all(st.last_at > t for st in self.state.values())

    async def run(self) -> None:
        backoff = Backoff(initial=0.1, maximum=5.0)
        while not self._stop.is_set():
            try:
                async with connect(
                    self.url, open_timeout=3, max_size=None, compression=None, ping_interval=5
                ) as ws:
                    self.ws = ws
                    self.local_port = ws.transport.get_extra_info("sockname")[1]
                    self.connections += 1
                    if self.connections > 1:
                        self.window.reconnects += 1
                        down = (
                            f" after {now_s() - self.disconnected_at:.3f} s"
                            if self.disconnected_at
                            else ""
                        )
                        self.window.event(
                            f"client reconnected{down} (local port {self.local_port})"
                        )
                    backoff.reset()
                    self.connected.set()
                    for k in self.keys:
                        await self._subscribe(k, resume=True)
                    async for raw in ws:
                        self.on_raw(raw if isinstance(raw, bytes) else raw.encode())
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                if self._stop.is_set():
                    break
                if self.ws is not None:
                    self.window.event(f"client connection lost: {type(exc).__name__}")
                    self.disconnected_at = now_s()
            finally:
                if self.ws is not None and not self._stop.is_set() and self.disconnected_at is None:
                    self.disconnected_at = now_s()
                self.ws = None
                self.local_port = None
                self.connected.clear()
            if self._stop.is_set():
                break
            await asyncio.sleep(backoff.next())

    async def _subscribe(self, k: Key, *, resume: bool) -> None:
        ws = self.ws
        if ws is None:
            return
        st = self.state[k]
        self._ids += 1
        msg: dict[str, Any] = {
            "type": "subscribe",
            "channel": k[0],
            "symbol": k[1],
            "id": self._ids,
        }
        if resume and st.seq is not None and st.epoch is not None:
            msg["since_seq"] = st.seq
            msg["epoch"] = st.epoch
            st.expect_base = False
            if self.connections > 1:
                self.window.resumes += 1
        else:
            st.expect_base = True
        st.ack_id = self._ids
        with contextlib.suppress(ConnectionClosed):
            await ws.send(orjson.dumps(msg).decode())

    def _resubscribe(self, k: Key, *, resume: bool) -> None:
        self.state[k].resubscribing = True
        asyncio.get_running_loop().create_task(self._subscribe(k, resume=resume))

    # -- messages
    def on_raw(self, raw: bytes) -> None:
        m = orjson.loads(raw)
        typ = m.get("type")
        if typ in CONTROL:
            self._control(typ, m)
            return
        ch, sym, seq, epoch = m.get("channel"), m.get("symbol"), m.get("seq"), m.get("epoch")
        k = (ch, sym)
        st = self.state.get(k)
        if st is None or not isinstance(seq, int):
            self.window.protocol_errors.append(f"unexpected message {str(m)[:120]}")
            return
        t = now_s()
        w = self.window
        w.messages += 1
        if self.last_arrival is not None:
            gap = t - self.last_arrival
            w.inter.append(gap)
            if gap > w.longest[0]:
                w.longest = (gap, t - w.t0)
        self.last_arrival = t
        if self.disconnected_at is not None:
            w.event(f"first data after the disconnect: {t - self.disconnected_at:.3f} s")
            self.disconnected_at = None
        if st.ack_id is not None:
            return  # in flight from before our (re)subscribe: not counted
        st.last_at = t
        flagged = m.get("resync") is True
        if st.expect_base or flagged:
            self._base(k, st, m, flagged)
            return
        if st.epoch != epoch:
            w.epoch_changes += 1
            w.event(f"{ch}:{sym} epoch {st.epoch} -> {epoch} without a snapshot")
            w.protocol_errors.append(f"{ch}:{sym}: new epoch {epoch} on an update")
            st.seq, st.epoch, st.book_ok = seq, epoch, False
            self._resubscribe(k, resume=False)
            return
        assert st.seq is not None
        if seq <= st.seq:
            if not st.resubscribing:
                w.duplicates += 1
            return
        if seq != st.seq + 1:
            if not st.resubscribing:
                w.gaps += 1
                w.missed += seq - st.seq - 1
                w.event(f"{ch}:{sym} gap: seq {seq} after {st.seq}; resuming with since_seq")
                self._resubscribe(k, resume=True)
            return
        st.resubscribing = False
        st.seq = seq
        if ch == "l2":
            self._l2_update(k, st, m)

    def _control(self, typ: str, m: dict[str, Any]) -> None:
        if typ == "subscribed":
            rid = m.get("id")
            for st in self.state.values():
                if st.ack_id is not None and st.ack_id == rid:
                    st.ack_id = None
        elif typ == "resync":
            self.window.resync_reasons[str(m.get("reason"))] += 1
            self.window.event(
                f"resync {m.get('channel')}:{m.get('symbol')} reason {m.get('reason')} "
                f"seq {m.get('seq')} epoch {m.get('epoch')}"
            )
        elif typ == "error":
            self.window.protocol_errors.append(f"error {m.get('code')}: {m.get('message')}")

    def _base(self, k: Key, st: KeyState, m: dict[str, Any], flagged: bool) -> None:
        w = self.window
        seq, epoch = m["seq"], m["epoch"]
        if flagged:
            w.resyncs += 1
        if st.seq is not None and st.epoch is not None:
            if epoch != st.epoch:
                w.epoch_changes += 1
                w.event(f"{k[0]}:{k[1]} epoch {st.epoch} -> {epoch} (snapshot)")
            elif seq > st.seq + 1:
                # the client never got the messages in between (a snapshot only bridged them)
                w.gaps += 1
                w.missed += seq - st.seq - 1
                w.event(f"{k[0]}:{k[1]} snapshot at seq {seq} after {st.seq}: gap")
            elif seq < st.seq and k[0] != "trades":
                # a trades snapshot is the last N trades, older by design; a book or ticker
                # snapshot older than what the client holds takes it back in time
                w.went_back += 1
                w.event(f"{k[0]}:{k[1]} snapshot at seq {seq} is older than the client's {st.seq}")
        st.seq, st.epoch = seq, epoch
        st.expect_base = False
        st.resubscribing = False
        if k[0] == "l2":
            book = st.book or L2Book()
            st.book = book
            d = m["data"]
            book.load(d["bids"], d["asks"])
            st.book_ok = True
            if book.checksum(self.depth) != m.get("checksum"):
                w.checksum_errors += 1
                w.event(f"l2:{k[1]} snapshot seq {seq}: checksum mismatch")
                st.book_ok = False

    def _l2_update(self, k: Key, st: KeyState, m: dict[str, Any]) -> None:
        if st.book is None or not st.book_ok:
            return
        st.book.apply(m["data"]["changes"])
        if st.book.checksum(self.depth) != m["checksum"]:
            self.window.checksum_errors += 1
            self.window.event(f"l2:{k[1]} seq {m['seq']}: checksum mismatch; new snapshot")
            st.book_ok = False
            self._resubscribe(k, resume=False)


# ------------------------------------------------------------------------------ processes


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def service_pid(name: str) -> int | None:
    return read_pid(VAR / "run" / "services" / f"{name}.pid")


def running(pid: int | None) -> bool:
    """Alive and not a zombie."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(d.name))
    return sorted(out)


def _hex_port(addr: str) -> tuple[str, int]:
    ip, port = addr.split(":")
    return ip, int(port, 16)


def socket_inode(local_port: int, server_port: int) -> int | None:
    """Inode of the server side of the loopback TCP connection from ``local_port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            _, lport = _hex_port(f[1])
            _, rport = _hex_port(f[2])
            if lport == server_port and rport == local_port and f[3] == "01":
                return int(f[9])
    return None


def pid_holding(inode: int, pids: Iterable[int]) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


def worker_serving(local_port: int | None, server_port: int, workers: list[int]) -> int | None:
    """The gateway_ws worker holding the connection whose client side is ``local_port``."""
    if local_port is None:
        return None
    inode = socket_inode(local_port, server_port)
    return pid_holding(inode, workers) if inode else None


def restart_counts() -> dict[str, int]:
    """Restarts so far per supervised service (``var/run/supervisor/<name>.restarts``)."""
    out = {}
    for p in (VAR / "run" / "supervisor").glob("*.restarts"):
        with contextlib.suppress(OSError, ValueError):
            out[p.stem] = int(p.read_text().strip() or 0)
    return out


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


async def wait_until(
    cond: Callable[[], Any], within: float, interval: float = 0.05
) -> tuple[bool, float]:
    """Poll ``cond`` (plain or async) until true; (reached, seconds it took)."""
    t0 = now_s()
    while True:
        got = cond()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return True, now_s() - t0
        if now_s() - t0 > within:
            return False, now_s() - t0
        await asyncio.sleep(interval)


async def sh(script: str, arg: str, limit_s: float = 120.0) -> tuple[int, float, str]:
    """``deploy/local/<script> <arg>``: (exit status, seconds, output tail)."""
    t0 = now_s()

    def _run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(LOCAL / script), arg],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=limit_s,
        )

    try:
        r = await asyncio.to_thread(_run)
    except subprocess.TimeoutExpired:
        return 124, now_s() - t0, f"timed out after {limit_s}s"
    return r.returncode, now_s() - t0, (r.stdout + r.stderr).strip()[-400:]


# ------------------------------------------------------------------------------ HTTP


class Http:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.c = httpx.AsyncClient(timeout=2.0)
        ex = settings.extra
        self.agg = {
            "aggregator": int(ex.get("MD_AGGREGATOR_HTTP_PORT", settings.aggregator_http_port)),
            "aggregator_b": int(ex.get("MD_AGGREGATOR_B_HTTP_PORT", "8021")),
        }
        self.rest = f"http://127.0.0.1:{settings.rest_port}"
        self.storage = f"http://127.0.0.1:{settings.storage_http_port}"
        self.ws_health = f"http://127.0.0.1:{settings.ws_port}/health"
        self.sim = f"http://127.0.0.1:{settings.simulator_http_port}"

    async def close(self) -> None:
        await self.c.aclose()

    async def json(self, url: str) -> tuple[int, Any]:
        try:
            r = await self.c.get(url)
        except httpx.HTTPError:
            return 0, None
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, None

    async def status(self, url: str) -> int:
        try:
            return (await self.c.get(url)).status_code
        except httpx.HTTPError:
            return 0

    async def roles(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for name, port in self.agg.items():
            code, body = await self.json(f"http://127.0.0.1:{port}/health")
            try:
                out[name] = body["checks"]["consumer"]["detail"]["role"]
            except (TypeError, KeyError):
                out[name] = None
        return out

    async def pair_ok(self) -> bool:
        return sorted(map(str, (await self.roles()).values())) == ["leader", "standby"]

    async def storage_health(self) -> dict[str, Any]:
        _, body = await self.json(f"{self.storage}/health")
        return body or {}

    async def metric(self, url: str, name: str, label: str | None = None) -> float | None:
        try:
            text = (await self.c.get(url)).text
        except httpx.HTTPError:
            return None
        total, found = 0.0, False
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, val = line.rpartition(" ")
            if label is not None and label not in head:
                continue
            if head.split("{")[0] != name:
                continue
            with contextlib.suppress(ValueError):
                total += float(val)
                found = True
        return total if found else None

    async def sim_events(self) -> float | None:
        return await self.metric(f"{self.sim}/metrics", "md_source_events_published_total")

    async def cache_rebuilds(self) -> float | None:
        return await self.metric(
            f"{self.storage}/metrics", "md_storage_cache_events_total", 'counter="rebuilds"'
        )


# ------------------------------------------------------------------------------ Kafka vs DB


async def kafka_trades(
    settings: Settings, t0_ms: int, t1_ms: int
) -> tuple[set[tuple[str, int, int]], int | None, int | None]:
    """Trades of ``<prefix>.trades`` with a record timestamp in [t0, t1], by (symbol, seq,
    epoch); plus the smallest and largest trade time (µs) for the database lookup."""
    from aiokafka import TopicPartition

    from core.codec import ns_from_iso
    from core.kafka import make_consumer
    from core.topics import Topics

    topic = Topics.from_settings(settings).stream("trades")
    c = make_consumer(settings, group_id=None, request_timeout_ms=10_000)
    await c.start()
    keys: set[tuple[str, int, int]] = set()
    lo: int | None = None
    hi: int | None = None
    try:
        cluster = await c._client.fetch_all_metadata()  # noqa: SLF001
        tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        c.assign(tps)
        starts = await c.offsets_for_times({tp: t0_ms for tp in tps})
        ends = await c.end_offsets(tps)
        for tp in tps:
            o = starts.get(tp)
            c.seek(tp, ends[tp] if o is None else o.offset)
        pending = {tp for tp in tps if ends[tp] > 0 and await c.position(tp) < ends[tp]}
        deadline = now_s() + 30
        while pending and now_s() < deadline:
            batch = await c.getmany(*pending, timeout_ms=500, max_records=20_000)
            for tp, recs in batch.items():
                for r in recs:
                    if r.offset >= ends[tp] or r.value is None or not t0_ms <= r.timestamp <= t1_ms:
                        continue
                    m = orjson.loads(r.value)
                    if m.get("type") != "trade":
                        continue
                    keys.add((m["symbol"], m["seq"], m["epoch"]))
                    us = ns_from_iso(m["data"]["time"]) // 1000
                    lo = us if lo is None else min(lo, us)
                    hi = us if hi is None else max(hi, us)
            for tp in list(pending):
                if await c.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await c.stop()
    return keys, lo, hi


async def db_trade_counts(
    dsn: str, symbols: Iterable[str], lo_us: int, hi_us: int
) -> Counter[tuple[str, int, int]]:
    margin = 300_000_000  # 5 min around the trade times: partition pruning, never a miss
    ts = dt.datetime.fromtimestamp((lo_us - margin) / 1e6, dt.UTC)
    te = dt.datetime.fromtimestamp((hi_us + margin) / 1e6, dt.UTC)
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT symbol, seq, epoch, count(*) AS n FROM trades "
            "WHERE symbol = ANY($1::text[]) AND ts BETWEEN $2 AND $3 GROUP BY 1, 2, 3",
            list(symbols),
            ts,
            te,
            timeout=20,
        )
    finally:
        await conn.close()
    return Counter({(r["symbol"], r["seq"], r["epoch"]): r["n"] for r in rows})


async def compare_trades(
    settings: Settings, w: Window, t0_ms: int, t1_ms: int, within: float = 45.0
) -> None:
    """Every trade published in [t0, t1] is in PostgreSQL exactly once (waits for the writer)."""
    keys, lo, hi = await kafka_trades(settings, t0_ms, t1_ms)
    w.trades_expected = len(keys)
    if not keys or lo is None or hi is None:
        w.rows_lost, w.rows_doubled = 0, 0
        w.check("trades published in the window", False, "none read from Kafka")
        return
    syms = sorted({k[0] for k in keys})
    deadline = now_s() + within
    counts: Counter[tuple[str, int, int]] = Counter()
    while True:
        try:
            counts = await db_trade_counts(settings.pg_dsn, syms, lo, hi)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # the database may still be starting
            w.event(f"trades query failed: {exc!r}")
        missing = [k for k in keys if counts.get(k, 0) == 0]
        if not missing or now_s() > deadline:
            break
        await asyncio.sleep(1.0)
    w.rows_lost = len(missing)
    w.rows_doubled = sum(n - 1 for k, n in counts.items() if k in keys and n > 1)
    w.event(
        f"trades Kafka vs PostgreSQL: {len(keys)} published, {w.rows_lost} lost, "
        f"{w.rows_doubled} doubled" + (f" (first missing {sorted(missing)[:3]})" if missing else "")
    )


# ------------------------------------------------------------------------------ logs


class LogTail:
    """Warning and error lines the services log during a scenario (for the report)."""

    def __init__(self) -> None:
        self.dir = VAR / "log" / "services"
        self.pos: dict[Path, int] = {}

    def mark(self) -> None:
        self.pos = {p: p.stat().st_size for p in self.dir.glob("*.log")}

    def collect(self, w: Window) -> None:
        for p in sorted(self.dir.glob("*.log")):
            start = self.pos.get(p, 0)
            try:
                with p.open("rb") as f:
                    f.seek(start)
                    data = f.read(8 << 20)
            except OSError:
                continue
            for line in data.splitlines():
                try:
                    d = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(d, dict) or d.get("level") not in (
                    "warning",
                    "error",
                    "critical",
                ):
                    continue
                svc = p.stem
                w.log_counts[svc] += 1
                msg = f"{d.get('level')}: {d.get('msg')}"
                extra = {
                    k: v
                    for k, v in d.items()
                    if k not in ("ts", "level", "service", "logger", "msg", "exc_info")
                }
                if extra:
                    msg += " " + orjson.dumps(extra).decode()[:160]
                lst = w.log_lines.setdefault(svc, [])
                if len(lst) < 4 and not any(x.split(" {")[0] == msg.split(" {")[0] for x in lst):
                    lst.append(msg)


# ------------------------------------------------------------------------------ scenarios


@dataclass
class Ctx:
    settings: Settings
    http: Http
    client: VerifyingClient
    args: argparse.Namespace
    # a server this run stopped and has not started again yet (``deploy/local/<script>``):
    # started after the scenario whatever happened in it, so one failure never leaves it down
    to_start: str | None = None


async def baseline(ctx: Ctx, w: Window, seconds: float = 2.0) -> None:
    await asyncio.sleep(seconds)


async def recovered_streams(ctx: Ctx, w: Window, since: float, within: float, what: str) -> bool:
    ok, took = await wait_until(
        lambda: ctx.client.synced() and ctx.client.live_since(since), within
    )
    return w.check(what, ok, f"{took:.2f} s after the fault" if ok else f"not within {within}s")


async def scenario_agg(ctx: Ctx, w: Window, kill_role: str, sig: int = signal.SIGKILL) -> None:
    h = ctx.http
    ok, _ = await wait_until(h.pair_ok, 30, 0.2)
    roles = await h.roles()
    if not w.check("one leader and one standby before", ok, str(roles)):
        return
    victim = next(n for n, r in roles.items() if r == kill_role)
    other = next(n for n in roles if n != victim)
    pid = service_pid(victim)
    if pid is None or not running(pid):
        w.check(f"pid of {victim}", False, "no running pid in var/run/services")
        return
    await baseline(ctx, w)
    how = "kill -9" if sig == signal.SIGKILL else f"kill -{signal.Signals(sig).name}"
    w.action = f"{how} {victim} ({kill_role}, pid {pid})"
    if sig == signal.SIGKILL:
        kill9(pid)
    else:
        os.kill(pid, sig)  # a clean stop: the leader resigns in its last heartbeat
    t_kill = now_s()
    w.event(f"killed {victim} pid {pid} ({kill_role})")
    if kill_role == "leader":
        new_leader: list[str] = []

        async def someone_leads() -> bool:
            roles = await h.roles()
            for name, role in roles.items():
                # the killed instance's port answers again once the supervisor restarted it
                if role == "leader" and (name == other or service_pid(victim) != pid):
                    new_leader.append(name)
                    return True
            return False

        ok, took = await wait_until(someone_leads, 5, 0.05)
        w.check("a new leader", ok, f"{took:.2f} s" if ok else str(await h.roles()))
        if ok and new_leader[0] != other:
            w.note(
                f"the restarted {victim} took over, not the hot standby {other} "
                "(docs/operations.md says the standby takes over and the killed one rejoins as "
                "standby): aggregator/service.py _start leads at once when the last heartbeat is "
                "older than MD_AGG_LEASE_MS, and a supervised restart reads it ~0.5 s after the kill"
            )
        elif ok:
            w.event(f"the hot standby {other} took over")
    else:
        await asyncio.sleep(1.0)
        w.check(f"{other} still leads", (await h.roles()).get(other) == "leader")
    ok, took = await wait_until(
        lambda: running(service_pid(victim)) and service_pid(victim) != pid, 20
    )
    w.check(f"supervisor restarted {victim}", ok, f"new pid {service_pid(victim)} in {took:.2f} s")
    ok, took = await wait_until(h.pair_ok, 25, 0.2)
    w.check(
        "pair whole again (one leader, one standby)",
        ok,
        f"{now_s() - t_kill:.1f} s after the kill: {await h.roles()}",
    )
    await recovered_streams(ctx, w, t_kill, 10, "every subscription flowing")
    await asyncio.sleep(3.0)  # a tail of normal streaming after the pair is whole again


async def _role_is(h: Http, name: str, role: str) -> bool:
    return (await h.roles()).get(name) == role


async def scenario_ws_worker(ctx: Ctx, w: Window) -> None:
    port = ctx.settings.ws_port
    parent = service_pid("gateway_ws")
    if parent is None or not running(parent):
        w.check("gateway_ws running", False)
        return
    n = len(children(parent))
    w.check("gateway_ws workers", n >= 1, f"{n} workers of pid {parent}")
    lag: dict[str, Any] = {}
    stop = asyncio.Event()
    sampler = asyncio.create_task(redis_window_lag(ctx, stop, lag))
    try:
        await _ws_rounds(ctx, w, parent, port, n)
    finally:
        stop.set()
        await sampler
        if lag:
            w.extra["redis window l2:BTC-USD"] = (
                f"at most {lag.get('max_msgs_behind', 0)} messages behind the client, newest "
                f"entry at most {lag.get('max_age_s', 0.0):.2f} s old"
            )
            w.event(f"Redis resume window: {w.extra['redis window l2:BTC-USD']}")


async def _ws_rounds(ctx: Ctx, w: Window, parent: int, port: int, n: int) -> None:
    await baseline(ctx, w)
    kills: list[int] = []
    for round_ in (1, 2):
        ok, _ = await wait_until(ctx.client.synced, 10)
        if not w.check(f"round {round_}: client connected and in sync", ok):
            return
        workers = children(parent)
        victim = worker_serving(ctx.client.local_port, port, workers)
        if victim is None:  # cannot tell: kill every worker, one after the other
            w.event(f"round {round_}: the worker serving the client is unknown, killing all")
            targets = workers
        else:
            w.event(
                f"round {round_}: client port {ctx.client.local_port} is served by worker {victim}"
            )
            targets = [victim]
        for victim in targets:
            conns = ctx.client.connections

            def reconnected(c: int = conns) -> bool:
                return ctx.client.connections > c

            kill9(victim)
            t_kill = now_s()
            kills.append(victim)
            w.event(f"killed gateway_ws worker {victim}")
            ok, took = await wait_until(reconnected, 10)
            w.check(f"client reconnected (kill of {victim})", ok, f"{took:.2f} s")
            await recovered_streams(
                ctx, w, t_kill, 10, f"every subscription resumed (kill of {victim})"
            )
        ok, took = await wait_until(
            lambda: len([p for p in children(parent) if p not in kills]) >= n, 20
        )
        w.check(f"round {round_}: gateway_ws restarted the worker", ok, f"{took:.2f} s")
        ok, _ = await wait_until(lambda: _healthy(ctx.http.ws_health, ctx.http), 15, 0.2)
        w.check(f"round {round_}: gateway_ws /health 200", ok)
        await asyncio.sleep(1.5)
    w.action = f"kill -9 of the client's gateway_ws worker, twice ({', '.join(map(str, kills))})"
    await asyncio.sleep(1.5)


async def _healthy(url: str, h: Http) -> bool:
    return await h.status(url) == 200


async def poll_rest(
    ctx: Ctx, stop: asyncio.Event, tally: Counter[str], odd: list[tuple[float, str]] | None = None
) -> None:
    """REST hot reads every 0.25 s; ``tally`` counts ``"<kind> <status>"``, ``odd`` keeps when
    (monotonic) and what answered other than 200."""
    h = ctx.http
    urls = [
        (s, what, f"{h.rest}/api/v1/market/{s}/{what}")
        for s in SYMBOLS
        for what in ("orderbook?depth=10", "ticker")
    ]
    while not stop.is_set():
        for sym, what, u in urls:
            code = await h.status(u)
            kind = what.split("?")[0]
            tally[f"{kind} {code}"] += 1
            if code != 200 and odd is not None:
                odd.append((now_s(), f"{kind} {sym} {code}"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


def _spans(odd: list[tuple[float, str]], t_ref: float) -> str:
    """Non-200 answers grouped by kind: count and first/last time relative to ``t_ref``."""
    by: dict[str, list[float]] = {}
    for t, what in odd:
        by.setdefault(what, []).append(t - t_ref)
    return ", ".join(
        f"{what} x{len(ts)} ({min(ts):+.2f}..{max(ts):+.2f} s)" for what, ts in sorted(by.items())
    )


async def redis_window_lag(ctx: Ctx, stop: asyncio.Event, out: dict[str, Any]) -> None:
    """Samples, every 50 ms, how far the Redis resume window of l2:BTC-USD (written by the
    storage cache writer) is behind what the client already holds, and how old its newest
    entry is: a resume can only be served from what the window holds."""
    import redis.asyncio as aioredis

    from core.codec import ns_from_iso

    r = aioredis.Redis.from_url(ctx.settings.redis_url, socket_timeout=1)
    key = f"{ctx.settings.redis_prefix}:hist:l2:BTC-USD"
    st = ctx.client.state[("l2", "BTC-USD")]
    try:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                got: Any = await r.xrevrange(key, count=1)
                if got:
                    eid, fields = got[0]
                    seq = int(bytes(eid).split(b"-")[0])
                    m = orjson.loads(fields[b"m"])
                    age = time.time() - ns_from_iso(m["timestamp"]) / 1e9
                    if st.seq is not None:
                        out["max_msgs_behind"] = max(out.get("max_msgs_behind", 0), st.seq - seq)
                    out["max_age_s"] = max(out.get("max_age_s", 0.0), age)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        await r.aclose()


async def scenario_redis(ctx: Ctx, w: Window) -> None:
    h = ctx.http
    pidf = VAR / "run" / "redis.pid"
    pid = read_pid(pidf)
    if not running(pid):
        w.check("redis running", False, f"pid file {pidf}: {pid}")
        return
    assert pid is not None
    rebuilds0 = await h.cache_rebuilds()
    await baseline(ctx, w)
    w.action = f"kill -9 redis (pid {pid}), start it empty"
    ctx.to_start = "redis.sh"
    kill9(pid)
    t_kill = now_s()
    w.event(f"killed redis pid {pid}")
    await wait_until(lambda: not running(pid), 5)
    data = VAR / "redis"
    removed = []
    for name in ("dump.rdb", "appendonly.aof", "appendonlydir"):
        p = data / name
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
            removed.append(name)
        elif p.exists():
            p.unlink()
            removed.append(name)
    w.event(f"persistence files removed: {removed or 'none present (redis.sh runs without)'}")
    tally: Counter[str] = Counter()
    odd: list[tuple[float, str]] = []
    stop = asyncio.Event()
    poller = asyncio.create_task(poll_rest(ctx, stop, tally, odd))
    await asyncio.sleep(1.0)  # a moment without Redis
    rc, took, out = await sh("redis.sh", "start", 30)
    t_restart = now_s()
    ctx.to_start = None if rc == 0 else "redis.sh"
    w.check("redis.sh start", rc == 0, f"{took:.2f} s" + ("" if rc == 0 else f": {out}"))
    keys = await _redis_dbsize(ctx.settings)
    w.event(f"keys in Redis right after the start: {keys}")
    url = f"{h.rest}/api/v1/market/BTC-USD/orderbook?depth=10"
    t_start = now_s()
    ok, took = await wait_until(lambda: _status_is(h, url, 200), 20, 0.1)
    w.check("REST orderbook 200 again", ok, f"{took:.2f} s after the restart")

    async def rebuilt() -> bool:
        body = await h.storage_health()
        cw = body.get("checks", {}).get("cache_writer", {})
        n = await h.cache_rebuilds()
        return bool(cw.get("ok")) and n is not None and (rebuilds0 is None or n > rebuilds0)

    ok, took = await wait_until(rebuilt, 30, 0.2)
    w.check(
        "storage cache writer rebuilt",
        ok,
        f"/health ok, rebuilds {rebuilds0} -> {await h.cache_rebuilds()}, {took:.2f} s",
    )
    keys = await _redis_dbsize(ctx.settings)
    w.event(f"keys in Redis {now_s() - t_start:.1f} s after the start: {keys}")
    await recovered_streams(ctx, w, t_kill, 10, "every subscription flowing")
    await asyncio.sleep(2.0)
    stop.set()
    await poller
    w.event(f"REST polls during the scenario: {dict(tally)}")
    if odd:
        w.extra["REST answers other than 200 (time from the Redis restart)"] = _spans(
            odd, t_restart
        )
        w.event(f"REST non-200: {_spans(odd, t_restart)}")
        late = [what for t, what in odd if t > t_restart and what.endswith(" 404")]
        if late:
            w.note(
                f"REST answered 404 (unknown symbol) for a known symbol {len(late)} times after "
                "Redis came back empty, before the cache writer rebuilt it: 503 would be the "
                "truthful answer"
            )


async def _status_is(h: Http, url: str, code: int) -> bool:
    return await h.status(url) == code


async def _redis_dbsize(settings: Settings) -> int | None:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2)
    try:
        return int(await r.dbsize())
    except (RedisError, OSError):
        return None
    finally:
        await r.aclose()


async def scenario_kafka(ctx: Ctx, w: Window) -> None:
    await baseline(ctx, w)
    w.action = "kafka.sh stop (graceful) + start"
    w.event("stopping Kafka")
    ctx.to_start = "kafka.sh"
    rc, took, out = await sh("kafka.sh", "stop", 60)
    t_down = now_s()
    w.check("kafka.sh stop", rc == 0, f"{took:.2f} s" + ("" if rc == 0 else f": {out}"))
    rc, took, out = await sh("kafka.sh", "start", 100)
    ctx.to_start = None if rc == 0 else "kafka.sh"
    t_up = now_s()
    w.check("kafka.sh start", rc == 0, f"{took:.2f} s" + ("" if rc == 0 else f": {out}"))
    w.event(f"Kafka was down {t_up - t_down:.1f} s")
    await recovered_streams(ctx, w, t_up, 60, "every subscription flowing after the restart")
    ok, took = await wait_until(ctx.http.pair_ok, 60, 0.2)
    w.check("aggregators: one leader, one standby", ok, str(await ctx.http.roles()))
    ok, took = await wait_until(lambda: _healthy(ctx.http.ws_health, ctx.http), 30, 0.2)
    w.check("gateway_ws /health 200", ok, f"{took:.2f} s")
    ok, took = await wait_until(lambda: _healthy(f"{ctx.http.storage}/health", ctx.http), 30, 0.2)
    w.check("storage /health 200", ok, f"{took:.2f} s")
    await asyncio.sleep(3.0)


async def _in_partition(settings: Settings, symbol: str) -> tuple[str, int, dict[str, Any]]:
    """md.in's partition that carries ``symbol`` (the sources key records by symbol) and its
    leader / ISR, as the cluster describes it now."""
    topic = Topics.from_settings(settings).input
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        (desc,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    parts = {p["partition"]: p for p in desc["partitions"]}
    ids = sorted(parts)
    pick = DefaultPartitioner()(symbol.encode(), ids, ids)
    return topic, pick, parts[pick]


async def scenario_broker_kill(ctx: Ctx, w: Window) -> None:
    """``kill -9`` of the broker that leads md.in's partition of BTC-USD: the input of every
    stream the client reads stops until the cluster moves that leadership (issue 11, item 3)."""
    s = ctx.settings
    await baseline(ctx, w)
    topic, part, before = await _in_partition(s, SYMBOLS[0])
    leader = int(before["leader"])
    w.check(
        f"{topic}-{part} fully replicated before",
        len(before["isr"]) >= 3,
        f"leader {leader}, isr {before['isr']}",
    )
    pid = read_pid(VAR / "run" / f"kafka-{leader}.pid")
    if not w.check(f"pid of broker {leader}", running(pid), str(pid)):
        return
    assert pid is not None
    w.action = f"kill -9 Kafka broker {leader} (leader of {topic}-{part}, pid {pid})"
    ctx.to_start = "kafka.sh"
    kill9(pid)
    t_kill = now_s()
    w.event(f"killed broker {leader}")

    async def moved() -> bool:
        with contextlib.suppress(Exception):
            _, _, now = await _in_partition(s, SYMBOLS[0])
            return int(now["leader"]) not in (leader, -1)
        return False

    ok, took = await wait_until(moved, 20, 0.1)
    w.check(f"{topic}-{part} has a new leader", ok, f"{took:.2f} s after the kill")
    await recovered_streams(ctx, w, t_kill, 30, "every subscription flowing")
    await asyncio.sleep(3.0)  # streaming on the two survivors
    rc, took, out = await sh("kafka.sh", "start", 100)
    ctx.to_start = None if rc == 0 else "kafka.sh"
    w.check(f"broker {leader} started again", rc == 0, f"{took:.1f} s" + ("" if rc == 0 else out))

    async def whole() -> bool:
        with contextlib.suppress(Exception):
            _, _, now = await _in_partition(s, SYMBOLS[0])
            return len(now["isr"]) >= 3
        return False

    ok, took = await wait_until(whole, 60, 0.5)
    w.check(f"broker {leader} back in the ISR of {topic}-{part}", ok, f"{took:.1f} s")
    ok, _ = await wait_until(ctx.http.pair_ok, 20, 0.2)
    w.check("aggregators: one leader, one standby", ok, str(await ctx.http.roles()))
    ok, took = await wait_until(lambda: _healthy(f"{ctx.http.storage}/health", ctx.http), 30, 0.2)
    w.check("storage /health 200", ok, f"{took:.2f} s")


_ENTRY = frozenset({279, 269, 55, 270, 271, 83})


def _md_request(req: str, symbol: str) -> list[tuple[int, str | int]]:
    """MarketDataRequest (35=V): snapshot + incremental refresh of bids, offers and trades."""
    head: list[tuple[int, str | int]] = [(262, req), (263, "1"), (264, 0), (265, "1"), (267, 3)]
    return head + [(269, "0"), (269, "1"), (269, "2"), (146, 1), (55, symbol)]


async def scenario_fix(ctx: Ctx, w: Window) -> None:
    """``kill -9`` of the FIX gateway under a live session: the initiator logs on again with its
    sequence numbers (no reset), recovers what it missed by ResendRequest / gap fill, and
    subscribes again (issue 11, item 2)."""
    s = ctx.settings
    store = MemoryStore()
    got: list[tuple[float, str, int]] = []  # (time, MsgType, book RptSeq or -1)

    def on_app(m: Message) -> None:
        rpt = -1
        if m.msg_type == "W":
            rpt = int(m.get(83) or -1)
        elif m.msg_type == "X":  # RptSeq of the l2 stream on book entries (trades: their own)
            book = [e for e in m.group(268, _ENTRY) if e.get(269) in ("0", "1")]
            rpt = int(book[0][83]) if book else -1
        got.append((now_s(), m.msg_type, rpt))

    async def connect(reset: bool) -> FixClient:
        c = await FixClient.connect(
            s.fix_host, s.fix_port, store=store, reset=reset, heartbeat=5, on_app=on_app
        )
        await c.logged_on(wait=5)
        return c

    c = await connect(True)
    c.send("V", _md_request("chaos-1", SYMBOLS[0]))
    ok, _ = await wait_until(lambda: any(t == "X" for _, t, _ in got), 10, 0.05)
    if not w.check("FIX session streaming before", ok, f"{len(got)} app messages"):
        return
    await asyncio.sleep(2.0)
    pid = service_pid("fix_gateway")
    if not w.check("pid of fix_gateway", running(pid), str(pid)):
        return
    assert pid is not None
    w.action = f"kill -9 fix_gateway (pid {pid}) under a live FIX session"
    # messages in flight when the gateway dies are lost to the initiator: stop reading for a
    # moment, then drop what the socket holds, so the restarted gateway's Logon is ahead
    assert c.transport is not None
    c.transport.pause_reading()
    await asyncio.sleep(0.3)
    expected = store.next_target_seq
    kill9(pid)
    t_kill = now_s()
    c.transport.abort()
    w.event(f"killed fix_gateway; the initiator expects MsgSeqNum {expected} next")
    ok, took = await wait_until(lambda: c.closed_evt.is_set(), 10, 0.05)
    w.check("the initiator saw the connection drop", ok, f"{took:.2f} s")
    backoff = Backoff(initial=0.1, maximum=2.0)
    c2: FixClient | None = None
    attempts = 0
    while now_s() - t_kill < 30:
        attempts += 1
        try:
            c2 = await connect(False)
            break
        except (OSError, TimeoutError):
            await asyncio.sleep(backoff.next())
    t_logon = now_s()
    if not w.check(
        "logged on again without a reset",
        c2 is not None,
        f"{t_logon - t_kill:.2f} s, {attempts} attempts",
    ):
        return
    assert c2 is not None
    n0 = len(got)
    c2.send("V", _md_request("chaos-2", SYMBOLS[0]))

    def resubscribed() -> bool:
        return any(t == "W" for _, t, _ in got[n0:]) and any(t == "X" for _, t, _ in got[n0:])

    ok, took = await wait_until(resubscribed, 15, 0.05)
    first = next((t for t, _, _ in got[n0:]), None)
    w.check(
        "snapshot and increments again",
        ok,
        f"first message {first - t_kill:.2f} s after the kill" if first else "none",
    )
    if first is not None:
        w.extra["FIX pause (kill -> first market data)"] = f"{first - t_kill:.2f} s"
    await asyncio.sleep(2.0)
    sess = c2.session
    w.check(
        "the gap closed by ResendRequest / gap fill",
        sess.counters.get("resend_requests_sent", 0) >= 1
        and getattr(sess, "_resend_until", None) is None
        and store.next_target_seq > expected,
        f"resend requests {sess.counters.get('resend_requests_sent', 0)}, "
        f"next expected {store.next_target_seq} (was {expected} at the kill)",
    )
    w.check("no MsgSeqNum too low", sess.counters.get("seq_too_low", 0) == 0, "")
    # from the new snapshot on, book RptSeq stays or moves by one (docs/fix.md "Gap detection")
    after = got[n0:]
    w_at = next((i for i, (_, t, _) in enumerate(after) if t == "W"), None)
    rpt = [r for _, t, r in after[w_at:] if r >= 0] if w_at is not None else []
    holes = sum(1 for a, b in zip(rpt, rpt[1:], strict=False) if b not in (a, a + 1))
    w.check(
        "book RptSeq continuous from the new snapshot",
        bool(rpt) and holes == 0,
        f"{len(rpt)} messages, {holes} jumps",
    )
    with contextlib.suppress(Exception):
        await c2.logout()


def _proc_env(pid: int | None) -> dict[str, str]:
    env: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            k, sep, v = kv.decode(errors="replace").partition("=")
            if sep:
                env[k] = v
    return env


async def scenario_ws_kafka_cut(ctx: Ctx, w: Window, feed: bool = True) -> None:
    """A gateway_ws process whose every Kafka connection goes through a fault proxy is
    partitioned from Kafka for ``KAFKA_CUT_S`` (issue 11, item 4): its own verifying client must
    see no gap, no duplicate, no resync; the process must stay live (no restart) and ready
    again after the heal. Without the aggregators' direct feed (``feed=False``) the gateway has
    only Kafka: its client then waits out the cut (no bound on that pause), but must still see
    no gap and no duplicate."""
    s = ctx.settings
    ports = [int(hp.rsplit(":", 1)[1]) for hp in s.kafka_bootstrap.split(",")]
    proxies = [FaultProxy(p + 200, "127.0.0.1", p + 100) for p in ports]
    for p in ports:  # the brokers' CHAOS listener (deploy/local/kafka.sh)
        try:
            _, wr = await asyncio.open_connection("127.0.0.1", p + 100)
            wr.close()
        except OSError:
            w.check(f"Kafka CHAOS listener on {p + 100}", False, "restart Kafka with kafka.sh")
            return
    for px in proxies:
        await px.start()
    port = free_port()
    env = _proc_env(service_pid("gateway_ws")) or dict(os.environ)
    env.update(
        MD_WS_PORT=str(port),
        MD_WS_PROCESSES="1",
        MD_KAFKA_BOOTSTRAP=",".join(f"127.0.0.1:{p + 200}" for p in ports),
    )
    if not feed:
        env["MD_AGG_FEED"] = ""
    log_path = VAR / "log" / "services" / "gateway_ws_chaos.log"
    proc = subprocess.Popen(  # noqa: ASYNC220 - a fork, once per run
        [sys.executable, "-m", "gateway_ws"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    client = VerifyingClient(f"ws://127.0.0.1:{port}/ws")
    w2 = Window("ws-kafka-cut (its client)")
    client.window = w2
    try:
        ok, took = await wait_until(lambda: _healthy(f"{base}/health", ctx.http), 40, 0.25)
        if not w.check(f"a gateway_ws behind the proxy (pid {proc.pid})", ok, f"{took:.1f} s"):
            return
        client.start()
        ok, _ = await wait_until(client.synced, 20)
        if not w.check("its client in sync", ok, ""):
            return
        await asyncio.sleep(2.0)
        w2.inter = array("d")  # count from here: the window's pause is this client's
        w.action = f"gateway_ws (pid {proc.pid}) cut off from every broker for {KAFKA_CUT_S:.0f} s"
        for px in proxies:
            px.cut()
        t_cut = now_s()
        held = sum(px.bytes for px in proxies)
        w.event("cut")
        live: Counter[int] = Counter()
        ready: Counter[int] = Counter()
        while now_s() - t_cut < KAFKA_CUT_S:
            live[await ctx.http.status(f"{base}/health/live")] += 1
            ready[await ctx.http.status(f"{base}/health/ready")] += 1
            await asyncio.sleep(0.25)
        moved = sum(px.bytes for px in proxies) - held
        w.check("no byte crossed the proxies during the cut", moved == 0, f"{moved} bytes")
        for px in proxies:
            px.heal()
        t_heal = now_s()
        w.event(f"healed ({sum(px.bytes for px in proxies)} bytes through the proxies)")
        w.check("live throughout the cut (no restart)", set(live) == {200}, str(dict(live)))
        w.note(f"/health/ready during the cut: {dict(ready)}")
        w.check("the process did not exit", proc.poll() is None, "")
        ok, took = await wait_until(lambda: _healthy(f"{base}/health/ready", ctx.http), 30, 0.25)
        w.check("ready after the heal", ok, f"{took:.2f} s")
        ok, took = await wait_until(lambda: client.synced() and client.live_since(t_heal), 20)
        w.check("its client streaming after the heal", ok, f"{took:.2f} s")
        await asyncio.sleep(3.0)
    finally:
        await client.close()
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, 15)
        if proc.poll() is None:
            proc.kill()
        for px in proxies:
            await px.stop()
        # the window reports the partitioned gateway's client: its pause, gaps and duplicates
        w.inter = w2.inter
        for f in ("gaps", "missed", "duplicates", "epoch_changes", "resyncs", "checksum_errors"):
            setattr(w, f, getattr(w, f) + getattr(w2, f))
        w.resync_reasons.update(w2.resync_reasons)
        w.protocol_errors += w2.protocol_errors
        w.extra["its client"] = f"{w2.messages} data messages, {w2.reconnects} reconnects"


async def scenario_pg(ctx: Ctx, w: Window) -> None:
    h = ctx.http
    await baseline(ctx, w)
    tally: Counter[str] = Counter()
    stop = asyncio.Event()
    w.action = f"postgres.sh stop (pg_ctl -m fast), {PG_DOWN_S:.0f} s down, start"
    ctx.to_start = "postgres.sh"
    rc, took, out = await sh("postgres.sh", "stop", 60)
    t_down = now_s()
    w.check("postgres.sh stop", rc == 0, f"{took:.2f} s" + ("" if rc == 0 else f": {out}"))
    poller = asyncio.create_task(poll_rest(ctx, stop, tally))
    await asyncio.sleep(PG_DOWN_S / 2)
    body = await h.storage_health()
    db = body.get("checks", {}).get("db_writer", {}).get("detail", {})
    w.event(f"storage db_writer while PostgreSQL is down: {db.get('database')}")
    await asyncio.sleep(max(0.0, PG_DOWN_S - (now_s() - t_down)))
    stop.set()
    await poller
    bad = {k: v for k, v in tally.items() if not k.endswith(" 200")}
    w.check(
        "REST hot reads 200 while PostgreSQL is down",
        not bad and sum(tally.values()) > 0,
        f"{dict(tally)}",
    )
    rc, took, out = await sh("postgres.sh", "start", 90)
    ctx.to_start = None if rc == 0 else "postgres.sh"
    w.check("postgres.sh start", rc == 0, f"{took:.2f} s" + ("" if rc == 0 else f": {out}"))
    w.event(f"PostgreSQL was down {now_s() - t_down:.1f} s")

    async def db_up() -> bool:
        b = await h.storage_health()
        return b.get("checks", {}).get("db_writer", {}).get("detail", {}).get("database") == "up"

    ok, took = await wait_until(db_up, 60, 0.2)
    w.check("storage db_writer writes again", ok, f"{took:.2f} s after the start")
    ok, took = await wait_until(lambda: _healthy(f"{h.rest}/health", h), 30, 0.2)
    w.check("REST /health 200", ok, f"{took:.2f} s")
    await asyncio.sleep(2.0)


SCENARIOS: dict[str, Callable[[Ctx, Window], Awaitable[None]]] = {
    "agg-leader": lambda c, w: scenario_agg(c, w, "leader"),
    "agg-standby": lambda c, w: scenario_agg(c, w, "standby"),
    "agg-leader-sigterm": lambda c, w: scenario_agg(c, w, "leader", signal.SIGTERM),
    "ws-worker": scenario_ws_worker,
    "redis-restart": scenario_redis,
    "kafka-restart": scenario_kafka,
    "pg-outage": scenario_pg,
    "broker-kill": scenario_broker_kill,
    "fix-gateway": scenario_fix,
    "ws-kafka-cut": scenario_ws_kafka_cut,
    "ws-kafka-cut-nofeed": lambda c, w: scenario_ws_kafka_cut(c, w, feed=False),
}
# seconds each scenario may take (its trade check comes on top, bounded by TOTAL_BUDGET_S)
LIMITS = {
    "agg-leader": 40,
    "agg-standby": 35,
    "agg-leader-sigterm": 40,
    "ws-worker": 35,
    "redis-restart": 30,
    "kafka-restart": 80 if BROKERS < 3 else 180,  # a cluster: six JVMs stop and start
    "pg-outage": 65,
    "broker-kill": 100,
    "fix-gateway": 60,
    "ws-kafka-cut": 100,
    "ws-kafka-cut-nofeed": 100,
}
WHAT = {
    "agg-leader": "`kill -9` of the aggregator that leads (role from `/health` on 8011/8021); a "
    "new leader must take over (the hot standby, by design; which one did is noted), the "
    "supervisor restarts the killed one and the pair must be whole again (one leader, one "
    "standby).",
    "agg-leader-sigterm": "SIGTERM to the leading aggregator (a rolling restart): it flushes, "
    "resigns in its last heartbeat and exits; the standby takes over without waiting for the "
    "lease; the supervisor starts the stopped one again and it rejoins as standby.",
    "agg-standby": "`kill -9` of the standby aggregator; the leader keeps publishing, the killed "
    "one is restarted and rejoins as standby.",
    "ws-worker": "`kill -9` of the gateway_ws worker that serves the verifying client (found from "
    "the client's local port: `/proc/net/tcp` inode -> `/proc/<worker>/fd`), twice; the client "
    "reconnects with backoff + jitter and re-subscribes every target with `since_seq` + `epoch`.",
    "redis-restart": "`kill -9` of Redis, dump/AOF files removed, `deploy/local/redis.sh start` "
    "(no persistence: it comes back empty); REST `/orderbook?depth=10` must answer 200 again and "
    "the storage cache writer must report a rebuild (`/health` on 8012, `rebuilds` counter).",
    "kafka-restart": "`deploy/local/kafka.sh stop` (SIGTERM, graceful) then `start` of the single "
    "broker; every stream must flow again, the aggregator pair, gateway_ws and storage must be "
    "healthy.",
    "broker-kill": "`MD_KAFKA_BROKERS=3` only (a local cluster: 3 brokers, 3 controllers, RF 3, "
    "min ISR 2): `kill -9` of the broker leading the `md.in` partition of BTC-USD (found with "
    "the admin client and the producers' partitioner); that partition must get a new leader, "
    "every stream must flow again, then `kafka.sh start` brings the broker back and it must "
    "rejoin the partition's ISR.",
    "fix-gateway": "`kill -9` of `fix_gateway` while a FIX 4.4 initiator (`fix_gateway/client.py`, "
    "session CLIENT1, heartbeat 5 s) streams BTC-USD market data; the supervisor restarts it; "
    "the initiator reconnects with backoff + jitter, logs on WITHOUT a sequence reset (its store "
    "kept), closes any gap by ResendRequest / SequenceReset-GapFill, subscribes again and must "
    "get a snapshot then increments with continuous RptSeq. The gateway's file store is "
    "flushed before each socket write, so its Logon can never be below what the initiator saw.",
    "ws-kafka-cut": "a second gateway_ws process (one worker, the stack's settings) whose Kafka "
    "bootstrap is `loadtests/faultproxy.py` in front of every broker's `CHAOS` listener (which "
    "advertises the proxy, so metadata keeps it behind the proxy); a second verifying client on "
    f"it; the proxy then holds every byte both ways for {KAFKA_CUT_S:.0f} s (a partition, not a "
    "reset) and heals. Its client must see no gap, duplicate or resync and pause <= 1 s; the "
    "process must stay live (`/health/live` 200 throughout: no restart) and be ready after the "
    "heal. The row reports that client, not the stack's.",
    "ws-kafka-cut-nofeed": "the same with `MD_AGG_FEED` empty: the gateway has only Kafka, so its "
    "client waits out the cut (its pause is not bounded), but must see no gap, duplicate or "
    "resync once the partition heals.",
    "pg-outage": f"`deploy/local/postgres.sh stop` (`pg_ctl -m fast`), {PG_DOWN_S:.0f} s down, "
    "`start`; REST orderbook and ticker of BTC-USD and ETH-USD polled every 0.25 s must answer "
    "200 throughout; the database writer must write again.",
}


# ------------------------------------------------------------------------------ preflight


async def stack_ready(ctx: Ctx) -> list[str]:
    h = ctx.http
    problems = []
    for name in (
        "simulator",
        "aggregator",
        "aggregator_b",
        "storage",
        "gateway_ws",
        "gateway_rest",
    ):
        if not running(service_pid(name)):
            problems.append(f"{name} is not running (var/run/services/{name}.pid)")
    if not running(read_pid(VAR / "run" / "redis.pid")):
        problems.append("redis is not running (var/run/redis.pid)")
    for f in [f"kafka-{i}.pid" for i in range(1, BROKERS + 1)] if BROKERS > 1 else ["kafka.pid"]:
        if not running(read_pid(VAR / "run" / f)):
            problems.append(f"kafka is not running (var/run/{f})")
    for url in (h.ws_health, f"{h.rest}/health", f"{h.storage}/health"):
        if await h.status(url) != 200:
            problems.append(f"{url} does not answer 200")
    if not await h.pair_ok():
        problems.append(f"aggregator pair not leader + standby: {await h.roles()}")
    return problems


def sim_rate() -> str:
    s = Settings.from_env(_proc_env(service_pid("simulator")))
    return f"{s.sim_rate:g} ev/s per symbol x {len(s.symbols)} symbols"


# ------------------------------------------------------------------------------ report


def fmt_pause(w: Window) -> str:
    p50, mx = w.pause()
    if p50 is None or mx is None:
        return "n/a"
    return f"{p50 * 1000:.2f} ms / {mx * 1000:.0f} ms"


def load_of(w: Window) -> str:
    rate = w.messages / w.duration if w.duration > 0 else 0.0
    sim = f"sim {w.sim_events_per_s:.0f} ev/s" if w.sim_events_per_s is not None else "sim n/a"
    return f"{sim}; client {rate:.0f} msg/s"


def rows_of(w: Window) -> str:
    if w.rows_lost is None:
        return "n/a"
    return f"{w.rows_lost} / {w.rows_doubled} (of {w.trades_expected})"


HEADER = (
    "| scenario | load | gaps | duplicates | epoch changes | resyncs | checksum errors "
    "| rows lost / doubled | pause p50 / max | result |"
)


def table(windows: list[Window]) -> str:
    lines = [HEADER, "|" + " --- |" * 10]
    for w in windows:
        lines.append(
            f"| {w.name} | {load_of(w)} | {w.gaps} | {w.duplicates} | {w.epoch_changes} "
            f"| {w.resyncs} | {w.checksum_errors} | {rows_of(w)} | {fmt_pause(w)} "
            f"| {'pass' if w.passed else 'FAIL'} |"
        )
    return "\n".join(lines)


def details(w: Window) -> str:
    out = [f"### {w.name}: {'pass' if w.passed else 'FAIL'}", ""]
    out.append(
        f"- action: {w.action or '(not reached)'}; {w.duration:.1f} s, {w.messages} data messages"
    )
    if w.reconnects or w.resumes:
        out.append(
            f"- client: {w.reconnects} reconnects, {w.resumes} subscriptions resumed with `since_seq`"
        )
    if w.resync_reasons:
        out.append(f"- resync reasons: {dict(w.resync_reasons)}")
    if w.went_back:
        out.append(f"- {w.went_back} book/ticker snapshots older than what the client already held")
    for k, v in w.extra.items():
        out.append(f"- {k}: {v}")
    for what, ok, detail in w.checks:
        out.append(f"- {'ok' if ok else '**FAIL**'}: {what}{' (' + detail + ')' if detail else ''}")
    for f in w.failures():
        if not any(f.startswith(c[0]) for c in w.checks):
            out.append(f"- **failed**: {f}")
    for n in w.notes:
        out.append(f"- note: {n}")
    if w.log_counts:
        out.append(f"- warnings/errors logged: {dict(w.log_counts)}")
    return "\n".join(out)


def write_doc(path: Path, windows: list[Window], meta: dict[str, str]) -> None:
    failed = [w for w in windows if not w.passed]
    parts = [
        "# Reliability: `make chaos`",
        "",
        "Written by `loadtests/chaos.py` (`make chaos`, or "
        "`.venv/bin/python -m loadtests.chaos [--only a,b]`) on the running `make up` stack "
        "(loopback only). One verifying WebSocket client streams through every scenario; the "
        "scenarios run one after another, each bounded in time. Issue 11.",
        "",
        f"- machine: {meta['machine']}; load average at the start {meta['loadavg']} (other work "
        "running on the machine shows here)",
        f"- run: {meta['date']}, {meta['elapsed']}",
        f"- load: the stack's own simulator, {meta['sim']} (its default), no extra load; the "
        "client subscribes to `l2`, `trades`, `ticker` of BTC-USD and ETH-USD",
        f"- Kafka: {meta['kafka']}",
        f"- result: {len(windows) - len(failed)} of {len(windows)} scenarios pass",
        "",
        table(windows),
        "",
        "Columns: *load* = the simulator's input events/s (all symbols) and the data messages/s the "
        "client received; *gaps* = data messages or snapshots whose `seq` skipped past last + 1 in "
        "the same epoch (messages the client never received, even when a resync snapshot bridged "
        "them); *duplicates* = `seq` <= last in the same epoch; *resyncs* = snapshots flagged "
        "`resync`; *checksum errors* = l2 books (core/book.py `L2Book`, as in "
        "`aggregator/testing.py` `StreamCheck`) whose top-10 CRC32 differs from the message's; "
        "*rows lost / doubled* = trades of `md.trades` published in the scenario's window "
        "(read_uncommitted, deduplicated by (symbol, seq, epoch)) missing from / present more than "
        "once in PostgreSQL's `trades`; *pause* = inter-arrival of data messages at the client, "
        "all subscriptions together: p50 and the longest pause in delivery.",
        "",
        "## What passing means",
        "",
        "- 0 gaps, 0 duplicates, 0 checksum errors, no protocol error, in every scenario;",
        "- 0 epoch changes for " + ", ".join(f"`{n}`" for n in NO_EPOCH_CHANGE) + ";",
        f"- longest pause <= {PAUSE_LIMIT_S:g} s for "
        + ", ".join(f"`{n}`" for n in PAUSE_BOUND)
        + "; 0 resyncs for "
        + ", ".join(f"`{n}`" for n in NO_RESYNC)
        + " (a resume that ends in a resync did not deliver what was missed);",
        "- 0 trade rows lost or doubled;",
        "- each scenario's own checks (takeover, restart, REST 200, cache rebuild...) as listed "
        "below.",
        "",
        "## Scenarios",
        "",
    ]
    for name, text in WHAT.items():
        parts.append(f"- `{name}`: {text}")
    parts += ["", "## Details of this run", ""]
    for w in windows:
        parts += [details(w), ""]
    parts += ["## Open", ""]
    if not failed:
        parts.append("Nothing: every scenario passed in this run.")
    for w in failed:
        parts.append(f"- `{w.name}`: " + "; ".join(w.failures()))
        for svc, lines in w.log_lines.items():
            for line in lines[:3]:
                parts.append(f"  - {svc}.log: `{line}`")
    notes = [(w.name, n) for w in windows for n in w.notes]
    if notes:
        parts += ["", "Observations (not failures by the criteria above):", ""]
        parts += [f"- `{name}`: {n}" for name, n in notes]
    if meta.get("open"):
        parts += ["", meta["open"]]
    skipped = [n for n in CLUSTER_ONLY if n not in {w.name for w in windows}]
    if skipped:
        parts += ["", f"Not run: {skipped} (they need `MD_KAFKA_BROKERS=3 make up`)."]
    parts.append("")
    path.write_text("\n".join(parts))


# ------------------------------------------------------------------------------ main


def _switch(client: VerifyingClient, w: Window) -> None:
    client.window = w


async def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    http = Http(settings)
    t_start = now_s()
    load0 = os.getloadavg()[0]
    print(
        f"chaos: machine {socket.gethostname()}, nproc {os.cpu_count()}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}"
    )
    client = VerifyingClient(f"ws://127.0.0.1:{settings.ws_port}/ws")
    ctx = Ctx(settings, http, client, args)
    problems = await stack_ready(ctx)
    if problems:
        print("chaos: the stack is not ready (make up):\n  " + "\n  ".join(problems))
        await http.close()
        return 2
    names = [n.strip() for n in args.only.split(",")] if args.only else list(SCENARIOS)
    if BROKERS < 3 and not args.only:
        names = [n for n in names if n not in CLUSTER_ONLY]
        print(f"chaos: {list(CLUSTER_ONLY)} need MD_KAFKA_BROKERS=3 make up: not run")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"chaos: unknown scenarios {unknown}; known: {list(SCENARIOS)}")
        await http.close()
        return 2
    sim = sim_rate()
    print(
        f"chaos: load = the stack's simulator, {sim}; client on l2/trades/ticker of {', '.join(SYMBOLS)}"
    )
    client.start()
    ok, _ = await wait_until(client.synced, 20)
    if not ok:
        print("chaos: the verifying client did not get every snapshot within 20 s")
        await client.close()
        await http.close()
        return 2
    await asyncio.sleep(1.0)
    warm = client.window
    warm.close()
    print(f"chaos: client in sync ({warm.messages} messages in warm-up); running {names}")
    logs = LogTail()
    windows: list[Window] = []
    trades_from_ms = int(time.time() * 1000)
    sim0 = await http.sim_events()
    for i, name in enumerate(names):
        w = Window(name)
        left = TOTAL_BUDGET_S - (now_s() - t_start)
        limit = max(5.0, min(LIMITS[name], left - 10))
        print(f"\n== {name} (at most {limit:.0f} s + the trade check)", flush=True)
        logs.mark()
        restarts0 = restart_counts()
        _switch(client, w)
        try:
            async with asyncio.timeout(limit):
                await SCENARIOS[name](ctx, w)
        except TimeoutError:
            w.check("finished in time", False, f"stopped after {limit:.0f} s")
        except Exception as exc:  # noqa: BLE001 - a broken scenario is a failed one, the run goes on
            w.check("scenario ran", False, repr(exc))
        if ctx.to_start:
            rc, took, out = await sh(ctx.to_start, "start", 100)
            w.check(f"{ctx.to_start} start after the scenario", rc == 0, f"{took:.1f} s {out}")
            ctx.to_start = None
        trades_to_ms = int(time.time() * 1000)
        await asyncio.sleep(1.0)  # records stamped before the window's end are all in Kafka
        left = TOTAL_BUDGET_S - (now_s() - t_start)
        try:
            async with asyncio.timeout(max(5.0, min(35.0, left - 5))):
                await compare_trades(settings, w, trades_from_ms, trades_to_ms)
        except Exception as exc:  # noqa: BLE001 - as a scenario's: a failed check, the run goes on
            w.check("trades Kafka vs PostgreSQL compared", False, repr(exc))
        trades_from_ms = trades_to_ms + 1
        # the next scenario begins when the stream is whole again; until then this one counts
        if i + 1 < len(names):
            await wait_until(client.synced, 10)
        sim1 = await http.sim_events()
        w.close()
        if sim0 is not None and sim1 is not None and sim1 >= sim0:
            w.sim_events_per_s = (sim1 - sim0) / w.duration
        sim0 = sim1
        logs.collect(w)
        delta = {k: v - restarts0.get(k, 0) for k, v in restart_counts().items()}
        delta = {k: v for k, v in delta.items() if v}
        if delta:
            w.extra["supervisor restarts"] = delta
        killed = {
            "agg-leader": "aggregator",
            "agg-leader-sigterm": "aggregator",
            "agg-standby": "aggregator",
            "fix-gateway": "fix_gateway",
        }.get(name)
        unexpected = {k: v for k, v in delta.items() if not (killed and k.startswith(killed))}
        if unexpected:
            w.note(
                f"services not killed by the scenario exited and were restarted by the "
                f"supervisor: {unexpected} (var/log/services/supervisor.log)"
            )
        windows.append(w)
        print(
            f"== {name}: {'pass' if w.passed else 'FAIL: ' + '; '.join(w.failures())}", flush=True
        )
    await client.close()
    await http.close()
    elapsed = now_s() - t_start
    print()
    print(table(windows))
    meta = {
        "machine": f"{socket.gethostname()}, nproc {os.cpu_count()}, "
        f"Python {sys.version.split()[0]}",
        "date": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "elapsed": f"{elapsed:.0f} s",
        "sim": sim,
        "open": args.open_notes or "",
        "loadavg": f"{load0:.1f}",
        "kafka": (
            f"{BROKERS} brokers + 3 controllers (KRaft, RF 3, min ISR 2)"
            if BROKERS > 1
            else "one broker (KRaft, combined mode)"
        ),
    }
    if not args.no_doc:
        doc = ROOT / "docs" / "reliability.md"
        write_doc(doc, windows, meta)
        print(f"\nwrote {doc.relative_to(ROOT)} ({elapsed:.0f} s)")
    return 0 if all(w.passed for w in windows) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help=f"comma-separated subset of {list(SCENARIOS)}")
    p.add_argument("--no-doc", action="store_true", help="do not write docs/reliability.md")
    p.add_argument("--open-notes", default="", help="text appended under 'Open' in the doc")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
