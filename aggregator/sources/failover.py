"""One symbol, two feeds: a primary and a backup connector, one continuous stream into md.in.

``python -m aggregator.sources.failover`` (``MD_FAILOVER_PRIMARY`` / ``MD_FAILOVER_BACKUP``:
``coinbase`` or ``coinbase_at``, e.g. the Exchange feed backed by Advanced Trade, or two
connections to one feed) runs both connectors at once (hot standby) and is the symbol's only
writer to md.in: the aggregator and everything after it see one source.

How continuity is kept. Every event of every leg goes through :class:`FailoverSource`:

- each leg keeps a *shadow* L2 book per symbol (its snapshots and updates applied) and its
  last ``RECENT_TRADES`` trades;
- the *active* leg's events are forwarded (trades only when their ``trade_id`` is above the
  last one published: both Coinbase feeds number trades alike, so nothing is doubled); the
  standby's are only applied to its shadow;
- a leg is *healthy* for a symbol when it is connected, its parser holds a synced book for
  the symbol (no unhealed gap), a frame arrived in the last ``stall_s`` (heartbeats come every
  second) and it sent no garbage in the last ``garbage_s``;
- every ``check_s`` (and on each event), when the active leg is unhealthy for a symbol and
  another leg is healthy, the symbol switches: the new leg's shadow book goes out as one
  ``book_snapshot`` (the aggregator publishes the *difference* to its book as an ordinary
  ``l2_update``: same epoch, seq +1, checksums valid), then the new leg's symbol_info with the
  switch's ``reason`` (the ``status`` message clients see names the new source, the previous one
  and why: ``source_reason``) and the trades it has that were never
  published (the ones the stalled primary missed). Switching is sticky: the backup stays active
  until it fails in turn (no flapping back and forth on a noisy primary).

When continuity cannot be kept: trades lost by *both* legs stay lost (their ids are skipped, the
trades stream's seq stays gapless); with no healthy leg the symbol stays on the active one,
which resyncs itself from its own next snapshot, again as a difference. A new epoch is never
needed on this side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from aggregator import events as ev
from aggregator.sources.publish import EventSink
from core.book import L2Book
from core.codec import now_ns
from core.symbols import default_info

log = logging.getLogger("aggregator.failover")

FAILOVERS = Counter(
    "md_source_failovers_total", "symbol switched to another feed", ["symbol", "to", "reason"]
)
ACTIVE = Gauge(
    "md_source_active_leg", "index of the leg feeding the symbol (0 primary)", ["symbol"]
)
RECENT_TRADES = 500  # per leg and symbol: covers a few seconds of a busy product, ~100 KB


class FeedParser(Protocol):
    counts: dict[str, int]

    def synced(self, symbol: str) -> bool: ...


class FeedClient(Protocol):
    """What the supervisor reads from a connector (CoinbaseClient, AdvancedTradeClient)."""

    connected: bool
    last_message: float  # time.monotonic() of the last frame
    parser: Any

    async def run(self, stop: asyncio.Event) -> None: ...


@dataclass
class Shadow:
    """A leg's view of one symbol."""

    book: L2Book = field(default_factory=L2Book)
    has_book: bool = False
    trades: deque[ev.Trade] = field(default_factory=lambda: deque(maxlen=RECENT_TRADES))
    info: ev.SymbolInfoEvent | None = None


@dataclass
class Leg:
    name: str
    index: int
    client: FeedClient | None = None
    shadows: dict[str, Shadow] = field(default_factory=dict)
    malformed_seen: int = 0
    last_garbage: float = -1e18


class LegSink:
    """The sink a leg's connector publishes to (aggregator/sources/publish.EventSink)."""

    def __init__(self, sup: FailoverSource, leg: Leg) -> None:
        self.sup, self.leg = sup, leg

    async def publish(self, e: ev.Event, *, recv_ns: int | None = None) -> None:
        await self.sup.on_event(self.leg, e, recv_ns)

    async def flush(self) -> None:
        await self.sup.out.flush()


class FailoverSource:
    def __init__(
        self,
        out: EventSink,
        symbols: Iterable[str],
        leg_names: Iterable[str] = ("primary", "backup"),
        *,
        stall_s: float = 2.0,
        garbage_s: float = 5.0,
        check_s: float = 0.1,
        clock: Any = time.monotonic,
    ) -> None:
        self.out = out
        self.symbols = tuple(symbols)
        self.legs = [Leg(n, i) for i, n in enumerate(leg_names)]
        for leg in self.legs:
            leg.shadows = {s: Shadow() for s in self.symbols}
        self.active = dict.fromkeys(self.symbols, 0)
        self.last_trade: dict[str, int] = {}
        self.stall_s, self.garbage_s, self.check_s = stall_s, garbage_s, check_s
        self.clock = clock
        self.switches: list[tuple[str, str, str, str]] = []  # (symbol, from, to, reason)
        for s in self.symbols:
            ACTIVE.labels(s).set(0)

    def sink(self, index: int) -> LegSink:
        return LegSink(self, self.legs[index])

    def attach(self, index: int, client: FeedClient) -> None:
        self.legs[index].client = client

    # ---------------------------------------------------------------- events
    async def on_event(self, leg: Leg, e: ev.Event, recv_ns: int | None) -> None:
        sym = e.symbol
        sh = leg.shadows.get(sym)
        if sh is None:
            return  # a product this source does not own
        if isinstance(e, ev.BookSnapshot):
            sh.book.load([(p, s) for p, _x, s, _q in e.bids], [(p, s) for p, _x, s, _q in e.asks])
            sh.has_book = True
        elif isinstance(e, ev.BookUpdate):
            for side, p, _x, s, _q in e.changes:
                sh.book.set(side, p, s)
        elif isinstance(e, ev.Trade):
            sh.trades.append(e)
        elif isinstance(e, ev.SymbolInfoEvent):
            sh.info = e
        if self.active[sym] != leg.index:
            return  # the standby: kept in its shadow only
        if not self.healthy(leg, sym)[0]:
            # checked at the event, not only every check_s: a trade_id gap comes with the trade
            # after it, and a resync quicker than check_s hid the gap from the timer, so the
            # trades the backup holds were never published (test_agg_failover[gap] on a fast host)
            await self._check(sym)
            if self.active[sym] != leg.index:
                return  # switched: the backup's book and missed trades went out instead
        if isinstance(e, ev.Trade) and not self._new_trade(sym, e):
            return
        await self.out.publish(e, recv_ns=recv_ns)

    def _new_trade(self, sym: str, t: ev.Trade) -> bool:
        try:
            tid = int(t.trade_id)
        except ValueError:
            return True  # ids that are not numbers cannot be ordered: forwarded as they come
        last = self.last_trade.get(sym)
        if last is not None and tid <= last:
            return False
        self.last_trade[sym] = tid
        return True

    # ---------------------------------------------------------------- health and switching
    def healthy(self, leg: Leg, sym: str) -> tuple[bool, str]:
        c = leg.client
        if c is None or not c.connected:
            return False, "disconnected"
        now = self.clock()
        if now - c.last_message > self.stall_s:
            return False, "stalled"
        malformed = int(c.parser.counts.get("malformed", 0))
        if malformed > leg.malformed_seen:
            leg.malformed_seen = malformed
            leg.last_garbage = now
        if now - leg.last_garbage < self.garbage_s:
            return False, "garbage"
        if not c.parser.synced(sym) or not leg.shadows[sym].has_book:
            return False, "gap"  # (or no snapshot yet): its book is being resynced
        return True, "ok"

    async def check(self) -> None:
        for sym in self.symbols:
            await self._check(sym)

    async def _check(self, sym: str) -> None:
        cur = self.legs[self.active[sym]]
        ok, why = self.healthy(cur, sym)
        if ok:
            return
        for leg in self.legs:
            if leg is not cur and self.healthy(leg, sym)[0]:
                await self.switch(sym, leg, why)
                break

    async def switch(self, sym: str, to: Leg, reason: str) -> None:
        frm = self.legs[self.active[sym]]
        sh = to.shadows[sym]
        ts = now_ns()
        self.active[sym] = to.index
        ACTIVE.labels(sym).set(to.index)
        FAILOVERS.labels(sym, to.name, reason).inc()
        self.switches.append((sym, frm.name, to.name, reason))
        log.warning(
            "feed failover",
            extra={"symbol": sym, "from": frm.name, "to": to.name, "reason": reason},
        )
        src = sh.info.source if sh.info is not None else to.name
        # the book as the new leg sees it: the aggregator publishes only the difference
        snap = sh.book.snapshot()
        await self.out.publish(ev.book_snapshot(sym, ts, snap["bids"], snap["asks"], source=src))
        if sh.info is not None:
            info = sh.info.info
        else:  # the new leg sent no catalogue entry yet: the old one's, under the new source
            old = frm.shadows[sym].info
            info = replace(old.info, source=src) if old is not None else default_info(sym, src)
        await self.out.publish(ev.symbol_info(info, ts, reason=reason))
        for t in sorted(sh.trades, key=_trade_order):
            if self._new_trade(sym, t):
                await self.out.publish(t)  # the trades the old leg missed
        await self.out.flush()

    async def run(self, stop: asyncio.Event) -> None:
        """Run every leg's connector and the health check until ``stop``."""
        tasks = [asyncio.create_task(leg.client.run(stop)) for leg in self.legs if leg.client]
        try:
            while not stop.is_set():
                await self.check()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.check_s)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.out.flush()

    def status(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every symbol has a healthy leg; which leg feeds which symbol."""
        detail: dict[str, Any] = {}
        ok = True
        for sym in self.symbols:
            states = {leg.name: self.healthy(leg, sym)[1] for leg in self.legs}
            detail[sym] = {"active": self.legs[self.active[sym]].name, "legs": states}
            ok = ok and any(v == "ok" for v in states.values())
        return ok, detail


def _trade_order(t: ev.Trade) -> tuple[int, str]:
    try:
        return int(t.trade_id), ""
    except ValueError:
        return 0, t.trade_id


def make_client(
    kind: str, s: Any, sink: EventSink, name: str, products: tuple[str, ...]
) -> FeedClient:
    """A connector of ``kind`` from its own settings, for ``products``, publishing to ``sink``."""
    from aggregator.sources.feed_monitor import FeedMonitor

    if kind == "coinbase":
        from aggregator.sources.coinbase import CoinbaseClient, config_from_settings

        cfg = replace(config_from_settings(s), products=products)
        return CoinbaseClient(cfg, sink, monitor=FeedMonitor(name))
    if kind == "coinbase_at":
        from aggregator.sources.coinbase_at import AdvancedTradeClient
        from aggregator.sources.coinbase_at import config_from_settings as at_config
        from aggregator.sources.coinbase_auth import credentials_from_settings

        return AdvancedTradeClient(
            replace(at_config(s), products=products),
            sink,
            credentials=credentials_from_settings(s),
            monitor=FeedMonitor(name),
        )
    raise ValueError(f"unknown feed {kind!r} (coinbase|coinbase_at)")


def main() -> None:
    from aggregator.sources.publish import EventPublisher
    from core.health import READINESS, Health
    from core.ops_http import start_ops_server
    from core.service import run
    from core.settings import Settings, parse_list
    from core.symbols import normalize_symbol

    async def _main(stop: asyncio.Event) -> None:
        s = Settings.from_env()
        kinds = (
            s.get("MD_FAILOVER_PRIMARY", str, "coinbase"),
            s.get("MD_FAILOVER_BACKUP", str, "coinbase_at"),
        )
        products = tuple(
            normalize_symbol(p) for p in s.get("MD_FAILOVER_PRODUCTS", parse_list, s.symbols)
        )
        pub = EventPublisher(s, "failover")
        await pub.start()
        names = ("primary", "backup")
        sup = FailoverSource(pub, products, names, stall_s=s.get("MD_FAILOVER_STALL_S", float, 2.0))
        for i, kind in enumerate(kinds):
            sup.attach(i, make_client(kind, s, sup.sink(i), f"{names[i]}-{kind}", products))
        health = Health("failover")
        health.add("feeds", sup.status, kind=READINESS)
        server = await start_ops_server(
            health, s.ops_host, s.get("MD_FAILOVER_HTTP_PORT", int, 8017)
        )
        try:
            await sup.run(stop)
        finally:
            server.close()
            await pub.stop()

    run(_main, service="failover")


if __name__ == "__main__":
    main()
