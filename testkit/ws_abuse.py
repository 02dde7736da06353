"""The resume-abuse scenario of issue 12, shared by its test and its benchmark.

``tests/integration/test_ws_abuse.py`` asserts the bounds on an in-process gateway,
``loadtests/fanout_abuse.py`` measures them on a gateway process; both fill the same resume
window, open the same never-reading sockets and send the same requests, from here.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from core.channels import data_message
from gateway_ws.resume import hist_key

WINDOW = 10_000  # trades in the resume window: what MD_REDIS_HIST_LEN keeps by default
# one subscribe naming the same resumable target 200 times, then single resubscribes
ATTACK = orjson.dumps(
    {"type": "subscribe", "channels": ["trades:BTC-USD"] * 200, "since_seq": 0}
).decode()
AGAIN = orjson.dumps(
    {"type": "subscribe", "channel": "trades", "symbol": "BTC-USD", "since_seq": 0}
).decode()
RESUBSCRIBES = 20


def trade(seq: int, publish_ns: int | None = None, event_ns: int | None = None) -> bytes:
    """A ~250-byte trade message, like the aggregator's (times default to now)."""
    now = time.time_ns()
    return orjson.dumps(
        data_message(
            type="trade",
            channel="trades",
            symbol="BTC-USD",
            seq=seq,
            epoch=1,
            publish_ns=now if publish_ns is None else publish_ns,
            event_ns=now if event_ns is None else event_ns,
            data={
                "trade_id": f"t-{seq:012d}",
                "price": "50000.00",
                "size": "0.01000000",
                "side": "buy",
                "maker_order_id": f"m-{seq:020d}",
                "taker_order_id": f"k-{seq:020d}",
            },
        )
    )


async def fill_window(
    r: aioredis.Redis, prefix: str, message: Callable[[int], bytes] = trade
) -> str:
    """WINDOW trades (seq 1..WINDOW) in the resume window, as the storage cache writer keeps
    them; returns the stream's key (the caller deletes it)."""
    key = hist_key(prefix, "trades", "BTC-USD")
    pipe = r.pipeline(transaction=False)
    for seq in range(1, WINDOW + 1):
        pipe.xadd(key, {"m": message(seq), "e": 1}, id=f"{seq}-0")
    await pipe.execute()
    return key


async def never_reading(port: int) -> ClientConnection:
    """A WebSocket client with a 4 KiB receive buffer that stops reading after the upgrade."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    ws = await connect(f"ws://127.0.0.1:{port}/ws", sock=s, max_size=None, ping_interval=None)
    ws.transport.pause_reading()
    return ws


async def attack(abusers: list[ClientConnection], each_round: Callable[[], None]) -> None:
    """ATTACK on every socket, then RESUBSCRIBES rounds of AGAIN (each replaces the running
    resume: the old one must be cancelled); ``each_round`` runs after every round."""
    for ws in abusers:
        await ws.send(ATTACK)
    for _ in range(RESUBSCRIBES):
        for ws in abusers:
            await ws.send(AGAIN)
        await asyncio.sleep(0.01)
        each_round()
