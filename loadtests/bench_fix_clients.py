"""What the FIX benchmarks share (``bench_fix.py``, ``bench_peer_fix.py``): the light raw-socket
FIX client, the session list for ``python -m fix_gateway``, the one-change ``l2_update`` they
publish, and CPU accounting from ``/proc`` (server processes, this harness, the whole machine).

The harness is one Python process (100 clients and the producer on one event loop); whether it,
the server or the machine is what limits a run is read from :class:`CpuWindow`, printed beside
each result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
import time
from collections.abc import Iterable
from pathlib import Path

from fix_gateway.codec import encode, parse_utc_timestamp, utc_timestamp

X_MARK = b"\x0135=X\x01"


def write_sessions(path: Path, sessions: int) -> Path:
    """A sessions file accepting BENCH1..N -> MDGW without a password and with no daily reset."""
    path.write_text(
        '[defaults]\nreset_time = ""\n'
        + "".join(f'[[session]]\nsender_comp_id = "BENCH{i}"\n' for i in range(1, sessions + 1))
    )
    return path


def l2_change(i: int) -> list[list[str]]:
    """The ``i``-th one-change ``l2_update`` (alternating sides, inside a 20-level seeded book)."""
    side = "buy" if i % 2 else "sell"
    px = f"{(90 if side == 'buy' else 101) + i % 9}.{i % 100:02d}"
    return [[side, px, str(1 + i % 5)]]


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def cpu_seconds(pids: Iterable[int]) -> float:
    """User+sys CPU seconds of the processes, all threads (/proc/<pid>/stat fields 14 and 15)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot, from the first line of /proc/stat."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    total = sum(vals[:8])  # guest time is already counted in user
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


@dataclasses.dataclass
class CpuWindow:
    """CPU spent between :meth:`start` and :meth:`stop`: by the server processes, by this harness
    (clients + producer) and by the whole machine, in cores (CPU seconds per wall second)."""

    pids: list[int]
    server_s: float = 0.0
    harness_s: float = 0.0
    machine_busy_s: float = 0.0
    wall_s: float = 0.0

    def start(self) -> CpuWindow:
        self._t = time.perf_counter()
        self._srv = cpu_seconds(self.pids)
        self._me = _self_cpu()
        self._box = _machine_busy_s()[0]
        return self

    def stop(self) -> CpuWindow:
        self.wall_s = time.perf_counter() - self._t
        self.server_s = cpu_seconds(self.pids) - self._srv
        self.harness_s = _self_cpu() - self._me
        self.machine_busy_s = _machine_busy_s()[0] - self._box
        return self

    def cores(self, seconds: float) -> float:
        return seconds / self.wall_s if self.wall_s else float("nan")

    def summary(self) -> str:
        return (
            f"cores busy: server {self.cores(self.server_s):.2f}, harness "
            f"{self.cores(self.harness_s):.2f}, machine {self.cores(self.machine_busy_s):.2f} of "
            f"{os.cpu_count()}"
        )


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclasses.dataclass
class Counts:
    """What the light clients saw: ``35=X`` frames, and SendingTime(52) -> receipt of the last X
    of each read when ``measure`` is on (a millisecond stamp is truncated: with it the figure
    reads ~0.5 ms high on average; servers run with microsecond stamps measure it honestly).

    A read keeps only its receipt time and the stamp's bytes; they are parsed after the phase
    (:meth:`latencies`), so that the clients, all on one event loop, spend as little as they
    can between reads: time a client spends on one read is queueing for the next session's."""

    received: int = 0
    measure: bool = True
    samples: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)

    def reset(self) -> None:
        self.received = 0
        self.samples = []

    def latencies(self) -> list[float]:
        """SendingTime -> receipt of each kept read, ms (a malformed stamp is skipped)."""
        out: list[float] = []
        for now, stamp in self.samples:
            try:
                out.append((now - parse_utc_timestamp(stamp.decode())) / 1e6)
            except (ValueError, UnicodeDecodeError):
                continue
        return out


class LightClient(asyncio.Protocol):
    """A light FIX client: Logon(A) with ResetSeqNumFlag=Y and, on :meth:`subscribe`, one
    MarketDataRequest(V) for BTC-USD full depth, bid+offer, incremental, as raw bytes; then it
    counts ``35=X`` frames and heartbeats every 10 s. Nothing is parsed, so 100 of them cost
    little of the CPU the server needs."""

    def __init__(self, sender: str, counts: Counts, req_id: str = "b1") -> None:
        self.sender = sender
        self.counts = counts
        self.req_id = req_id
        self.seq = 0
        self.tail = b""
        self.transport: asyncio.Transport | None = None
        self.logged_on: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._hb: asyncio.TimerHandle | None = None

    def _send(self, mt: str, fields: list[tuple[int, str | int]]) -> None:
        self.seq += 1
        assert self.transport is not None
        self.transport.write(
            encode(
                mt,
                [(49, self.sender), (56, "MDGW"), (34, self.seq), (52, utc_timestamp()), *fields],
            )
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send("A", [(98, 0), (108, 30), (141, "Y")])
        self._hb = asyncio.get_running_loop().call_later(10, self._heartbeat)

    def subscribe(self) -> None:
        self._send(
            "V",
            [
                *((262, self.req_id), (263, "1"), (264, 0), (265, "1"), (267, 2)),
                *((269, "0"), (269, "1"), (146, 1), (55, "BTC-USD")),
            ],
        )

    def _heartbeat(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._send("0", [])
            self._hb = asyncio.get_running_loop().call_later(10, self._heartbeat)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if not self.logged_on.done() and b"\x0135=A\x01" in data:
            self.logged_on.set_result(None)
        buf = self.tail + data
        n = buf.count(X_MARK)
        self.tail = buf[-8:]
        n -= self.tail.count(X_MARK)
        if not n:
            return
        c = self.counts
        c.received += n
        if c.measure:
            # SendingTime(52) of the last message of the read, any precision (``.sss`` or
            # ``.ssssss``: MD_FIX_TIMESTAMP_PRECISION / QuickFIX/J's TimeStampPrecision)
            i = data.rfind(b"\x0152=")
            j = data.find(b"\x01", i + 4) if i >= 0 else -1
            if j > 0:
                c.samples.append((now, data[i + 4 : j]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hb is not None:
            self._hb.cancel()

    def close(self) -> None:
        if self._hb is not None:
            self._hb.cancel()
        if self.transport is not None:
            self.transport.close()
