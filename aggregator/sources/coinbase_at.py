"""Coinbase Advanced Trade WebSocket connector (``wss://advanced-trade-ws.coinbase.com``), three layers.

1. **Wire schemas** (``At*`` TypedDicts): the market-data feed as Coinbase documents it
   (docs.cdp.coinbase.com, "Advanced Trade WebSocket Channels" and its AsyncAPI file). One
   ``subscribe`` per channel: ``{"type": "subscribe", "product_ids": [...], "channel": "level2",
   "jwt": "..."}``. Every message is an envelope ``{"channel", "client_id", "timestamp",
   "sequence_num", "events": [...]}``; the subscribe channel ``level2`` answers on channel
   ``l2_data`` (events ``snapshot``/``update`` with ``updates`` of ``{side: bid|offer,
   event_time, price_level, new_quantity}``, the new size, ``"0"`` removes), ``market_trades``
   (``trades`` of ``{trade_id, product_id, price, size, side, time}``), ``ticker``
   (``tickers``), ``candles`` (five-minute ``candles`` updated every second, ``start`` in Unix
   seconds), ``heartbeats`` (``current_time``, ``heartbeat_counter``), ``subscriptions``.
2. **Pure parser** (:class:`AdvancedTradeParser`, ``receive(raw, recv_ns)`` -> events): no I/O,
   never raises on feed content.
3. **I/O client** (:class:`AdvancedTradeClient`): connect, subscribe each channel with a fresh
   JWT (coinbase_auth.py), reconnect with backoff, stall detection, resync, publish.

Loss detection. ``sequence_num`` counts the messages of one connection (all channels together,
from 0 after each connect); a jump means messages were lost, and since the lost ones may have
been ``l2_data`` of any product, every product's book is suspect: the parser drops level-2
updates until a fresh snapshot and asks the client to resubscribe ``level2`` for all products
(Coinbase answers a subscribe with a ``snapshot``; the aggregator publishes the difference, so
clients see ordinary ``l2_update``s, no epoch change). A repeated or older ``sequence_num`` is
dropped whole. ``heartbeat_counter`` (+1 per second per connection) is checked too and counted.
Trades lost in a gap are lost for good (the ``market_trades`` snapshot on resubscribe returns
recent trades, which are deduplicated by ``trade_id``, so nothing is published twice).

What becomes what. ``l2_data`` -> ``book_snapshot``/``book_update``; ``market_trades`` ->
``trade`` (``side`` is the *maker's* side, as on the Exchange feed's ``match``: the taker is the
opposite side); ``ticker`` and ``candles`` are kept as the exchange's own view
(:attr:`AdvancedTradeParser.tickers`, :attr:`~AdvancedTradeParser.candles`, exported as gauges)
but not published: the aggregator derives tickers and candles from the book and the trades, and
a second writer of those streams would break their per-symbol sequence (ARCHITECTURE.md:
sources only normalize). They are there to cross-check the derived ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import orjson
from prometheus_client import Counter, Gauge

from aggregator import events as ev
from aggregator.sources.coinbase import load_catalogue
from aggregator.sources.coinbase_auth import CdpCredentials
from aggregator.sources.feed_monitor import FeedMonitor
from aggregator.sources.publish import EventSink
from aggregator.sources.ws_feed import WsFeed
from core.codec import ns_from_iso
from core.errors import MarketDataError
from core.symbols import normalize_symbol

log = logging.getLogger("aggregator.coinbase_at")

SOURCE = "coinbase_at"
AT_MESSAGES = Counter("md_coinbase_at_messages_total", "Advanced Trade messages", ["channel"])
AT_MALFORMED = Counter("md_coinbase_at_malformed_total", "Advanced Trade messages dropped as bad")
AT_GAPS = Counter("md_coinbase_at_gaps_total", "sequence_num / heartbeat_counter gaps", ["field"])
AT_RESYNCS = Counter("md_coinbase_at_resyncs_total", "level2 resubscriptions after a gap")
AT_RECONNECTS = Counter("md_coinbase_at_reconnects_total", "connections (re)established")
AT_DISCONNECTS = Counter("md_coinbase_at_disconnects_total", "connections lost", ["reason"])
AT_ERRORS = Counter("md_coinbase_at_errors_total", "error messages sent by Coinbase")
AT_TICKER_PRICE = Gauge("md_coinbase_at_ticker_price", "exchange ticker last price", ["product"])
AT_CANDLE_CLOSE = Gauge("md_coinbase_at_candle_close", "exchange 5m candle close", ["product"])

# ----------------------------------------------------------------------------- 1. wire schemas


class AtSubscribe(TypedDict):
    type: Literal["subscribe", "unsubscribe"]
    product_ids: list[str]
    channel: str
    jwt: NotRequired[str]


class AtEnvelope(TypedDict):
    channel: str  # l2_data | market_trades | ticker | ticker_batch | candles | heartbeats | ...
    client_id: str
    timestamp: str  # RFC 3339, nanoseconds
    sequence_num: int
    events: list[dict[str, Any]]


class AtL2Level(TypedDict):
    side: Literal["bid", "offer"]
    event_time: str
    price_level: str
    new_quantity: str  # the level's new size, not a delta


class AtL2Event(TypedDict):
    type: Literal["snapshot", "update"]
    product_id: str
    updates: list[AtL2Level]


class AtTrade(TypedDict):
    trade_id: str
    product_id: str
    price: str
    size: str
    side: Literal["BUY", "SELL"]  # the maker's side
    time: str


class AtMarketTradesEvent(TypedDict):
    type: Literal["snapshot", "update"]
    trades: list[AtTrade]


class AtTicker(TypedDict):
    type: Literal["ticker"]
    product_id: str
    price: str
    volume_24_h: str
    low_24_h: str
    high_24_h: str
    price_percent_chg_24_h: str
    best_bid: str
    best_bid_quantity: str
    best_ask: str
    best_ask_quantity: str


class AtCandle(TypedDict):
    start: str  # Unix seconds of the five-minute bucket
    high: str
    low: str
    open: str
    close: str
    volume: str
    product_id: str


class AtHeartbeat(TypedDict):
    current_time: str
    heartbeat_counter: int | str  # an integer in production, a string in older prose docs


class AtError(TypedDict):
    type: Literal["error"]
    message: str


# ----------------------------------------------------------------------------- 2. pure parser

SIDE_OF_LEVEL = {"bid": "buy", "offer": "sell"}
TAKER_OF_MAKER = {"BUY": "sell", "SELL": "buy", "buy": "sell", "sell": "buy"}
L2_CHANNEL = "level2"
DEFAULT_CHANNELS = ("level2", "market_trades", "ticker", "candles", "heartbeats")


@dataclass
class AtProduct:
    have_snapshot: bool = False
    last_trade_id: int | None = None


@dataclass
class AdvancedTradeParser:
    products: Iterable[str]
    source: str = SOURCE
    feeds: dict[str, AtProduct] = field(default_factory=dict)
    last_seq: int | None = None
    last_heartbeat: int | None = None
    resync: bool = False  # the client must resubscribe level2 for every product
    last_products: tuple[str, ...] = ()  # the products the last message concerned
    tickers: dict[str, dict[str, str]] = field(default_factory=dict)
    candles: dict[str, dict[str, str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # Coinbase's error messages (bounded)
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "malformed": 0,
            "stale": 0,
            "gaps": 0,
            "heartbeat_gaps": 0,
            "ignored": 0,
        }
    )

    def __post_init__(self) -> None:
        self.products = tuple(self.products)
        self._wire = {normalize_symbol(p): p for p in self.products}
        self.feeds = {normalize_symbol(p): AtProduct() for p in self.products}

    def on_connect(self) -> None:
        """``sequence_num`` and ``heartbeat_counter`` restart per connection; books need a
        snapshot again; trade ids persist (a reconnect's trade snapshot is deduplicated)."""
        self.last_seq = None
        self.last_heartbeat = None
        self.resync = False
        for f in self.feeds.values():
            f.have_snapshot = False

    def take_resync(self) -> bool:
        out, self.resync = self.resync, False
        return out

    def synced(self, symbol: str) -> bool:
        f = self.feeds.get(symbol)
        return f is not None and f.have_snapshot

    def _bad(self, why: str, raw: object) -> list[ev.AnyEvent]:
        self.counts["malformed"] += 1
        AT_MALFORMED.inc()
        log.warning("malformed feed message", extra={"reason": why, "raw": repr(raw)[:200]})
        return []

    def _gap(self, what: str, expected: int, got: int) -> None:
        self.counts["gaps"] += 1
        AT_GAPS.labels(what).inc()
        log.warning(
            "feed gap, resyncing every book",
            extra={"field": what, "expected": expected, "got": got},
        )
        self._resync_all(what)

    def _resync_all(self, why: str) -> None:
        self.resync = True
        for f in self.feeds.values():
            f.have_snapshot = False

    def receive(self, raw: bytes | str, recv_ns: int) -> list[ev.AnyEvent]:
        """Events for one raw message (possibly none). Never raises on feed content."""
        self.last_products = ()
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._bad("not JSON", raw)
        if not isinstance(msg, dict):
            return self._bad("not an object", raw)
        if msg.get("type") == "error":
            AT_ERRORS.inc()
            text = str(msg.get("message"))[:200]
            if len(self.errors) < 100:
                self.errors.append(text)
            log.error("feed error", extra={"error_message": text})
            return []
        channel = msg.get("channel")
        if not isinstance(channel, str) or not isinstance(msg.get("events"), list):
            return self._bad("not an envelope", raw)
        AT_MESSAGES.labels(channel if channel in _KNOWN else "other").inc()
        try:
            seq = msg["sequence_num"]
            if not isinstance(seq, int):
                raise ValueError("sequence_num must be an integer")
            if self.last_seq is not None:
                if seq <= self.last_seq:
                    self.counts["stale"] += 1
                    return []
                if seq != self.last_seq + 1:
                    self._gap("sequence_num", self.last_seq + 1, seq)
            self.last_seq = seq
            ts = ns_from_iso(msg["timestamp"]) if isinstance(msg.get("timestamp"), str) else recv_ns
            return self._dispatch(channel, msg["events"], ts)
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            ArithmeticError,
            MarketDataError,  # EventError among them
        ) as exc:
            if channel == "l2_data":  # a level change we could not apply: the books are suspect
                self._resync_all("malformed l2_data")
            return self._bad(str(exc) if isinstance(exc, ev.EventError) else repr(exc), msg)

    def _symbol(self, product: object) -> str | None:
        if not isinstance(product, str):
            raise ValueError("product_id missing")
        sym = normalize_symbol(product)
        return sym if sym in self.feeds else None

    def _dispatch(self, channel: str, events: list[Any], ts: int) -> list[ev.AnyEvent]:
        if channel == "l2_data":
            return self._l2(events, ts)
        if channel == "market_trades":
            return self._trades(events, ts)
        if channel in ("ticker", "ticker_batch"):
            self._tickers(events)
            return []
        if channel == "candles":
            self._candles(events)
            return []
        if channel == "heartbeats":
            self._heartbeats(events)
            return []
        self.counts["ignored"] += 1  # subscriptions, status, anything new
        return []

    def _l2(self, events: list[Any], ts: int) -> list[ev.AnyEvent]:
        out: list[ev.AnyEvent] = []
        touched: list[str] = []
        # validate the whole message before changing any state (a bad level drops it all)
        for e in events:
            sym = self._symbol(e["product_id"])
            kind = e["type"]
            if kind not in ("snapshot", "update"):
                raise ValueError(f"bad l2_data event type {kind!r}")
            if sym is None:
                continue
            touched.append(sym)
            f = self.feeds[sym]
            changes = []
            for u in e["updates"]:
                side = SIDE_OF_LEVEL.get(u["side"])
                if side is None:
                    raise ValueError(f"bad side {u['side']!r}")
                changes.append([side, u["price_level"], u["new_quantity"]])
            if kind == "snapshot":
                bids = [[p, q] for s, p, q in changes if s == "buy" and not _zero(q)]
                asks = [[p, q] for s, p, q in changes if s == "sell" and not _zero(q)]
                out.append(ev.book_snapshot(sym, ts, bids, asks, source=self.source))
            elif f.have_snapshot:
                out.append(ev.book_update(sym, ts, changes, source=self.source))
            else:
                self.counts["stale"] += 1  # before the (re)subscription's snapshot: covered by it
        for e in out:
            if isinstance(e, ev.BookSnapshot):
                self.feeds[e.symbol].have_snapshot = True
        self.last_products = tuple(dict.fromkeys(touched))
        return out

    def _trades(self, events: list[Any], ts: int) -> list[ev.AnyEvent]:
        out: list[ev.AnyEvent] = []
        touched: list[str] = []
        for e in events:
            trades = e["trades"]
            # a snapshot lists the most recent first: publish in trade-id order
            for t in sorted(trades, key=lambda t: int(t["trade_id"])):
                sym = self._symbol(t["product_id"])
                if sym is None:
                    continue
                touched.append(sym)
                tid = int(t["trade_id"])
                f = self.feeds[sym]
                if f.last_trade_id is not None and tid <= f.last_trade_id:
                    self.counts["stale"] += 1
                    continue
                taker = TAKER_OF_MAKER.get(t["side"])
                if taker is None:
                    raise ValueError(f"bad side {t['side']!r}")
                t_ts = ns_from_iso(t["time"]) if isinstance(t.get("time"), str) else ts
                out.append(
                    ev.trade(sym, t_ts, str(tid), taker, t["price"], t["size"], source=self.source)
                )
        for e in out:  # only once the whole message is valid
            f = self.feeds[e.symbol]
            f.last_trade_id = int(e.trade_id)  # type: ignore[union-attr]  # all trades here
        self.last_products = tuple(dict.fromkeys(touched))
        return out

    def _tickers(self, events: list[Any]) -> None:
        touched = []
        for e in events:
            for t in e["tickers"]:
                sym = self._symbol(t["product_id"])
                if sym is None:
                    continue
                touched.append(sym)
                self.tickers[sym] = {k: str(v) for k, v in t.items()}
                AT_TICKER_PRICE.labels(sym).set(float(t["price"]))
        self.last_products = tuple(dict.fromkeys(touched))

    def _candles(self, events: list[Any]) -> None:
        touched = []
        for e in events:
            for c in e["candles"]:
                sym = self._symbol(c["product_id"])
                if sym is None:
                    continue
                int(c["start"])  # validated: Unix seconds
                touched.append(sym)
                self.candles[sym] = {k: str(v) for k, v in c.items()}
                AT_CANDLE_CLOSE.labels(sym).set(float(c["close"]))
        self.last_products = tuple(dict.fromkeys(touched))

    def _heartbeats(self, events: list[Any]) -> None:
        for e in events:
            n = int(e["heartbeat_counter"])
            if self.last_heartbeat is not None and n != self.last_heartbeat + 1:
                self.counts["heartbeat_gaps"] += 1
                AT_GAPS.labels("heartbeat_counter").inc()
            self.last_heartbeat = n


def _zero(q: str) -> bool:
    try:
        return float(q) == 0.0
    except ValueError:
        return False  # left to the event validation, which names the field


_KNOWN = frozenset(
    ("l2_data", "market_trades", "ticker", "ticker_batch", "candles", "heartbeats", "subscriptions")
)

# ----------------------------------------------------------------------------- 3. I/O client


@dataclass(frozen=True, kw_only=True)
class AdvancedTradeConfig:
    url: str = "wss://advanced-trade-ws.coinbase.com"
    products: tuple[str, ...] = ()
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    stall_s: float = 5.0  # heartbeats come every second: five silent seconds is a dead link
    catalogue: Path | None = None
    max_message: int = 16 << 20  # a level2 snapshot of a deep book is several MB


class AdvancedTradeClient(WsFeed[AdvancedTradeConfig, AdvancedTradeParser]):
    """One connection to the feed for ``cfg.products``; events go to ``sink``. One subscribe
    per channel (with a fresh JWT each when credentials are given); a gap resubscribes level2."""

    label = "coinbase advanced trade"
    reconnects = AT_RECONNECTS
    disconnects = AT_DISCONNECTS

    def __init__(
        self,
        cfg: AdvancedTradeConfig,
        sink: EventSink,
        *,
        credentials: CdpCredentials | None = None,
        monitor: FeedMonitor | None = None,
        source: str = SOURCE,
    ) -> None:
        infos = {
            s: replace(i, source=source)
            for s, i in load_catalogue(cfg.catalogue, cfg.products, full=False).items()
        }
        super().__init__(
            cfg,
            sink,
            AdvancedTradeParser(cfg.products, source=source),
            monitor or FeedMonitor(source),
            infos,
        )
        self.credentials = credentials
        self.source = source

    def subscribe_message(self, kind: str, channel: str, products: Iterable[str]) -> bytes:
        msg: AtSubscribe = {"type": kind, "product_ids": list(products), "channel": channel}  # type: ignore[typeddict-item]
        if self.credentials is not None:
            msg["jwt"] = self.credentials.websocket_jwt()  # fresh: a JWT lives two minutes
        return orjson.dumps(msg)

    def connect_details(self) -> dict[str, Any]:
        return {**super().connect_details(), "authenticated": self.credentials is not None}

    async def subscribe(self, ws: Any) -> None:
        for ch in self.cfg.channels:
            await ws.send(self.subscribe_message("subscribe", ch, self.cfg.products))

    async def resync(self, ws: Any, what: bool) -> None:
        AT_RESYNCS.inc()
        ps = self.cfg.products
        await ws.send(self.subscribe_message("unsubscribe", L2_CHANNEL, ps))
        await ws.send(self.subscribe_message("subscribe", L2_CHANNEL, ps))
        log.info("resubscribed level2 for resync", extra={"products": list(ps)})


def config_from_settings(s: Any) -> AdvancedTradeConfig:
    from core.settings import parse_list

    products = s.get("MD_COINBASE_AT_PRODUCTS", parse_list, ()) or s.symbols
    cat = s.get("MD_COINBASE_CATALOGUE", str, "")
    return AdvancedTradeConfig(
        url=s.get("MD_COINBASE_AT_URL", str, AdvancedTradeConfig.url),
        products=tuple(normalize_symbol(p) for p in products),
        channels=s.get("MD_COINBASE_AT_CHANNELS", parse_list, DEFAULT_CHANNELS),
        stall_s=s.get("MD_COINBASE_AT_STALL_S", float, 5.0),
        catalogue=Path(cat) if cat else None,
    )


def main() -> None:
    from aggregator.sources.coinbase_auth import credentials_from_settings
    from aggregator.sources.feed_monitor import monitor_from_settings
    from aggregator.sources.publish import EventPublisher
    from core.health import READINESS, Health
    from core.ops_http import start_ops_server
    from core.service import run
    from core.settings import Settings

    async def _main(stop: asyncio.Event) -> None:
        s = Settings.from_env()
        cfg = config_from_settings(s)
        creds = credentials_from_settings(s)  # fails at start, naming the setting, never the key
        pub = EventPublisher(s, SOURCE)
        await pub.start()
        monitor = monitor_from_settings(s, SOURCE, cfg.products)
        client = AdvancedTradeClient(cfg, pub, credentials=creds, monitor=monitor)
        health = Health(SOURCE)
        health.add("feed_messages", monitor.healthy, kind=READINESS)  # 503: a silent minute
        server = await start_ops_server(
            health, s.ops_host, s.get("MD_COINBASE_AT_HTTP_PORT", int, 8016)
        )
        try:
            await client.run(stop)
        finally:
            server.close()
            monitor.close()
            await pub.stop()

    run(_main, service=SOURCE)


if __name__ == "__main__":
    main()
