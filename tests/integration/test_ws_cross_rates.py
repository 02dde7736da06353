"""Ticker ``currencies`` on the real Kafka: a currency with no conversion path is a clear error
(issue 15 item 5), and becomes available once the gateway follows a ticker that converts."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect

from core.settings import Settings
from core.topics import Topics
from tests.integration.test_ws_features import _ticker
from tests.integration.ws_helpers import (
    Feed,
    drop_topics,  # noqa: F401 - autouse: topics deleted after each test
    recv_until,
    running_gateway,
    send,
    url,
)

pytestmark = pytest.mark.integration


async def test_no_conversion_path_is_an_error_until_a_ticker_gives_one(settings: Settings) -> None:
    t = Topics.from_settings(settings)
    sub = {"type": "subscribe", "channel": "ticker", "symbol": "BTC-USD", "id": 1}
    async with Feed(settings) as feed:
        await feed.raw(t.stream("ticker"), _ticker("EUR-USD", 1, "1.25"), "EUR-USD")
        await feed.raw(t.stream("ticker"), _ticker("BTC-USD", 1, "50000"), "BTC-USD")
        async with running_gateway(settings) as gw, connect(url(gw)) as ws:
            await send(ws, {**sub, "currencies": ["EUR", "CHF"]})
            err = await recv_until(ws, lambda m: True)
            assert err == {
                "type": "error",
                "code": "no_conversion_path",
                "message": "no conversion from USD to CHF: this gateway follows no ticker of "
                "USD-CHF or CHF-USD",
                "id": 1,
                "target": "ticker:BTC-USD",
            }
            # the session stays open and nothing was subscribed: a good request still works
            await send(ws, {**sub, "currencies": ["EUR"]})
            ack = await recv_until(ws, lambda m: True)
            assert ack["type"] == "subscribed" and ack["subscriptions"] == ["ticker:BTC-USD"]
            conv = await recv_until(ws, lambda m: m.get("currency") == "EUR")
            assert conv["data"]["last_price"] == "40000"
            # a USD-CHF ticker appears on the feed: CHF converts from then on
            await feed.raw(t.stream("ticker"), _ticker("USD-CHF", 1, "0.9"), "USD-CHF")
            for _ in range(100):  # the gateway's follower reads it (a few ms)
                if gw.is_symbol("USD-CHF"):
                    break
                await asyncio.sleep(0.05)
            await send(ws, {**sub, "currencies": ["CHF"], "id": 2})
            ack = await recv_until(ws, lambda m: m.get("id") == 2)
            assert ack["type"] == "subscribed"
            conv = await recv_until(ws, lambda m: m.get("currency") == "CHF")
            assert conv["data"]["last_price"] == "45000" and conv["rate"] == "0.9"
