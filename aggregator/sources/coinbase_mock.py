"""A mock Coinbase Exchange WebSocket feed serving a recording, with injectable faults.

``python -m aggregator.sources.coinbase_mock FILE [--port 8020] [--speed 1] [--loop]
[--gap-every N] [--disconnect-every N] [--malformed-every N] [--reorder-every N] [--stall-every N]``

``FILE`` is in the format of ``/work/shared/data/coinbase-ws-2021-04-17.ndjson``: one
``{"recv_time": <unix s>, "message": <Coinbase message>}`` per line. The mock behaves like the
live feed: one playback (started by the first ``subscribe``) at the recorded pace divided by
``speed`` (0: as fast as possible), broadcast to every connection by product and channel. It keeps
each product's level-2 book from the recording, so a ``subscribe`` (or a resubscribe after a
resync) to ``level2``/``level2_batch``/``level2_50`` gets a ``snapshot`` of the *current* book,
``level2_50`` capped at the best ``TOP_N`` (50) levels a side, then only the changes of those top
levels (a level entering the top 50 is sent with its size, one leaving it with size ``"0"``),
exactly as Coinbase does; ``matches`` subscribers get the product's ``last_match``; ``heartbeat``
subscribers get one ``heartbeat`` per product per second with ``last_trade_id``. With ``--loop``
the recording repeats with its times, trade ids and sequences shifted forward, so it looks like
an endless live feed.

Faults (deterministic counters, for the connector's tests):

- ``gap_every``: drop every Nth ``match`` (a ``trade_id`` jump the connector must detect);
- ``reorder_every``: hold every Nth ``match`` back and send it after the next one;
- ``malformed_every``: after every N messages to a connection, send it a garbage message
  (rotating: not JSON, a JSON array, an unknown type, an ``l2update`` with a bad price, a
  ``match`` with a bad side);
- ``disconnect_every``: close a connection after N messages (alternating a clean close and an
  abrupt transport abort);
- ``stall_every``: every N messages (counted over all connections) the connection that sent the
  Nth goes silent (open, but nothing more is sent, not even heartbeats): the client must notice
  the stall itself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from aggregator.sources.mock_feed import Conn, MockFeedServer, serve
from core.codec import iso_from_ns, ns_from_iso

log = logging.getLogger("aggregator.coinbase_mock")

L2 = ("level2", "level2_batch", "level2_50")
TOP_N = 50  # level2_50: the book's best 50 levels a side
CHANNEL_OF = {
    "snapshot": "level2",
    "l2update": "level2",
    "match": "matches",
    "last_match": "matches",
    "ticker": "ticker",
    "heartbeat": "heartbeat",
    "open": "full",
    "change": "full",
    "done": "full",
    "received": "full",
}
MALFORMED = [
    b"this is not json {",
    b"[1,2,3]",
    b'{"type":"weird_type","product_id":"X-Y"}',
    b'{"type":"l2update","product_id":"%s","changes":[["buy","abc","1"]],"time":"2021-04-17T16:43:37.075687Z"}',
    b'{"type":"match","product_id":"%s","trade_id":1,"side":"up","size":"1","price":"1","sequence":1,'
    b'"maker_order_id":"a","taker_order_id":"b","time":"2021-04-17T16:43:37.075687Z"}',
]


@dataclass(frozen=True, kw_only=True)
class MockConfig:
    path: Path
    host: str = "127.0.0.1"
    port: int = 8020
    speed: float = 1.0
    loop: bool = False
    gap_every: int = 0
    reorder_every: int = 0
    malformed_every: int = 0
    disconnect_every: int = 0
    stall_every: int = 0
    queue_max: int = 50_000  # per connection; a slower client is disconnected (as Coinbase does)


def load_recording(path: Path) -> list[tuple[float, dict[str, Any]]]:
    out = []
    with path.open("rb") as f:
        for line in f:
            line = line.strip()
            if line:
                rec = orjson.loads(line)
                out.append((float(rec["recv_time"]), rec["message"]))
    return out


class MockBook:
    __slots__ = ("bids", "asks")

    def __init__(self) -> None:
        self.bids: dict[Decimal, tuple[str, str]] = {}
        self.asks: dict[Decimal, tuple[str, str]] = {}

    def load(self, msg: dict[str, Any]) -> None:
        self.bids = {Decimal(p): (p, s) for p, s, *_ in msg["bids"] if Decimal(s) != 0}
        self.asks = {Decimal(p): (p, s) for p, s, *_ in msg["asks"] if Decimal(s) != 0}

    def apply(self, changes: list[list[str]]) -> None:
        for side, p, s in changes:
            book = self.bids if side == "buy" else self.asks
            if Decimal(s) == 0:
                book.pop(Decimal(p), None)
            else:
                book[Decimal(p)] = (p, s)

    def snapshot(self, product: str, depth: int | None = None) -> dict[str, Any]:
        return {
            "type": "snapshot",
            "product_id": product,
            "bids": [list(self.bids[k]) for k in sorted(self.bids, reverse=True)[:depth]],
            "asks": [list(self.asks[k]) for k in sorted(self.asks)[:depth]],
        }

    def top(self, depth: int) -> dict[str, dict[str, str]]:
        """The best ``depth`` levels a side as ``{side: {price: size}}`` (level2_50's view)."""
        snap = self.snapshot("", depth)
        return {
            "buy": {p: s for p, s in snap["bids"]},
            "sell": {p: s for p, s in snap["asks"]},
        }


def top_changes(old: dict[str, dict[str, str]], new: dict[str, dict[str, str]]) -> list[list[str]]:
    """``l2update`` changes turning one top-N view into the next (leaving levels get ``"0"``)."""
    out: list[list[str]] = []
    for side in ("buy", "sell"):
        o, n = old.get(side, {}), new.get(side, {})
        out += [[side, p, s] for p, s in n.items() if o.get(p) != s]
        out += [[side, p, "0"] for p in o if p not in n]
    return out


class MockExchange(MockFeedServer):
    """The Exchange protocol over the shared plumbing (aggregator/sources/mock_feed.py)."""

    def __init__(self, cfg: MockConfig) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        self.recording = load_recording(cfg.path)
        self.books: dict[str, MockBook] = {}
        self.top_views: dict[str, dict[str, dict[str, str]]] = {}  # level2_50: last top sent
        self.last_match: dict[str, dict[str, Any]] = {}
        self.finished = asyncio.Event()
        self.played = 0
        self.dropped = 0
        self._matches = 0
        self._held: dict[str, Any] | None = None
        self.products = sorted(
            {m["product_id"] for _, m in self.recording if isinstance(m.get("product_id"), str)}
        )

    # -------------------------------------------------------------- playback
    async def play(self) -> None:
        await self.started.wait()
        first = self.recording[0][0] if self.recording else 0.0
        last = self.recording[-1][0] if self.recording else 0.0
        span = last - first + 1.0
        loop_n = 0
        hb = asyncio.create_task(self._heartbeats())
        try:
            while True:
                t0 = time.monotonic()
                for i, (rt, msg) in enumerate(self.recording):
                    if self.cfg.speed > 0:
                        delay = t0 + (rt - first) / self.cfg.speed - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    elif i % 200 == 0:
                        await asyncio.sleep(0)
                    if loop_n:
                        msg = _shift(msg, loop_n, span)
                    self._play_one(msg)
                loop_n += 1
                if not self.cfg.loop:
                    break
            self.finished.set()
            await hb  # a live feed keeps heartbeating after the last trade
        finally:
            self.finished.set()
            hb.cancel()

    def _play_one(self, msg: dict[str, Any]) -> None:
        t = msg.get("type")
        p = msg.get("product_id")
        if t == "subscriptions" or not isinstance(p, str):
            return
        self.played += 1
        if t == "snapshot":
            self.books.setdefault(p, MockBook()).load(msg)
            self._top50(p, msg, snapshot=True)
        elif t == "l2update":
            b = self.books.get(p)
            if b is None:
                return
            b.apply(msg["changes"])
            self._top50(p, msg, snapshot=False)
        elif t in ("match", "last_match"):
            self.last_match[p] = msg
            if t == "match":
                self._matches += 1
                if self.cfg.gap_every and self._matches % self.cfg.gap_every == 0:
                    self.dropped += 1
                    return
                if (
                    self.cfg.reorder_every
                    and self._held is None
                    and self._matches % self.cfg.reorder_every == 0
                ):
                    self._held = msg
                    return
        self._broadcast(p, CHANNEL_OF.get(t or "", "other"), orjson.dumps(msg))
        if (
            t == "match"
            and self._held is not None
            and self._held is not msg
            and self._held["product_id"] == p
        ):
            held, self._held = self._held, None
            self._broadcast(p, "matches", orjson.dumps(held))

    def _top50(self, p: str, msg: dict[str, Any], *, snapshot: bool) -> None:
        """level2_50 subscribers: the capped snapshot, or the changes of the top levels."""
        if not any((p, "level2_50") in c.subs for c in self.conns):
            self.top_views.pop(p, None)
            return
        book = self.books[p]
        new = book.top(TOP_N)
        if snapshot or p not in self.top_views:
            out: dict[str, Any] = book.snapshot(p, TOP_N)
        else:
            changes = top_changes(self.top_views[p], new)
            out = {"type": "l2update", "product_id": p, "changes": changes, "time": msg["time"]}
            if not changes:
                self.top_views[p] = new
                return
        self.top_views[p] = new
        self._broadcast(p, "level2_50", orjson.dumps(out))

    async def _heartbeats(self) -> None:
        seq = 0
        while True:
            await asyncio.sleep(1.0)
            for p in self.products:
                lm = self.last_match.get(p)
                if lm is None:
                    continue
                seq += 1
                hb = {
                    "type": "heartbeat",
                    "sequence": int(lm.get("sequence", 0)),
                    "last_trade_id": lm["trade_id"],
                    "product_id": p,
                    "time": iso_from_ns(time.time_ns()),
                }
                self._broadcast(p, "heartbeat", orjson.dumps(hb))

    # -------------------------------------------------------------- connections
    def bad_json_reply(self) -> bytes:
        return orjson.dumps({"type": "error", "message": "Failed to parse message"})

    async def deliver(self, c: Conn, item: bytes) -> None:
        await c.ws.send(item)
        c.sent += 1

    def garbage(self, c: Conn, n: int) -> bytes:
        bad = MALFORMED[n % len(MALFORMED)]
        if b"%s" in bad:
            bad = bad.replace(b"%s", (self.products[0] if self.products else "X-Y").encode())
        return bad

    def request(self, c: Conn, req: dict[str, Any]) -> None:
        kind = req.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            self._enqueue(c, orjson.dumps({"type": "error", "message": f"unknown type {kind!r}"}))
            return
        top_products = req.get("product_ids") or []
        pairs: list[tuple[str, str]] = []
        for ch in req.get("channels") or []:
            name, prods = (
                (ch, top_products)
                if isinstance(ch, str)
                else (ch.get("name"), ch.get("product_ids") or top_products)
            )
            fam = name if name == "level2_50" else ("level2" if name in L2 else name)
            pairs += [(p, fam) for p in prods]
        if kind == "unsubscribe":
            c.subs.difference_update(pairs)
        else:
            new = [pc for pc in pairs if pc not in c.subs]
            c.subs.update(pairs)
        chans: dict[str, list[str]] = {}
        for p, fam in sorted(c.subs):
            chans.setdefault(fam, []).append(p)
        self._enqueue(
            c,
            orjson.dumps(
                {
                    "type": "subscriptions",
                    "channels": [{"name": n, "product_ids": ps} for n, ps in chans.items()],
                }
            ),
        )
        if kind == "subscribe":
            for p, fam in new:
                if fam == "level2" and p in self.books:
                    self._enqueue(c, orjson.dumps(self.books[p].snapshot(p)))
                elif fam == "level2_50" and p in self.books:
                    self.top_views[p] = self.books[p].top(TOP_N)  # the view diffs start from
                    self._enqueue(c, orjson.dumps(self.books[p].snapshot(p, TOP_N)))
                elif fam == "matches" and p in self.last_match:
                    self._enqueue(c, orjson.dumps(dict(self.last_match[p], type="last_match")))
            self.started.set()


def _shift(msg: dict[str, Any], n: int, span: float) -> dict[str, Any]:
    """The n-th loop of the recording: times, trade ids and sequences moved forward."""
    m = dict(msg)
    if isinstance(m.get("time"), str):
        m["time"] = iso_from_ns(ns_from_iso(m["time"]) + int(n * span * 1e9))
    if isinstance(m.get("trade_id"), int):
        m["trade_id"] += n * 10_000_000
    if isinstance(m.get("sequence"), int):
        m["sequence"] += n * 1_000_000_000
    return m


async def serve_mock(cfg: MockConfig) -> tuple[MockExchange, Any]:
    """Start the mock (returns the exchange and the websockets server; close the server to stop)."""
    ex = MockExchange(cfg)
    return ex, await serve(ex, cfg.host, cfg.port)


def main() -> None:
    from core.service import run

    ap = argparse.ArgumentParser(
        description="mock Coinbase Exchange WebSocket feed serving a recording"
    )
    ap.add_argument("file", type=Path)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8020)
    ap.add_argument(
        "--speed", type=float, default=1.0, help="playback speed factor (0: as fast as possible)"
    )
    ap.add_argument("--loop", action="store_true")
    for f in ("gap", "reorder", "malformed", "disconnect", "stall"):
        ap.add_argument(f"--{f}-every", type=int, default=0)
    a = ap.parse_args()
    cfg = MockConfig(path=a.file, host=a.host, port=a.port, speed=a.speed, loop=a.loop)
    cfg = replace(
        cfg,
        gap_every=a.gap_every,
        reorder_every=a.reorder_every,
        malformed_every=a.malformed_every,
        disconnect_every=a.disconnect_every,
        stall_every=a.stall_every,
    )

    async def _main(stop: asyncio.Event) -> None:
        _ex, server = await serve_mock(cfg)
        log.info(
            "coinbase mock listening",
            extra={"url": f"ws://{cfg.host}:{cfg.port}", "file": str(cfg.path)},
        )
        await stop.wait()
        server.close()
        await server.wait_closed()

    run(_main, service="coinbase_mock")


if __name__ == "__main__":
    main()
