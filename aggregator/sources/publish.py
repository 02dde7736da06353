"""What every source process shares: publishing events to ``<prefix>.in`` and the capture file.

Events are keyed by symbol so one symbol's events stay ordered in one partition. The producer is
idempotent with ``acks=all`` (core.kafka), so a retried send neither loses nor duplicates.

With ``MD_SOURCE_FEED_PORT`` set, each record is also pushed to the aggregator leader once
Kafka has acknowledged it, with its offset (``core/input_feed.py``): the leader need not wait for
its own fetch of the record (issue 10).

Capture format (``--capture FILE``, read back by ``aggregator.sources.replay``): NDJSON, one line
per event, ``{"recv_ns": <int ns when the source produced it>, "event": <the md.in event object>}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any, Protocol

import orjson
from prometheus_client import Counter

from aggregator import events as ev
from core.feed import FeedServer
from core.input_feed import encode_input_frame
from core.kafka import ensure_topics, make_producer
from core.settings import Settings
from core.topics import Topics

log = logging.getLogger(__name__)

EVENTS_OUT = Counter(
    "md_source_events_published_total",
    "events a source published to the input topic",
    ["source", "type"],
)


class EventSink(Protocol):
    """Where a connector hands its events: the publisher itself, or a failover leg
    (aggregator/sources/failover.py) that decides whether they reach the publisher."""

    async def publish(self, e: ev.Event, *, recv_ns: int | None = None) -> None: ...

    async def flush(self) -> None: ...


class EventPublisher:
    """Sends events to the input topic; bounded number of in-flight sends (back-pressure)."""

    MAX_INFLIGHT = 10_000  # ~ a few MB of queued records at most

    def __init__(self, settings: Settings, source: str, *, capture: Path | None = None) -> None:
        self.settings = settings
        self.source = source
        self.topic = Topics.from_settings(settings).input
        # aiokafka, not librdkafka: a librdkafka producer stalled 15 s after a broker's kill -9
        # in make chaos ("new leader not found in cache"), aiokafka resumes within a second
        self.producer = make_producer(settings)
        self._pending: list[asyncio.Future[Any]] = []
        self._sent_at: list[float] = []  # loop time of each pending send
        self._capture_path = capture
        self._capture: IO[bytes] | None = None
        self._out: dict[str, Any] = {}  # event type -> its EVENTS_OUT child
        # the source feed (core/input_feed.py): acknowledged records to the aggregator leader
        port = settings.get("MD_SOURCE_FEED_PORT", int, 0)
        self.feed = (
            FeedServer(settings.get("MD_SOURCE_FEED_HOST", str, "127.0.0.1"), port)
            if port
            else None
        )
        self._feed_flush: asyncio.Handle | None = None

    async def start(self) -> None:
        await ensure_topics(self.settings)  # idempotent: never let auto-creation pick the layout
        if self.feed is not None:
            await self.feed.start()  # a port in use stops the source here, before any send
        await self.producer.start()
        if self._capture_path is not None:
            self._capture = self._capture_path.open("ab")
            log.info("capturing events", extra={"path": str(self._capture_path)})

    async def publish(self, e: ev.Event, *, recv_ns: int | None = None) -> None:
        await self.publish_many([e], recv_ns=recv_ns)  # one event: the plain object record

    async def publish_many(self, events: Sequence[ev.Event], *, recv_ns: int | None = None) -> None:
        """One record for the events of one upstream action of one symbol (events.py: arrays)."""
        if not events:
            return
        value = ev.encode_record(events)
        key = events[0].symbol.encode()
        fut = await self.producer.send(self.topic, value=value, key=key)
        if self.feed is not None and self.feed.receivers:
            fut.add_done_callback(partial(self._push, key, value))
        self._pending.append(fut)
        self._sent_at.append(asyncio.get_running_loop().time())
        counts: dict[str, int] = {}
        for e in events:
            counts[e.type] = counts.get(e.type, 0) + 1
        out = self._out
        for typ, n in counts.items():
            child = out.get(typ)
            if child is None:
                child = out[typ] = EVENTS_OUT.labels(self.source, typ)
            child.inc(n)  # per type and record, not per event: labels() was ~1 us an event
        if self._capture is not None:
            for e in events:
                self._capture.write(
                    orjson.dumps(
                        {"recv_ns": recv_ns if recv_ns is not None else e.ts, "event": e.to_dict()}
                    )
                    + b"\n"
                )
        if len(self._pending) >= self.MAX_INFLIGHT:
            await self.flush()

    def _push(self, key: bytes, value: bytes, fut: asyncio.Future[Any]) -> None:
        """Kafka acknowledged the record: push it with its offset; one write per loop turn (the
        acks of one produce response resolve together)."""
        if fut.cancelled() or fut.exception() is not None or self.feed is None:
            return  # a failed send is raised by reap/flush; nothing to push
        md = fut.result()
        self.feed.publish(
            encode_input_frame(md.topic, md.partition, md.offset, md.timestamp, key, value)
        )
        if self._feed_flush is None:
            self._feed_flush = asyncio.get_running_loop().call_soon(self._flush_feed)

    def _flush_feed(self) -> None:
        self._feed_flush = None
        if self.feed is not None:
            self.feed.flush()

    def reap(self) -> float:
        """Forget the acknowledged sends without waiting for the others; the age in seconds of
        the oldest send still unacknowledged (0: none). A source that waits for every tick's acks
        stalls every symbol when one partition's leader dies (make chaos, broker-kill); this
        lets the other partitions' symbols flow. A send that failed is raised here: the
        idempotent producer gave up, and a source must not go on past a hole."""
        pending, sent_at = self._pending, self._sent_at
        keep = [i for i, f in enumerate(pending) if not f.done()]
        for f in pending:
            exc = f.exception() if f.done() else None
            if exc is not None:
                raise exc
        self._pending = [pending[i] for i in keep]
        self._sent_at = [sent_at[i] for i in keep]
        if not self._sent_at:
            return 0.0
        return asyncio.get_running_loop().time() - self._sent_at[0]

    async def flush(self) -> None:
        pending, self._pending, self._sent_at = self._pending, [], []
        if pending:
            await asyncio.gather(*pending)
        if self._capture is not None:
            self._capture.flush()

    async def stop(self) -> None:
        try:
            await self.flush()
        finally:
            await self.producer.stop()
            if self.feed is not None:
                await self.feed.stop()
            if self._capture is not None:
                self._capture.close()
