"""WebSocket gateway on the real Kafka: subscribe, snapshot then gapless updates, errors, health."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from core.settings import Settings
from tests.integration.ws_helpers import (
    ClientBook,
    Feed,
    drop_topics,  # noqa: F401 - autouse: topics deleted after each test
    recv,
    recv_until,
    running_gateway,
    send,
    url,
)

pytestmark = pytest.mark.integration


async def _http_get(port: int, path: str) -> tuple[int, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await w.drain()
    data = await asyncio.wait_for(r.read(), 5)
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_snapshot_then_gapless_updates_with_checksums(settings: Settings) -> None:
    async with Feed(settings) as feed:
        await feed.updates("BTC-USD", 20)
        await feed.snapshot("BTC-USD")
        await feed.updates("BTC-USD", 10, start=20)
        async with running_gateway(settings) as gw, connect(url(gw)) as ws:
            await send(ws, {"type": "subscribe", "channel": "l2", "symbol": "btc/usd", "id": 7})
            ack = await recv(ws)
            assert ack == {
                "type": "subscribed",
                "changed": ["l2:BTC-USD"],
                "subscriptions": ["l2:BTC-USD"],
                "id": 7,
            }
            snap = await recv(ws)
            assert (
                snap["type"] == "l2_snapshot" and snap["seq"] == 30 and snap["symbol"] == "BTC-USD"
            )
            cb = ClientBook()
            cb.on(snap)
            sent = await feed.updates("BTC-USD", 50, start=30)
            while cb.seq != 80:
                msg = await recv_until(ws, lambda m: m["type"] == "l2_update")
                cb.on(msg)
            assert cb.applied == 50
            # forwarded unchanged: the very bytes the aggregator published
            assert orjson.loads(sent[-1]) == msg
            from gateway_ws import metrics

            assert metrics.FANOUT_LAG._value.get() != 0 and metrics.SENT._value.get() >= 50

            # the list form, two symbols and an unsubscribe
            await send(ws, {"type": "subscribe", "channels": ["l2:ETH-USD", "ticker:BTC-USD"]})
            ack = await recv_until(ws, lambda m: m["type"] == "subscribed")
            assert ack["changed"] == ["l2:ETH-USD", "ticker:BTC-USD"]
            assert set(ack["subscriptions"]) == {"l2:BTC-USD", "l2:ETH-USD", "ticker:BTC-USD"}
            await send(ws, {"type": "unsubscribe", "channels": ["l2:ETH-USD"]})
            ack = await recv_until(ws, lambda m: m["type"] == "unsubscribed")
            assert set(ack["subscriptions"]) == {"l2:BTC-USD", "ticker:BTC-USD"}


async def test_bad_requests_get_errors_and_the_session_stays_usable(settings: Settings) -> None:
    async with running_gateway(settings) as gw, connect(url(gw)) as ws:
        cases = [
            ("{not json", "bad_json"),
            ('{"type":"dance"}', "unknown_type"),
            ('{"type":"subscribe","channel":"l9","symbol":"BTC-USD"}', "unknown_channel"),
            ('{"type":"subscribe","channel":"l2","symbol":"DOGE-EUR"}', "unknown_symbol"),
            ('{"type":"subscribe","channel":"l2","symbol":"not a symbol"}', "unknown_symbol"),
            ('{"type":"unsubscribe","channel":"l2","symbol":"BTC-USD"}', "not_subscribed"),
            ('"just a string"', "bad_request"),
            ("x" * 20000, "frame_too_large"),
        ]
        for raw, code in cases:
            await send(ws, raw)
            err = await recv_until(ws, lambda m: m["type"] == "error")
            assert err["code"] == code, (raw[:40], err)
            assert err["message"]
        await send(ws, {"type": "ping", "id": 1})
        assert await recv_until(ws, lambda m: m["type"] == "pong") == {"type": "pong", "id": 1}
        from gateway_ws import metrics

        assert metrics.ERRORS.labels("unknown_type")._value.get() >= 1


async def test_abusive_client_is_closed_with_policy_violation(settings: Settings) -> None:
    async with running_gateway(settings) as gw, connect(url(gw)) as ws:
        for _ in range(gw.cfg.limits.max_violations):
            await send(ws, "{bad")
        with pytest.raises(ConnectionClosed):
            while True:
                await recv(ws)
        assert ws.close_code == 1008


async def test_health_and_metrics_on_the_websocket_port(settings: Settings) -> None:
    async with running_gateway(settings) as gw:
        status, body = await _http_get(gw.cfg.port, "/health")
        assert status == 200 and orjson.loads(body)["status"] == "ok"
        status, body = await _http_get(gw.cfg.port, "/metrics")
        assert status == 200 and b"md_ws_connections" in body
        status, _ = await _http_get(gw.cfg.port, "/nope")
        assert status == 404


async def test_a_book_nobody_read_is_exact_for_its_first_subscriber(settings: Settings) -> None:
    """With no subscriber the gateway keeps a book cold (bytes only, core/follower.py): the
    first subscriber still gets the exact book at the exact seq, then gapless updates."""
    from tests.helpers import eventually

    async with Feed(settings) as feed:
        await feed.updates("BTC-USD", 5)
        await feed.snapshot("BTC-USD")
        async with running_gateway(settings) as gw:
            await feed.updates("BTC-USD", 40, start=5)
            await eventually(lambda: gw.follower.join.held_total >= 40, 10)
            async with connect(url(gw)) as ws:
                await send(ws, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD"})
                snap = await recv_until(ws, lambda m: m["type"] == "l2_snapshot")
                assert snap["seq"] == 45 and gw.follower.join.warmed >= 1
                cb = ClientBook()
                cb.on(snap)  # checks the snapshot's checksum against its own book
                assert cb.book.snapshot() == feed.book("BTC-USD").book.snapshot()
                await feed.updates("BTC-USD", 10, start=45)
                while cb.seq != 55:
                    cb.on(await recv_until(ws, lambda m: m["type"] == "l2_update"))
