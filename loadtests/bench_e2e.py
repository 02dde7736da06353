"""End to end on the running stack: latency per hop, stream continuity and CPU (``make bench-e2e``).

    .venv/bin/python -m loadtests.bench_e2e [--duration 10] [--symbol BTC-USD] [--json FILE] [--markdown]
    .venv/bin/python -m loadtests.bench_e2e --idle      # no client: the stack's CPU at rest

Runs against a stack that is already up (``make up``); it starts and stops nothing. The
endpoints default to the stack's ports (``MD_WS_PORT`` 8001, ``MD_AGGREGATOR_HTTP_PORT`` 8011,
``MD_AGGREGATOR_B_HTTP_PORT`` 8021, ``MD_FIX_HTTP_PORT`` 8014); flags override them. For
``--duration`` seconds:

1. one WebSocket client (the lean RFC 6455 client of ``loadtests/fanout_client.py``: no JSON
   parsing, the envelope fields are found by byte search) subscribed to l2, l3, trades, ticker,
   candles_1m and stats of ``--symbol`` takes, for every live data message, receipt time minus
   ``timestamp`` (aggregator publish) and minus ``event_time`` (upstream event), exact
   percentiles per channel. The receipt time is read once per socket read, when the bytes reach
   the client, for every message they carry: read per message, it also held the client's own
   parsing of the messages ahead in the same read (~20-50 µs each; a record's trades come after
   its l2 and l3 updates), which is the benchmark's cost, not the platform's. ``--per-message``
   reads it per message, as before the ninth session. Snapshots are replies, not live: the
   first message of each subscription, ``*_snapshot`` types, messages flagged ``resync`` and
   the catch-up messages published before their snapshot was served are left out of the
   latency, and so is everything before the window (a warm-up waits for every snapshot).
   Every data message is checked for continuity per (channel, symbol): ``seq`` +1 in the same
   ``epoch``; a snapshot sets the base; gaps, duplicates and epoch changes are counted.
2. the intermediate hops come from Prometheus histograms scraped from ``/metrics`` before and
   after the window: percentiles of the bucket-count deltas, interpolated linearly inside a
   bucket like ``histogram_quantile`` (so: bucket resolution, not exact). The aggregator's
   ``md_agg_hop_seconds{hop=event_to_append|append_to_publish}`` (every ``--agg-metrics`` URL
   that answers), gateway_ws's ``md_ws_hop_seconds{hop=publish_to_receive|publish_to_send}``
   and fix_gateway's ``md_fix_hop_seconds{hop=publish_to_receive}`` and
   ``fix_publish_to_send_seconds``. A histogram nobody exports prints ``n/a``. gateway_ws runs
   several workers on one port (SO_REUSEPORT) and each answers ``/metrics`` for itself, so the
   port is scraped until every worker has answered (``md_ws_worker_info{pid}`` tells them
   apart) and the workers' deltas are summed.
3. CPU: utime+stime from ``/proc/<pid>/stat`` over the window for every process of the stack:
   ``var/run/services/*.pid`` and their children (gateway_ws workers), ``var/run/kafka.pid``,
   ``var/run/redis.pid`` and PostgreSQL (postmaster and backends, summed), as % of one core,
   with the input rate (``md_agg_events_in_total``) so the CPU per 1,000 input events/s follows.

The client shares the machine with the stack: its own CPU is printed apart. ``--json FILE``
writes every number; ``--markdown`` prints the latency table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from core.codec import ns_from_iso
from loadtests.cleanup import STALE_PREFIXES
from loadtests.fanout_client import FanoutClient, Stats
from loadtests.fanout_stats import percentiles
from loadtests.machine_speed import reference_cpu_s, wakeup_us

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ("l2", "l3", "trades", "ticker", "candles_1m", "stats")
PCTS = (50, 99, 99.9, 100)
PCT_KEYS = ("p50", "p99", "p99.9", "max")
# the gateway's own messages (docs/websocket.md); everything else with a seq is stream data
CONTROL = frozenset(
    ["subscribed", "unsubscribed", "heartbeat", "pong", "error", "resync", "gateway_status"]
    + ["authenticated"]
)

# ------------------------------------------------------------------ client side (pure parts)

_TYPE = b'{"type":"'
_CHANNEL = b'"channel":"'
_SYMBOL = b'"symbol":"'
_SEQ = b'"seq":'
_EPOCH = b'"epoch":'
_TS = b'"timestamp":"'
_EVENT = b'"event_time":"'
_DATA = b'"data":'
_RESYNC_END = b'"resync":true}'


class IsoBytes:
    """Timestamps inside the received bytes -> ns since the epoch, cached per second prefix.

    ``ns(raw, i)`` with ``i`` at the first digit of ``2026-11-24T06:51:12.123456Z``: one slice
    and dict lookup for the first 19 characters, one ``int`` of the microseconds; the full
    parser only on a new second or another shape. Bounded: cleared at ``max_entries``.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._seconds: dict[bytes, int] = {}
        self.max_entries = max_entries

    def ns(self, raw: bytes, i: int) -> int:
        if len(raw) > i + 26 and raw[i + 26] == 0x5A and raw[i + 19] == 0x2E:  # "Z", "."
            key = raw[i : i + 19]
            base = self._seconds.get(key)
            if base is None:
                if len(self._seconds) >= self.max_entries:
                    self._seconds.clear()
                base = self._seconds[key] = ns_from_iso(key.decode() + "Z")
            return base + int(raw[i + 20 : i + 26]) * 1000
        return ns_from_iso(raw[i : raw.index(b'"', i)].decode())


def _str_at(raw: bytes, key: bytes, end: int) -> str | None:
    i = raw.find(key, 0, end)
    if i < 0:
        return None
    i += len(key)
    return raw[i : raw.index(b'"', i)].decode()


def _int_at(raw: bytes, key: bytes, end: int) -> int | None:
    i = raw.find(key, 0, end)
    if i < 0:
        return None
    i += len(key)
    j = raw.find(b",", i, end)
    try:
        return int(raw[i:j] if j > 0 else raw[i:end].rstrip(b"}"))
    except ValueError:
        return None


@dataclass(slots=True)
class Envelope:
    """The fields of a data message the bench needs; timestamps as offsets into the bytes."""

    type: str
    channel: str
    symbol: str
    seq: int
    epoch: int
    ts_at: int  # index of the first digit of ``timestamp``, -1 when absent
    event_at: int  # same for ``event_time`` (-1 when absent or null)
    resync: bool


def parse_envelope(raw: bytes) -> Envelope | str | None:
    """A data message's envelope, the ``type`` of anything else, None for unknown shapes.

    Byte search, no JSON parsing: the aggregator encodes the envelope before ``data``
    (docs/aggregator.md), so the keys are looked up in the bytes before ``"data":`` only.
    """
    if not raw.startswith(_TYPE):
        return None
    j = raw.find(b'"', 9)
    if j < 0:
        return None
    typ = raw[9:j].decode()
    if typ in CONTROL:
        return typ
    end = raw.find(_DATA)
    if end < 0:
        end = len(raw)
    channel = _str_at(raw, _CHANNEL, end)
    symbol = _str_at(raw, _SYMBOL, end)
    seq = _int_at(raw, _SEQ, end)
    if channel is None or symbol is None or seq is None:
        return typ
    epoch = _int_at(raw, _EPOCH, end) or 0
    ts = raw.find(_TS, 0, end)
    ev = raw.find(_EVENT, 0, end)
    return Envelope(
        typ,
        channel,
        symbol,
        seq,
        epoch,
        ts + len(_TS) if ts >= 0 else -1,
        ev + len(_EVENT) if ev >= 0 else -1,
        raw.endswith(_RESYNC_END),
    )


@dataclass(slots=True)
class ChannelStats:
    messages: int = 0  # data messages, snapshots included
    snapshots: int = 0
    resyncs: int = 0  # snapshots flagged "resync": true
    gaps: int = 0
    missed: int = 0  # seqs skipped by the gaps
    duplicates: int = 0  # seq <= last in the same epoch
    epoch_changes: int = 0
    catch_up: int = 0  # in the window but published before its snapshot was served
    resync_reasons: Counter[str] = field(default_factory=Counter)
    publish_ns: array[int] = field(default_factory=lambda: array("q"))
    event_ns: array[int] = field(default_factory=lambda: array("q"))


@dataclass(slots=True)
class _Key:
    seq: int = 0
    epoch: int | None = None
    base_pending: bool = True  # the next message is the (re)subscription's snapshot
    snapshot_ns: int = 0  # receipt time of the last snapshot


class Tracker:
    """Continuity and latency of every data message received; pure (time is passed in)."""

    def __init__(self) -> None:
        self.iso = IsoBytes()
        self.keys: dict[tuple[str, str], _Key] = {}
        self.channels: dict[str, ChannelStats] = {}
        self.measuring = False
        self.errors: list[str] = []
        self.control: Counter[str] = Counter()
        self.unknown = 0

    def stats(self, channel: str) -> ChannelStats:
        st = self.channels.get(channel)
        if st is None:
            st = self.channels[channel] = ChannelStats()
        return st

    def synced(self, keys: Iterable[tuple[str, str]]) -> bool:
        """Every key got its snapshot."""
        for k in keys:
            ks = self.keys.get(k)
            if ks is None or ks.base_pending:
                return False
        return True

    def feed(self, raw: bytes, recv_ns: int) -> None:
        env = parse_envelope(raw)
        if env is None:
            self.unknown += 1
            return
        if isinstance(env, str):
            self._control(env, raw)
            return
        key = (env.channel, env.symbol)
        ks = self.keys.get(key)
        if ks is None:
            ks = self.keys[key] = _Key()
        st = self.stats(env.channel)
        st.messages += 1
        if ks.base_pending or env.resync or env.type.endswith("_snapshot"):
            st.snapshots += 1
            if env.resync:
                st.resyncs += 1
            if ks.epoch is not None and env.epoch != ks.epoch:
                st.epoch_changes += 1
            ks.seq, ks.epoch, ks.base_pending, ks.snapshot_ns = env.seq, env.epoch, False, recv_ns
            return
        if env.epoch != ks.epoch:  # a new epoch always comes as a flagged snapshot: an anomaly
            st.epoch_changes += 1
            ks.epoch = env.epoch
        elif env.seq == ks.seq + 1:
            pass
        elif env.seq <= ks.seq:
            st.duplicates += 1
            return
        else:
            st.gaps += 1
            st.missed += env.seq - ks.seq - 1
        ks.seq = env.seq
        if not self.measuring or env.ts_at < 0:
            return
        pub = self.iso.ns(raw, env.ts_at)
        if pub < ks.snapshot_ns:  # served with the snapshot (l3/trades tail), not live
            st.catch_up += 1
            return
        st.publish_ns.append(recv_ns - pub)
        if env.event_at >= 0:
            st.event_ns.append(recv_ns - self.iso.ns(raw, env.event_at))

    def _control(self, typ: str, raw: bytes) -> None:
        self.control[typ] += 1
        if typ == "resync":
            msg = orjson.loads(raw)
            key = (str(msg.get("channel")), str(msg.get("symbol")))
            ks = self.keys.get(key)
            if ks is not None:
                ks.base_pending = True
            self.stats(key[0]).resync_reasons[str(msg.get("reason"))] += 1
        elif typ == "error":
            msg = orjson.loads(raw)
            self.errors.append(f"{msg.get('code')}: {msg.get('message')} ({msg.get('target')})")


class BenchClient(FanoutClient):
    """The fan-out benchmark's lean client, every message to a :class:`Tracker`, with the time
    its socket read brought it (module docstring; ``per_message``: the time it was parsed)."""

    tracker: Tracker
    per_message = False
    read_ns = 0

    def data_received(self, data: bytes) -> None:
        self.read_ns = time.time_ns()
        super().data_received(data)

    def _message(self, raw: bytes, st: Stats, start: int = 0) -> None:
        self.tracker.feed(raw, time.time_ns() if self.per_message else self.read_ns)


# ------------------------------------------------------------------ Prometheus (pure parts)

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]
INF = float("inf")


def parse_metrics(text: str) -> Series:
    from prometheus_client.parser import text_string_to_metric_families

    out: Series = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


@dataclass(slots=True)
class Hist:
    """A histogram's cumulative bucket counts by upper bound (``le``), its sum and count."""

    buckets: dict[float, float] = field(default_factory=dict)
    sum: float = 0.0
    count: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.buckets)

    def minus(self, before: Hist) -> Hist:
        """The increase since ``before``; a counter reset (a restart) counts from zero."""
        if not before or self.count < before.count:
            return Hist(dict(self.buckets), self.sum, self.count)
        return Hist(
            {le: max(0.0, c - before.buckets.get(le, 0.0)) for le, c in self.buckets.items()},
            self.sum - before.sum,
            self.count - before.count,
        )

    def plus(self, other: Hist) -> Hist:
        les = set(self.buckets) | set(other.buckets)
        return Hist(
            {le: self.buckets.get(le, 0.0) + other.buckets.get(le, 0.0) for le in les},
            self.sum + other.sum,
            self.count + other.count,
        )


def histogram(series: Series, name: str, match: dict[str, str] | None = None) -> Hist:
    """The histogram ``name`` summed over every series whose labels include ``match``."""
    want = set((match or {}).items())
    h = Hist()
    for (metric, labels), v in series.items():
        if not metric.startswith(name) or not want <= set(labels):
            continue
        suffix = metric[len(name) :]
        if suffix == "_bucket":
            le = dict(labels).get("le")
            if le is not None:
                b = float(le)
                h.buckets[b] = h.buckets.get(b, 0.0) + v
        elif suffix == "_sum":
            h.sum += v
        elif suffix == "_count":
            h.count += v
    return h


def bucket_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """``histogram_quantile`` of cumulative counts: linear inside the bucket holding rank q.

    The first bucket's lower bound is 0; a rank in the +Inf bucket returns the highest finite
    bound (what Prometheus does). None when the histogram is empty.
    """
    les = sorted(buckets)
    if not les:
        return None
    total = buckets[les[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        c = buckets[le]
        if c >= rank and c > prev_c:
            if le == INF:
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def max_bound(buckets: dict[float, float]) -> float | None:
    """Upper bound of the highest bucket that counted something (``inf``: beyond the last)."""
    prev = 0.0
    top = None
    for le in sorted(buckets):
        if buckets[le] > prev:
            top = le
        prev = buckets[le]
    return top


def hist_summary(h: Hist) -> dict[str, Any] | None:
    if not h or h.count <= 0:
        return None
    out: dict[str, Any] = {"n": int(h.count)}
    for key, q in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)):
        v = bucket_quantile(q, h.buckets)
        out[key] = None if v is None else v * 1000
    top = max_bound(h.buckets)
    out["max_le"] = None if top is None else top * 1000
    out["mean"] = h.sum / h.count * 1000
    return out


# ------------------------------------------------------------------ scraping (I/O)


def fetch(url: str, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()
    except (OSError, http.client.HTTPException, ValueError):  # down, refused, timeout: n/a
        return None


def scrape(url: str) -> Series | None:
    text = fetch(url)
    return None if text is None else parse_metrics(text)


def scrape_workers(url: str, expected: int | None, tries: int = 0) -> dict[str, Series]:
    """Scrape a port shared by worker processes until every worker answered, by its pid.

    The kernel spreads connections over the workers, so each scrape lands on one at random.
    ``expected`` workers (when known) ends the search early; otherwise it stops after 10
    scrapes in a row bring no new worker. A gateway without ``md_ws_worker_info`` cannot be
    told apart: its first answer stands for all.
    """
    seen: dict[str, Series] = {}
    tries = tries or max(16, 12 * (expected or 2))
    quiet = 0
    for _ in range(tries):
        s = scrape(url)
        if s is None:
            break
        pid = next(
            (dict(lb).get("pid") for (n, lb) in s if n == "md_ws_worker_info"),
            None,
        )
        if pid is None:
            seen.setdefault("?", s)
            break
        quiet = 0 if pid not in seen else quiet + 1
        seen[pid] = s  # the newest answer of each worker
        if expected is not None and len(seen) >= expected:
            break
        if expected is None and quiet >= 10:
            break
    return seen


# ------------------------------------------------------------------ CPU from /proc

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process, all its threads (``/proc/<pid>/stat`` fields 14, 15)."""
    f = _stat(pid)
    return None if f is None else int(f[11]) + int(f[12])


def parents() -> dict[int, int]:
    """pid -> ppid of every process."""
    out: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat(int(d))
            if f is not None:
                out[int(d)] = int(f[1])
    return out


def descendants(pid: int, ppids: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for p, pp in ppids.items():
        children.setdefault(pp, []).append(p)
    out: list[int] = []
    todo = [pid]
    while todo:
        for c in sorted(children.get(todo.pop(), ())):
            out.append(c)
            todo.append(c)
    return out


def _pid_file(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def postmaster(root: Path, ppids: dict[int, int]) -> int | None:
    """The project's PostgreSQL postmaster: its pid file, else a ``postgres`` process whose
    parent is not one and whose command line names our data directory or port."""
    for f in (root / "var/postgres/postmaster.pid", root / "var/postgres-data/data/postmaster.pid"):
        pid = _pid_file(f)
        if pid is not None:
            return pid
    port = os.environ.get("MD_PG_PORT", "15432")
    for pid, pp in ppids.items():
        cmd = _cmdline(pid)
        ours = str(root / "var") in cmd or f"-p {port}" in cmd
        postgres = cmd.split(" ")[0].endswith("postgres")
        if ours and postgres and not _cmdline(pp).split(" ")[0].endswith("postgres"):
            return pid  # the postmaster: a postgres whose parent is not one
    return None


@dataclass(slots=True)
class ProcGroup:
    name: str
    pids: list[int]


def stack_processes(root: Path) -> list[ProcGroup]:
    """Every process of the running stack: services (and children), Kafka, Redis, PostgreSQL."""
    ppids = parents()
    run = root / "var" / "run"
    groups: list[ProcGroup] = []
    for f in sorted((run / "services").glob("*.pid")):
        pid = _pid_file(f)
        if pid is None:
            continue
        groups.append(ProcGroup(f.stem, [pid]))
        kids = descendants(pid, ppids)
        label = "worker" if f.stem == "gateway_ws" else "child"
        groups += [ProcGroup(f"{f.stem} {label}", [k]) for k in kids]
    for name in ("kafka", "redis"):
        pid = _pid_file(run / f"{name}.pid")
        if pid is not None:
            groups.append(ProcGroup(name, [pid, *descendants(pid, ppids)]))
    pm = postmaster(root, ppids)
    if pm is not None:
        groups.append(ProcGroup("postgres", [pm, *descendants(pm, ppids)]))
    return groups


def cpu_snapshot(groups: Sequence[ProcGroup]) -> dict[int, int]:
    out: dict[int, int] = {}
    for g in groups:
        for pid in g.pids:
            t = cpu_ticks(pid)
            if t is not None:
                out[pid] = t
    return out


def cpu_rows(
    groups: Sequence[ProcGroup],
    before: dict[int, int],
    after: dict[int, int],
    seconds: float,
) -> list[dict[str, Any]]:
    """CPU % of one core per group. A process seen only at the end started inside the window
    (a PostgreSQL backend, a restarted worker): all its CPU counts. One that ended is lost."""
    rows = []
    for g in groups:
        ticks = sum(after[p] - before.get(p, 0) for p in g.pids if p in after)
        rows.append(
            {
                "process": g.name,
                "pids": g.pids,
                "cpu_pct": ticks / CLK_TCK / seconds * 100 if seconds > 0 else 0.0,
            }
        )
    return rows


# ------------------------------------------------------------------ run


@dataclass(slots=True)
class Sources:
    agg: dict[str, Series] = field(default_factory=dict)
    ws: dict[str, Series] = field(default_factory=dict)
    fix: Series | None = None
    at: float = 0.0  # monotonic, middle of the scrapes
    wall: float = 0.0  # time.time() when the scrapes began


def collect(args: argparse.Namespace, ws_expected: int | None) -> Sources:
    src = Sources(at=time.monotonic(), wall=time.time())
    for url in args.agg_metrics:
        s = scrape(url)
        if s is not None:
            src.agg[url] = s
    if args.ws_metrics:
        src.ws = scrape_workers(args.ws_metrics, ws_expected)
    if args.fix_metrics:
        src.fix = scrape(args.fix_metrics)
    src.at = (src.at + time.monotonic()) / 2
    return src


# (service, hop as printed, histogram, value of its "hop" label or "" for an unlabelled one)
HOPS = (
    ("aggregator", "upstream event -> md.in append", "md_agg_hop_seconds", "event_to_append"),
    ("aggregator", "md.in append -> publish", "md_agg_hop_seconds", "append_to_publish"),
    ("gateway_ws", "publish -> gateway receive", "md_ws_hop_seconds", "publish_to_receive"),
    ("gateway_ws", "publish -> written to clients", "md_ws_hop_seconds", "publish_to_send"),
    ("fix_gateway", "publish -> gateway receive", "md_fix_hop_seconds", "publish_to_receive"),
    ("fix_gateway", "publish -> framed for sessions", "fix_publish_to_send_seconds", ""),
)


def _pairs(service: str, before: Sources, after: Sources) -> list[tuple[Series, Series]]:
    if service == "aggregator":
        return [(before.agg[u], after.agg[u]) for u in after.agg if u in before.agg]
    if service == "fix_gateway":
        return [(before.fix, after.fix)] if before.fix and after.fix else []
    out: list[tuple[Series, Series]] = []
    for pid, s in after.ws.items():
        if pid in before.ws:
            out.append((before.ws[pid], s))
        elif _started(s) >= before.wall:  # a worker (re)started inside the window: from 0
            out.append(({}, s))
        # else it existed before but no scrape reached it then: its delta is unknown
    return out


def _started(s: Series) -> float:
    return s.get(("process_start_time_seconds", ()), 0.0)


def hop_deltas(before: Sources, after: Sources) -> list[dict[str, Any]]:
    out = []
    for service, title, name, hop in HOPS:
        match = {"hop": hop} if hop else {}
        pairs = _pairs(service, before, after)
        total = Hist()
        for b, a in pairs:
            total = total.plus(histogram(a, name, match).minus(histogram(b, name, match)))
        out.append(
            {
                "service": service,
                "hop": title,
                "metric": f'{name}{{hop="{hop}"}}' if hop else name,
                "sources": len(pairs),
                "summary": hist_summary(total),
            }
        )
    return out


def events_in(src: Sources) -> float:
    return sum(
        v for s in src.agg.values() for (n, _), v in s.items() if n == "md_agg_events_in_total"
    )


def ws_workers_expected(root: Path, ws_url: str) -> int | None:
    """Workers of the stack's gateway_ws when the bench targets its port, else unknown."""
    port = urlsplit(ws_url).port
    if port != int(os.environ.get("MD_WS_PORT", "8001")):
        return None
    pid = _pid_file(root / "var/run/services/gateway_ws.pid")
    if pid is None:
        return None
    return len(descendants(pid, parents())) or 1


def leftover_topics(names: Iterable[str]) -> int:
    """How many of ``names`` are topics of test or benchmark runs (``make clean-topics``)."""
    pre = tuple(f"{p}." for p in STALE_PREFIXES)
    return sum(1 for n in names if n.startswith(pre))


async def broker_leftovers() -> int | None:
    """Topics that killed test and benchmark runs left on the stack's broker; None when it
    cannot be asked. Each one costs the broker's housekeeping and every client's metadata
    refresh: 331 of them made the idle stack cost 31.6 % of a core instead of 24.2 % (fifth
    session), and 55 were there, unseen, in the eleventh session's first runs."""
    from aiokafka.admin import AIOKafkaAdminClient

    from core.kafka_auth import kafka_security_options
    from core.settings import Settings

    s = Settings.from_env()
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, **kafka_security_options(s))
    try:
        await asyncio.wait_for(admin.start(), 5)
        return leftover_topics(await asyncio.wait_for(admin.list_topics(), 5))
    except Exception:  # noqa: BLE001 - a benchmark's side note, never its failure
        return None
    finally:
        await admin.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.root)
    ws_expected = args.ws_workers or ws_workers_expected(root, args.url)
    tracker = Tracker()
    client: BenchClient | None = None
    keys = [(ch, args.symbol) for ch in args.channels]
    warmup = 0.0
    if not args.idle:
        u = urlsplit(args.url)
        host, port = u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "wss" else 80)
        path = u.path + (f"?{u.query}" if u.query else "")
        sub = orjson.dumps({"type": "subscribe", "channels": [f"{c}:{s}" for c, s in keys]})
        loop = asyncio.get_running_loop()

        def make() -> BenchClient:
            c = BenchClient(host, port, path or "/ws", sub, Stats())
            c.tracker = tracker
            c.per_message = args.per_message
            return c

        ctx = ssl.create_default_context() if u.scheme == "wss" else None
        t = time.monotonic()
        _, client = await loop.create_connection(make, host, port, ssl=ctx)
        await asyncio.wait_for(client.ready, 10)
        deadline = t + args.warmup_max
        while not tracker.synced(keys) and time.monotonic() < deadline:  # noqa: ASYNC110 - polled protocol state
            await asyncio.sleep(0.05)
        await asyncio.sleep(args.settle)  # l3/trades catch-up tails after their snapshots
        warmup = time.monotonic() - t

    # the host's speed just before and after the window: CPU figures are read beside it
    ref_before = await asyncio.to_thread(reference_cpu_s)
    wake_before = await asyncio.to_thread(wakeup_us)
    leftovers = await broker_leftovers()
    before = collect(args, ws_expected)
    await asyncio.sleep(0.1)  # what queued in the socket during the scrapes is read first
    groups = stack_processes(root)
    cpu0 = cpu_snapshot(groups)
    own0 = time.process_time()
    t0 = time.monotonic()
    tracker.measuring = True
    await asyncio.sleep(args.duration)
    tracker.measuring = False
    t1 = time.monotonic()
    own1 = time.process_time()
    cpu1 = cpu_snapshot(groups)
    # processes born inside the window (PostgreSQL backends, a restarted worker): all their CPU
    known = {p for g in groups for p in g.pids}
    for g in stack_processes(root):
        new = [p for p in g.pids if p not in known]
        pg = next((x for x in groups if x.name == "postgres"), None) if new else None
        if g.name == "postgres" and pg is not None:
            pg.pids += new
        elif new:
            groups.append(ProcGroup(g.name, new))
        cpu1.update(cpu_snapshot([ProcGroup(g.name, new)]))
    after = collect(args, ws_expected)
    lost = client is not None and client.done.done()
    ref_after = await asyncio.to_thread(reference_cpu_s)
    wake_after = await asyncio.to_thread(wakeup_us)
    if client is not None and client.transport is not None:
        client.transport.close()

    window = t1 - t0
    rows = cpu_rows(groups, cpu0, cpu1, window)
    total = sum(r["cpu_pct"] for r in rows)
    scrape_s = after.at - before.at
    rate = (events_in(after) - events_in(before)) / scrape_s if after.agg and scrape_s > 0 else None

    channels: dict[str, Any] = {}
    all_pub: array[int] = array("q")
    all_ev: array[int] = array("q")
    for ch in [*args.channels, *sorted(set(tracker.channels) - set(args.channels))]:
        st = tracker.channels.get(ch)
        if st is None:
            continue
        all_pub.extend(st.publish_ns)
        all_ev.extend(st.event_ns)
        channels[ch] = _channel_entry(st)
    agg_all = ChannelStats(publish_ns=all_pub, event_ns=all_ev)
    return {
        "config": {
            "url": None if args.idle else args.url,
            "symbol": None if args.idle else args.symbol,
            "channels": [] if args.idle else list(args.channels),
            "idle": args.idle,
            "receipt": "per message" if args.per_message else "per socket read",
            "duration_s": args.duration,
            "commit": _commit(root),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average": _loadavg(),
            "cpus": os.cpu_count(),
            "reference_cpu_s": [ref_before, ref_after],
            "wakeup_us": [wake_before, wake_after],
            "leftover_topics": leftovers,
        },
        "window_s": window,
        "warmup_s": warmup,
        "client": None
        if args.idle
        else {
            "channels": channels,
            "all": _latency(agg_all),
            "errors": tracker.errors,
            "control": dict(tracker.control),
            "unparsed": tracker.unknown,
            "disconnected": lost,
        },
        "hops": hop_deltas(before, after),
        "metrics_sources": {
            "aggregator": {u: (u in before.agg and u in after.agg) for u in args.agg_metrics},
            "gateway_ws_workers": sorted(set(before.ws) | set(after.ws)),
            "fix_gateway": after.fix is not None,
        },
        "cpu": {
            "processes": rows,
            "total_pct": total,
            "client_pct": (own1 - own0) / window * 100 if window > 0 else 0.0,
            "input_events_per_s": rate,
            "pct_per_1k_events_per_s": total / (rate / 1000) if rate else None,
        },
    }


def _ms(ns_samples: Sequence[int]) -> dict[str, float | None]:
    if not ns_samples:
        return {k: None for k in PCT_KEYS}
    p = percentiles(ns_samples, PCTS)
    return {k: p[k] / 1e6 for k in PCT_KEYS}


def _latency(st: ChannelStats) -> dict[str, Any]:
    return {
        "n": len(st.publish_ns),
        "publish_to_client_ms": _ms(st.publish_ns),
        "n_event": len(st.event_ns),
        "event_to_client_ms": _ms(st.event_ns),
    }


def _channel_entry(st: ChannelStats) -> dict[str, Any]:
    return {
        **_latency(st),
        "messages": st.messages,
        "snapshots": st.snapshots,
        "resyncs": st.resyncs,
        "resync_reasons": dict(st.resync_reasons),
        "gaps": st.gaps,
        "missed": st.missed,
        "duplicates": st.duplicates,
        "epoch_changes": st.epoch_changes,
        "catch_up_excluded": st.catch_up,
    }


def _commit(root: Path) -> str | None:
    try:
        r = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except OSError:
        return None


# ------------------------------------------------------------------ output


def _f(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = []
    for r in [head, *rows]:
        cells = [
            str(c).ljust(w) if i < left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


LATENCY_HEAD = [
    "channel",
    "n",
    "pub p50",
    "p99",
    "p99.9",
    "max",
    "event p50",
    "p99",
    "p99.9",
    "max",
]
CONTINUITY = ("messages", "snapshots", "resyncs", "gaps", "missed", "duplicates")
CONTINUITY_HEAD = ["channel", *CONTINUITY, "epoch changes", "catch-up"]
HOP_HEAD = ["service", "hop", "n", "p50", "p99", "p99.9", "max <=", "mean", "metric"]


def _client_report(cl: dict[str, Any]) -> list[str]:
    rows = []
    for name, e in [*cl["channels"].items(), ("all", cl["all"])]:
        pub, ev = e["publish_to_client_ms"], e["event_to_client_ms"]
        rows.append(
            [name, str(e["n"]), *(_f(pub[k]) for k in PCT_KEYS)] + [_f(ev[k]) for k in PCT_KEYS]
        )
    out = [
        "",
        "Client-measured latency, ms (exact, every live data message; snapshots, their catch-up",
        "and the warm-up excluded). pub: aggregator publish (timestamp) -> client receipt;",
        "event: upstream event_time -> client receipt (the socket read that brought it;",
        "--per-message: when the client parsed it)",
        _table(LATENCY_HEAD, rows),
        "",
        "Continuity per (channel, symbol): seq +1 per message in one epoch; snapshots set the base",
    ]
    rows = [
        [name, *(str(e[k]) for k in (*CONTINUITY, "epoch_changes", "catch_up_excluded"))]
        for name, e in cl["channels"].items()
    ]
    out.append(_table(CONTINUITY_HEAD, rows))
    out += [
        f"  {n} resync reasons: {e['resync_reasons']}"
        for n, e in cl["channels"].items()
        if e["resync_reasons"]
    ]
    out += [f"  server error: {err}" for err in cl["errors"]]
    if cl["disconnected"]:
        out.append("  the client was disconnected during the run")
    return out


def _hop_report(res: dict[str, Any]) -> list[str]:
    rows = []
    for h in res["hops"]:
        s = h["summary"]
        vals = (
            ["n/a"] * 6
            if s is None
            else [str(s["n"])] + [_f(s[k]) for k in ("p50", "p99", "p99.9", "max_le", "mean")]
        )
        rows.append([h["service"], h["hop"], *vals, h["metric"]])
    src = res["metrics_sources"]
    agg = ", ".join(f"{u} {'ok' if ok else 'no answer'}" for u, ok in src["aggregator"].items())
    workers = ", ".join(src["gateway_ws_workers"]) or "none"
    return [
        "",
        "Hops from /metrics histograms, ms, at bucket resolution: deltas over the window,",
        "percentiles interpolated linearly inside a bucket, max = upper bound of the highest",
        "non-empty bucket; n/a = nobody exports the histogram (yet)",
        _table(HOP_HEAD, rows, left=2),
        f"  aggregator metrics: {agg}",
        f"  gateway_ws workers scraped (pid): {workers}",
        f"  fix_gateway metrics: {'ok' if src['fix_gateway'] else 'no answer'}",
    ]


def _cpu_report(res: dict[str, Any]) -> list[str]:
    cpu = res["cpu"]
    rows = []
    for r in cpu["processes"]:
        pids = r["pids"]
        shown = ",".join(map(str, pids)) if len(pids) < 4 else f"{len(pids)} processes"
        rows.append([r["process"], shown, _f(r["cpu_pct"], 1)])
    rows.append(["total (stack)", "", _f(cpu["total_pct"], 1)])
    rows.append(["bench client (not in total)", str(os.getpid()), _f(cpu["client_pct"], 1)])
    return [
        "",
        f"CPU over the {res['window_s']:.1f} s window, % of one core (utime+stime, /proc/<pid>/stat)",
        _table(["process", "pid", "cpu %"], rows, left=2),
        f"  input: {_f(cpu['input_events_per_s'], 1)} events/s (md_agg_events_in_total deltas)"
        f" -> {_f(cpu['pct_per_1k_events_per_s'], 1)} % of one core per 1,000 input events/s",
        "  host speed: reference workload (loadtests/machine_speed.py) "
        + " / ".join(_f(v, 3) + " s" for v in res["config"].get("reference_cpu_s", []))
        + " CPU before / after the window (lower = faster; CPU % scale with it)",
        "  host wake-up: one-way loopback hop to a sleeping process (loadtests/machine_speed.py) "
        + " / ".join(_f(v, 0) + " us" for v in res["config"].get("wakeup_us", []))
        + " before / after (every hop of the latency path pays one)",
        *_leftover_line(res["config"].get("leftover_topics")),
    ]


def _leftover_line(n: int | None) -> list[str]:
    if not n:
        return []
    return [
        f"  WARNING: the broker holds {n} topics of killed test or benchmark runs: its CPU and"
        " every client's read high; `make clean-topics` (while nothing else runs) removes them"
    ]


def report(res: dict[str, Any]) -> str:
    cfg = res["config"]
    if cfg["idle"]:
        title = f"bench_e2e --idle: no client, {res['window_s']:.1f} s window"
    else:
        title = (
            f"bench_e2e: {cfg['url']} {cfg['symbol']} {','.join(cfg['channels'])}: "
            f"{res['window_s']:.1f} s measured after {res['warmup_s']:.1f} s warm-up"
        )
    out = [title, f"commit {cfg['commit']}, {cfg['cpus']} CPUs, load {_f(cfg['load_average'])}"]
    if res["client"] is not None:
        out += _client_report(res["client"])
    out += _hop_report(res)
    out += _cpu_report(res)
    return "\n".join(out)


def markdown(res: dict[str, Any]) -> str:
    cl = res["client"]
    if cl is None:
        return "(--idle: no client latency)"
    head = "channel|n|publish->client p50|p99|p99.9|max|event->client p50|p99|p99.9|max"
    lines = [f"| {head.replace('|', ' | ')} |", "| --- |" + " ---: |" * 9]
    for name, e in [*cl["channels"].items(), ("all", cl["all"])]:
        pub, ev = e["publish_to_client_ms"], e["event_to_client_ms"]
        cells = [name, str(e["n"])]
        cells += [_unit(pub[k]) for k in PCT_KEYS] + [_unit(ev[k]) for k in PCT_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _unit(ms: float | None) -> str:
    return "n/a" if ms is None else f"{ms:.2f} ms"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ws_port = os.environ.get("MD_WS_PORT", "8001")
    agg_port = os.environ.get("MD_AGGREGATOR_HTTP_PORT", "8011")
    agg_b_port = os.environ.get("MD_AGGREGATOR_B_HTTP_PORT", "8021")  # services.conf aggregator_b
    fix_port = os.environ.get("MD_FIX_HTTP_PORT", "8014")
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench_e2e",
        description="End-to-end latency per hop, stream continuity and CPU of the running stack.",
    )
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    p.add_argument("--symbol", default="BTC-USD")
    p.add_argument(
        "--channels", default=",".join(CHANNELS), help=f"comma-separated ({','.join(CHANNELS)})"
    )
    p.add_argument("--url", default=f"ws://127.0.0.1:{ws_port}/ws", help="WebSocket endpoint")
    p.add_argument(
        "--agg-metrics",
        action="append",
        default=None,
        metavar="URL",
        help=f"aggregator /metrics, repeatable (default :{agg_port} and :{agg_b_port}; "
        "the ones that do not answer are skipped)",
    )
    p.add_argument("--ws-metrics", default=None, help="gateway_ws /metrics (default: from --url)")
    p.add_argument("--ws-workers", type=int, default=None, help="gateway_ws workers to scrape")
    p.add_argument("--fix-metrics", default=f"http://127.0.0.1:{fix_port}/metrics")
    p.add_argument("--idle", action="store_true", help="no client: only CPU, input rate, hops")
    p.add_argument(
        "--per-message",
        action="store_true",
        help="receipt time read per message, after the client parsed the ones ahead in its read",
    )
    p.add_argument("--warmup-max", type=float, default=5.0, help="longest wait for snapshots (s)")
    p.add_argument("--settle", type=float, default=0.5, help="wait after the snapshots (s)")
    p.add_argument("--json", metavar="FILE", help="write every number as JSON")
    p.add_argument("--markdown", action="store_true", help="print the docs/benchmarks.md table")
    p.add_argument("--root", default=str(ROOT), help="checkout whose var/run has the pid files")
    a = p.parse_args(argv)
    a.channels = [c.strip() for c in a.channels.split(",") if c.strip()]
    if a.agg_metrics is None:
        a.agg_metrics = list(
            dict.fromkeys([f"http://127.0.0.1:{p}/metrics" for p in (agg_port, agg_b_port)])
        )
    if a.ws_metrics is None:
        u = urlsplit(a.url)
        scheme = "https" if u.scheme == "wss" else "http"
        a.ws_metrics = f"{scheme}://{u.netloc}/metrics"
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        res = runner(run(args))
    except (OSError, TimeoutError) as exc:
        print(f"bench_e2e: cannot reach {args.url} ({exc!r}); is the stack up (make up)?")
        return 1
    print(report(res))
    if args.markdown:
        print()
        print(markdown(res))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
