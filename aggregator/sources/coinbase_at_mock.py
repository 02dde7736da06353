"""A mock Coinbase Advanced Trade WebSocket feed serving an Exchange-feed recording, with faults.

``python -m aggregator.sources.coinbase_at_mock FILE [--port 8022] [--speed 1] [--loop]
[--public-key PEM --key-name NAME] [--gap-every N] [--malformed-every N] [--disconnect-every N]
[--stall-every N]``

It plays the same recordings as ``coinbase_mock`` (the Exchange feed's ``snapshot``/
``l2update``/``match``), translated into Advanced Trade's protocol (coinbase_at.py's wire
schemas): one ``subscribe`` per ``channel`` (``level2``, ``market_trades``, ``ticker``,
``candles``, ``heartbeats``), envelopes with a per-connection ``sequence_num`` from 0, ``l2_data``
snapshot/update events (``bid``/``offer``, new quantity), ``market_trades`` (maker side in upper
case, string trade ids), a ``ticker`` per trade with the book's best bid/ask, five-minute
``candles`` and ``heartbeats`` (with ``heartbeat_counter``) every second. A subscribe gets the
current state first: the book as an ``l2_data`` ``snapshot``, the recent trades as a
``market_trades`` snapshot, the last ticker and candle.

With ``public_key``/``key_name`` set, every subscribe must carry a valid ES256 JWT for that key
(coinbase_auth.verify_websocket_jwt); otherwise it gets ``{"type": "error", "message":
"authentication failure"}`` and is not subscribed. The JWTs received are kept (``jwts``) so a
test can check they are fresh per subscribe.

Faults (deterministic counters per connection):

- ``gap_every``: every Nth message to a connection is not sent, its ``sequence_num`` is used
  (what a lost message looks like to the client);
- ``malformed_every``: after every N messages a garbage frame (rotating: not JSON, a JSON
  array, an object that is no envelope, an ``l2_data`` update with a bad price, a
  ``market_trades`` trade with a bad side; the last two take a ``sequence_num`` like a real
  message would);
- ``disconnect_every``: close after N messages (a clean close and an abrupt abort, alternating);
- ``stall_every``: every N messages over all connections the sending connection goes silent.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from aggregator.sources.coinbase_auth import verify_websocket_jwt
from aggregator.sources.coinbase_mock import MockBook, MockConfig, MockExchange
from aggregator.sources.mock_feed import Conn, serve
from core.codec import iso_from_ns, ns_from_iso

log = logging.getLogger("aggregator.coinbase_at_mock")

CHANNELS = ("level2", "market_trades", "ticker", "ticker_batch", "candles", "heartbeats", "status")
RECENT_TRADES = 50  # what a market_trades subscribe gets back
CANDLE_S = 300  # Advanced Trade candles are five-minute buckets
HEARTBEATS_KEY = ("*", "heartbeats")  # heartbeats need no products


@dataclass(frozen=True, kw_only=True)
class AtMockConfig(MockConfig):
    port: int = 8022
    public_key: bytes | None = None  # PEM; None: public channels without a JWT
    key_name: str = ""


@dataclass(eq=False)
class AtConn(Conn):
    seq: int = 0  # the next sequence_num of this connection
    heartbeat: int = 0


class AdvancedTradeMock(MockExchange):
    cfg: AtMockConfig

    def __init__(self, cfg: AtMockConfig) -> None:
        super().__init__(cfg)
        self.trades: dict[str, deque[dict[str, Any]]] = {}
        self.tickers: dict[str, dict[str, Any]] = {}
        self.candles: dict[str, dict[str, Any]] = {}
        self.jwts: list[str] = []
        self.auth_failures = 0
        self.gaps_made = 0

    # -------------------------------------------------------------- playback (recording -> AT)
    def _play_one(self, msg: dict[str, Any]) -> None:
        t = msg.get("type")
        p = msg.get("product_id")
        if t == "subscriptions" or not isinstance(p, str):
            return
        self.played += 1
        t_msg = msg.get("time")
        etime = t_msg if isinstance(t_msg, str) else _now()
        if t == "snapshot":
            book = self.books.setdefault(p, MockBook())
            book.load(msg)
            self._broadcast(p, "level2", _l2_snapshot(p, book))
        elif t == "l2update":
            b = self.books.get(p)
            if b is None:
                return
            b.apply(msg["changes"])
            updates = [_level(s, px, q, etime) for s, px, q in msg["changes"]]
            ev = {"type": "update", "product_id": p, "updates": updates}
            self._broadcast(p, "level2", _envelope("l2_data", [ev]))
        elif t in ("match", "last_match"):
            self.last_match[p] = msg
            trade = {
                "trade_id": str(msg["trade_id"]),
                "product_id": p,
                "price": msg["price"],
                "size": msg["size"],
                "side": str(msg["side"]).upper(),
                "time": etime,
            }
            self.trades.setdefault(p, deque(maxlen=RECENT_TRADES)).append(trade)
            self._broadcast(
                p,
                "market_trades",
                _envelope("market_trades", [{"type": "update", "trades": [trade]}]),
            )
            self._ticker(p, trade)
            self._candle(p, trade)

    def _ticker(self, p: str, trade: dict[str, Any]) -> None:
        b = self.books.get(p)
        bid = b.snapshot(p)["bids"][:1] if b else []
        ask = b.snapshot(p)["asks"][:1] if b else []
        tk = {
            "type": "ticker",
            "product_id": p,
            "price": trade["price"],
            "volume_24_h": "0",
            "low_24_h": trade["price"],
            "high_24_h": trade["price"],
            "low_52_w": trade["price"],
            "high_52_w": trade["price"],
            "price_percent_chg_24_h": "0",
            "best_bid": bid[0][0] if bid else "",
            "best_bid_quantity": bid[0][1] if bid else "",
            "best_ask": ask[0][0] if ask else "",
            "best_ask_quantity": ask[0][1] if ask else "",
        }
        self.tickers[p] = tk
        self._broadcast(p, "ticker", _envelope("ticker", [{"type": "update", "tickers": [tk]}]))

    def _candle(self, p: str, trade: dict[str, Any]) -> None:
        start = ns_from_iso(trade["time"]) // 1_000_000_000 // CANDLE_S * CANDLE_S
        px, sz = Decimal(trade["price"]), Decimal(trade["size"])
        c = self.candles.get(p)
        if c is None or int(c["start"]) != start:
            c = {"start": str(start), "open": trade["price"], "high": trade["price"]}
            c.update(low=trade["price"], close=trade["price"], volume="0", product_id=p)
        c["high"] = str(max(Decimal(c["high"]), px))
        c["low"] = str(min(Decimal(c["low"]), px))
        c["close"] = trade["price"]
        c["volume"] = str(Decimal(c["volume"]) + sz)
        self.candles[p] = c

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            hb = _envelope("heartbeats", [{"current_time": _now(), "heartbeat_counter": 0}])
            for c in list(self.conns):
                if HEARTBEATS_KEY in c.subs:
                    self._enqueue(c, hb)
            for p, candle in self.candles.items():  # "updates every second"
                env = _envelope("candles", [{"type": "update", "candles": [dict(candle)]}])
                self._broadcast(p, "candles", env)

    # -------------------------------------------------------------- connections
    def new_conn(self, ws: Any) -> AtConn:
        return AtConn(ws)

    def bad_json_reply(self) -> dict[str, Any]:  # type: ignore[override]
        return {"type": "error", "message": "failed to parse message"}

    def request(self, c: AtConn, req: Any) -> None:  # type: ignore[override]
        err = self._check_request(req)
        if err:
            self._enqueue(c, {"type": "error", "message": err})
            return
        kind, channel = req["type"], req["channel"]
        products = [str(p) for p in req.get("product_ids") or []]
        pairs = [HEARTBEATS_KEY] if channel == "heartbeats" else [(p, channel) for p in products]
        if kind == "unsubscribe":
            c.subs.difference_update(pairs)
        else:
            new = [pc for pc in pairs if pc not in c.subs]
            c.subs.update(pairs)
            for p, ch in new:
                self._initial(c, p, ch)
        subs: dict[str, list[str]] = {}
        for p, ch in sorted(c.subs):
            subs.setdefault(ch, []).append(p)
        self._enqueue(c, _envelope("subscriptions", [{"subscriptions": subs}]))
        if kind == "subscribe":
            self.started.set()

    def _check_request(self, req: Any) -> str:
        if not isinstance(req, dict) or req.get("type") not in ("subscribe", "unsubscribe"):
            return "unknown message type"
        if req.get("channel") not in CHANNELS:
            return f"unknown channel {req.get('channel')!r}"
        if self.cfg.public_key is not None:
            token = req.get("jwt")
            why = (
                verify_websocket_jwt(token, self.cfg.public_key, self.cfg.key_name)
                if isinstance(token, str)
                else "jwt missing"
            )
            if why:
                self.auth_failures += 1
                log.info("subscribe refused", extra={"reason": why})
                return "authentication failure"
            self.jwts.append(str(token))  # a str: verified above
        return ""

    def _initial(self, c: AtConn, p: str, ch: str) -> None:
        """What a subscribe returns before the updates: the channel's current state."""
        if ch == "level2" and p in self.books:
            self._enqueue(c, _l2_snapshot(p, self.books[p]))
        elif ch == "market_trades" and self.trades.get(p):
            recent = list(reversed(self.trades[p]))  # most recent first, as Coinbase sends
            ev = {"type": "snapshot", "trades": recent}
            self._enqueue(c, _envelope("market_trades", [ev]))
        elif ch == "ticker" and p in self.tickers:
            ev = {"type": "snapshot", "tickers": [self.tickers[p]]}
            self._enqueue(c, _envelope("ticker", [ev]))
        elif ch == "candles" and p in self.candles:
            ev = {"type": "snapshot", "candles": [dict(self.candles[p])]}
            self._enqueue(c, _envelope("candles", [ev]))

    async def deliver(self, c: AtConn, item: Any) -> None:  # type: ignore[override]
        env = dict(item)
        if "channel" in env:  # an envelope: this connection's sequence_num
            env["sequence_num"] = c.seq
            c.seq += 1
            if env["channel"] == "heartbeats":
                env["events"] = [dict(env["events"][0], heartbeat_counter=c.heartbeat)]
                c.heartbeat += 1
        c.sent += 1
        if self.cfg.gap_every and c.sent % self.cfg.gap_every == 0 and "channel" in env:
            self.gaps_made += 1  # lost on the way: the number is used, nothing is sent
        else:
            await c.ws.send(orjson.dumps(env))

    def garbage(self, c: AtConn, n: int) -> bytes:  # type: ignore[override]
        p = self.products[0] if self.products else "X-Y"
        kind = n % 5
        if kind == 0:
            return b"this is not json {"
        if kind == 1:
            return b"[1,2,3]"
        if kind == 2:
            return b'{"hello":"world"}'
        if kind == 3:
            level = _level("buy", "abc", "1", _now())
            env = _envelope("l2_data", [{"type": "update", "product_id": p, "updates": [level]}])
        else:
            bad = {"trade_id": "1", "product_id": p, "price": "1", "size": "1", "side": "UP"}
            env = _envelope(
                "market_trades", [{"type": "update", "trades": [dict(bad, time=_now())]}]
            )
        env["sequence_num"] = c.seq  # a real (if broken) message takes its number
        c.seq += 1
        return orjson.dumps(env)


def _now() -> str:
    return iso_from_ns(time.time_ns())


def _envelope(channel: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"channel": channel, "client_id": "", "timestamp": _now(), "events": events}


def _level(side: str, price: str, size: str, etime: str) -> dict[str, str]:
    return {
        "side": "bid" if side == "buy" else "offer",
        "event_time": etime,
        "price_level": price,
        "new_quantity": size,
    }


def _l2_snapshot(p: str, book: MockBook) -> dict[str, Any]:
    snap = book.snapshot(p)
    t = _now()
    updates = [_level("buy", px, q, t) for px, q in snap["bids"]]
    updates += [_level("sell", px, q, t) for px, q in snap["asks"]]
    return _envelope("l2_data", [{"type": "snapshot", "product_id": p, "updates": updates}])


async def serve_at_mock(cfg: AtMockConfig) -> tuple[AdvancedTradeMock, Any]:
    """Start the mock (returns the exchange and the websockets server; close the server to stop)."""
    ex = AdvancedTradeMock(cfg)
    return ex, await serve(ex, cfg.host, cfg.port)


def main() -> None:
    from core.service import run

    ap = argparse.ArgumentParser(description="mock Coinbase Advanced Trade WebSocket feed")
    ap.add_argument("file", type=Path)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8022)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--loop", action="store_true")
    ap.add_argument("--public-key", type=Path, help="PEM public key: require JWTs signed for it")
    ap.add_argument("--key-name", default="")
    for f in ("gap", "malformed", "disconnect", "stall"):
        ap.add_argument(f"--{f}-every", type=int, default=0)
    a = ap.parse_args()
    cfg = AtMockConfig(
        path=a.file,
        host=a.host,
        port=a.port,
        speed=a.speed,
        loop=a.loop,
        public_key=a.public_key.read_bytes() if a.public_key else None,
        key_name=a.key_name,
        gap_every=a.gap_every,
        malformed_every=a.malformed_every,
        disconnect_every=a.disconnect_every,
        stall_every=a.stall_every,
    )

    async def _main(stop: asyncio.Event) -> None:
        _ex, server = await serve_at_mock(cfg)
        log.info("coinbase advanced trade mock listening", extra={"port": cfg.port})
        await stop.wait()
        server.close()
        await server.wait_closed()

    run(_main, service="coinbase_at_mock")


if __name__ == "__main__":
    main()
