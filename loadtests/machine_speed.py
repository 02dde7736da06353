"""How fast this machine is right now: the CPU time of one fixed pure-Python workload.

Why: on the shared virtual machine the benchmarks run on, the same code's CPU time moved by a
factor of two within one hour (2026-12-06: this loop took 0.50 s at 19:06 and 1.06 s at 19:21
UTC, with nothing else running). A process's CPU time then says as much about the host as about
the process. Every CPU figure that is compared with a target (issue 10: the idle stack <= 40 %
of one core) is recorded beside this reference, taken just before and just after its window, so
two runs can be compared and a run on a slowed host is recognised as such.

The workload runs in a child process (its own CPU time, nothing of the caller's), outside the
measured window (it would take a core from the stack inside it).
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


def reference_cpu_s(timeout_s: float = 60.0) -> float | None:
    """CPU seconds the reference workload took in a fresh interpreter (lower = faster host);
    None when it could not run."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", WORKLOAD],
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


if __name__ == "__main__":
    main()
