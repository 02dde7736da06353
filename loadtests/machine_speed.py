"""How fast this machine is right now: the CPU time of one fixed pure-Python workload.

Why: on the shared virtual machine the benchmarks run on, the same code's CPU time moved by a
factor of two within one hour (2026-12-06: this loop took 0.50 s at 19:06 and 1.06 s at 19:21
UTC, with nothing else running). A process's CPU time then says as much about the host as about
the process. Every CPU figure that is compared with a target (issue 10: the idle stack <= 40 %
of one core) is recorded beside this reference, taken just before and just after its window, so
two runs can be compared and a run on a slowed host is recognised as such.

The workload runs in a child process (its own CPU time, nothing of the caller's), outside the
measured window (it would take a core from the stack inside it).

The loop does not see the other way a host slows down: waking a sleeping process. Every hop of
the platform's latency path (source -> broker -> source -> aggregator -> gateway -> client) is a
socket write that wakes a process blocked on its read, on another vCPU; in this VM that costs a
VM exit, and its price moved by more than two (2026-12-07: a two-process loopback hop 85 us at
05:40, 210 us at 12:30 UTC, each with nothing else running) while the loop's time did not. So
:func:`wakeup_us` measures that too, and bench_e2e records both.
"""

from __future__ import annotations

import subprocess
import sys

#: a pure-interpreter loop (no allocation growth, no I/O, no syscalls): what the stack's
#: Python processes mostly do
WORKLOAD = """
import time
t = time.process_time()
s = 0
for i in range(5_000_000):
    s += i * i % 7
print(time.process_time() - t)
"""


#: two processes on a loopback TCP connection, each an asyncio event loop (uvloop when
#: installed), as the services are: every 5 ms (a tick) the parent sends its monotonic clock and
#: the child, asleep in its loop since the last one, answers with its own at the read: one-way
#: time of a hop to a sleeping process (the clock is the host's, the same in both)
WAKEUP = """
import asyncio, os, socket, time
try:
    import uvloop
    new_loop = uvloop.new_event_loop
except ImportError:
    new_loop = asyncio.new_event_loop
srv = socket.create_server(("127.0.0.1", 0))
port = srv.getsockname()[1]
pid = os.fork()
if pid == 0:
    async def echo():
        r, w = await asyncio.open_connection(sock=srv.accept()[0])
        while await r.read(8):
            w.write(time.perf_counter_ns().to_bytes(8, "big"))
    asyncio.set_event_loop(new_loop())
    asyncio.get_event_loop().run_until_complete(echo())
    os._exit(0)
srv.close()
async def ping():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    lat = []
    for _ in range(N):
        await asyncio.sleep(0.005)
        t = time.perf_counter_ns()
        w.write(t.to_bytes(8, "big"))
        lat.append(int.from_bytes(await r.readexactly(8), "big") - t)
    w.close()
    return sorted(lat)[N // 2] / 1000
asyncio.set_event_loop(new_loop())
print(asyncio.get_event_loop().run_until_complete(ping()))
os.waitpid(pid, 0)
"""


def wakeup_us(n: int = 200, timeout_s: float = 60.0) -> float | None:
    """One-way microseconds of a loopback hop that wakes a sleeping process (the median of
    ``n``; lower = faster host); None when it could not run."""
    return _child_float(f"N = {int(n)}\n" + WAKEUP, timeout_s)


def reference_cpu_s(timeout_s: float = 60.0) -> float | None:
    """CPU seconds the reference workload took in a fresh interpreter (lower = faster host);
    None when it could not run."""
    return _child_float(WORKLOAD, timeout_s)


def _child_float(code: str, timeout_s: float) -> float | None:
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )
        return float(out.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def main() -> None:
    v = reference_cpu_s()
    print("reference workload: failed" if v is None else f"reference workload: {v:.3f} s CPU")
    w = wakeup_us()
    print("wake-up: failed" if w is None else f"wake-up (one-way loopback hop, p50): {w:.0f} us")


if __name__ == "__main__":
    main()
