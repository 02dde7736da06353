"""Helpers for the WebSocket gateway integration tests: an in-process gateway, a client, producers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection

from core.book import L2Book
from core.kafka import make_producer
from core.settings import Settings
from core.topics import Topics
from gateway_ws.config import WsConfig
from gateway_ws.resume import hist_key
from gateway_ws.server import Gateway
from tests.conftest import free_port
from tests.unit.test_follower_join import Producer


async def delete_topics(settings: Settings) -> None:
    """Best effort: each test's 9 topics x 3 partitions hold open files in the shared broker."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        await admin.start()
        await admin.delete_topics(Topics.from_settings(settings).all())
    except (KafkaError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


@pytest.fixture(autouse=True)
async def drop_topics(settings: Settings) -> AsyncIterator[None]:
    """Import into a test module to delete its test's topics afterwards."""
    yield
    await delete_topics(settings)


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, **cfg: Any) -> AsyncIterator[Gateway]:
    base = WsConfig.from_settings(settings)
    c = dataclasses.replace(base, host="127.0.0.1", port=free_port(), processes=1, **cfg)
    gw = Gateway(settings, c)
    await gw.start()
    try:
        await asyncio.wait_for(gw.follower.ready.wait(), 10)
        yield gw
    finally:
        await gw.stop()


def url(gw: Gateway, query: str = "") -> str:
    return f"ws://127.0.0.1:{gw.cfg.port}/ws" + (f"?{query}" if query else "")


async def recv(ws: ClientConnection, limit: float = 5.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), limit)
    return orjson.loads(raw)


async def recv_until(
    ws: ClientConnection, pred: Any, limit: float = 5.0, skip_heartbeats: bool = True
) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        while True:
            msg = orjson.loads(await ws.recv())
            if skip_heartbeats and msg.get("type") == "heartbeat":
                continue
            if pred(msg):
                return msg


async def send(ws: ClientConnection, msg: dict[str, Any] | str) -> None:
    await ws.send(msg if isinstance(msg, str) else orjson.dumps(msg).decode())


class Feed:
    """Publishes contract-conforming messages into the test's topics, like the aggregator."""

    def __init__(self, settings: Settings) -> None:
        self.t = Topics.from_settings(settings)
        self.prod = make_producer(settings)
        self.books: dict[str, Producer] = {}

    async def __aenter__(self) -> Feed:
        await self.prod.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.prod.stop()

    def book(self, symbol: str, epoch: int | None = None) -> Producer:
        p = self.books.get(symbol)
        if p is None or (epoch is not None and p.epoch != epoch):
            p = self.books[symbol] = Producer(symbol, epoch or 1)
        return p

    async def snapshot(self, symbol: str) -> None:
        p = self.book(symbol)
        await self.prod.send_and_wait(self.t.snapshot, p.snapshot(), key=f"l2:{symbol}".encode())

    async def updates(self, symbol: str, n: int, start: int = 0) -> list[bytes]:
        p = self.book(symbol)
        out = []
        for i in range(start, start + n):
            side = "buy" if i % 2 else "sell"
            px = f"{(99 - i % 10) if side == 'buy' else (101 + i % 10)}.{i % 100:02d}"
            raw = p.update([[side, px, str(1 + i % 3) if i % 5 else "0"]])
            out.append(raw)
            await self.prod.send(self.t.stream("l2"), raw, key=symbol.encode())
        await self.prod.flush()
        return out

    async def raw(self, topic: str, value: bytes, key: str) -> None:
        await self.prod.send_and_wait(topic, value, key=key.encode())


class ClientBook:
    """The test's own client-side book: applies snapshot + updates, checks seq and checksum."""

    def __init__(self) -> None:
        self.book = L2Book()
        self.seq: int | None = None
        self.applied = 0

    def on(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "l2_snapshot":
            self.book.load(msg["data"]["bids"], msg["data"]["asks"])
            self.seq = msg["seq"]
        elif msg["type"] == "l2_update":
            assert self.seq is not None, "update before snapshot"
            assert msg["seq"] == self.seq + 1, f"gap: {self.seq} -> {msg['seq']}"
            self.book.apply(msg["data"]["changes"])
            self.seq = msg["seq"]
            self.applied += 1
        else:
            return
        assert self.book.checksum() == msg["checksum"], "checksum mismatch"


async def fill_resume_window(
    r: aioredis.Redis, settings: Settings, raws: list[bytes], *, maxlen: int | None = None
) -> None:
    """What the storage cache writer does per message (docs/internals.md "Redis"): each message
    into its stream's resume window, entry id ``<seq>-0``."""
    for raw in raws:
        d = orjson.loads(raw)
        await r.xadd(
            hist_key(settings.redis_prefix, d["channel"], d["symbol"]),
            {"m": raw, "e": d["epoch"]},
            id=f"{d['seq']}-0",
            maxlen=maxlen,
            approximate=maxlen is not None,
        )
