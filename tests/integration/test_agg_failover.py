"""Primary/backup source failover on the real Kafka and aggregator, with both Coinbase mocks.

The primary is the Exchange feed (coinbase_mock) with one fault injected, the backup the
Advanced Trade feed (coinbase_at_mock) playing the same recording cleanly. Whatever the fault
(stall, garbage, disconnect, gap), the symbol switches to the backup and clients see one
stream: no epoch change, gapless seq, valid checksums, no trade twice, and the final books equal
the books rebuilt from the recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from aggregator.service import Aggregator, ServiceConfig
from aggregator.sources.coinbase import CoinbaseClient, CoinbaseConfig
from aggregator.sources.coinbase_at import AdvancedTradeClient, AdvancedTradeConfig
from aggregator.sources.coinbase_at_mock import AtMockConfig, serve_at_mock
from aggregator.sources.coinbase_mock import MockConfig, serve_mock
from aggregator.sources.failover import FailoverSource
from aggregator.sources.publish import EventPublisher
from aggregator.testing import l2book_as_dict, read_topic
from core.settings import Settings
from core.topics import Topics
from tests.conftest import free_port
from tests.integration.test_agg_coinbase import (
    CATALOGUE,
    RECORDING,
    books_from_recording,
    served_books,
)
from tests.integration.test_agg_pipeline import as_dec, wait_caught_up

pytestmark = pytest.mark.integration

FAULTS: dict[str, dict[str, Any]] = {
    "stalled": {"stall_every": 400},
    "garbage": {"malformed_every": 300},
    "disconnected": {"disconnect_every": 500},
    "gap": {"gap_every": 7},
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_failover_keeps_one_continuous_stream(
    settings: Settings, fault: str, tmp_path: Path
) -> None:
    s = settings
    recording = tmp_path / "recording.ndjson"  # the first 2,500 messages: enough for every fault
    recording.write_bytes(b"\n".join(RECORDING.read_bytes().splitlines()[:2500]) + b"\n")
    cfg = dataclasses.replace(ServiceConfig.from_settings(s), snapshot_ms=100)
    stop_agg, stop_src = asyncio.Event(), asyncio.Event()
    agg_task = asyncio.create_task(Aggregator(s, cfg).run(stop_agg))
    primary_mock = MockConfig(path=recording, port=free_port(), speed=3, **FAULTS[fault])
    backup_mock = AtMockConfig(path=recording, port=free_port(), speed=3)
    ex1, srv1 = await serve_mock(primary_mock)
    ex2, srv2 = await serve_at_mock(backup_mock)
    products = tuple(ex1.products)
    pub = EventPublisher(s, "failover")
    await pub.start()
    sup = FailoverSource(pub, products, stall_s=1.5)
    primary = CoinbaseClient(
        CoinbaseConfig(
            url=f"ws://127.0.0.1:{primary_mock.port}",
            products=products,
            catalogue=CATALOGUE,
            stall_s=30,  # the supervisor must notice a stall long before the connector does
        ),
        sup.sink(0),
    )
    backup = AdvancedTradeClient(
        AdvancedTradeConfig(
            url=f"ws://127.0.0.1:{backup_mock.port}", products=products, catalogue=CATALOGUE
        ),
        sup.sink(1),
    )
    sup.attach(0, primary)
    sup.attach(1, backup)
    task = asyncio.create_task(sup.run(stop_src))
    try:
        await asyncio.wait_for(asyncio.gather(ex1.finished.wait(), ex2.finished.wait()), 90)

        def drained() -> bool:  # every symbol's active leg is synced, nothing moved for a while
            quiet = time.monotonic() - max(primary.last_event, backup.last_event) >= 2
            return quiet and all(sup.healthy(sup.legs[sup.active[p]], p)[0] for p in products)

        while not drained():  # noqa: ASYNC110 - polling the supervisor's state is the point
            await asyncio.sleep(0.1)
        stop_src.set()
        await asyncio.wait_for(task, 15)
        await pub.stop()
        await wait_caught_up(s, cfg.group)
    finally:
        stop_src.set()
        stop_agg.set()
        for srv, ex in ((srv1, ex1), (srv2, ex2)):
            srv.close()
            ex.play_task.cancel()  # type: ignore[attr-defined]
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(agg_task, 30)

    reasons = {r for _s, frm, to, r in sup.switches if (frm, to) == ("primary", "backup")}
    assert fault in reasons, sup.switches
    ref_books, ref_trades = books_from_recording(recording)
    check, snaps = await served_books(s)
    assert not check.errors, check.errors[:10]  # one epoch, gapless seq, valid checksums
    trades = [
        orjson.loads(r.value) for r in await read_topic(s, Topics.from_settings(s).stream("trades"))
    ]
    switched = {sym for sym, *_ in sup.switches}
    for p, ref in ref_books.items():
        assert as_dec(l2book_as_dict(check.books[p])) == as_dec(ref), f"{p}: served book differs"
        got = [int(m["data"]["trade_id"]) for m in trades if m["symbol"] == p]
        assert got == sorted(set(got)) and set(got) <= set(ref_trades[p])  # none twice
        if p in switched:  # the status message names the feed now serving the symbol, and why
            now = ("coinbase", "coinbase_at")[sup.active[p]]
            status = snaps[f"status:{p}"]["data"]
            assert status["source"] == now, sup.switches
            _sym, frm, _to, why = [sw for sw in sup.switches if sw[0] == p][-1]
            before = {"primary": "coinbase", "backup": "coinbase_at"}[frm]
            assert (status["source_reason"], status["previous_source"]) == (why, before)
        if fault == "stalled":  # what the silent primary missed came from the backup
            assert got == ref_trades[p]
