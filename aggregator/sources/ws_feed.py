"""The I/O layer every WebSocket feed connector shares (layer 3 of docs/sources.md).

Connect, subscribe, read with a stall timeout, hand each frame to the connector's pure parser,
publish its events, resubscribe what the parser asks to resync, and on any loss reconnect with
exponential backoff and jitter (:class:`core.backoff.Backoff`, 0.2 s doubling to 10 s, reset by
the first book snapshot of a connection). The Coinbase Exchange connector
(:mod:`aggregator.sources.coinbase`) and the Advanced Trade one
(:mod:`aggregator.sources.coinbase_at`) differ only in what they send: the subscribe messages
(:meth:`WsFeed.subscribe`) and the resubscription after a gap (:meth:`WsFeed.resync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import Counter

from aggregator import events as ev
from aggregator.sources.feed_monitor import FeedMonitor
from aggregator.sources.publish import EventSink
from core.backoff import Backoff
from core.codec import now_ns
from core.symbols import SymbolInfo

log = logging.getLogger("aggregator.ws_feed")


class FeedConfig(Protocol):
    @property
    def url(self) -> str: ...
    @property
    def products(self) -> tuple[str, ...]: ...
    @property
    def stall_s(self) -> float: ...  # no frame for this long (heartbeats are 1/s): reconnect
    @property
    def max_message(self) -> int: ...  # a level2 snapshot of a deep book is several MB


class FeedParser(Protocol):
    """The pure parser of a connector: frames in, events out, no I/O."""

    @property
    def last_products(self) -> Iterable[str]: ...

    def on_connect(self) -> None: ...

    def receive(self, raw: bytes | str, recv_ns: int) -> list[ev.AnyEvent]: ...

    def take_resync(self) -> Any: ...  # truthy: what to resubscribe (connector-specific)


C = TypeVar("C", bound=FeedConfig)
P = TypeVar("P", bound=FeedParser)


class WsFeed(Generic[C, P]):
    """One connection to a feed for ``cfg.products``; events go to ``sink``.

    ``connected``, ``last_message`` (monotonic time of the last frame) and ``last_event`` (of the
    last frame that produced an event) are what the failover supervisor and the tests read.
    """

    label = "feed"  # in log messages
    reconnects: Counter  # per connector: md_<name>_reconnects_total
    disconnects: Counter  # md_<name>_disconnects_total{reason}

    def __init__(
        self,
        cfg: C,
        sink: EventSink,
        parser: P,
        monitor: FeedMonitor,
        infos: dict[str, SymbolInfo],
    ) -> None:
        self.cfg = cfg
        self.pub = sink
        self.parser = parser
        self.monitor = monitor
        self.infos = infos
        self.backoff = Backoff(initial=0.2, maximum=10.0)
        self.connected = False
        self.last_message = time.monotonic()
        self.last_event = time.monotonic()

    # ---------------------------------------------------------------- what a connector sends
    async def subscribe(self, ws: Any) -> None:
        """Send this connector's subscriptions on a new connection."""
        raise NotImplementedError

    async def resync(self, ws: Any, what: Any) -> None:
        """Resubscribe what the parser's ``take_resync()`` returned (it saw a gap)."""
        raise NotImplementedError

    def connect_details(self) -> dict[str, Any]:
        return {"url": self.cfg.url, "products": list(self.cfg.products)}

    # ---------------------------------------------------------------- the loop
    async def run(self, stop: asyncio.Event) -> None:
        """Publish the catalogue, then stay connected until ``stop``."""
        import websockets

        ts = now_ns()
        for info in self.infos.values():
            await self.pub.publish(ev.symbol_info(info, ts))
        while not stop.is_set():
            reason = "closed"
            try:
                async with websockets.connect(
                    self.cfg.url,
                    max_size=self.cfg.max_message,
                    open_timeout=10,
                    ping_interval=20,
                    close_timeout=2,
                ) as ws:
                    self.reconnects.inc()
                    self.connected = True
                    self.parser.on_connect()
                    await self.subscribe(ws)
                    log.info(f"{self.label} connected", extra=self.connect_details())
                    await self._read(ws, stop)
            except TimeoutError:
                reason = "stalled"
            except (
                OSError,
                websockets.ConnectionClosed,
                websockets.InvalidHandshake,
                websockets.InvalidURI,
            ) as exc:
                reason = type(exc).__name__
            finally:
                self.connected = False
            if stop.is_set():
                break
            self.disconnects.labels(reason).inc()
            delay = self.backoff.next()
            log.warning(
                f"{self.label} disconnected, reconnecting",
                extra={"reason": reason, "delay_s": round(delay, 3)},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        await self.pub.flush()

    async def _read(self, ws: Any, stop: asyncio.Event) -> None:
        stop_wait = asyncio.ensure_future(stop.wait())
        mon = self.monitor
        try:
            while not stop.is_set():
                recv = asyncio.ensure_future(ws.recv())
                done, _ = await asyncio.wait(
                    {recv, stop_wait}, timeout=self.cfg.stall_s, return_when=asyncio.FIRST_COMPLETED
                )
                if recv not in done:
                    recv.cancel()
                    if stop.is_set():
                        return
                    raise TimeoutError("feed stalled")
                raw = recv.result()
                rn = now_ns()
                t0 = time.perf_counter()
                self.last_message = time.monotonic()
                events = self.parser.receive(raw, rn)
                mon.frame(raw, self.parser.last_products, rn)
                for e in events:
                    await self.pub.publish(e, recv_ns=rn)
                    self.last_event = self.last_message
                    if isinstance(e, ev.BookSnapshot):
                        self.backoff.reset()
                mon.processed(time.perf_counter() - t0)
                again = self.parser.take_resync()
                if again:
                    await self.pub.flush()
                    await self.resync(ws, again)
        finally:
            stop_wait.cancel()
            await self.pub.flush()
