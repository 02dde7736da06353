"""The default source: a seeded order flow through a real matching engine, published to md.in.

``python -m aggregator.sources.simulator [--capture FILE] [--steps N]``

Settings: ``MD_SYMBOLS`` (default BTC-USD,ETH-USD,LTC-USD), ``MD_SIM_RATE`` (order actions per
second per symbol; each action yields 1..n events), ``MD_SIM_SEED``; ``/health`` and ``/metrics``
on ``MD_SIMULATOR_HTTP_PORT`` (8013). On start it publishes each symbol's ``symbol_info`` and a
``reset`` (a restarted simulator starts a new book, and the aggregator must drop the old one).

``MD_SOURCE=recording`` makes this process (the source slot of ``deploy/local/services.conf``)
play a Coinbase recording through the mock feed and the real connector instead
(``aggregator/sources/recording.py``; ``make run-recording``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from pathlib import Path

from aggregator import events as ev
from aggregator.sources.flow import OrderFlow
from aggregator.sources.publish import EventPublisher
from core.codec import now_ns
from core.health import READINESS, Health
from core.ops_http import start_ops_server
from core.settings import Settings
from core.symbols import default_info

log = logging.getLogger("aggregator.simulator")
TICK_S = 0.02  # publishing cadence: 50 wake-ups/s, events spread over ticks


async def run_simulator(
    settings: Settings,
    stop: asyncio.Event,
    *,
    capture: Path | None = None,
    steps: int | None = None,
    ops: bool = True,
) -> int:
    """Publish until ``stop`` is set (or ``steps`` actions per symbol); returns events published."""
    pub = EventPublisher(settings, "simulator", capture=capture)
    health = Health("simulator")
    last_ok = [time.monotonic()]
    health.add(
        "publishing",
        lambda: (time.monotonic() - last_ok[0] < 10, {"symbols": list(settings.symbols)}),
        kind=READINESS,  # publishing fails while Kafka is away: not ready, no restart
    )
    server = (
        await start_ops_server(health, settings.ops_host, settings.simulator_http_port)
        if ops
        else None
    )
    await pub.start()
    flows = {s: OrderFlow(s, settings.sim_seed) for s in settings.symbols}
    published = 0
    try:
        ts = now_ns()
        for sym in settings.symbols:
            await pub.publish(ev.symbol_info(default_info(sym, "simulator"), ts))
            await pub.publish(ev.reset(sym, ts, "simulator start"))
            published += 2
        budget = 0.0
        done_steps = 0
        t_last = time.monotonic()
        while not stop.is_set() and (steps is None or done_steps < steps):
            now = time.monotonic()
            budget += (now - t_last) * settings.sim_rate
            t_last = now
            n = int(budget)
            if steps is not None:
                n = min(n, steps - done_steps)
            budget -= n
            # one record per symbol per tick (the events of its actions in this 20 ms), like a
            # feed handler's packet or Coinbase level2_batch: one l2/l3 update per tick, not per
            # event (the record is the aggregator's conflation unit, aggregator/events.py)
            tick: dict[str, list[ev.AnyEvent]] = {s: [] for s in flows}
            for _ in range(n):
                ts = now_ns()
                for sym, flow in flows.items():
                    tick[sym].extend(flow.step(ts))
            for events in tick.values():
                await pub.publish_many(events)
                published += len(events)
            done_steps += n
            await pub.flush()
            last_ok[0] = time.monotonic()
            try:
                await asyncio.wait_for(stop.wait(), TICK_S)
            except TimeoutError:
                pass
        await pub.flush()
        log.info("simulator stopped", extra={"events": published})
        return published
    finally:
        await pub.stop()
        if server is not None:
            server.close()


def main() -> None:
    from core.service import run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capture", type=Path, help="also append every event to this capture file")
    ap.add_argument("--steps", type=int, help="stop after N order actions per symbol")
    args = ap.parse_args()

    async def _main(stop: asyncio.Event) -> None:
        s = Settings.from_env()
        source = s.get("MD_SOURCE", str, "simulator")
        if source == "recording":  # `make run-recording`: this slot plays a Coinbase recording
            from aggregator.sources.recording import run_recording

            await run_recording(s, stop, capture=args.capture)
        elif source == "simulator":
            await run_simulator(s, stop, capture=args.capture, steps=args.steps)
        else:
            raise SystemExit(f"MD_SOURCE: unknown source {source!r} (simulator|recording)")

    run(_main, service="simulator")


if __name__ == "__main__":
    main()
