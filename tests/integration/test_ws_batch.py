"""``/ws?batch=1`` on the real Kafka: NDJSON frames carry the same gapless stream, with and
without permessage-deflate; a bad value is refused at the upgrade."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from core.settings import Settings
from tests.integration.ws_helpers import (
    ClientBook,
    Feed,
    drop_topics,  # noqa: F401 - autouse: topics deleted after each test
    running_gateway,
    send,
    url,
)

pytestmark = pytest.mark.integration


async def _until_seq(ws: ClientConnection, seq: int) -> tuple[list[dict[str, Any]], int]:
    """Every message up to the l2 message with ``seq``, and how many frames carried them."""
    msgs: list[dict[str, Any]] = []
    frames = 0
    async with asyncio.timeout(10):
        while True:
            frames += 1
            raw = await ws.recv()
            for line in (raw if isinstance(raw, bytes) else raw.encode()).split(b"\n"):
                msgs.append(orjson.loads(line))
            if any(m.get("channel") == "l2" and m.get("seq") == seq for m in msgs):
                return msgs, frames


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_batched_frames_carry_the_gapless_stream(
    settings: Settings, compression: str | None
) -> None:
    async with Feed(settings) as feed:
        await feed.snapshot("BTC-USD")
        async with running_gateway(settings, deflate=True, heartbeat_s=0) as gw:
            ws = await connect(url(gw, "batch=1"), compression=compression)
            try:
                await send(ws, {"type": "subscribe", "channel": "l2", "symbol": "BTC-USD"})
                msgs, _ = await _until_seq(ws, 0)
                assert [m["type"] for m in msgs] == ["subscribed", "l2_snapshot"]
                book = ClientBook()
                book.on(msgs[1])
                await feed.updates("BTC-USD", 200)
                msgs, frames = await _until_seq(ws, 200)
                for m in msgs:
                    book.on(m)  # asserts seq continuity and the checksum of every update
                assert book.applied == 200
                # a Kafka fetch delivers many updates in one loop turn: they share frames
                assert frames < 200
            finally:
                await ws.close()


async def test_a_bad_batch_value_is_refused_at_the_upgrade(settings: Settings) -> None:
    async with running_gateway(settings) as gw:
        with pytest.raises(InvalidStatus) as err:
            async with connect(url(gw, "batch=yes")):
                pass
        assert err.value.response.status_code == 400
        assert b"batch is 0 or 1" in err.value.response.body
