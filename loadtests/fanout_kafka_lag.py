"""The Kafka hop alone: publish timestamp -> StreamFollower callback, no gateway, no clients.

    .venv/bin/python -m loadtests.fanout_kafka_lag --rate 100 --duration 5

The floor under every fan-out latency in docs/benchmarks.md: the same publisher as
loadtests/fanout.py, a core.follower.StreamFollower on an isolated topic prefix, and
percentiles of (callback time - message ``timestamp``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
import uuid

from core.codec import ns_from_iso
from core.follower import StreamFollower
from core.kafka import ensure_topics
from core.settings import Settings
from loadtests.fanout import _delete_topics, _publish
from loadtests.fanout_stats import percentiles


async def run(rate: float, duration: float, symbols: list[str]) -> dict[str, float]:
    s = dataclasses.replace(
        Settings.from_env(), topic_prefix=f"bench.fanout.lag.{uuid.uuid4().hex[:8]}"
    )
    await ensure_topics(s, partitions=3)
    f = StreamFollower(s, channels=["l2"])
    lat: list[int] = []
    f.add_callback(
        lambda ch, sym, seq, raw, p: lat.append(time.time_ns() - ns_from_iso(p["timestamp"]))
    )
    await f.start()
    try:
        await f.ready.wait()
        await _publish(s, symbols, rate, time.time() + duration, 50)
        await asyncio.sleep(0.5)
    finally:
        await f.stop()
        await _delete_topics(s)
    skip = len(lat) // 10  # warm-up
    return {
        k: round(v / 1e6, 2) for k, v in percentiles(lat[skip:], (50, 99, 99.9, 100)).items()
    } | {"messages": len(lat)}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rate", type=float, default=100.0, help="messages per second per symbol")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument(
        "--symbols", type=lambda v: v.split(","), default=["BTC-USD", "ETH-USD", "LTC-USD"]
    )
    a = ap.parse_args()
    import uvloop

    print(uvloop.run(run(a.rate, a.duration, a.symbols)))


if __name__ == "__main__":
    main()
