"""Aggregator throughput: book events per second, in process and end to end through Kafka.

``python -m loadtests.bench_aggregator [--events N] [--symbols K] [--skip-kafka]``
(``make bench-aggregator``). Numbers go to docs/benchmarks.md "## Aggregator".

In-process rates are per CPU-second of this process (``time.process_time``), because the 2-core
machine is shared with the broker and other services; the Kafka rate is wall clock *and* per
CPU-second of the aggregator process (from /proc), so contention is visible, not hidden.

1. **state**: pre-decoded simulator events applied to ``SymbolState`` with a flush (message
   building) every ``--batch`` events: the derivation alone.
2. **in process**: the aggregator's whole per-record path without the network: decode the md.in
   bytes, apply, flush, encode every output message with orjson.
3. **through Kafka**: the records are first written to a fresh ``bench.<id>.in`` topic (not
   timed), then one ``python -m aggregator`` process (the leader: it publishes everything)
   consumes them from the start; the rate is events / time from its first committed offset to
   the committed offset reaching the end of the input (start-up excluded, reported separately).

Records: by default as the simulator writes them (``--actions-per-record 4``: one record per
symbol and 20 ms tick at 200 actions/s), one flush per record: the sequencer's conflation unit
(docs/aggregator.md "Sequencer and failover"). ``--actions-per-record 0`` runs the old in-process
shape (one event per record, a flush every ``--batch`` events).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

from aggregator import events as ev
from aggregator.sources.flow import OrderFlow
from aggregator.state import SymbolState
from aggregator.testing import delete_topics
from core.kafka import ensure_topics, make_producer
from core.settings import Settings
from core.topics import Topics
from loadtests.bench_e2e import parse_metrics
from testkit.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
SYMS = ["BTC-USD", "ETH-USD", "LTC-USD", "SOL-USD", "ADA-USD", "XRP-USD", "DOT-USD", "AVAX-USD"]
T0 = 1_795_500_000_000_000_000


def generate(n: int, k: int) -> list[ev.AnyEvent]:
    return [e for rec in generate_records(n, k, 1) for e in rec][:n]


def generate_records(n: int, k: int, actions: int) -> list[list[ev.AnyEvent]]:
    """md.in records as the simulator writes them: the events of ``actions`` consecutive
    actions of one symbol per record (its 20 ms tick holds 4 at the default 200 actions/s)."""
    flows = [OrderFlow(s, 42) for s in SYMS[:k]]
    out: list[list[ev.AnyEvent]] = []
    total, i = 0, 0
    while total < n:
        for f in flows:
            rec: list[ev.AnyEvent] = []
            for j in range(actions):
                rec.extend(f.step(T0 + (i * actions + j) * 1_000_000))
            if rec:
                out.append(rec)
                total += len(rec)
        i += 1
    return out


def bench_state(events: list[ev.AnyEvent], batch: int) -> float:
    states = {sym: SymbolState(sym, 1) for sym in {e.symbol for e in events}}
    t = time.process_time()
    for i, e in enumerate(events, 1):
        states[e.symbol].apply(e)
        if i % batch == 0:
            for s in states.values():
                s.flush(0)
    for s in states.values():
        s.flush(0)
    return len(events) / (time.process_time() - t)


def bench_in_process(raw: list[bytes], batch: int) -> tuple[float, int]:
    states: dict[str, SymbolState] = {}
    out_msgs = 0
    dumps = orjson.dumps
    t = time.process_time()
    touched: set[str] = set()
    for i, b in enumerate(raw, 1):
        e = ev.decode(b)
        s = states.get(e.symbol)
        if s is None:
            s = states[e.symbol] = SymbolState(e.symbol, 1)
        s.apply(e)
        touched.add(e.symbol)
        if i % batch == 0:
            for sym in touched:
                for _ch, m in states[sym].flush(0):
                    dumps(m)
                    out_msgs += 1
            touched.clear()
    return len(raw) / (time.process_time() - t), out_msgs


def bench_records(raw: list[bytes]) -> tuple[float, int]:
    """The aggregator's per-record path: decode a record, apply its events, flush, encode."""
    states: dict[str, SymbolState] = {}
    out_msgs = 0
    n = 0
    dumps = orjson.dumps
    t = time.process_time()
    for b in raw:
        evs = ev.decode_record(b)
        s = states.get(evs[0].symbol)
        if s is None:
            s = states[evs[0].symbol] = SymbolState(evs[0].symbol, 1)
        for e in evs:
            s.apply(e)
        n += len(evs)
        for _ch, m in s.flush(0):
            dumps(m)
            out_msgs += 1
    return n / (time.process_time() - t), out_msgs


async def bench_kafka(raw: list[tuple[str, bytes]], events: int | None = None) -> dict[str, float]:
    """One ``python -m aggregator`` leads an empty input first; then the records are written and
    it derives and publishes them as they arrive. (Writing them first made it derive everything
    as a standby during its start-up lease and publish from its buffer at the claim: no leader
    rate to measure.) Done when its ``md_agg_events_in_total`` reaches the events written."""
    base = Settings.from_env()
    s = dataclasses.replace(base, topic_prefix=f"bench.{uuid.uuid4().hex[:8]}")
    await ensure_topics(s)
    t = Topics.from_settings(s)
    port = free_port()
    env = dict(
        os.environ,
        MD_TOPIC_PREFIX=s.topic_prefix,
        MD_AGGREGATOR_HTTP_PORT=str(port),
        MD_LOG_LEVEL="WARNING",
    )
    total = sum(len(ev.decode_record(b)) for _, b in raw)
    t_start = time.monotonic()
    proc = _start_aggregator(env)
    try:
        while _role(port) != "leader":
            if time.monotonic() - t_start > 60:
                raise TimeoutError("the aggregator did not lead an empty input")
            await asyncio.sleep(0.1)
        t_first, cpu0, done0 = time.monotonic(), _cpu_s(proc.pid), _events_in(port)
        prod = make_producer(s, linger_ms=20)
        await prod.start()
        futs = [await prod.send(t.input, value=b, key=sym.encode()) for sym, b in raw]
        await asyncio.gather(*futs)
        await prod.stop()
        while _events_in(port) - done0 < total:
            if time.monotonic() - t_first > 600:
                raise TimeoutError("aggregator did not catch up")
            await asyncio.sleep(0.02)
        t_end = time.monotonic()
        cpu = _cpu_s(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(30)
    await delete_topics(s)
    return {
        "events": float(total),
        "join_s": t_first - t_start,
        "run_s": t_end - t_first,
        "rate": total / max(t_end - t_first, 1e-9),
        "cpu_rate": total / max(cpu, 1e-9),
    }


def _get(port: int, path: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
        return bytes(r.read())


def _role(port: int) -> str | None:
    try:
        return str(orjson.loads(_get(port, "/health"))["checks"]["consumer"]["detail"]["role"])
    except (OSError, ValueError, KeyError):
        return None


def _events_in(port: int) -> int:
    """Input events the aggregator applied so far (its counter, summed over event types)."""
    series = parse_metrics(_get(port, "/metrics").decode())
    return int(sum(v for (name, _), v in series.items() if name == "md_agg_events_in_total"))


def _start_aggregator(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "aggregator"], cwd=ROOT, env=env)


def _cpu_s(pid: int) -> float:
    """utime + stime of a process in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def compare_clients(values: list[tuple[bytes, bytes]]) -> dict[str, tuple[float, float]]:
    """Producer cost per record: aiokafka ``send()``, aiokafka ``send_batch``, confluent-kafka
    (librdkafka), all idempotent with acks=all, into a fresh topic. Returns name -> (records/s wall,
    records per CPU-second of this process; librdkafka's own threads are included)."""
    from aiokafka.partitioner import DefaultPartitioner

    base = Settings.from_env()
    s = dataclasses.replace(base, topic_prefix=f"bench.{uuid.uuid4().hex[:8]}")
    await ensure_topics(s)
    topic = Topics.from_settings(s).stream("l2")
    out: dict[str, tuple[float, float]] = {}

    def clock() -> tuple[float, float]:
        return time.monotonic(), time.process_time()

    prod = make_producer(s)
    await prod.start()
    w0, c0 = clock()
    futs = [await prod.send(topic, value=v, key=k) for k, v in values]
    await asyncio.gather(*futs)
    w1, c1 = clock()
    out["aiokafka send()"] = (len(values) / (w1 - w0), len(values) / (c1 - c0))
    await prod.stop()

    prod = make_producer(s)
    await prod.start()
    await prod.client._wait_on_metadata(topic)  # noqa: SLF001
    parts = sorted(prod.client.cluster.partitions_for_topic(topic) or ())
    part_of = DefaultPartitioner()
    w0, c0 = clock()
    builders: dict[int, object] = {}
    sent = []
    for k, v in values:
        p = part_of(k, parts, parts)
        b = builders.get(p)
        if b is None:
            b = builders[p] = prod.create_batch()
        if b.append(key=k, value=v, timestamp=None) is None:  # type: ignore[attr-defined]
            sent.append(await prod.send_batch(b, topic, partition=p))
            b = builders[p] = prod.create_batch()
            b.append(key=k, value=v, timestamp=None)
    for p, b in builders.items():
        sent.append(await prod.send_batch(b, topic, partition=p))
    await asyncio.gather(*sent)
    w1, c1 = clock()
    out["aiokafka create_batch/send_batch"] = (len(values) / (w1 - w0), len(values) / (c1 - c0))
    await prod.stop()

    try:
        import confluent_kafka
    except ImportError:
        return out
    cp = confluent_kafka.Producer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "batch.size": 1 << 20,
            "queue.buffering.max.messages": 2_000_000,
        }
    )
    w0, c0 = clock()
    for k, v in values:
        while True:
            try:
                cp.produce(topic, value=v, key=k)
                break
            except BufferError:
                cp.poll(0.01)
    cp.flush(60)
    w1, c1 = clock()
    out[f"confluent-kafka {confluent_kafka.version()} produce()"] = (
        len(values) / (w1 - w0),
        len(values) / (c1 - c0),
    )
    await delete_topics(s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--symbols", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500, help="events per flush (a consumed batch)")
    ap.add_argument("--skip-kafka", action="store_true")
    ap.add_argument(
        "--actions-per-record",
        type=int,
        default=4,
        help="md.in records hold this many actions of one symbol (0: the old one event per "
        "record with a flush every --batch events, in process only)",
    )
    ap.add_argument(
        "--compare-clients",
        action="store_true",
        help="only compare producer clients on the aggregator's real output records",
    )
    a = ap.parse_args()
    if a.compare_clients:
        # the aggregator's actual output: l2/l3/trade/... messages built from simulator events
        evs = generate(a.events, a.symbols)
        states: dict[str, SymbolState] = {}
        msgs: list[tuple[bytes, bytes]] = []
        for i, e in enumerate(evs, 1):
            states.setdefault(e.symbol, SymbolState(e.symbol, 1)).apply(e)
            if i % a.batch == 0:
                for st in states.values():
                    msgs.extend((st.symbol.encode(), orjson.dumps(m)) for _c, m in st.flush(0))
        print(f"{len(msgs)} records, mean {sum(len(v) for _, v in msgs) / len(msgs):.0f} B")
        for name, (wall, cpu) in asyncio.run(compare_clients(msgs)).items():
            print(f"{name:45s} {wall:>10,.0f} records/s wall {cpu:>10,.0f} per CPU-s")
        return
    events = generate(a.events, a.symbols)
    raw = [ev.encode(e) for e in events]
    print(f"machine: {platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}")
    print(f"events: {len(events)} over {a.symbols} symbols, flush every {a.batch}")
    if a.actions_per_record:
        # the production shape: one md.in record per symbol and tick, one flush per record
        recs = generate_records(a.events, a.symbols, a.actions_per_record)
        n_ev = sum(len(r) for r in recs)
        print(
            f"records: {len(recs)} of {a.actions_per_record} actions "
            f"({n_ev / len(recs):.1f} events each), one flush per record"
        )
        r2, outs = bench_records([ev.encode_record(r) for r in recs])
        print(
            f"in process, per record (decode+apply+flush+encode): {r2:,.0f} events per CPU-second  ({outs} messages)"
        )
        if not a.skip_kafka:
            res = asyncio.run(
                bench_kafka([(r[0].symbol, ev.encode_record(r)) for r in recs], events=n_ev)
            )
            print(
                f"through Kafka (leader, records):   {res['rate']:,.0f} events/s wall, "
                f"{res['cpu_rate']:,.0f} events per aggregator CPU-second "
                f"({res['events']:.0f} events in {res['run_s']:.2f} s; start-up {res['join_s']:.2f} s)"
            )
        return
    r1 = bench_state(events, a.batch)
    print(f"state (apply+flush):                 {r1:,.0f} events per CPU-second")
    r2, outs = bench_in_process(raw, a.batch)
    print(
        f"in process (decode+apply+encode):    {r2:,.0f} events per CPU-second  ({outs} messages)"
    )
    if not a.skip_kafka:
        res = asyncio.run(bench_kafka([(e.symbol, b) for e, b in zip(events, raw, strict=True)]))
        print(
            f"through Kafka (1 aggregator process): {res['rate']:,.0f} events/s wall, "
            f"{res['cpu_rate']:,.0f} events per aggregator CPU-second "
            f"({res['events']:.0f} events in {res['run_s']:.2f} s; group join + recovery {res['join_s']:.2f} s)"
        )


if __name__ == "__main__":
    main()
