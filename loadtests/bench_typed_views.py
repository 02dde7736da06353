"""What a typed view of each output message would cost a gateway (issue 14 item 4).

Gateways read the aggregator's messages as dicts: ``core.follower._parse`` loads the JSON once
per Kafka message, checks the envelope fields the join needs (seq, epoch, channel, symbol) and
hands the same bytes to every subscriber. A typed view is two different things:

- the static one, ``Message`` (a ``TypedDict`` of core/messages.py) as the annotation of the
  parsed dict: mypy checks every key the gateway reads, and it costs nothing at run time (a
  ``TypedDict`` is a plain dict);
- the checked one, :func:`core.messages.check` on the parsed dict (every key, type and value
  of the declaration): that costs CPU once per Kafka message, shared by all the subscribers.

This prints, per message kind, CPU microseconds per message (best of ``--repeat``) for what
the gateway does today (``_parse``), for ``check`` on top, and for ``decode`` (a reader that
parses and checks, as storage does), then the check's share of the gateway's CPU at the fan-out
shapes measured in docs/benchmarks.md ("WebSocket fan-out"). The full fan-out A/B is
``--ab-fanout`` (the same ``loadtests.fanout`` run with and without the check in the gateway,
alternately; see docs/internals.md "Typed views on the gateway path").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import orjson

from core.follower import _parse
from core.messages import check, decode
from testkit import fake_aggregator as fa

SYM = "BTC-USD"


def samples() -> dict[str, bytes]:
    """One contract-conforming message of each kind the gateways forward, at typical sizes."""
    levels = [[f"{100 - i * 0.01:.2f}", f"{1 + i % 7}.5"] for i in range(50)]
    asks = [[f"{100.5 + i * 0.01:.2f}", f"{1 + i % 5}.25"] for i in range(50)]
    return {
        "l2_update (1 change)": fa.l2_update(SYM, 7, [["buy", "99.99", "1.5"]]),
        "l2_update (5 changes)": fa.l2_update(
            SYM, 7, [["buy", f"99.9{i}", "1.5"] for i in range(5)]
        ),
        "l2_snapshot (50+50 levels)": fa.l2_snapshot(SYM, 7, levels, asks),
        "trade": fa.trade(SYM, 7, "t-1", "100.25", "0.5"),
        "ticker": fa.ticker(SYM, 7),
        "stats": fa.stats(SYM, 7),
    }


def cpu_us(fn: Callable[[], object], n: int, repeat: int) -> float:
    """CPU microseconds per call of ``fn`` (best of ``repeat`` runs of ``n`` calls)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


def measure(n: int, repeat: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind, raw in samples().items():
        parsed = orjson.loads(raw)
        out[kind] = {
            "parse": cpu_us(partial(_parse, raw), n, repeat),
            "check": cpu_us(partial(check, parsed), n, repeat),
            "decode": cpu_us(partial(decode, raw), n, repeat),
            "bytes": float(len(raw)),
        }
    return out


# the fan-out runs of docs/benchmarks.md: (connections, Kafka messages/s in, delivered/s, gateway
# CPU per delivered message in µs)
FANOUT_SHAPES = [
    ("1,000 conns, 3 symbols x 200/s", 600, 199_783, 3.3),
    ("10,000 conns, 3 symbols x 10/s", 30, 99_259, 7.0),
]  # at a small fan-out the per-message work dominates: measure it with --ab-fanout


def report(res: dict[str, dict[str, float]]) -> None:
    print(f"{'message':<28} {'bytes':>6} {'_parse µs':>10} {'+check µs':>10} {'decode µs':>10}")
    for kind, r in res.items():
        print(
            f"{kind:<28} {r['bytes']:>6.0f} {r['parse']:>10.2f} {r['check']:>10.2f}"
            f" {r['decode']:>10.2f}"
        )
    upd = res["l2_update (1 change)"]
    print("\nthe check's share of the gateway's CPU (l2_update, 1 change):")
    for name, msgs_in, delivered, us_per_delivered in FANOUT_SHAPES:
        gateway = delivered * us_per_delivered
        added = msgs_in * upd["check"]
        print(f"  {name:<44} +{added / gateway * 100:5.2f} %")


SITECUSTOMIZE = '''\
"""Injected by loadtests/bench_typed_views.py --ab-fanout: the gateway checks every message."""
import core.follower as _f
from core.messages import check as _check

_parse = _f._parse


def _checked_parse(raw):
    m = _parse(raw)
    _check(m.parsed)
    return m


_f._parse = _checked_parse
'''


def ab_fanout(runs: int, fanout_args: list[str]) -> None:
    """``loadtests.fanout`` alternately without and with the check in the gateway process (a
    ``sitecustomize`` on its PYTHONPATH wraps ``core.follower._parse``), ``runs`` times each."""
    with tempfile.TemporaryDirectory() as d:
        Path(d, "sitecustomize.py").write_text(SITECUSTOMIZE)
        for i in range(runs):
            for label, extra in (("dicts", None), ("checked", d)):
                env = dict(os.environ)
                if extra:
                    env["PYTHONPATH"] = os.pathsep.join(
                        p for p in (extra, env.get("PYTHONPATH")) if p
                    )
                print(f"\n== run {i + 1}, gateway {label}", flush=True)
                cmd = [sys.executable, "-m", "loadtests.fanout", *fanout_args]
                subprocess.run(cmd, env=env, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=20_000, help="calls per timing")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--ab-fanout", type=int, default=0, metavar="RUNS")
    ap.add_argument(
        "--fanout-args",
        default="--connections 1000 --rate 200 --duration 10 --client-procs 3",
        help="arguments of each loadtests.fanout run",
    )
    a = ap.parse_args()
    report(measure(a.n, a.repeat))
    if a.ab_fanout:
        ab_fanout(a.ab_fanout, a.fanout_args.split())


if __name__ == "__main__":
    main()
