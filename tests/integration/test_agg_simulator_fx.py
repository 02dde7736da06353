"""The simulator publishes FX pairs by default, so ticker ``currencies`` convert out of the box.

simulator (timed mode, default settings but for the rates) -> md.in -> aggregator -> md.snapshot:
EUR-USD, GBP-USD and JPY-USD have books and tickers near their start prices with FX tick sizes,
and the WebSocket gateway's conversion (gateway_ws/rates.CrossRates) turns a BTC-USD ticker into
EUR, GBP and JPY through them. ``--steps`` runs (every other simulator test) stay FX-free.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from decimal import Decimal
from types import SimpleNamespace

import orjson
import pytest

from aggregator.service import Aggregator, ServiceConfig
from aggregator.sources.simulator import DEFAULT_FX, run_simulator
from aggregator.testing import read_topic
from core.settings import Settings
from core.topics import Topics
from gateway_ws.rates import CrossRates
from tests.integration.test_agg_pipeline import wait_caught_up

pytestmark = pytest.mark.integration


async def test_fx_pairs_by_default_and_conversion_works(settings: Settings) -> None:
    extra = {k: v for k, v in settings.extra.items() if k not in ("MD_SIM_FX",)}
    extra["MD_SIM_FX_RATE"] = "100"  # a busy FX book within the test's two seconds
    s = dataclasses.replace(settings, sim_rate=50.0, extra=extra)
    cfg = dataclasses.replace(ServiceConfig.from_settings(s), snapshot_ms=100)
    stop_agg, stop_sim = asyncio.Event(), asyncio.Event()
    agg_task = asyncio.create_task(Aggregator(s, cfg).run(stop_agg))
    try:
        sim = asyncio.create_task(run_simulator(s, stop_sim, ops=False))
        await asyncio.sleep(2.0)
        stop_sim.set()
        await asyncio.wait_for(sim, 30)
        await wait_caught_up(s, cfg.group)
    finally:
        stop_agg.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(agg_task, 30)
    snaps = {
        r.key.decode(): orjson.loads(r.value)
        for r in await read_topic(s, Topics.from_settings(s).snapshot)
        if r.value
    }
    # the latest ticker with a bid per symbol: a side of a young simulated book can be empty at
    # the moment of the last snapshot (best_bid null; failed 1 run in 3 on a quiet machine)
    for r in await read_topic(s, Topics.from_settings(s).stream("ticker")):
        m = orjson.loads(r.value) if r.value else None
        if m and m["data"].get("best_bid") is not None:
            snaps[f"ticker:{m['symbol']}"] = m
    starts = {"EUR-USD": Decimal("1.08"), "GBP-USD": Decimal("1.27"), "JPY-USD": Decimal("0.0067")}
    for pair in DEFAULT_FX:
        status = snaps[f"status:{pair}"]["data"]
        assert Decimal(status["tick_size"]) < Decimal("0.001")  # FX increments, not 0.01
        tk = snaps[f"ticker:{pair}"]["data"]
        bid = Decimal(tk["best_bid"])
        assert abs(bid - starts[pair]) / starts[pair] < Decimal("0.05"), (pair, bid)

    class Follower:  # what CrossRates reads: the latest ticker message per symbol
        def current(self, channel: str, symbol: str) -> object | None:
            m = snaps.get(f"{channel}:{symbol}")
            return SimpleNamespace(messages=[orjson.dumps(m)]) if m else None

    rates = CrossRates(Follower())  # type: ignore[arg-type]
    btc = snaps["ticker:BTC-USD"]
    usd_bid = Decimal(btc["data"]["best_bid"])
    for cur, pair in (("EUR", "EUR-USD"), ("GBP", "GBP-USD"), ("JPY", "JPY-USD")):
        conv = rates.convert(btc, cur)
        assert conv is not None, cur
        fx = Decimal(rates._price(pair) or 0)
        assert abs(Decimal(conv["data"]["best_bid"]) - usd_bid / fx) <= usd_bid / fx / 10**6
    assert rates.convert(btc, "CHF") is None  # no path: nothing to convert with


async def test_steps_mode_stays_without_fx(settings: Settings) -> None:
    await run_simulator(settings, asyncio.Event(), steps=5, ops=False)
    syms = {
        r.key.decode() for r in await read_topic(settings, Topics.from_settings(settings).input)
    }
    assert syms == set(settings.symbols)
