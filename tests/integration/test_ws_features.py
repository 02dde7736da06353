"""Gateway features on the real Kafka: heartbeats, status, epochs, conflation, currencies,
slow consumers, encodings, TLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import msgpack
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from core.channels import data_message
from core.messages import MessageType
from core.settings import Settings
from core.topics import Topics
from tests.helpers import self_signed_cert
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
from tests.unit.test_follower_join import T0

pytestmark = pytest.mark.integration


def _message(channel: MessageType, symbol: str, seq: int, epoch: int, data: object) -> bytes:
    """A message of a self-contained channel (its type is the channel's name)."""
    return orjson.dumps(
        data_message(
            type=channel,
            channel=channel,
            symbol=symbol,
            seq=seq,
            epoch=epoch,
            publish_ns=T0 + seq,
            event_ns=T0,
            data=data,
        )
    )


def _ticker(symbol: str, seq: int, price: str, epoch: int = 1) -> bytes:
    data = {"best_bid": price, "best_ask": price, "last_price": price, "volume_24h": "10"}
    return _message("ticker", symbol, seq, epoch, data)


def _status(symbol: str, seq: int, status: str, epoch: int = 1) -> bytes:
    return _message(
        "status", symbol, seq, epoch, {"symbol": symbol, "status": status, "state": "live"}
    )


async def test_heartbeat_reports_seq_and_checksum_per_subscription(settings: Settings) -> None:
    async with Feed(settings) as feed:
        await feed.snapshot("BTC-USD")
        await feed.updates("BTC-USD", 5)
        async with running_gateway(settings, heartbeat_s=0.3) as gw, connect(url(gw)) as ws:
            await send(ws, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD"})
            cb = ClientBook()
            cb.on(await recv_until(ws, lambda m: m["type"] == "l2_snapshot"))
            hb = await recv_until(ws, lambda m: m["type"] == "heartbeat", skip_heartbeats=False)
            assert hb["feed"] == "ok"
            assert hb["subscriptions"] == [
                {
                    "channel": "l2",
                    "symbol": "BTC-USD",
                    "seq": 5,
                    "epoch": 1,
                    "checksum": cb.book.checksum(),
                }
            ]


async def test_status_channel_and_feed_loss_in_health(settings: Settings) -> None:
    t = Topics.from_settings(settings)
    async with Feed(settings) as feed:
        await feed.raw(t.snapshot, _status("BTC-USD", 1, "online"), "status:BTC-USD")
        async with running_gateway(settings) as gw, connect(url(gw)) as ws:
            await send(ws, {"type": "subscribe", "channel": "status"})
            await recv_until(ws, lambda m: m["type"] == "subscribed")
            st = await recv(ws)
            assert (st["type"], st["symbol"], st["data"]["status"]) == (
                "status",
                "BTC-USD",
                "online",
            )
            gs = await recv(ws)
            assert gs["type"] == "gateway_status" and gs["feed"] == "ok"
            await feed.raw(t.stream("status"), _status("BTC-USD", 2, "halted"), "BTC-USD")
            st = await recv_until(ws, lambda m: m["type"] == "status")
            assert st["data"]["status"] == "halted" and st["seq"] == 2
            # a restarted aggregator (new epoch) still reaches "status:*" subscribers
            await feed.raw(
                t.stream("status"), _status("BTC-USD", 1, "maintenance", epoch=2), "BTC-USD"
            )
            st = await recv_until(ws, lambda m: m["type"] == "status")
            assert (st["data"]["status"], st["epoch"]) == ("maintenance", 2)
            # the feed is lost (watchdog verdict): status subscribers and /health say so
            gw.follower._tasks[2].cancel()
            gw.follower.connected = False
            gs = await recv_until(ws, lambda m: m["type"] == "gateway_status")
            assert gs["feed"] == "lost"
            r, w = await asyncio.open_connection("127.0.0.1", gw.cfg.port)
            w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await asyncio.wait_for(r.read(), 5)
            w.close()
            assert data.startswith(b"HTTP/1.1 503")
            assert (
                orjson.loads(data.partition(b"\r\n\r\n")[2])["checks"]["kafka"]["detail"]["kafka"]
                == "lost"
            )


async def test_new_epoch_sends_flagged_snapshot(settings: Settings) -> None:
    async with Feed(settings) as feed:
        await feed.snapshot("BTC-USD")
        await feed.updates("BTC-USD", 3)
        async with running_gateway(settings) as gw, connect(url(gw)) as ws:
            await send(ws, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD"})
            cb = ClientBook()
            cb.on(await recv_until(ws, lambda m: m["type"] == "l2_snapshot"))
            p2 = feed.book("BTC-USD", epoch=2)  # the aggregator restarted without its state
            await feed.updates("BTC-USD", 2)
            await feed.snapshot("BTC-USD")
            note = await recv_until(ws, lambda m: m["type"] == "resync")
            assert note["reason"] == "epoch" and note["epoch"] == 2
            snap = await recv(ws)
            assert snap["type"] == "l2_snapshot" and snap["epoch"] == 2 and snap["resync"] is True
            cb.on(snap)
            await feed.updates("BTC-USD", 3, start=2)
            while cb.seq != 5:
                cb.on(await recv_until(ws, lambda m: m["type"] == "l2_update"))
            assert cb.book.checksum() == p2.book.checksum()


async def test_conflated_book_merges_levels_and_keeps_checksum(settings: Settings) -> None:
    async with Feed(settings) as feed:
        await feed.snapshot("BTC-USD")
        async with running_gateway(settings, heartbeat_s=0.3) as gw, connect(url(gw)) as ws:
            await send(
                ws, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD", "interval": "200ms"}
            )
            snap = await recv_until(ws, lambda m: m["type"] == "l2_snapshot")
            from core.book import L2Book

            book = L2Book()
            book.load(snap["data"]["bids"], snap["data"]["asks"])
            await feed.updates("BTC-USD", 60)
            n = 0
            last = 0
            while last != 60:
                msg = await recv_until(ws, lambda m: m["type"] == "l2_update")
                assert msg["conflated"] is True and msg["seq"] > last
                book.apply(msg["data"]["changes"])
                assert book.checksum() == msg["checksum"]
                last = msg["seq"]
                n += 1
            assert n < 60
            # heartbeats of a conflated subscription report what was sent, not what is pending
            hb = await recv_until(ws, lambda m: m["type"] == "heartbeat", skip_heartbeats=False)
            assert hb["subscriptions"][0]["seq"] == 60
            assert hb["subscriptions"][0]["checksum"] == book.checksum()


async def test_ticker_converted_through_cross_rates(settings: Settings) -> None:
    t = Topics.from_settings(settings)
    async with Feed(settings) as feed:
        await feed.raw(t.stream("ticker"), _ticker("EUR-USD", 1, "1.25"), "EUR-USD")
        await feed.raw(t.stream("ticker"), _ticker("BTC-USD", 1, "50000"), "BTC-USD")
        async with running_gateway(settings) as gw, connect(url(gw)) as ws:
            await send(
                ws,
                {
                    "type": "subscribe",
                    "channel": "ticker",
                    "symbol": "BTC-USD",
                    "currencies": ["EUR"],
                },
            )
            first = await recv_until(ws, lambda m: m["type"] == "ticker")
            assert "currency" not in first and first["data"]["last_price"] == "50000"
            conv = await recv_until(ws, lambda m: m["type"] == "ticker")
            assert conv["currency"] == "EUR" and conv["data"]["last_price"] == "40000"
            assert conv["data"]["volume_24h"] == "10" and conv["rate"] == "0.8"


async def _slow_socket() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return s


async def test_slow_client_does_not_delay_a_fast_one(settings: Settings) -> None:
    async with Feed(settings) as feed:
        await feed.snapshot("BTC-USD")
        async with running_gateway(settings, buffer_high=128 * 1024, sndbuf=16384) as gw:
            s1, s2 = await _slow_socket(), await _slow_socket()
            s1.connect(("127.0.0.1", gw.cfg.port))
            s2.connect(("127.0.0.1", gw.cfg.port))
            async with (
                connect(url(gw)) as fast,
                connect(url(gw), sock=s1, max_size=None) as slow_book,
                connect(url(gw), sock=s2, max_size=None) as slow_trades,
            ):
                await send(fast, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD"})
                await send(slow_book, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD"})
                await send(
                    slow_trades, {"type": "subscribe", "channels": ["l2:BTC-USD", "trades:BTC-USD"]}
                )
                cb = ClientBook()
                for ws in (fast, slow_book, slow_trades):
                    snap = await recv_until(ws, lambda m: m["type"] == "l2_snapshot")
                cb.on(snap)
                slow_book.transport.pause_reading()
                slow_trades.transport.pause_reading()
                # 2,000 updates of ~600 B = ~1.2 MB per client, far above the slow ones' bounds
                p = feed.book("BTC-USD")
                # published at a pace a reading client keeps up with (the test's own client
                # shares this event loop with the gateway)
                for i in range(2000):
                    changes = [
                        ["buy", f"{50 + j}.{i % 100:02d}", str(1 + (i + j) % 4)] for j in range(10)
                    ]
                    await feed.prod.send(feed.t.stream("l2"), p.update(changes), key=b"BTC-USD")
                    if i % 50 == 49:
                        await feed.prod.flush()
                        while cb.seq is not None and cb.seq < i - 100:
                            msg = await recv_until(fast, lambda m: True, limit=20)
                            assert msg["type"] == "l2_update", msg
                            cb.on(msg)
                await feed.prod.flush()
                while cb.seq != 2000:  # every update, in order, no resync: never held back
                    msg = await recv_until(fast, lambda m: True, limit=20)
                    assert msg["type"] == "l2_update", msg
                    cb.on(msg)
                slow_book.transport.resume_reading()
                slow_trades.transport.resume_reading()
                # the book-only client was paused, then resynced with a flagged snapshot
                note = await recv_until(slow_book, lambda m: m["type"] == "resync", limit=20)
                assert note["reason"] == "slow_consumer"
                snap = await recv(slow_book)
                assert snap["resync"] is True and snap["seq"] == 2000
                assert snap["checksum"] == p.book.checksum()
                # the client with a non-book channel is disconnected with 4001 and a reason
                with pytest.raises(ConnectionClosed):
                    while True:
                        await recv(slow_trades, 20)
                assert slow_trades.close_code == 4001
                assert "slow consumer" in (slow_trades.close_reason or "")
            from gateway_ws import metrics as m

            assert m.SLOW_RESYNC._value.get() >= 1 and m.SLOW_DISCONNECT._value.get() >= 1


async def test_msgpack_and_deflate(settings: Settings) -> None:
    async with Feed(settings) as feed:
        await feed.snapshot("BTC-USD")
        async with running_gateway(settings, deflate=True) as gw:
            async with connect(url(gw, "encoding=msgpack"), compression=None) as ws:
                await send(ws, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD"})
                ack = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 5))
                assert ack["type"] == "subscribed"
                snap = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 5))
                assert snap["type"] == "l2_snapshot"
                await feed.updates("BTC-USD", 1)
                up = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 5))
                assert up["type"] == "l2_update" and up["seq"] == 1
            async with connect(url(gw)) as ws:  # the client offers permessage-deflate
                assert (
                    ws.protocol.extensions
                    and ws.protocol.extensions[0].name == "permessage-deflate"
                )
                await send(ws, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD"})
                snap = await recv_until(ws, lambda m: m["type"] == "l2_snapshot")
                assert snap["seq"] == 1


async def test_tls_when_a_certificate_is_configured(settings: Settings, tmp_path: Path) -> None:
    cert, key = map(str, self_signed_cert(tmp_path))
    async with running_gateway(settings, tls_cert=cert, tls_key=key) as gw:
        ctx = ssl.create_default_context(cafile=cert)
        async with connect(f"wss://localhost:{gw.cfg.port}/ws", ssl=ctx) as ws:
            await send(ws, {"type": "ping"})
            assert (await recv(ws))["type"] == "pong"


def _msg(
    type_: MessageType, channel: str, seq: int, data: object, symbol: str = "BTC-USD"
) -> bytes:
    return orjson.dumps(
        data_message(
            type=type_,
            channel=channel,
            symbol=symbol,
            seq=seq,
            epoch=1,
            publish_ns=T0 + seq,
            event_ns=T0,
            data=data,
        )
    )


async def test_trades_l3_and_candles_routes(settings: Settings) -> None:
    t = Topics.from_settings(settings)
    trade = {"trade_id": 1, "price": "100", "size": "1", "side": "buy"}
    async with Feed(settings) as feed:
        await feed.raw(
            t.snapshot,
            _msg("trades_snapshot", "trades", 2, {"trades": [trade, trade]}),
            "trades:BTC-USD",
        )
        await feed.raw(
            t.snapshot, _msg("l3_snapshot", "l3", 1, {"bids": [], "asks": []}), "l3:BTC-USD"
        )
        await feed.raw(t.stream("l3"), _msg("l3_update", "l3", 2, {"changes": ["x"]}), "BTC-USD")
        await feed.raw(
            t.stream("candles_1m"), _msg("candle", "candles_1m", 5, {"open": "1"}), "BTC-USD"
        )
        async with running_gateway(settings) as gw, connect(url(gw)) as ws:
            await send(
                ws,
                {
                    "type": "subscribe",
                    "channels": ["trades:BTC-USD", "l3:BTC-USD", "candles_1m:BTC-USD"],
                },
            )
            await recv_until(ws, lambda m: m["type"] == "subscribed")
            got = [await recv(ws) for _ in range(4)]
            assert [(m["type"], m["seq"]) for m in got] == [
                ("trades_snapshot", 2),
                ("l3_snapshot", 1),
                ("l3_update", 2),
                ("candle", 5),
            ]
            await feed.raw(t.stream("trades"), _msg("trade", "trades", 3, trade), "BTC-USD")
            await feed.raw(
                t.stream("candles_1m"), _msg("candle", "candles_5m", 1, {"open": "1"}), "BTC-USD"
            )
            await feed.raw(
                t.stream("candles_1m"), _msg("candle", "candles_1m", 6, {"open": "2"}), "BTC-USD"
            )
            m1 = await recv(ws)
            m2 = await recv(ws)  # the 5m candle is not subscribed: never arrives
            assert [(m1["type"], m1["seq"]), (m2["channel"], m2["seq"])] == [
                ("trade", 3),
                ("candles_1m", 6),
            ]
