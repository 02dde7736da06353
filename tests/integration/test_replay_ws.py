"""Replay over WebSocket on the real servers: stored messages come back byte for byte in the
live envelope, book channels start with the book as of ``start``, several replays run at once,
and bad requests get an error without closing the session."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import string
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from core.book import L2Book
from core.codec import iso_from_ns, now_ns
from core.kafka import make_producer
from core.settings import Settings
from core.topics import Topics
from gateway_ws.replay_server import ReplayConfig, ReplayServer
from storage.db_writer import DbWriter, DbWriterConfig
from storage.migrate import migrate
from testkit import fake_aggregator as T
from tests.conftest import free_port
from tests.helpers import run_until

pytestmark = pytest.mark.integration

MS = 1_000_000
N_UPDATES = 300
N_TRADES = 100


def _level_change(i: int) -> list[list[str]]:
    side = "buy" if i % 2 else "sell"
    price = f"{100 - i % 7}" if side == "buy" else f"{101 + i % 5}"
    return [[side, price, "0" if i % 11 == 0 else f"{1 + i % 4}"]]


async def _produce(s: Settings, t0: int, sym: str) -> dict[str, Any]:
    """An l2 stream with two full snapshots, and trades, all with known publish times; an epoch
    of its own (the module's tests share one database)."""
    ep = t0 // MS
    t = Topics.from_settings(s)
    book = L2Book()
    book.load([("100", "1")], [("101", "1")])
    snaps = [
        (f"l2:{sym}", T.l2_snapshot(sym, 0, [["100", "1"]], [["101", "1"]], ts_ns=t0, epoch=ep)),
    ]
    updates: list[bytes] = []
    books: dict[int, tuple[list[Any], list[Any], int]] = {}
    for i in range(1, N_UPDATES + 1):
        ch = _level_change(i)
        book.apply(ch)
        ck = book.checksum(10)
        updates.append(T.l2_update(sym, i, ch, ts_ns=t0 + i * 10 * MS, checksum=ck, epoch=ep))
        books[i] = (book.top_bids(), book.top_asks(), ck)
        if i == 150:
            snap = book.snapshot()
            snaps.append(
                (
                    f"l2:{sym}",
                    T.l2_snapshot(
                        sym,
                        i,
                        snap["bids"],
                        snap["asks"],
                        ts_ns=t0 + i * 10 * MS + 5 * MS,
                        checksum=ck,
                        epoch=ep,
                    ),
                )
            )
    trades = [
        T.trade(sym, i, f"r{i}", "100.5", "0.1", ts_ns=t0 + i * 20 * MS, epoch=ep)
        for i in range(1, N_TRADES + 1)
    ]
    p = make_producer(s)
    await p.start()
    try:
        await T.produce_stream(p, t, "status", [(sym, T.status(sym, 1))])
        await T.produce_stream(p, t, "l2", [(sym, u) for u in updates])
        await T.produce_stream(p, t, "trades", [(sym, x) for x in trades])
        await T.produce(p, t.snapshot, snaps)
    finally:
        await p.stop()
    return {"updates": updates, "trades": trades, "books": books, "sym": sym}


async def _collect(ws: ClientConnection, rid: Any) -> list[Any]:
    """Frames of one replay until its replay_done / error: control messages decoded (dicts),
    data messages as the raw bytes sent."""
    out: list[Any] = []
    while True:
        frame = await asyncio.wait_for(ws.recv(), 30)
        raw = frame.encode() if isinstance(frame, str) else frame
        m = orjson.loads(raw)
        if m.get("type") in ("replay_started", "replay_done", "error"):
            if m.get("id") != rid:
                continue
            out.append(m)
            if m["type"] != "replay_started":
                return out
        else:
            out.append(raw)


@pytest.fixture
async def stored(settings: Settings, pg_dsn: str) -> dict[str, Any]:
    await migrate(pg_dsn)
    s = dataclasses.replace(settings, pg_dsn=pg_dsn)
    t0 = (now_ns() - 3600 * 1_000_000_000) // MS * MS
    # a symbol and epoch of its own: the module's tests share one database
    data = await _produce(
        s, t0, "RP" + "".join(random.choices(string.ascii_uppercase, k=4)) + "-USD"
    )
    w = DbWriter(s, dataclasses.replace(DbWriterConfig.from_settings(s), book_snapshot_s=1))
    await run_until(
        w,
        lambda: (
            w.counters.messages_inserted == N_UPDATES + N_TRADES
            and w.counters.book_snapshots_inserted == 2
        ),
        30,
        lambda: f"writer did not store the history: {w.counters}",
    )
    return {"settings": s, "t0": t0, **data}


async def test_replay_trades_and_book_as_published(stored: dict[str, Any]) -> None:
    s, t0, sym = stored["settings"], stored["t0"], stored["sym"]
    port = free_port()
    server = ReplayServer(s, ReplayConfig(port=port, max_active=3))
    await server.start()
    try:
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            # trades 25..75 by publish time (20 ms apart), as fast as we read
            req = {
                "type": "replay",
                "id": "t",
                "channel": "trades",
                "symbol": sym.lower().replace("-", "/"),
                "start": iso_from_ns(t0 + 500 * MS),
                "end": iso_from_ns(t0 + 1500 * MS),
                "speed": 0,
            }
            await ws.send(orjson.dumps(req).decode())
            got = await _collect(ws, "t")
            assert got[0]["type"] == "replay_started" and got[0]["symbol"] == sym
            assert got[1:-1] == stored["trades"][24:75]  # the published bytes, in order
            assert got[-1] == {
                "type": "replay_done",
                "id": "t",
                "channel": "trades",
                "symbol": sym,
                "messages": 51,
            }

            # the book from just after seq 100 (1.0 s) to 2.0 s: a snapshot first, then 101..200
            req = {
                **req,
                "id": "b",
                "channel": "l2",
                "start": iso_from_ns(t0 + 1005 * MS),
                "end": iso_from_ns(t0 + 2000 * MS),
                "speed": 50,
            }
            await ws.send(orjson.dumps(req).decode())
            got = await _collect(ws, "b")
            snap = orjson.loads(got[1])
            bids, asks, ck = stored["books"][100]
            assert (snap["type"], snap["channel"], snap["seq"]) == ("l2_snapshot", "l2", 100)
            assert snap["checksum"] == ck and snap["timestamp"] == iso_from_ns(t0 + 1000 * MS)
            assert snap["data"] == {
                "bids": [list(x) for x in bids],
                "asks": [list(x) for x in asks],
            }
            assert got[2:-1] == stored["updates"][100:200]
            assert got[-1]["type"] == "replay_done" and got[-1]["messages"] == 101

            # several replays at once on one connection, each complete and in order
            reqs = [{**req, "id": i, "speed": 0} for i in range(3)]
            for r in reqs:
                await ws.send(orjson.dumps(r).decode())
            done: set[int] = set()
            order: list[int] = []
            while len(done) < 3:
                frame = await asyncio.wait_for(ws.recv(), 30)
                m = orjson.loads(frame)
                if m["type"] == "replay_done":
                    done.add(m["id"])
                    assert m["messages"] == 101
                elif m["type"] == "l2_update":
                    order.append(m["seq"])
            assert sorted(order) == sorted(list(range(101, 201)) * 3)
    finally:
        await server.stop()


async def test_replay_errors_keep_the_session(stored: dict[str, Any]) -> None:
    s, t0, sym = stored["settings"], stored["t0"], stored["sym"]
    port = free_port()
    server = ReplayServer(s, ReplayConfig(port=port, max_active=1))
    await server.start()
    start, end = iso_from_ns(t0), iso_from_ns(t0 + 3000 * MS)
    base = {"type": "replay", "channel": "l2", "symbol": sym, "start": start, "end": end}
    try:
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            for bad, code in (
                ({**base, "channel": "ticker"}, "invalid_channel"),
                ({**base, "symbol": "???"}, "invalid_symbol"),
                ({**base, "start": "soon"}, "invalid_request"),
                ({**base, "start": end, "end": start}, "invalid_request"),
                ({**base, "speed": -1}, "invalid_request"),
                ({**base, "speed": "fast"}, "invalid_request"),
                ({"type": "rewind"}, "unknown_type"),
            ):
                await ws.send(orjson.dumps({**bad, "id": code}).decode())
                m = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                assert (m["type"], m["code"]) == ("error", code), (bad, m)
            await ws.send("{not json")
            m = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            assert m["code"] == "invalid_json"
            # before anything was stored: a clear error, not an empty success
            old = {
                **base,
                "id": "old",
                "start": "2001-01-01T00:00:00Z",
                "end": "2001-01-02T00:00:00Z",
            }
            await ws.send(orjson.dumps(old).decode())
            got = await _collect(ws, "old")
            assert got[-1]["type"] == "error" and got[-1]["code"] == "no_history"
            # the session still works: a range starting before the history begins at its first
            # stored snapshot (seq 0) and replays every update after it
            await ws.send(
                orjson.dumps({**base, "id": "all", "start": iso_from_ns(t0 - 10**9)}).decode()
            )
            got = await _collect(ws, "all")
            assert orjson.loads(got[1])["seq"] == 0
            assert got[2:-1] == stored["updates"] and got[-1]["messages"] == N_UPDATES + 1
            # one replay at a time here: a second one while the first runs is refused
            slow = {**base, "id": "slow", "speed": 1}
            await ws.send(orjson.dumps(slow).decode())
            await ws.send(orjson.dumps({**slow, "id": "second"}).decode())
            while True:
                m = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                if m.get("id") == "second":
                    assert m["code"] == "too_many_replays"
                    break
    finally:
        await server.stop()
