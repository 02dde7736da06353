"""FailoverSource without sockets: fake connectors, a list as the publisher, a settable clock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aggregator import events as ev
from aggregator.sources.failover import FailoverSource
from core.book import L2Book
from core.symbols import default_info

S = "BTC-USD"
NS = 1_700_000_000_000_000_000


@dataclass
class FakeParser:
    counts: dict[str, int] = field(default_factory=lambda: {"malformed": 0})
    in_sync: bool = True

    def synced(self, symbol: str) -> bool:
        return self.in_sync


@dataclass
class FakeClient:
    connected: bool = True
    last_message: float = 0.0
    parser: FakeParser = field(default_factory=FakeParser)

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


class Out:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    async def publish(self, e: ev.Event, *, recv_ns: int | None = None) -> None:
        self.events.append(e)

    async def flush(self) -> None:
        pass


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def setup() -> tuple[FailoverSource, Out, Clock, FakeClient, FakeClient]:
    out, clock = Out(), Clock()
    sup = FailoverSource(out, [S], stall_s=2.0, garbage_s=5.0, clock=clock)
    a, b = FakeClient(last_message=clock.t), FakeClient(last_message=clock.t)
    sup.attach(0, a)
    sup.attach(1, b)
    return sup, out, clock, a, b


def snap(bids: list[list[str]], asks: list[list[str]], source: str) -> ev.BookSnapshot:
    return ev.book_snapshot(S, NS, bids, asks, source=source)


def trade(tid: int, source: str) -> ev.Trade:
    return ev.trade(S, NS, str(tid), "buy", "100", "1", source=source)


async def feed_both(sup: FailoverSource) -> None:
    for i, src in ((0, "cb"), (1, "at")):
        sink = sup.sink(i)
        await sink.publish(ev.symbol_info(default_info(S, src), NS))
        await sink.publish(snap([["100", "1"]], [["101", "1"]], src))
        await sink.publish(trade(1, src))


async def test_only_the_active_leg_reaches_the_output() -> None:
    sup, out, _c, _a, _b = setup()
    await feed_both(sup)
    assert [e.source for e in out.events] == ["cb", "cb", "cb"]
    await sup.check()
    assert sup.switches == []  # both healthy: nothing to do


async def test_stall_switches_with_the_backups_book_and_missed_trades() -> None:
    sup, out, clock, a, b = setup()
    await feed_both(sup)
    # the primary goes silent; the backup goes on (a level changes, two trades)
    await sup.sink(1).publish(ev.book_update(S, NS, [["buy", "100", "3"]], source="at"))
    await sup.sink(1).publish(trade(2, "at"))
    await sup.sink(1).publish(trade(3, "at"))
    assert len(out.events) == 3  # standby: nothing forwarded
    clock.t += 2.5
    b.last_message = clock.t
    await sup.check()
    assert sup.switches == [(S, "primary", "backup", "stalled")]
    new = out.events[3:]
    assert isinstance(new[0], ev.BookSnapshot) and new[0].source == "at"
    book = L2Book()
    book.load([(p, s) for p, _x, s, _q in new[0].bids], [(p, s) for p, _x, s, _q in new[0].asks])
    assert book.snapshot() == {"bids": [["100", "3"]], "asks": [["101", "1"]]}
    assert isinstance(new[1], ev.SymbolInfoEvent) and new[1].info.source == "at"
    assert new[1].reason == "stalled"  # the status message says why (aggregator/state.py)
    back = ev.decode(ev.encode(new[1]))  # and it crosses md.in
    assert isinstance(back, ev.SymbolInfoEvent) and back.reason == "stalled"
    assert [t.trade_id for t in new[2:]] == ["2", "3"]  # type: ignore[attr-defined]
    # from now on the backup is forwarded, the old primary is not; no trade twice
    await sup.sink(1).publish(trade(3, "at"))
    await sup.sink(1).publish(trade(4, "at"))
    await sup.sink(0).publish(trade(5, "cb"))
    assert [getattr(e, "trade_id", None) for e in out.events[7:]] == ["4"]


async def test_switching_is_sticky_and_needs_a_healthy_backup() -> None:
    sup, _out, clock, a, b = setup()
    await feed_both(sup)
    a.connected = False
    b.connected = False
    await sup.check()
    assert sup.switches == []  # nowhere to go: stay
    b.connected = True
    await sup.check()
    assert sup.switches == [(S, "primary", "backup", "disconnected")]
    a.connected = True
    await sup.check()
    assert len(sup.switches) == 1  # primary healthy again: the backup stays active
    b.parser.in_sync = False  # the backup gaps: back to the primary
    await sup.check()
    assert sup.switches[-1] == (S, "backup", "primary", "gap")


async def test_garbage_makes_a_leg_unhealthy_for_a_while() -> None:
    sup, _out, clock, a, b = setup()
    await feed_both(sup)
    a.parser.counts["malformed"] = 1
    await sup.check()
    assert sup.switches == [(S, "primary", "backup", "garbage")]
    ok, detail = sup.status()
    assert ok and detail[S] == {"active": "backup", "legs": {"primary": "garbage", "backup": "ok"}}
    clock.t += 6
    a.last_message = b.last_message = clock.t
    assert sup.healthy(sup.legs[0], S) == (True, "ok")


async def test_a_leg_without_a_book_is_never_switched_to() -> None:
    sup, _out, _clock, a, b = setup()
    await sup.sink(0).publish(snap([["100", "1"]], [], "cb"))
    a.connected = False
    await sup.check()
    assert sup.switches == []  # the backup has sent no snapshot yet
    ok, _ = sup.status()
    assert not ok


def test_products_of_other_sources_are_ignored() -> None:
    sup, out, _c, _a, _b = setup()
    other = ev.trade("ETH-USD", NS, "1", "buy", "1", "1", source="cb")
    asyncio.run(sup.sink(0).publish(other))
    assert out.events == []


async def test_run_stops_its_legs(monkeypatch: Any) -> None:
    sup, _out, _c, _a, _b = setup()
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_a_switch_to_a_leg_without_catalogue_entry_still_says_why() -> None:
    sup, out, _clock, a, _b = setup()
    await sup.sink(0).publish(ev.symbol_info(default_info(S, "cb"), NS))
    await sup.sink(0).publish(snap([["100", "1"]], [["101", "1"]], "cb"))
    await sup.sink(1).publish(snap([["100", "2"]], [["101", "1"]], "at"))  # no symbol_info
    a.connected = False
    await sup.check()
    info = [e for e in out.events if isinstance(e, ev.SymbolInfoEvent)][-1]
    assert info.reason == "disconnected"
    assert info.info == default_info(S, "backup")  # the old entry under the new leg's name


async def test_a_gap_switches_at_the_event_that_shows_it_not_at_the_next_check() -> None:
    """A trade_id gap arrives with the trade after it; on a fast host the primary's resync was
    done before the next ``check`` and the trades only the backup had were never published."""
    sup, out, _clock, a, _b = setup()
    await feed_both(sup)
    await sup.sink(1).publish(trade(2, "at"))  # the backup has the trade the primary will miss
    a.parser.in_sync = False  # the primary's parser saw 1 -> 3: resyncing
    await sup.sink(0).publish(trade(3, "cb"))
    assert sup.switches == [(S, "primary", "backup", "gap")]  # no check() ran
    new = out.events[3:]
    assert isinstance(new[0], ev.BookSnapshot) and new[0].source == "at"
    assert [t.trade_id for t in new[2:]] == ["2"]  # type: ignore[attr-defined]
    a.parser.in_sync = True  # healed at once: the backup stays active (sticky)
    await sup.sink(1).publish(trade(3, "at"))
    await sup.sink(0).publish(trade(4, "cb"))
    assert [getattr(e, "trade_id", None) for e in out.events[3 + len(new) :]] == ["3"]
