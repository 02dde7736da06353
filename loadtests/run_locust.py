"""Headless locust runs with their results recorded.

    python -m loadtests.run_locust rest   # = make load-rest-headless
    python -m loadtests.run_locust ws     # = make load-ws-headless
    python -m loadtests.run_locust ws --users 200 --spawn-rate 50 --run-time 60s -- --processes 2

Each run writes ``var/loadtests/<scenario>-<UTC time>/`` with locust's CSV files (``*_stats.csv``,
``*_stats_history.csv``, ``*_failures.csv``), its HTML report (``report.html``) and
``summary.json``, appends the summary to ``var/loadtests/history.jsonl``, and updates the table of
the ``## Load runs (locust)`` section of docs/benchmarks.md: one row per scenario and user count
(the latest run replaces the previous one), with the commit and machine it ran on. Other sections
of that file are never touched. ``--no-docs`` skips the docs update (for trial runs).

Anything after ``--`` goes to locust unchanged (``--processes N`` runs N local worker processes;
see docs/operations.md for master + workers on several machines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "var" / "loadtests"
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Load runs (locust)"
TABLE_START = "<!-- locust-table:start (rows written by loadtests/run_locust.py) -->"
TABLE_END = "<!-- locust-table:end -->"
HEADER = (
    "| scenario | users | duration | throughput | p50 ms | p95 ms | p99 ms | failures | when (UTC) | commit | machine |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"
)

SCENARIOS: dict[str, dict[str, Any]] = {
    "rest": {
        "file": "loadtests/locust_rest.py",
        "host": f"http://127.0.0.1:{os.environ.get('MD_REST_PORT', '8000')}",
        "users": 20,
        "spawn_rate": 10,
        "unit": "req/s",
    },
    "ws": {
        "file": "loadtests/locust_ws.py",
        "host": f"ws://127.0.0.1:{os.environ.get('MD_WS_PORT', '8001')}",
        "users": 20,
        "spawn_rate": 10,
        "unit": "msg/s",
    },
}


def health_url(host: str) -> str:
    return re.sub(r"^ws", "http", host.rstrip("/")) + "/health"


def check_up(host: str) -> str | None:
    try:
        urllib.request.urlopen(health_url(host), timeout=3)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not up"
        return f"{health_url(host)} is not healthy ({exc}); start the platform first (make up) or wait for it"


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        mem = f", {round(kb / 1024 / 1024)} GiB"
    except (OSError, AttributeError):
        pass
    return f"{os.cpu_count()} cores {model or platform.machine()}{mem}".strip()


def commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table_row(
    scenario: str,
    users: int,
    run_time: str,
    s: dict[str, Any],
    unit: str,
    when: str,
    sha: str,
    mach: str,
) -> str:
    rate = s.get("messages_per_s", s.get("requests_per_s"))
    total = s.get("messages", s.get("requests"))
    fails = s.get("failures", 0)
    extra = []
    if s.get("seq_problems"):
        extra.append(f"{s['seq_problems']} seq gaps")
    if s.get("rate_limited"):
        extra.append(f"{s['rate_limited']} 429s")
    failures = f"{fails} of {_fmt(total)}" + (f" ({', '.join(extra)})" if extra else "")
    cells = [
        scenario,
        str(users),
        run_time,
        f"{_fmt(rate)} {unit}",
        _fmt(s.get("p50_ms")),
        _fmt(s.get("p95_ms")),
        _fmt(s.get("p99_ms")),
        failures,
        when,
        sha,
        mach,
    ]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


SECTION_INTRO = f"""{SECTION}

Written by `python -m loadtests.run_locust rest|ws` (`make load-rest-headless`,
`make load-ws-headless`); one row per scenario and user count, the latest run replacing the
previous one; every run's CSV files and HTML report are in `var/loadtests/<scenario>-<time>/` and
all summaries in `var/loadtests/history.jsonl`. "machine" ends with the 1-minute load average
when the run started: on this shared 2-core machine other work competes with the run, and a load
far above 2 means the numbers measure contention more than the platform.

- `rest`: requests per second and response time of the weighted endpoint mix of
  `loadtests/locust_rest.py`.
- `ws`: data messages delivered per second to all clients, and latency from each message's
  `timestamp` (aggregator publish) to receipt by the locust client, snapshots excluded; "seq
  gaps" counts breaks of `seq` continuity seen by clients.

Locust shares the 2 cores with the platform here, so these numbers are a floor for the platform
and a ceiling for what one locust process can offer; the raw benchmarks in the gateways'
sections measure the ceilings.
"""


def update_section(text: str, row: str, key: tuple[str, str]) -> str:
    """Insert or replace the row for ``key`` (scenario, users) in our section; nothing else changes."""
    if SECTION not in text:
        base = text if text.strip() else "# Benchmarks\n"
        text = (
            base.rstrip("\n") + "\n\n" + SECTION_INTRO + f"\n{TABLE_START}\n{HEADER}\n{TABLE_END}\n"
        )
    start = text.index(SECTION)
    nxt = re.search(r"^## ", text[start + len(SECTION) :], re.M)
    end = start + len(SECTION) + nxt.start() if nxt else len(text)
    section = text[start:end]
    if TABLE_START not in section:
        section = section.rstrip("\n") + f"\n\n{TABLE_START}\n{HEADER}\n{TABLE_END}\n"
    section = (
        SECTION_INTRO + "\n" + section[section.index(TABLE_START) :]
    )  # intro: always the current text
    t0 = section.index(TABLE_START) + len(TABLE_START)
    t1 = section.index(TABLE_END)
    rows = [
        r
        for r in section[t0:t1].strip().splitlines()
        if r.startswith("| ") and not r.startswith("| scenario") and not r.startswith("| ---")
    ]
    rows = [r for r in rows if tuple(c.strip() for c in r.strip("|").split("|")[:2]) != key]
    rows.append(row)
    rows.sort(key=lambda r: tuple(c.strip() for c in r.strip("|").split("|")[:2]))
    section = section[:t0] + "\n" + HEADER + "\n" + "\n".join(rows) + "\n" + section[t1:]
    if nxt:
        section = section.rstrip("\n") + "\n\n"
    return text[:start] + section + text[end:]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.run_locust", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--users", "-u", type=int)
    ap.add_argument("--spawn-rate", "-r", type=float)
    ap.add_argument("--run-time", "-t", default="30s", help="bounded run time (default 30s)")
    ap.add_argument("--host", help="default: the local stack's REST/WS address")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    sc = SCENARIOS[args.scenario]
    host = args.host or sc["host"]
    users = args.users or sc["users"]
    spawn = args.spawn_rate or sc["spawn_rate"]
    problem = check_up(host)
    if problem:
        print(f"[load] {problem}", file=sys.stderr)
        return 2
    when = datetime.now(UTC)
    load_at_start = os.getloadavg()[0]  # other work on the machine skews every number: recorded
    run_dir = OUT / f"{args.scenario}-{when:%Y%m%dT%H%M%SZ}"
    run_dir.mkdir(parents=True, exist_ok=True)
    summary_file = run_dir / "summary.json"
    cmd = [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        str(ROOT / sc["file"]),
        "--host",
        host,
        "--headless",
        "-u",
        str(users),
        "-r",
        str(spawn),
        "-t",
        args.run_time,
        "--stop-timeout",
        "5",
        "--csv",
        str(run_dir / args.scenario),
        "--csv-full-history",
        "--html",
        str(run_dir / "report.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
        *extra,
    ]
    env = dict(os.environ, LOCUST_SUMMARY_JSON=str(summary_file))
    print(f"[load] {' '.join(cmd)}", file=sys.stderr)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=_seconds(args.run_time) + 120)
    if not summary_file.exists():
        print(
            f"[load] locust exited {proc.returncode} without a summary (see output above)",
            file=sys.stderr,
        )
        return proc.returncode or 1
    s = json.loads(summary_file.read_text())
    sha, mach = commit(), f"{machine()}, load {load_at_start:.1f}"
    record = {
        "scenario": args.scenario,
        "users": users,
        "run_time": args.run_time,
        "host": host,
        "when": when.isoformat(),
        "commit": sha,
        "machine": mach,
        "wall_s": round(time.monotonic() - t0, 1),
        **s,
    }
    with (OUT / "history.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    row = table_row(
        args.scenario, users, args.run_time, s, sc["unit"], f"{when:%Y-%m-%d %H:%M}", sha, mach
    )
    print(HEADER + "\n" + row)
    print(f"[load] report: {run_dir / 'report.html'}", file=sys.stderr)
    if not args.no_docs:
        DOC.parent.mkdir(exist_ok=True)
        current = DOC.read_text() if DOC.exists() else ""  # re-read right before writing
        DOC.write_text(update_section(current, row, (args.scenario, str(users))))
        print(f"[load] updated {DOC.relative_to(ROOT)} ({SECTION})", file=sys.stderr)
    # locust exits 1 when any request failed; the run itself worked, the table says how many
    return 0 if proc.returncode in (0, 1) else proc.returncode


def _seconds(run_time: str) -> int:
    total = 0
    for n, unit in re.findall(r"(\d+)\s*([hms]?)", run_time):
        total += int(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[unit]
    return total or 30


if __name__ == "__main__":
    sys.exit(main())
