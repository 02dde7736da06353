"""How long a symbol takes to switch to its backup feed (aggregator/sources/failover.py).

``python -m loadtests.bench_source_failover [--trials 5] [--stall-s 2.0]``

Per trial: the Exchange mock (primary) and the Advanced Trade mock (backup) play the recording
in a loop, both connectors run under a :class:`FailoverSource` whose output is kept in memory
(no Kafka: this measures the source side only), and once both legs are synced one fault hits the
primary:

- ``disconnect``: the mock aborts the primary's TCP connection; measured from the abort to the
  switch (the connector noticing the close is included);
- ``stall``: the primary's connection goes silent (open, nothing sent); from the last frame to the
  switch: bounded below by ``--stall-s``, the silence that must pass before a feed is declared
  dead (heartbeats come every second);
- ``gap``: the primary's parser detects a sequence gap (injected at a known instant); from the
  detection to the switch.

Prints one line per fault: min / median / max seconds over the trials.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from aggregator import events as ev
from aggregator.sources.coinbase import CoinbaseClient, CoinbaseConfig
from aggregator.sources.coinbase_at import AdvancedTradeClient, AdvancedTradeConfig
from aggregator.sources.coinbase_at_mock import AtMockConfig, serve_at_mock
from aggregator.sources.coinbase_mock import MockConfig, serve_mock
from aggregator.sources.failover import FailoverSource
from aggregator.sources.recording import DEFAULT_FILE


class Out:
    def __init__(self) -> None:
        self.n = 0

    async def publish(self, e: ev.Event, *, recv_ns: int | None = None) -> None:
        self.n += 1

    async def flush(self) -> None:
        pass


async def trial(fault: str, path: Path, port: int, stall_s: float) -> float:
    ex1, srv1 = await serve_mock(MockConfig(path=path, port=port, speed=1, loop=True))
    ex2, srv2 = await serve_at_mock(AtMockConfig(path=path, port=port + 1, speed=1, loop=True))
    products = tuple(ex1.products)
    sup = FailoverSource(Out(), products, stall_s=stall_s, check_s=0.05)
    primary = CoinbaseClient(
        CoinbaseConfig(url=f"ws://127.0.0.1:{port}", products=products, stall_s=60), sup.sink(0)
    )
    backup = AdvancedTradeClient(
        AdvancedTradeConfig(url=f"ws://127.0.0.1:{port + 1}", products=products), sup.sink(1)
    )
    sup.attach(0, primary)
    sup.attach(1, backup)
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    try:
        while not all(  # noqa: ASYNC110 - both legs synced on every symbol
            sup.healthy(leg, p)[0] for leg in sup.legs for p in products
        ):
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        n0 = len(sup.switches)
        if fault == "disconnect":
            t0 = time.monotonic()
            for c in list(ex1.conns):
                c.ws.transport.abort()
        elif fault == "stall":
            for c in list(ex1.conns):
                c.closing = True  # nothing more is queued for it
                while not c.queue.empty():
                    c.queue.get_nowait()
            t0 = 0.0  # silence is counted from the last frame (known once switched)
        else:
            t0 = time.monotonic()
            primary.parser._gap(products[0], "trade_id", 1, 3)
        while len(sup.switches) == n0:  # noqa: ASYNC110 - polled at 1 ms, the resolution
            await asyncio.sleep(0.001)
        if fault == "stall":
            t0 = primary.last_message  # frames already in flight arrived after the injection
        return time.monotonic() - t0
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        for srv, ex in ((srv1, ex1), (srv2, ex2)):
            srv.close()
            ex.play_task.cancel()  # type: ignore[attr-defined]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--stall-s", type=float, default=2.0)
    ap.add_argument("--port", type=int, default=18950)
    ap.add_argument("--recording", type=Path, default=DEFAULT_FILE)
    a = ap.parse_args()
    for fault in ("disconnect", "gap", "stall"):
        times = [
            await trial(fault, a.recording, a.port + 2 * i, a.stall_s) for i in range(a.trials)
        ]
        print(
            f"{fault:10s} switch after min {min(times):.3f} s, median "
            f"{statistics.median(times):.3f} s, max {max(times):.3f} s ({a.trials} trials)"
        )


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
