"""Coinbase Exchange WebSocket connector, in three layers (nautilus_trader's adapter shape).

1. **Wire schemas** (``Wire*`` TypedDicts): the feed's JSON as documented by Coinbase
   (``subscribe`` -> ``subscriptions``; ``snapshot``/``l2update`` on ``level2``,
   ``level2_batch``, ``level2_50``; ``match``/``last_match`` on ``matches``; the ``full`` channel's
   ``received``/``open``/``change``/``done``/``match``; ``ticker``; ``heartbeat``; ``error``).
2. **Pure parser** (:class:`CoinbaseParser`, sans-I/O: ``receive(raw, recv_ns)`` -> events): turns
   wire messages into :mod:`aggregator.events`, detects loss and asks for a resync.
3. **I/O client** (:class:`CoinbaseClient`): websockets connection, subscribe, reconnect with
   exponential backoff and full jitter (core.backoff), resubscribe, stall detection, publish.

Loss detection and resync. On ``level2`` the ``l2update`` messages carry no sequence, so loss is
inferred from what does: ``match`` ``trade_id`` is contiguous per product and ``sequence``
increases; ``heartbeat`` carries ``last_trade_id``. A jump means messages were lost on this
connection, so the product's book may be wrong too: the parser drops that product's updates and
asks for a resync, which the client performs by unsubscribing and resubscribing the product
(Coinbase answers a ``level2`` subscribe with a fresh ``snapshot``; the aggregator publishes the
difference, so clients see an ordinary ``l2_update``, no epoch change). Older or repeated
matches (``trade_id <= last``, out of order or replayed after a reconnect) are dropped. On the
``full`` channel every message of a product carries a contiguous ``sequence``; a gap emits a
``reset`` for the product and a resync (a full-channel book needs the REST level-3 snapshot to
be complete; without it the book rebuilds from the orders opened after the resync - see
docs/aggregator.md "Coinbase"). Malformed messages are counted and skipped; nothing the feed
sends can raise out of :meth:`CoinbaseParser.receive`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import orjson
from prometheus_client import Counter

from aggregator import events as ev
from aggregator.sources.feed_monitor import FeedMonitor
from aggregator.sources.publish import EventPublisher, EventSink
from aggregator.sources.ws_feed import WsFeed
from core.codec import now_ns, ns_from_iso
from core.errors import MarketDataError
from core.symbols import SymbolInfo, normalize_symbol

log = logging.getLogger("aggregator.coinbase")

FEED_MESSAGES = Counter("md_coinbase_messages_total", "feed messages received", ["type"])
FEED_MALFORMED = Counter("md_coinbase_malformed_total", "feed messages dropped as malformed")
FEED_STALE = Counter("md_coinbase_stale_total", "out-of-order or repeated messages dropped")
FEED_GAPS = Counter("md_coinbase_gaps_total", "sequence/trade_id gaps detected", ["product"])
FEED_RESYNCS = Counter("md_coinbase_resyncs_total", "product resyncs requested", ["product"])
FEED_LOST_TRADES = Counter(
    "md_coinbase_lost_trades_total", "trade ids skipped across a reconnect", ["product"]
)
FEED_RECONNECTS = Counter("md_coinbase_reconnects_total", "connections (re)established")
FEED_DISCONNECTS = Counter("md_coinbase_disconnects_total", "connections lost", ["reason"])

# ----------------------------------------------------------------------------- 1. wire schemas

Level = list[str]  # [price, size]


class WireSubscribe(TypedDict):
    type: Literal["subscribe", "unsubscribe"]
    product_ids: list[str]
    channels: list[str]


class WireSnapshot(TypedDict):
    type: Literal["snapshot"]
    product_id: str
    bids: list[Level]
    asks: list[Level]


class WireL2Update(TypedDict):
    type: Literal["l2update"]
    product_id: str
    changes: list[list[str]]  # [side, price, size]
    time: str


class WireMatch(TypedDict):
    type: Literal["match", "last_match"]
    trade_id: int
    maker_order_id: str
    taker_order_id: str
    side: str  # the MAKER's side
    size: str
    price: str
    product_id: str
    sequence: int
    time: str


class WireOpen(TypedDict):
    type: Literal["open"]
    order_id: str
    price: str
    remaining_size: str
    side: str
    product_id: str
    sequence: int
    time: str


class WireChange(TypedDict):
    type: Literal["change"]
    order_id: str
    new_size: str
    price: NotRequired[str]
    side: str
    product_id: str
    sequence: int
    time: str


class WireDone(TypedDict):
    type: Literal["done"]
    order_id: str
    reason: str
    price: NotRequired[str]
    remaining_size: NotRequired[str]
    side: str
    product_id: str
    sequence: int
    time: str


class WireHeartbeat(TypedDict):
    type: Literal["heartbeat"]
    sequence: int
    last_trade_id: int
    product_id: str
    time: str


# ----------------------------------------------------------------------------- 2. pure parser

L2_CHANNELS = frozenset(("level2", "level2_batch", "level2_50"))
OPPOSITE = {"buy": "sell", "sell": "buy"}


@dataclass
class ProductFeed:
    """What the parser knows about one product on the current connection."""

    have_snapshot: bool = False
    last_trade_id: int | None = None
    last_sequence: int | None = None  # full channel only


@dataclass
class CoinbaseParser:
    products: Iterable[str]
    full: bool = False  # True: order-level ``full`` channel; False: ``level2*`` + ``matches``
    source: str = "coinbase"
    feeds: dict[str, ProductFeed] = field(default_factory=dict)
    resync: set[str] = field(default_factory=set)  # products the client must resubscribe
    last_products: tuple[str, ...] = ()  # the product the last message concerned (metrics, raw)
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "malformed": 0,
            "stale": 0,
            "gaps": 0,
            "ignored": 0,
            "lost_trades": 0,  # trade ids skipped across a reconnect: gone for good
        }
    )

    def __post_init__(self) -> None:
        self.products = tuple(self.products)
        for p in self.products:
            self.feeds[p] = ProductFeed()

    def on_connect(self) -> None:
        """A new connection: every book needs its snapshot again; trade ids persist (dedupe)."""
        for f in self.feeds.values():
            f.have_snapshot = False
            f.last_sequence = None
        self.resync.clear()

    def take_resync(self) -> set[str]:
        out, self.resync = self.resync, set()
        for p in out:
            self.feeds[p].have_snapshot = False
            self.feeds[p].last_sequence = None
        return out

    def _bad(self, why: str, raw: object) -> list[ev.AnyEvent]:
        self.counts["malformed"] += 1
        FEED_MALFORMED.inc()
        log.warning("malformed feed message", extra={"reason": why, "raw": repr(raw)[:200]})
        return []

    def _gap(self, product: str, what: str, expected: int, got: int) -> None:
        self.counts["gaps"] += 1
        FEED_GAPS.labels(product).inc()
        FEED_RESYNCS.labels(product).inc()
        log.warning(
            "feed gap, resyncing product",
            extra={"product": product, "field": what, "expected": expected, "got": got},
        )
        self.resync.add(product)
        self.feeds[product].have_snapshot = False

    def receive(self, raw: bytes | str, recv_ns: int) -> list[ev.AnyEvent]:
        """Events for one raw feed message (possibly none). Never raises on feed content."""
        self.last_products = ()
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._bad("not JSON", raw)
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            return self._bad("not a typed object", raw)
        t = msg["type"]
        FEED_MESSAGES.labels(t if t in _KNOWN else "other").inc()
        try:
            return self._dispatch(t, msg, recv_ns)
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            ArithmeticError,
            MarketDataError,  # EventError among them
        ) as exc:
            self._resync_after_bad(t, msg)
            return self._bad(str(exc) if isinstance(exc, ev.EventError) else repr(exc), msg)

    def _resync_after_bad(self, t: str, msg: dict[str, Any]) -> None:
        """A book message we could not apply leaves that book wrong: resync the product."""
        if t not in ("snapshot", "l2update", "open", "change", "done"):
            return
        try:
            sym = normalize_symbol(msg.get("product_id"))
        except MarketDataError:
            return
        if sym in self.feeds and self.feeds[sym].have_snapshot:
            FEED_RESYNCS.labels(sym).inc()
            self.resync.add(sym)
            self.feeds[sym].have_snapshot = False

    def synced(self, symbol: str) -> bool:
        """The product's book is in sync (snapshot received, no gap since)."""
        f = self.feeds.get(symbol)
        return f is not None and f.have_snapshot

    def _product(self, msg: dict[str, Any]) -> str | None:
        p = msg.get("product_id")
        if not isinstance(p, str):
            raise ValueError("product_id missing")
        sym = normalize_symbol(p)
        return sym if sym in self.feeds else None

    def _ts(self, msg: dict[str, Any], recv_ns: int) -> int:
        t = msg.get("time")
        return ns_from_iso(t) if isinstance(t, str) else recv_ns

    def _dispatch(self, t: str, msg: dict[str, Any], recv_ns: int) -> list[ev.AnyEvent]:
        if t in ("subscriptions", "ticker", "received", "activate", "status"):
            self.counts["ignored"] += 1
            return []
        if t == "error":
            log.error(
                "feed error",
                extra={"error_message": msg.get("message"), "reason": msg.get("reason")},
            )
            return []
        sym = self._product(msg)
        if sym is None:
            self.counts["ignored"] += 1
            return []
        self.last_products = (sym,)
        f = self.feeds[sym]
        ts = self._ts(msg, recv_ns)
        src = self.source
        if t == "snapshot":
            e = ev.book_snapshot(sym, ts, msg["bids"], msg["asks"], source=src)
            f.have_snapshot = True
            return [e]
        if t == "l2update":
            if not f.have_snapshot:
                self.counts["stale"] += 1
                FEED_STALE.inc()
                return []  # before the (re)subscription's snapshot: covered by it
            return [ev.book_update(sym, ts, msg["changes"], source=src)]
        if t == "heartbeat":
            last = int(msg["last_trade_id"])
            if (
                f.last_trade_id is not None
                and last > f.last_trade_id
                and f.have_snapshot
                and not self.full
            ):
                self._gap(sym, "last_trade_id", f.last_trade_id, last)
                f.last_trade_id = last  # those trades are lost for good; the book is resynced
            return []
        if t in ("match", "last_match"):
            return self._match(sym, f, t, msg, ts)
        if t in ("open", "change", "done"):
            if not self.full:
                self.counts["ignored"] += 1
                return []
            return self._full(sym, f, t, msg, ts)
        self.counts["ignored"] += 1
        return []

    def _match(
        self, sym: str, f: ProductFeed, t: str, msg: dict[str, Any], ts: int
    ) -> list[ev.AnyEvent]:
        tid = int(msg["trade_id"])
        maker_side = msg["side"]
        if maker_side not in OPPOSITE:
            raise ValueError("bad side")
        out: list[ev.AnyEvent] = []
        if self.full and t == "match":
            try:
                out.extend(self._sequence(sym, f, msg))
            except _Stale:
                return []
            if f.last_sequence is None:
                return out
        if f.last_trade_id is not None and tid <= f.last_trade_id:
            self.counts["stale"] += 1
            FEED_STALE.inc()
            return out
        if (
            f.last_trade_id is not None
            and tid != f.last_trade_id + 1
            and t == "match"
            and not self.full
        ):
            self._gap(sym, "trade_id", f.last_trade_id + 1, tid)
        elif t == "last_match" and f.last_trade_id is not None and tid > f.last_trade_id + 1:
            # a (re)subscription's last trade is ahead: the ones between went out while we were
            # away; the feed cannot replay them (the book is whole again from its snapshot)
            lost = tid - f.last_trade_id - 1
            self.counts["lost_trades"] += lost
            FEED_LOST_TRADES.labels(sym).inc(lost)
            log.warning(
                "trades missed while disconnected",
                extra={"product": sym, "after": f.last_trade_id, "next": tid, "lost": lost},
            )
        f.last_trade_id = tid
        src = self.source
        taker_side = OPPOSITE[maker_side]
        if self.full and t == "match":
            out.append(
                ev.match(
                    sym,
                    ts,
                    str(tid),
                    msg["maker_order_id"],
                    msg["taker_order_id"],
                    taker_side,
                    msg["price"],
                    msg["size"],
                    source=src,
                    src_seq=int(msg["sequence"]),
                )
            )
        else:
            out.append(
                ev.trade(
                    sym,
                    ts,
                    str(tid),
                    taker_side,
                    msg["price"],
                    msg["size"],
                    source=src,
                    src_seq=msg.get("sequence") if isinstance(msg.get("sequence"), int) else None,
                )
            )
        return out

    def _sequence(self, sym: str, f: ProductFeed, msg: dict[str, Any]) -> list[ev.AnyEvent]:
        """Full channel: contiguous ``sequence`` per product, else reset + resync."""
        seq = int(msg["sequence"])
        if f.last_sequence is None:
            f.last_sequence = seq
            return []
        if seq <= f.last_sequence:
            self.counts["stale"] += 1
            FEED_STALE.inc()
            raise _Stale
        if seq != f.last_sequence + 1:
            self._gap(sym, "sequence", f.last_sequence + 1, seq)
            f.last_sequence = None
            return [
                ev.reset(sym, self._ts(msg, now_ns()), "coinbase sequence gap", source=self.source)
            ]
        f.last_sequence = seq
        return []

    def _full(
        self, sym: str, f: ProductFeed, t: str, msg: dict[str, Any], ts: int
    ) -> list[ev.AnyEvent]:
        try:
            out = self._sequence(sym, f, msg)
        except _Stale:
            return []
        if f.last_sequence is None:
            return out
        src, seq = self.source, int(msg["sequence"])
        if t == "open":
            out.append(
                ev.open_(
                    sym,
                    ts,
                    msg["order_id"],
                    msg["side"],
                    msg["price"],
                    msg["remaining_size"],
                    source=src,
                    src_seq=seq,
                )
            )
        elif t == "change":
            if "new_size" in msg:
                out.append(
                    ev.change(
                        sym,
                        ts,
                        msg["order_id"],
                        msg["side"],
                        msg["new_size"],
                        price=msg.get("price"),
                        source=src,
                        src_seq=seq,
                    )
                )
        elif t == "done":
            out.append(
                ev.done(
                    sym,
                    ts,
                    msg["order_id"],
                    msg["side"],
                    msg["reason"],
                    price=msg.get("price"),
                    remaining_size=msg.get("remaining_size"),
                    source=src,
                    src_seq=seq,
                )
            )
        return out


class _Stale(Exception):
    pass


_KNOWN = frozenset(
    (
        "subscriptions",
        "snapshot",
        "l2update",
        "match",
        "last_match",
        "ticker",
        "heartbeat",
        "open",
        "change",
        "done",
        "received",
        "activate",
        "error",
    )
)


def load_catalogue(
    path: Path | None, products: Iterable[str], *, full: bool
) -> dict[str, SymbolInfo]:
    """SymbolInfo per product from a ``/products`` JSON dump (tick = quote_increment)."""
    raw: dict[str, dict[str, Any]] = {}
    if path is not None and path.exists():
        for p in orjson.loads(path.read_bytes()):
            raw[normalize_symbol(p["id"])] = p
    channels = (
        ("ticker", "l2", "l3", "trades", "candles", "stats")
        if full
        else ("ticker", "l2", "trades", "candles", "stats")
    )
    out: dict[str, SymbolInfo] = {}
    for sym in products:
        p = raw.get(sym, {})
        base, quote = sym.split("-")
        status = (
            "halted"
            if p.get("trading_disabled")
            else ("online" if p.get("status", "online") == "online" else "maintenance")
        )
        out[sym] = SymbolInfo(
            sym,
            base,
            quote,
            Decimal(str(p.get("quote_increment", "0.00000001"))),
            Decimal(str(p.get("base_min_size", "0.00000001"))),
            status=status,
            source="coinbase",
            channels=channels,
        )
    return out


# ----------------------------------------------------------------------------- 3. I/O client


@dataclass(frozen=True, kw_only=True)
class CoinbaseConfig:
    url: str = "wss://ws-feed.exchange.coinbase.com"
    products: tuple[str, ...] = ()
    channels: tuple[str, ...] = ("level2", "matches", "heartbeat")
    stall_s: float = 15.0  # no message for this long (heartbeats are 1/s): reconnect
    catalogue: Path | None = None
    max_message: int = 16 << 20  # a level2 snapshot of a deep book is several MB


class CoinbaseClient(WsFeed[CoinbaseConfig, CoinbaseParser]):
    """The Exchange feed: one subscribe for every channel; a gap resubscribes its products."""

    label = "coinbase"
    reconnects = FEED_RECONNECTS
    disconnects = FEED_DISCONNECTS

    def __init__(
        self, cfg: CoinbaseConfig, publisher: EventSink, *, monitor: FeedMonitor | None = None
    ) -> None:
        self.full = "full" in cfg.channels
        super().__init__(
            cfg,
            publisher,
            CoinbaseParser(cfg.products, full=self.full),
            monitor or FeedMonitor("coinbase"),
            load_catalogue(cfg.catalogue, cfg.products, full=self.full),
        )

    def _sub(self, kind: str, products: Iterable[str]) -> bytes:
        msg: WireSubscribe = {
            "type": kind,  # type: ignore[typeddict-item]
            "product_ids": list(products),
            "channels": list(self.cfg.channels),
        }
        return orjson.dumps(msg)

    async def subscribe(self, ws: Any) -> None:
        await ws.send(self._sub("subscribe", self.cfg.products))

    async def resync(self, ws: Any, what: set[str]) -> None:
        await ws.send(self._sub("unsubscribe", sorted(what)))
        await ws.send(self._sub("subscribe", sorted(what)))
        log.info("resubscribed for resync", extra={"products": sorted(what)})


def config_from_settings(s: Any) -> CoinbaseConfig:
    from core.settings import parse_list

    products = s.get("MD_COINBASE_PRODUCTS", parse_list, ()) or s.symbols
    cat = s.get("MD_COINBASE_CATALOGUE", str, "")
    return CoinbaseConfig(
        url=s.get("MD_COINBASE_URL", str, CoinbaseConfig.url),
        products=tuple(normalize_symbol(p) for p in products),
        channels=s.get("MD_COINBASE_CHANNELS", parse_list, CoinbaseConfig.channels),
        stall_s=s.get("MD_COINBASE_STALL_S", float, 15.0),
        catalogue=Path(cat) if cat else None,
    )


def main() -> None:
    import argparse

    from aggregator.sources.feed_monitor import monitor_from_settings
    from core.health import INFO, READINESS, Health
    from core.ops_http import start_ops_server
    from core.service import run
    from core.settings import Settings

    ap = argparse.ArgumentParser(description="Coinbase Exchange WebSocket source -> md.in")
    ap.add_argument("--capture", type=Path, help="also append every event to this capture file")
    args = ap.parse_args()

    async def _main(stop: asyncio.Event) -> None:
        s = Settings.from_env()
        pub = EventPublisher(s, "coinbase", capture=args.capture)
        await pub.start()
        cfg = config_from_settings(s)
        monitor = monitor_from_settings(s, "coinbase", cfg.products)
        client = CoinbaseClient(cfg, pub, monitor=monitor)
        health = Health("coinbase")
        # the ingestion document: 503 after a minute without a message (past a 5-minute grace);
        # the upstream feed is a dependency: not ready while it is away, never a restart
        health.add("feed_messages", monitor.healthy, kind=READINESS)
        health.add("feed_connected", lambda: (client.connected, {}), kind=INFO)
        server = await start_ops_server(
            health, s.ops_host, s.get("MD_COINBASE_HTTP_PORT", int, 8015)
        )
        try:
            await client.run(stop)
        finally:
            server.close()
            monitor.close()
            await pub.stop()

    run(_main, service="coinbase")


if __name__ == "__main__":
    main()
