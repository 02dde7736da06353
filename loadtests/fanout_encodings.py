"""What each per-client option costs the gateway, per delivered message, without the network.

    .venv/bin/python -m loadtests.fanout_encodings --connections 1000 --messages 300

Feeds ``--messages`` real-shaped ``l2_update`` messages to ``--connections`` server-side
websockets protocol objects (sans I/O, so only the gateway's CPU is measured, not the kernel's)
through each path the hub can take, and prints CPU microseconds per delivered message:

- ``preframed``: the frame built once per message, appended per connection (the default);
- ``websockets``: ``protocol.send_text`` per connection (what ``websockets.broadcast`` does);
- ``msgpack``: one MessagePack re-encoding per message, its frame shared;
- ``deflate``: permessage-deflate, a compressor per connection (RFC 7692 context takeover).
"""

from __future__ import annotations

import argparse
import time

import msgpack
import orjson
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.protocol import State
from websockets.server import ServerProtocol

from core.book import L2Book
from core.channels import data_message
from gateway_ws.client import frame


def _messages(n: int) -> list[bytes]:
    b = L2Book()
    out = []
    for i in range(n):
        ch = [
            [
                "buy" if i % 2 else "sell",
                f"{50000 + (i % 40) * (1 if i % 2 else -1)}.{i % 100:02d}",
                f"{1 + i % 7}.25",
            ]
        ]
        b.apply(ch)
        out.append(
            orjson.dumps(
                data_message(
                    type="l2_update",
                    channel="l2",
                    symbol="BTC-USD",
                    seq=i + 1,
                    epoch=1,
                    publish_ns=time.time_ns(),
                    event_ns=time.time_ns(),
                    data={"changes": ch},
                    checksum=b.checksum(),
                )
            )
        )
    return out


def _protocols(n: int, deflate: bool) -> list[ServerProtocol]:
    ps = []
    for _ in range(n):
        p = ServerProtocol()
        p.state = State.OPEN
        if deflate:
            _, ext = ServerPerMessageDeflateFactory().process_request_params([], [])
            p.extensions = [ext]
        ps.append(p)
    return ps


def run(connections: int, messages: int) -> dict[str, float]:
    msgs = _messages(messages)
    res: dict[str, float] = {}
    total = connections * messages

    outs: list[list[bytes]] = [[] for _ in range(connections)]
    t = time.process_time()
    for m in msgs:
        f = frame(m, False)
        for o in outs:
            o.append(f)
    res["preframed"] = (time.process_time() - t) * 1e6 / total

    for name, deflate in (("websockets", False), ("deflate", True)):
        ps = _protocols(connections, deflate)
        first = ps[0]
        wire = 0
        t = time.process_time()
        for m in msgs:
            for p in ps:
                p.send_text(m)
                out = p.data_to_send()
                if p is first:
                    wire += sum(len(b) for b in out)
        res[name] = (time.process_time() - t) * 1e6 / total
        if deflate:  # bytes on the wire / uncompressed frames, over the whole stream
            res["deflate_ratio"] = round(wire / sum(len(frame(m, False)) for m in msgs), 2)

    outs = [[] for _ in range(connections)]
    t = time.process_time()
    for m in msgs:
        f = frame(msgpack.packb(orjson.loads(m)), True)
        for o in outs:
            o.append(f)
    res["msgpack"] = (time.process_time() - t) * 1e6 / total
    res["msgpack_ratio"] = round(len(msgpack.packb(orjson.loads(msgs[-1]))) / len(msgs[-1]), 2)
    return {k: round(v, 3) for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=300)
    a = ap.parse_args()
    for k, v in run(a.connections, a.messages).items():
        print(f"{k:>14}: {v}" + ("" if k.endswith("ratio") else " us CPU per delivered message"))


if __name__ == "__main__":
    main()
