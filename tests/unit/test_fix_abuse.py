"""Abuse must not take the FIX gateway down (issue 12), on the sans-I/O session core and its
stores: bad numbers get a Logout, failed logons leave the victim's store alone, a signed Logon
is good once, garbage before Logon disconnects without a log line per frame, resend is bounded
and incremental, the store is trimmed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fix_gateway.codec import encode, utc_timestamp
from fix_gateway.config import SessionConfig
from fix_gateway.session import FixSession, hmac_signature, initiator
from fix_gateway.states import State
from fix_gateway.store import COMPACT_MIN_BYTES, FileStore, MemoryStore
from tests.unit.test_fix_session import Clock, Gateway, decode, logged_on, pump, raw


@pytest.mark.parametrize("bad", ["²", "1" * 5000, "-", "1e3"])
def test_bad_msgseqnum_on_logon_is_answered_by_logout(bad: str) -> None:
    clock = Clock()
    acc = FixSession(resolve=Gateway(), clock=clock)
    fields: list[tuple[int, str | int]] = [(49, "CLIENT1"), (56, "MDGW"), (34, bad)]
    fields += [(52, utc_timestamp(clock())), (98, 0), (108, 30)]
    frame = encode("A", fields)
    acc.receive_data(frame)  # raised ValueError out of the session before
    out = decode(acc.data_to_send())
    assert [m.msg_type for m in out] == ["5"] and "34" in (out[0].get(58) or "")
    assert acc.closed


def test_bad_msgseqnum_mid_session_is_answered_by_logout() -> None:
    acc, _cli, clock = logged_on()
    acc.receive_data(
        encode("0", [(49, "CLIENT1"), (56, "MDGW"), (34, "9" * 5000), (52, utc_timestamp(clock()))])
    )
    out = decode(acc.data_to_send())
    assert "5" in [m.msg_type for m in out] and acc.closed


def test_refused_logon_leaves_the_sessions_store_alone() -> None:
    clock = Clock()
    gw = Gateway(SessionConfig(peer_comp_id="FUND7", password="pw", reset_time=None))
    for attempt in range(3):
        acc = FixSession(resolve=gw, clock=clock)
        acc.receive_data(raw("A", 1, clock, (98, 0), (108, 30), (554, "wrong"), sender="FUND7"))
        out = decode(acc.data_to_send())
        assert [m.msg_type for m in out] == ["5"] and acc.closed, attempt
    store = gw.stores["MDGW-FUND7"]
    assert isinstance(store, MemoryStore)
    assert store.messages == {} and store.next_sender_seq == 1  # nothing stored, no seq used


def test_signed_logon_cannot_be_replayed() -> None:
    clock = Clock()
    key = b"k" * 32
    gw = Gateway(SessionConfig(peer_comp_id="SIG1", hmac_key=key, reset_time=None))
    st = utc_timestamp(clock())
    sig = hmac_signature(key, st, 1, "SIG1", "MDGW")
    logon = raw(
        "A",
        1,
        clock,
        (98, 0),
        (108, 30),
        (141, "Y"),
        (95, len(sig)),
        (96, sig),
        sender="SIG1",
        sending_time=st,
    )
    first = FixSession(resolve=gw, clock=clock)
    first.receive_data(logon)
    assert first.state is State.ACTIVE
    first.connection_lost()
    clock.advance(5)  # well inside the 120 s SendingTime tolerance
    replay = FixSession(resolve=gw, clock=clock)
    replay.receive_data(logon)
    out = decode(replay.data_to_send())
    assert replay.closed and "replayed" in (out[0].get(58) or "")
    # a fresh signature (a later SendingTime) is accepted
    st2 = utc_timestamp(clock())
    sig2 = hmac_signature(key, st2, 1, "SIG1", "MDGW")
    fresh = FixSession(resolve=gw, clock=clock)
    fresh.receive_data(
        raw(
            "A",
            1,
            clock,
            (98, 0),
            (108, 30),
            (141, "Y"),
            (95, len(sig2)),
            (96, sig2),
            sender="SIG1",
            sending_time=st2,
        )
    )
    assert fresh.state is State.ACTIVE


def test_signed_logon_guard_survives_a_restart(tmp_path: Path) -> None:
    s = FileStore(tmp_path, "MDGW-SIG1")
    s.set_last_signed_logon(123)
    s.close()
    assert FileStore(tmp_path, "MDGW-SIG1").last_signed_logon_ns == 123


GARBLED = b"8=FIX.4.4\x019=XY\x0135=0\x0110=000\x01"  # BodyLength not a number


def test_garbage_before_logon_disconnects_with_no_log_line_per_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    acc = FixSession(resolve=Gateway(), clock=clock)
    with caplog.at_level(logging.INFO, logger="fix_gateway.session"):
        acc.receive_data(GARBLED * 200)
        acc.receive_data(GARBLED * 200)  # after the close: ignored
    assert acc.closed and acc.data_to_send() == []
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 0
    assert len(caplog.records) <= 1  # the one "session closed" line


def test_garbage_after_logon_is_dropped_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    acc, _cli, clock = logged_on()
    with caplog.at_level(logging.WARNING, logger="fix_gateway.session"):
        acc.receive_data(GARBLED * 300)
        clock.advance(11)
        acc.receive_data(GARBLED)
    assert acc.state is State.ACTIVE and acc.counters["garbled"] == 301
    lines = [r for r in caplog.records if "garbled" in r.getMessage()]
    assert len(lines) == 2 and getattr(lines[1], "dropped_since_last_line", None) == 299


def test_resend_is_incremental_and_bounded() -> None:
    clock = Clock()
    gw = Gateway()
    acc = FixSession(resolve=gw, clock=clock, resend_chunk=100)
    cli = initiator(clock=clock, heartbeat=10)
    cli.connect()
    pump(cli, acc)
    for i in range(1000):
        acc.send("X", [(262, "r"), (268, 1), (279, 0), (269, 0), (270, i), (271, 1)])
    acc.data_to_send()  # the client "missed" all of them
    acc.receive_data(raw("2", 2, clock, (7, 1), (16, 0)))
    first = decode(acc.data_to_send())
    assert 0 < len(first) <= 101  # one chunk (and a gap fill), not the 1000
    got = list(first)
    steps = 1
    while acc.resend_pending:
        acc.continue_resend()
        got += decode(acc.data_to_send())
        steps += 1
    assert steps == 11
    seqs: list[int] = []
    for m in got:
        s = int(m.get(34) or 0)
        if m.msg_type == "4":  # gap fill over the Logon
            seqs += range(s, int(m.get(36) or 0))
        else:
            assert m.get(43) == "Y"
            seqs.append(s)
    assert seqs == list(range(1, 1002))


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_store_is_trimmed_to_max_messages(kind: str, tmp_path: Path) -> None:
    body = b"x" * 300
    store = (
        MemoryStore(max_messages=100)
        if kind == "memory"
        else FileStore(tmp_path, "MDGW-C", max_messages=100)
    )
    for seq in range(1, 5001):
        store.save(seq, "X", "20261206-10:00:00.000", body)
    store.flush()
    kept = store.get(1, 5000)
    assert [m.seq for m in kept] == list(range(4901, 5001)) and kept[-1].body == body
    assert store.oldest_seq() == 4901
    if isinstance(store, FileStore):
        # 5000 x ~330 B were written; the file holds about the kept tail (compacted)
        assert (tmp_path / "MDGW-C" / "messages.log").stat().st_size < 2 * COMPACT_MIN_BYTES
        store.close()
        again = FileStore(tmp_path, "MDGW-C", max_messages=100)
        assert again.next_sender_seq == 5001
        assert [m.seq for m in again.get(4990, 5000)] == list(range(4990, 5001))
        assert again.get(1, 4900) == []


def test_resend_of_trimmed_messages_is_one_gap_fill() -> None:
    clock = Clock()
    gw = Gateway()
    gw.stores["MDGW-CLIENT1"] = MemoryStore(max_messages=10)
    acc, _cli, clock = logged_on(gw, clock)
    for i in range(50):
        acc.send("X", [(262, "r"), (268, 1), (279, 0), (269, 0), (270, i), (271, 1)])
    acc.data_to_send()
    acc.receive_data(raw("2", 2, clock, (7, 1), (16, 0)))
    out = decode(acc.data_to_send())
    assert out[0].msg_type == "4" and out[0].get(34) == "1" and out[0].get(36) == "42"
    assert [int(m.get(34) or 0) for m in out[1:]] == list(range(42, 52))


def test_session_is_driven_by_the_state_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_handle`` reads ALLOWED / ON_UNEXPECTED (issue 14: they were written and never read):
    changing the table changes what a first non-Logon message does."""
    from fix_gateway import states

    clock = Clock()
    acc = FixSession(resolve=Gateway(), clock=clock)
    acc.receive_data(raw("0", 1, clock))
    assert acc.closed  # the table: disconnect
    monkeypatch.setitem(states.ON_UNEXPECTED, State.AWAITING_LOGON, "ignore")
    acc = FixSession(resolve=Gateway(), clock=clock)
    acc.receive_data(raw("0", 1, clock))
    assert acc.state is State.AWAITING_LOGON and acc.data_to_send() == []
    monkeypatch.setitem(states.ALLOWED, State.AWAITING_LOGON, frozenset({"A", "0"}))
    acc = FixSession(resolve=Gateway(), clock=clock)
    acc.receive_data(raw("A", 1, clock, (98, 0), (108, 30)))
    assert acc.state is State.ACTIVE
