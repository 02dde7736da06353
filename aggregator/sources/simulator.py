"""The default source: a seeded order flow through a real matching engine, published to md.in.

``python -m aggregator.sources.simulator [--capture FILE] [--steps N]``

Settings: ``MD_SYMBOLS`` (default BTC-USD,ETH-USD,LTC-USD), ``MD_SIM_RATE`` (order actions per
second per symbol; each action yields 1..n events), ``MD_SIM_SEED``; ``/health`` and ``/metrics``
on ``MD_SIMULATOR_HTTP_PORT`` (8013). On start it publishes each symbol's ``symbol_info`` and a
``reset`` (a restarted simulator starts a new book, and the aggregator must drop the old one).

FX pairs: ``MD_SIM_FX`` (default ``EUR-USD,GBP-USD,JPY-USD``; empty for none) are simulated too,
at ``MD_SIM_FX_RATE`` (5) actions per second with FX tick sizes, so a ticker subscription's
``currencies`` (EUR, GBP, JPY) converts out of the box. They run only in the timed mode: with
``--steps`` (tests, benchmarks) the run stays the deterministic function of the seed it was.

``MD_SOURCE=recording`` makes this process (the source slot of ``deploy/local/services.conf``)
play a Coinbase recording through the mock feed and the real connector instead
(``aggregator/sources/recording.py``; ``make run-recording``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from decimal import Decimal
from pathlib import Path

from aggregator import events as ev
from aggregator.sources.flow import OrderFlow
from aggregator.sources.publish import EventPublisher
from core.codec import now_ns
from core.health import READINESS, Health
from core.ops_http import start_ops_server
from core.settings import Settings
from core.symbols import SymbolInfo, default_info, normalize_symbol

log = logging.getLogger("aggregator.simulator")
DEFAULT_FX: tuple[str, ...] = ("EUR-USD", "GBP-USD", "JPY-USD")
FX_RATE = 5.0  # actions/s per FX pair: enough for a live rate, a fraction of the crypto load
# (tick, lot) of the FX pairs: pips and a tenth of a pip, as FX venues quote
FX_INCREMENTS = {"JPY-USD": (Decimal("0.00000001"), Decimal("1"))}
FX_DEFAULT_INCREMENTS = (Decimal("0.00001"), Decimal("1"))


def fx_info(symbol: str) -> SymbolInfo:
    tick, lot = FX_INCREMENTS.get(symbol, FX_DEFAULT_INCREMENTS)
    base, quote = symbol.split("-")
    return SymbolInfo(symbol, base, quote, tick, lot, source="simulator")


def fx_pairs(settings: Settings) -> tuple[str, ...]:
    from core.settings import parse_list

    raw = settings.extra.get("MD_SIM_FX")
    if raw is not None and not raw.strip():
        return ()  # set but empty: none (Settings.get reads an empty value as the default)
    pairs = settings.get("MD_SIM_FX", parse_list, DEFAULT_FX)
    return tuple(p for p in (normalize_symbol(x) for x in pairs) if p not in settings.symbols)


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
    fx = fx_pairs(settings) if steps is None else ()
    fx_flows = {
        s: OrderFlow(s, settings.sim_seed, tick=fx_info(s).tick_size, lot=fx_info(s).min_size)
        for s in fx
    }
    fx_rate = settings.get("MD_SIM_FX_RATE", float, FX_RATE)
    # MD_SIM_TICK_MS, the packet cadence (50 ms, Coinbase's level2_batch): every record costs
    # each process downstream a decode, an apply and one message per channel whatever it holds,
    # so at a given event rate the cadence sets most of the stack's CPU (docs/benchmarks.md
    # "Now (seventh session)": 20 ms cost 22-41 % more than 50 ms); events keep their own times
    tick_s = settings.sim_tick_ms / 1000
    published = 0
    try:
        ts = now_ns()
        infos = [default_info(sym, "simulator") for sym in settings.symbols]
        for info in [*infos, *(fx_info(s) for s in fx)]:
            await pub.publish(ev.symbol_info(info, ts))
            await pub.publish(ev.reset(info.symbol, ts, "simulator start"))
            published += 2
        fx_budget = 0.0
        budget = 0.0
        done_steps = 0
        t_last = time.monotonic()
        while not stop.is_set() and (steps is None or done_steps < steps):
            now = time.monotonic()
            budget += (now - t_last) * settings.sim_rate
            fx_budget += (now - t_last) * fx_rate
            t_last = now
            n = int(budget)
            if steps is not None:
                n = min(n, steps - done_steps)
            budget -= n
            # one record per symbol per tick (the events of its actions in this tick), like a
            # feed handler's packet or Coinbase level2_batch: one l2/l3 update per tick, not per
            # event (the record is the aggregator's conflation unit, aggregator/events.py)
            tick: dict[str, list[ev.AnyEvent]] = {s: [] for s in flows}
            for _ in range(n):
                ts = now_ns()
                for sym, flow in flows.items():
                    tick[sym].extend(flow.step(ts))
            n_fx, fx_budget = int(fx_budget), fx_budget - int(fx_budget)
            for _ in range(n_fx):
                ts = now_ns()
                for sym, flow in fx_flows.items():
                    tick.setdefault(sym, []).extend(flow.step(ts))
            for events in tick.values():
                await pub.publish_many(events)
                published += len(events)
            done_steps += n
            if steps is None:
                # acks are not awaited per tick: a partition whose leader is being replaced
                # holds back only its own symbols (sends stay ordered per partition)
                last_ok[0] = time.monotonic() - pub.reap()
            else:
                await pub.flush()  # a bounded run (tests, --steps) keeps its tick-by-tick acks
                last_ok[0] = time.monotonic()
            # a plain sleep: wait_for(stop.wait()) built a task and a timeout every tick; a stop
            # is seen at the next tick
            await asyncio.sleep(tick_s)
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
