"""Helpers of loadtests/fanout.py: percentiles over raw samples, resident memory of a process."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def percentiles(samples: Sequence[int], ps: Iterable[float]) -> dict[str, int]:
    """Nearest-rank percentiles (p100 = max) of integer samples; 0s when there are none."""
    data = sorted(samples)
    out: dict[str, int] = {}
    for p in ps:
        key = "max" if p == 100 else f"p{p:g}"
        if not data:
            out[key] = 0
            continue
        rank = min(len(data) - 1, max(0, int(round(p / 100 * len(data))) - 1))
        out[key] = data[rank]
    return out


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    import os

    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def load_average() -> float:
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except OSError:
        return 0.0


def listen_drops() -> int:
    """The kernel's count of connections dropped at a full accept queue (``ListenDrops`` in
    /proc/net/netstat, machine-wide): a dropped SYN is retried by the client after 1, 3, 7 s,
    so any rise during a connection storm shows up as seconds of setup time."""
    try:
        with open("/proc/net/netstat") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(row.get("ListenDrops", 0))
    return 0
