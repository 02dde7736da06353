"""Replay a capture file (the platform's own format) into md.in at recorded or accelerated speed.

``python -m aggregator.sources.replay FILE [--speed 1] [--loop]``; ``--speed 0`` publishes as fast
as the broker takes it. Any source writes the format with ``--capture FILE``
(``aggregator/sources/publish.py``): NDJSON ``{"recv_ns": int, "event": <md.in event>}``. Events
are re-validated on the way in (a damaged line is logged, counted and skipped) and published
with their original event time, so candles and 24h windows come out identical.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
from prometheus_client import Counter

from aggregator import events as ev
from aggregator.sources.publish import EventPublisher
from core.settings import Settings

log = logging.getLogger("aggregator.replay")
BAD_LINES = Counter("md_replay_bad_lines_total", "capture lines skipped as invalid")


def read_capture(path: Path) -> Iterator[tuple[int, ev.AnyEvent]]:
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
                yield int(rec["recv_ns"]), ev.from_dict(rec["event"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, ev.EventError) as exc:
                BAD_LINES.inc()
                log.warning("bad capture line skipped", extra={"line": n, "error": str(exc)[:200]})


async def replay(
    settings: Settings, path: Path, stop: asyncio.Event, *, speed: float = 1.0, loop: bool = False
) -> int:
    pub = EventPublisher(settings, "replay")
    await pub.start()
    n = 0
    try:
        while not stop.is_set():
            t0 = time.monotonic()
            first: int | None = None
            for recv_ns, e in read_capture(path):
                if stop.is_set():
                    break
                if first is None:
                    first = recv_ns
                if speed > 0:
                    delay = t0 + (recv_ns - first) / 1e9 / speed - time.monotonic()
                    if delay > 0:
                        await pub.flush()
                        await asyncio.sleep(delay)
                await pub.publish(e)
                n += 1
            await pub.flush()
            if not loop:
                break
        log.info("replay finished", extra={"events": n, "path": str(path)})
        return n
    finally:
        await pub.stop()


def main() -> None:
    from core.service import run

    ap = argparse.ArgumentParser(description="replay a capture file into md.in")
    ap.add_argument("file", type=Path)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--loop", action="store_true")
    a = ap.parse_args()

    async def _main(stop: asyncio.Event) -> None:
        await replay(Settings.from_env(), a.file, stop, speed=a.speed, loop=a.loop)

    run(_main, service="replay")


if __name__ == "__main__":
    main()
