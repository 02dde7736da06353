"""Recording -> Advanced Trade mock -> real connector (JWT) -> md.in -> aggregator -> streams.

As for the Exchange connector (test_agg_coinbase.py): the books the platform serves must equal
the books rebuilt straight from the recording, with and without faults (lost messages, i.e.
``sequence_num`` gaps, garbage, disconnects, a silent connection), and every subscribe carries
a fresh JWT the mock verifies against the key's public half.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path

import orjson
import pytest

from aggregator.service import Aggregator, ServiceConfig
from aggregator.sources.coinbase_at import AdvancedTradeClient, AdvancedTradeConfig
from aggregator.sources.coinbase_at_mock import AdvancedTradeMock, AtMockConfig, serve_at_mock
from aggregator.sources.coinbase_auth import CdpCredentials, generate_test_credentials
from aggregator.sources.feed_monitor import FeedMonitor, RawCapture, read_raw_capture
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


async def run_at_on_recording(
    s: Settings,
    mock: AtMockConfig,
    creds: CdpCredentials | None,
    *,
    stall_s: float = 3.0,
    quiet_s: float | None = None,
    raw_dir: Path | None = None,
) -> tuple[AdvancedTradeClient, AdvancedTradeMock]:
    cfg = dataclasses.replace(ServiceConfig.from_settings(s), snapshot_ms=100)
    stop_agg, stop_src = asyncio.Event(), asyncio.Event()
    agg_task = asyncio.create_task(Aggregator(s, cfg).run(stop_agg))
    ex, server = await serve_at_mock(mock)
    pub = EventPublisher(s, "coinbase_at")
    await pub.start()
    raw = RawCapture(raw_dir, "coinbase_at") if raw_dir else None
    client = AdvancedTradeClient(
        AdvancedTradeConfig(
            url=f"ws://127.0.0.1:{mock.port}",
            products=tuple(ex.products),
            catalogue=CATALOGUE,
            stall_s=stall_s,
        ),
        pub,
        credentials=creds,
        monitor=FeedMonitor("coinbase_at", raw=raw),
    )
    src_task = asyncio.create_task(client.run(stop_src))
    try:
        await asyncio.wait_for(ex.finished.wait(), 90)

        def drained() -> bool:  # connected, synced, and no event for a while (heartbeats go on)
            return (
                time.monotonic() - client.last_event
                >= (stall_s + 1 if quiet_s is None else quiet_s)
                and client.connected
                and all(client.parser.synced(p) for p in ex.products)
            )

        while not drained():  # noqa: ASYNC110 - polling the client's state is the point
            await asyncio.sleep(0.1)
        stop_src.set()
        await asyncio.wait_for(src_task, 10)
        client.monitor.close()
        await pub.stop()
        await wait_caught_up(s, cfg.group)
    finally:
        stop_src.set()
        stop_agg.set()
        server.close()
        ex.play_task.cancel()  # type: ignore[attr-defined]
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(agg_task, 30)
    return client, ex


async def assert_books_equal_recording(s: Settings, *, exact_trades: bool) -> None:
    ref_books, ref_trades = books_from_recording()
    check, snaps = await served_books(s)
    assert not check.errors, check.errors[:10]
    trades = [
        orjson.loads(r.value) for r in await read_topic(s, Topics.from_settings(s).stream("trades"))
    ]
    for p, ref in ref_books.items():
        assert as_dec(l2book_as_dict(check.books[p])) == as_dec(ref), f"{p}: served book differs"
        assert snaps[f"status:{p}"]["data"]["source"] == "coinbase_at"
        got = [int(m["data"]["trade_id"]) for m in trades if m["symbol"] == p]
        assert got == sorted(set(got)) and set(got) <= set(ref_trades[p])  # no dup, in order
        if exact_trades:
            # subscribed before playback: the trades snapshot + updates hold every one
            assert got == ref_trades[p][-len(got) :] and len(got) >= len(ref_trades[p]) - 1


async def test_advanced_trade_books_equal_recording_with_jwt(
    settings: Settings, tmp_path: Path
) -> None:
    creds = generate_test_credentials()
    mock = AtMockConfig(
        path=RECORDING,
        port=free_port(),
        speed=0,
        public_key=creds.public_pem(),
        key_name=creds.name,
    )
    # no fault here: a starved event loop on a loaded machine must not pass for a stalled feed
    client, ex = await run_at_on_recording(
        settings, mock, creds, stall_s=60, quiet_s=3, raw_dir=tmp_path / "raw"
    )
    assert client.parser.counts["gaps"] == 0 and client.parser.counts["malformed"] == 0
    assert ex.auth_failures == 0 and len(ex.jwts) == len(client.cfg.channels)
    assert len(set(ex.jwts)) == len(ex.jwts)  # a fresh JWT per subscribe message
    assert set(client.parser.tickers) == set(ex.products) == set(client.parser.candles)
    await assert_books_equal_recording(settings, exact_trades=False)
    # raw frames, per product, exactly as received
    frames = read_raw_capture(tmp_path / "raw" / "coinbase_at-SKL-USD.ndjson")
    chans = {orjson.loads(f)["channel"] for _, f in frames}
    assert {"l2_data", "market_trades", "ticker"} <= chans
    assert all(b"SKL-USD" in f.encode() for _, f in frames)
    hb = read_raw_capture(tmp_path / "raw" / "coinbase_at-_connection.ndjson")
    assert {orjson.loads(f)["channel"] for _, f in hb} >= {"heartbeats", "subscriptions"}


async def test_advanced_trade_without_valid_jwt_is_refused(settings: Settings) -> None:
    """A wrong key: Coinbase (the mock) refuses every subscribe; nothing is published."""
    creds, wrong = generate_test_credentials(), generate_test_credentials()
    mock = AtMockConfig(
        path=RECORDING,
        port=free_port(),
        speed=0,
        public_key=creds.public_pem(),
        key_name=creds.name,
    )
    ex, server = await serve_at_mock(mock)
    sent: list[object] = []

    class Sink:
        async def publish(self, e: object, *, recv_ns: int | None = None) -> None:
            sent.append(e)

        async def flush(self) -> None:
            pass

    client = AdvancedTradeClient(
        AdvancedTradeConfig(url=f"ws://127.0.0.1:{mock.port}", products=tuple(ex.products)),
        Sink(),
        credentials=wrong,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(client.run(stop))
    try:
        for _ in range(100):
            if len(client.parser.errors) >= len(client.cfg.channels):
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        server.close()
        ex.play_task.cancel()  # type: ignore[attr-defined]
    assert ex.auth_failures == len(client.cfg.channels)
    assert set(client.parser.errors) == {"authentication failure"}
    assert all(type(e).__name__ == "SymbolInfoEvent" for e in sent)  # no market data


async def test_advanced_trade_faults_are_detected_and_healed(settings: Settings) -> None:
    from aggregator.sources.coinbase_at import AT_DISCONNECTS

    stalled = AT_DISCONNECTS.labels("stalled")._value.get()
    mock = AtMockConfig(
        path=RECORDING,
        port=free_port(),
        speed=3,  # ~10 s: the faults land while the recording plays
        gap_every=97,
        malformed_every=350,
        stall_every=500,  # the first connection goes silent (counted over all connections) ...
        disconnect_every=900,  # ... a later one is closed
    )
    client, ex = await run_at_on_recording(settings, mock, None, stall_s=2.5)
    assert ex.gaps_made > 0
    assert AT_DISCONNECTS.labels("stalled")._value.get() > stalled  # a silent feed is noticed
    counts = client.parser.counts
    assert counts["gaps"] > 0 and counts["malformed"] > 0, counts
    await assert_books_equal_recording(settings, exact_trades=False)
