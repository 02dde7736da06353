"""A source does not wait for each tick's acks (aggregator/sources/publish.py ``reap``): what it
keeps, what it reports as the oldest unacknowledged send, and that a failed send is raised."""

from __future__ import annotations

import asyncio

import pytest

from aggregator import events as ev
from aggregator.sources.publish import EventPublisher
from core.settings import Settings
from tests.helpers import AckProducer


def event(symbol: str) -> ev.Event:
    return ev.reset(symbol, 1, "test")


async def test_reap_forgets_acked_sends_and_reports_the_oldest_waiting() -> None:
    pub = EventPublisher(Settings(), "test")
    prod = AckProducer()
    pub.producer = prod
    assert pub.reap() == 0.0
    for sym in ("BTC-USD", "ETH-USD", "SOL-USD"):
        await pub.publish_many([event(sym)])
        await asyncio.sleep(0.01)
    prod.futures[0].set_result(None)
    prod.futures[2].set_result(None)
    age = pub.reap()
    assert len(pub._pending) == 1 and age > 0  # noqa: SLF001 - ETH-USD's send still waits
    prod.futures[1].set_result(None)
    assert pub.reap() == 0.0 and pub._pending == []  # noqa: SLF001


async def test_a_failed_send_is_raised_not_skipped() -> None:
    pub = EventPublisher(Settings(), "test")
    prod = AckProducer()
    pub.producer = prod
    await pub.publish_many([event("BTC-USD")])
    prod.futures[0].set_exception(RuntimeError("producer gave up"))
    with pytest.raises(RuntimeError, match="gave up"):
        pub.reap()
