"""The two Coinbase connectors on the shared I/O layer (aggregator/sources/ws_feed.py): what each
sends on connect and on a resync, without sockets (a fake connection records the frames)."""

from __future__ import annotations

from typing import Any

import orjson

from aggregator.sources.coinbase import CoinbaseClient, CoinbaseConfig
from aggregator.sources.coinbase_at import AT_RESYNCS, AdvancedTradeClient, AdvancedTradeConfig
from aggregator.sources.ws_feed import WsFeed


class FakeWs:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, data: bytes) -> None:
        self.sent.append(orjson.loads(data))


class Sink:
    async def publish(self, e: Any, *, recv_ns: int | None = None) -> None:
        pass

    async def flush(self) -> None:
        pass


async def test_exchange_subscribes_once_and_resubscribes_the_products_that_gapped() -> None:
    cfg = CoinbaseConfig(products=("BTC-USD", "ETH-USD"), channels=("level2", "matches"))
    client = CoinbaseClient(cfg, Sink())
    assert isinstance(client, WsFeed) and client.parser.products == cfg.products
    ws = FakeWs()
    await client.subscribe(ws)
    assert ws.sent == [
        {
            "type": "subscribe",
            "product_ids": ["BTC-USD", "ETH-USD"],
            "channels": ["level2", "matches"],
        }
    ]
    ws.sent.clear()
    await client.resync(ws, {"ETH-USD"})
    assert [(m["type"], m["product_ids"]) for m in ws.sent] == [
        ("unsubscribe", ["ETH-USD"]),
        ("subscribe", ["ETH-USD"]),
    ]


async def test_advanced_trade_subscribes_per_channel_and_resyncs_level2() -> None:
    cfg = AdvancedTradeConfig(products=("BTC-USD",), channels=("level2", "market_trades"))
    client = AdvancedTradeClient(cfg, Sink())
    assert client.infos["BTC-USD"].source == "coinbase_at"
    ws = FakeWs()
    await client.subscribe(ws)
    assert [(m["type"], m["channel"]) for m in ws.sent] == [
        ("subscribe", "level2"),
        ("subscribe", "market_trades"),
    ]
    assert all("jwt" not in m for m in ws.sent)  # no credentials: public channels
    ws.sent.clear()
    before = AT_RESYNCS._value.get()
    await client.resync(ws, True)
    assert [(m["type"], m["channel"]) for m in ws.sent] == [
        ("unsubscribe", "level2"),
        ("subscribe", "level2"),
    ]
    assert AT_RESYNCS._value.get() == before + 1
    assert client.connect_details()["authenticated"] is False
