"""The simulator's packet cadence (``MD_SIM_TICK_MS``): in timed mode it writes one ``md.in``
record per symbol a tick, holding all of that tick's events, so the record rate (what every
process downstream pays for) follows the tick and the event rate follows ``MD_SIM_RATE``."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter

import pytest

from aggregator import events as ev
from aggregator.sources.simulator import run_simulator
from aggregator.testing import read_topic
from core.settings import Settings
from core.topics import Topics

pytestmark = pytest.mark.integration


async def _run(
    settings: Settings, tick_ms: int, seconds: float
) -> tuple[Counter[str], Counter[str], float]:
    extra = {**settings.extra, "MD_SIM_FX": ""}
    s = dataclasses.replace(settings, sim_rate=200.0, sim_tick_ms=tick_ms, extra=extra)
    stop = asyncio.Event()
    t0 = time.monotonic()
    task = asyncio.create_task(run_simulator(s, stop, ops=False))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 30)
    elapsed = time.monotonic() - t0
    records: Counter[str] = Counter()
    events: Counter[str] = Counter()
    for r in await read_topic(s, Topics.from_settings(s).input):
        batch = ev.decode_record(r.value)
        if batch[0].type in ("symbol_info", "reset"):
            continue
        records[batch[0].symbol] += 1
        events[batch[0].symbol] += len(batch)
    return records, events, elapsed


async def test_one_record_per_symbol_a_tick(settings: Settings) -> None:
    records, events, elapsed = await _run(settings, 250, 1.6)
    assert set(records) == set(settings.symbols)
    for sym in settings.symbols:
        # ~6 ticks in 1.6 s (a tick with no action of a symbol writes nothing for it); at the
        # old 20 ms cadence this would be ~80 records
        assert 3 <= records[sym] <= elapsed / 0.25 + 2, (sym, records[sym])
        # 200 actions/s: each record holds tens of events, not one
        assert events[sym] / records[sym] >= 10, (sym, events[sym], records[sym])
