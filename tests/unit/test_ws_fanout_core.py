"""The sans-I/O fan-out core, driven with plain calls and explicit clocks: no loop, no socket.

The source is the real pure join (:class:`core.follower.StreamJoin`) fed by the contract
producer, so snapshots, seqs and checksums are the ones the gateway serves.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from core.follower import Deliver, Reset, StreamJoin
from gateway_ws.fanout import CloseConn, Conn, FanoutCore, Mode
from gateway_ws.protocol import CLOSE_AUTH, CLOSE_SLOW, SubRequest
from tests.unit.test_follower_join import Producer, tick

HIGH = 64 * 1024


class Source:
    """The pure join plus what the follower adds (connected, health)."""

    def __init__(self) -> None:
        self.join = StreamJoin()
        self.connected = True

    def current(self, channel: str, symbol: str, **kw: Any) -> Any:
        return self.join.current(channel, symbol, **kw)

    def seq_of(self, channel: str, symbol: str) -> tuple[int, int, int | None] | None:
        return self.join.seq_of(channel, symbol)

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"ready": True}


class Rig:
    """A core, its source and an l2 producer; ``stream()`` runs the join's actions into it."""

    def __init__(self, **kw: Any) -> None:
        self.src = Source()
        self.core = FanoutCore(self.src, buffer_high=HIGH, wall_ns=lambda: 1_000, **kw)
        self.p = Producer()

    def run(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, Deliver):
                self.core.on_message(a.channel, a.symbol, a.seq, a.raw, a.parsed)
            elif isinstance(a, Reset):
                self.core.on_reset(a.channel, a.symbol, a.reason)

    def snapshot(self) -> None:
        self.run(self.src.join.on_snapshot(b"l2:BTC-USD", self.p.snapshot(), 0))

    def update(self, price: str = "10", size: str = "1") -> bytes:
        raw = self.p.update([["buy", price, size]])
        self.run(self.src.join.on_stream(raw))
        return raw

    def conn(self, **kw: Any) -> Conn:
        c = Conn(**kw)
        self.core.add(c, 0.0)
        return c

    def writes(self) -> dict[Conn, list[dict[str, Any]]]:
        """What the shell would write this turn, decoded per connection."""
        return {
            c: [orjson.loads(p) for p in unframe(chunks)] for c, chunks in self.core.data_to_send()
        }


def unframe(chunks: list[bytes]) -> list[bytes]:
    """Server frames (RFC 6455 §5.2, unmasked, FIN) back to payloads."""
    data = b"".join(chunks)
    out, i = [], 0
    while i < len(data):
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, i)
            i += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, i)
            i += 8
        out.append(data[i : i + n])
        i += n
    return out


L2 = SubRequest("l2", "BTC-USD")


def test_snapshot_then_updates_shared_frame_one_buffer_per_connection_per_turn() -> None:
    r = Rig()
    r.snapshot()
    a, b = r.conn(), r.conn()
    r.core.subscribe(a, L2)
    r.core.subscribe(b, L2)
    for i in range(3):
        r.update(str(10 + i))
    out = r.core.data_to_send()
    assert [c for c, _ in out] == [a, b]  # each connection once: one transport.write each
    chunks = dict(out)
    assert chunks[a][1] is chunks[b][1]  # the update's frame was built once for both
    msgs = [orjson.loads(p) for p in unframe(chunks[a])]
    assert [m["type"] for m in msgs] == ["l2_snapshot", "l2_update", "l2_update", "l2_update"]
    assert [m["seq"] for m in msgs] == [0, 1, 2, 3]
    assert r.core.data_to_send() == []  # nothing twice


def test_subscribe_before_any_state_waits_and_the_first_reset_snapshots() -> None:
    r = Rig()
    c = r.conn()
    sub = r.core.subscribe(c, L2)
    assert sub.mode is Mode.WAIT and r.core.data_to_send() == []
    r.snapshot()
    assert sub.mode is Mode.LIVE
    msgs = r.writes()[c]
    assert [m["type"] for m in msgs] == ["l2_snapshot"] and "resync" not in msgs[0]


def test_a_gap_becomes_a_flagged_snapshot_never_a_forwarded_message() -> None:
    r = Rig()
    r.snapshot()
    c = r.conn()
    sub = r.core.subscribe(c, L2)
    r.writes()
    sub.last -= 1  # as if this subscription had missed one message
    r.update()
    msgs = r.writes()[c]
    assert [m["type"] for m in msgs] == ["resync", "l2_snapshot"]
    assert msgs[0]["reason"] == "gap" and msgs[1]["resync"] is True
    assert sub.last == r.p.seq


def test_slow_book_client_goes_stale_then_resnapshots_once_drained() -> None:
    r = Rig()
    r.snapshot()
    slow, ok = r.conn(), r.conn()
    sub = r.core.subscribe(slow, L2)
    r.core.subscribe(ok, L2)
    r.writes()
    r.core.report_backlog(slow, HIGH + 1)  # the transport kept more than the bound
    r.update()
    got = r.writes()
    assert slow not in got and len(got[ok]) == 1  # the other client is not held back
    assert sub.mode is Mode.STALE and slow.stale
    r.update()
    assert slow not in r.writes()  # paused
    r.core.report_backlog(slow, HIGH // 8)  # it read: below a quarter of the bound
    r.core.tick(1.0, 2_000)
    msgs = r.writes()[slow]
    assert [m["type"] for m in msgs] == ["resync", "l2_snapshot"]
    assert msgs[0]["reason"] == "slow_consumer" and msgs[1]["seq"] == r.p.seq
    assert sub.mode is Mode.LIVE


def test_slow_client_with_a_non_book_channel_is_closed_4001() -> None:
    r = Rig()
    r.run(r.src.join.on_snapshot(b"ticker:BTC-USD", tick(1), 0))
    c = r.conn()
    r.core.subscribe(c, SubRequest("ticker", "BTC-USD"))
    r.writes()
    r.core.report_backlog(c, HIGH + 1)
    r.run(r.src.join.on_stream(tick(2)))
    assert r.core.data_to_send() == []
    assert r.core.closes_to_send() == [
        CloseConn(c, CLOSE_SLOW, "slow consumer: send buffer full", "slow_disconnect")
    ]
    assert c.closed
    r.run(r.src.join.on_stream(tick(3)))
    assert r.core.data_to_send() == []  # nothing more for a closing connection


def test_forced_writes_respect_the_bound() -> None:
    """Issue 12: control replies and snapshots used to skip the send-buffer bound."""
    r = Rig()
    r.snapshot()
    c = r.conn()
    r.core.report_backlog(c, 2 * HIGH + 1)  # a client that never reads
    assert r.core.control(c, {"type": "pong"}) is False
    assert r.core.data_to_send() == []
    (close,) = r.core.closes_to_send()
    assert close.code == CLOSE_SLOW
    other = r.conn()
    r.core.report_backlog(other, 2 * HIGH + 1)
    sub = r.core.subscribe(other, L2)  # a book snapshot that does not fit: wait for the drain
    assert sub.mode is Mode.STALE and r.core.data_to_send() == []


def test_forced_writes_may_burst_to_twice_the_bound() -> None:
    r = Rig()
    r.snapshot()
    c = r.conn()
    r.core.report_backlog(c, HIGH + 1)  # over the live bound, under the forced one
    assert r.core.control(c, {"type": "pong"}) is True
    sub = r.core.subscribe(c, L2)
    assert sub.mode is Mode.LIVE


def test_process_bound_treats_the_biggest_backlogs_as_slow() -> None:
    r = Rig(process_high=HIGH)
    r.snapshot()
    hogs = [r.conn() for _ in range(3)]
    fine = r.conn()
    for c in (*hogs, fine):
        r.core.subscribe(c, L2)
    r.writes()
    for c in hogs:  # each under its own bound, together over the process's
        r.core.report_backlog(c, HIGH // 2)
    r.update()
    got = r.writes()
    assert list(got) == [fine]
    assert all(c.stale for c in hogs) and not fine.stale


def test_duplicate_subscribe_replaces_and_keeps_one_subscription() -> None:
    r = Rig()
    r.snapshot()
    c = r.conn()
    first = r.core.subscribe(c, SubRequest("l2", "BTC-USD", since_seq=0))
    second = r.core.subscribe(c, SubRequest("l2", "BTC-USD", since_seq=0))
    assert c.subs == {("l2", "BTC-USD"): second}
    assert list(r.core.index[("l2", "BTC-USD")]) == [second]
    assert not r.core.resuming(first) and r.core.resuming(second)


def test_conflation_group_one_message_per_interval_with_explicit_now() -> None:
    r = Rig()
    r.snapshot()
    a, b = r.conn(), r.conn()
    req = SubRequest("l2", "BTC-USD", interval_ms=1000)
    r.core.subscribe(a, req)
    r.core.subscribe(b, req)
    assert len(r.core.groups) == 1
    r.writes()
    assert r.core.poll_timers(10.0) == 11.0  # armed
    r.update("10", "1")
    r.update("10", "2")
    r.update("11", "1")
    assert r.core.data_to_send() == []  # nothing before the interval
    assert r.core.poll_timers(10.5) == 11.0
    assert r.core.data_to_send() == []
    r.core.poll_timers(11.0)
    got = r.writes()
    assert got[a] == got[b] and len(got[a]) == 1
    msg = got[a][0]
    assert msg["conflated"] is True and msg["first_seq"] == 1 and msg["seq"] == 3
    assert sorted(msg["data"]["changes"]) == [["buy", "10", "2"], ["buy", "11", "1"]]
    hb = r.core.heartbeat(a, 0)
    assert hb["subscriptions"][0]["seq"] == 3  # what this client actually received


def test_heartbeat_contents_and_timing_with_explicit_now() -> None:
    r = Rig(heartbeat_s=5.0)
    r.snapshot()
    r.update()
    c = r.conn()
    r.core.subscribe(c, L2)
    r.writes()
    r.core.tick(4.9, 0)
    assert r.core.data_to_send() == []
    r.core.tick(5.0, 1_795_000_000_000_000_000)
    (hb,) = r.writes()[c]
    assert hb["type"] == "heartbeat" and hb["feed"] == "ok"
    assert hb["timestamp"].startswith("2026-11-18T")
    (item,) = hb["subscriptions"]
    assert item["seq"] == 1 and item["epoch"] == 1 and item["checksum"] == r.p.book.checksum()


def test_open_connection_is_closed_when_its_token_expires() -> None:
    """Issue 12: a token's exp was never checked again on an open connection."""
    r = Rig()
    c = r.conn(user="alice", expires_at=100.0)
    r.core.tick(1.0, 99 * 10**9)
    assert r.core.closes_to_send() == []
    r.core.tick(1.5, 100 * 10**9)
    (close,) = r.core.closes_to_send()
    assert close.conn is c and close.code == CLOSE_AUTH and close.event == "token_expired"
    (err,) = r.writes()[c]
    assert err["code"] == "token_expired"


def test_idle_connection_closed_after_idle_s() -> None:
    r = Rig(idle_s=60.0, heartbeat_s=0)
    c = r.conn()
    r.core.tick(59.0, 0)
    assert r.core.closes_to_send() == []
    r.core.tick(61.0, 0)
    assert [cl.event for cl in r.core.closes_to_send()] == ["idle_close"]
    assert c.closed


def test_resume_holds_live_messages_and_releases_them_in_order() -> None:
    r = Rig()
    r.snapshot()
    replay = [r.update(str(10 + i)) for i in range(3)]  # seqs 1..3, "in Redis"
    c = r.conn()
    sub = r.core.subscribe(c, SubRequest("l2", "BTC-USD", since_seq=0))
    assert sub.mode is Mode.PENDING and r.core.data_to_send() == []
    r.update("20")  # live seq 4 arrives during the replay: held
    r.update("21")
    assert [h[0] for h in sub.held] == [4, 5]
    r.core.resume_start(sub, 0, 1)
    assert r.core.replay(sub, [(i + 1, 1, raw) for i, raw in enumerate(replay)], 100) is None
    assert r.core.caught_up(sub)
    r.core.resume_done(sub)
    seqs = [m["seq"] for m in r.writes()[c]]
    assert seqs == [1, 2, 3, 4, 5] and sub.mode is Mode.LIVE and sub.last == 5
    r.update()
    assert [m["seq"] for m in r.writes()[c]] == [6]


def test_resume_gap_and_epoch_fall_back_to_a_flagged_snapshot() -> None:
    r = Rig()
    r.snapshot()
    raws = [r.update(str(10 + i)) for i in range(3)]
    c = r.conn()
    sub = r.core.subscribe(c, SubRequest("l2", "BTC-USD", since_seq=0))
    r.core.resume_start(sub, 0, 1)
    assert r.core.replay(sub, [(2, 1, raws[1])], 100) == "too_old"
    assert r.core.replay(sub, [(1, 1, raws[0]), (3, 1, raws[2])], 100) == "gap"
    r.core.resume_failed(sub, "gap")
    msgs = r.writes()[c]
    assert [m["type"] for m in msgs] == ["l2_update", "resync", "l2_snapshot"]
    assert msgs[1]["reason"] == "resume_gap" and sub.mode is Mode.LIVE


def test_resume_replay_respects_the_bound() -> None:
    """Issue 12: replayed messages were queued without limit on a socket that never reads."""
    r = Rig()
    r.run(r.src.join.on_snapshot(b"trades:BTC-USD", tick(0, channel="trades"), 0))
    c = r.conn()
    sub = r.core.subscribe(c, SubRequest("trades", "BTC-USD", since_seq=0))
    r.core.resume_start(sub, 0, 1)
    big = b'{"x":"' + b"y" * 1000 + b'"}'
    entries = [(i, 1, big) for i in range(1, 10_001)]
    assert r.core.replay(sub, entries, 20_000) == "slow"
    assert c.out_bytes <= 2 * HIGH + len(big) + 10
    r.core.resume_failed(sub, "slow")
    assert [cl.code for cl in r.core.closes_to_send()] == [CLOSE_SLOW]  # trades: not a book


def test_pending_overflow_drops_the_held_messages_and_waits() -> None:
    r = Rig(pending_max=2)
    r.snapshot()
    c = r.conn()
    sub = r.core.subscribe(c, SubRequest("l2", "BTC-USD", since_seq=0))
    for i in range(3):
        r.update(str(i + 10))
    assert sub.mode is Mode.WAIT and not sub.held and not r.core.resuming(sub)
    r.core.resume_failed(sub, "reset")
    assert [m["type"] for m in r.writes()[c]] == ["resync", "l2_snapshot"]


def test_removed_connection_returns_its_subscriptions_and_frees_its_accounting() -> None:
    r = Rig()
    r.snapshot()
    c = r.conn()
    r.core.subscribe(c, L2)
    r.core.report_backlog(c, 1000)
    subs = r.core.remove(c)
    assert [s.req for s in subs] == [L2]
    assert r.core.index == {} and r.core.conns == {} and r.core.backlog_total == 0
