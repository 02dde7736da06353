"""A minimal picows fan-out server, only for the library comparison in docs/benchmarks.md.

    MD_TOPIC_PREFIX=... MD_WS_PORT=... .venv/bin/python -m loadtests.fanout_picows

Same follower (core/follower.py) and the same wire behaviour for the benchmark client
(``subscribe`` -> ``subscribed``, snapshot, then the Kafka bytes unchanged), but none of the
gateway's protocol, limits or slow-consumer handling: it measures what the library costs.
``loadtests/fanout.py --server picows`` starts it.
"""

from __future__ import annotations

import asyncio
import signal

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from core.follower import StreamFollower
from core.settings import Settings
from core.symbols import normalize_symbol


class Hub:
    def __init__(self, follower: StreamFollower) -> None:
        self.follower = follower
        self.index: dict[tuple[str, str], set[WSTransport]] = {}
        follower.add_callback(self.on_message)

    def on_message(self, channel: str, symbol: str, seq: int, raw: bytes, parsed: object) -> None:
        for t in self.index.get((channel, symbol), ()):
            t.send(WSMsgType.TEXT, raw)


class Listener(WSListener):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.keys: list[tuple[str, str]] = []

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        msg = orjson.loads(frame.get_payload_as_bytes())
        if msg.get("type") != "subscribe":
            return
        key = (msg["channel"], normalize_symbol(msg["symbol"]))
        transport.send(
            WSMsgType.TEXT, orjson.dumps({"type": "subscribed", "changed": [f"{key[0]}:{key[1]}"]})
        )
        cur = self.hub.follower.current(*key)
        for raw in cur.messages if cur else ():
            transport.send(WSMsgType.TEXT, raw)
        self.hub.index.setdefault(key, set()).add(transport)
        self.keys.append(key)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for k in self.keys:
            self.hub.index.get(k, set()).discard(transport)


async def main() -> None:
    s = Settings.from_env()
    follower = StreamFollower(s, channels=["l2"])
    hub = Hub(follower)
    await follower.start()
    await follower.ready.wait()

    def factory(_req: WSUpgradeRequest) -> Listener:
        return Listener(hub)

    server = await ws_create_server(factory, s.ws_host, s.ws_port, reuse_port=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    await stop.wait()
    server.close()
    await follower.stop()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
