"""A WebSocket gateway with MD_ANON_SECRET sends l3 and trades with per-day pseudonyms in place of
order ids, and never an account field (issue 12), through the real Kafka and follower."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from websockets.asyncio.client import connect

from core.anonymize import Anonymizer
from core.settings import Settings
from tests.integration.ws_helpers import (
    Feed,
    drop_topics,  # noqa: F401 - autouse: topics deleted after each test
    recv_until,
    running_gateway,
    send,
    url,
)

pytestmark = pytest.mark.integration
SECRET = "an-anonymization-secret-0123456789"
TS = "2026-12-06T10:00:00.000000Z"


def _msg(type_: str, seq: int, data: dict[str, object]) -> bytes:
    return orjson.dumps(
        {
            "type": type_,
            "channel": "l3",
            "symbol": "BTC-USD",
            "seq": seq,
            "epoch": 1,
            "timestamp": TS,
            "data": data,
        }
    )


async def test_l3_order_ids_are_pseudonyms(settings: Settings) -> None:
    s = dataclasses.replace(settings, extra={**settings.extra, "MD_ANON_SECRET": SECRET})
    snap = _msg(
        "l3_snapshot", 1, {"bids": [["100", "1", "ord-A"]], "asks": [["101", "2", "ord-B"]]}
    )
    upd = _msg(
        "l3_update",
        2,
        {
            "events": [
                {
                    "op": "change",
                    "order_id": "ord-A",
                    "side": "buy",
                    "price": "100",
                    "size": "3",
                    "account_id": "acct-9",
                }
            ]
        },
    )
    async with Feed(s) as feed:
        await feed.raw(feed.t.snapshot, snap, "l3:BTC-USD")
        await feed.raw(feed.t.stream("l3"), upd, "BTC-USD")
        async with running_gateway(s) as gw, connect(url(gw)) as ws:
            await send(ws, {"type": "subscribe", "channel": "l3", "symbol": "BTC-USD"})
            got_snap = await recv_until(ws, lambda m: m["type"] == "l3_snapshot")
            got_upd = await recv_until(ws, lambda m: m["type"] == "l3_update")
    a = Anonymizer(SECRET.encode(), "pseudonym")
    p = a.pseudonym("ord-A", "2026-12-06")
    assert got_snap["data"]["bids"][0] == ["100", "1", p]
    ev = got_upd["data"]["events"][0]
    assert ev["order_id"] == p and "account_id" not in ev
    assert "ord-" not in orjson.dumps([got_snap, got_upd]).decode()
