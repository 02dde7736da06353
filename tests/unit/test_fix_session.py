"""The sans-I/O FIX session core: acceptor and initiator paired back to back, no sockets, a fake clock."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from fix_gateway.codec import Message, Parser, encode, utc_timestamp, utc_timestamp_us
from fix_gateway.config import SessionConfig
from fix_gateway.errors import SessionMisuse
from fix_gateway.session import AppMessage, Closed, FixSession, LoggedOn, hmac_signature, initiator
from fix_gateway.states import Event, State, transition
from fix_gateway.store import GROW_BYTES, FileStore, MemoryStore, Store

T0 = 1_795_503_072_000_000_000


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += int(seconds * 1e9)


class Gateway:
    """Resolver of the acceptor with the configured sessions and one store each."""

    def __init__(self, *configs: SessionConfig) -> None:
        self.configs = {(c.peer_comp_id, c.our_comp_id): c for c in configs} or {
            ("CLIENT1", "MDGW"): SessionConfig(peer_comp_id="CLIENT1", reset_time=None)
        }
        self.stores: dict[str, Store] = {}

    def __call__(self, peer: str, ours: str) -> tuple[SessionConfig, Store] | str:
        cfg = self.configs.get((peer, ours))
        if cfg is None:
            return "unknown session"
        return cfg, self.stores.setdefault(cfg.session_id, MemoryStore())


def decode(chunks: list[bytes]) -> list[Message]:
    p = Parser()
    p.receive_data(b"".join(chunks))
    out = p.events_received()
    assert all(isinstance(m, Message) for m in out)
    return out  # type: ignore[return-value]


def pump(a: FixSession, b: FixSession) -> tuple[list[Message], list[Message]]:
    """Exchange bytes until both are quiet; returns (what a sent, what b sent)."""
    sent_a: list[Message] = []
    sent_b: list[Message] = []
    for _ in range(20):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            break
        sent_a += decode(da)
        sent_b += decode(db)
        for d in da:
            b.receive_data(d)
        for d in db:
            a.receive_data(d)
    return sent_a, sent_b


def logged_on(
    gw: Gateway | None = None, clock: Clock | None = None, **kw: object
) -> tuple[FixSession, FixSession, Clock]:
    clock = clock or Clock()
    acc = FixSession(resolve=gw or Gateway(), clock=clock)
    cli = initiator(clock=clock, heartbeat=10, **kw)  # type: ignore[arg-type]
    cli.connect()
    pump(cli, acc)
    assert acc.state is State.ACTIVE and cli.state is State.ACTIVE
    acc.events_received()
    cli.events_received()
    return acc, cli, clock


def raw(
    mt: str,
    seq: int,
    clock: Clock,
    *extra: tuple[int, str | int],
    sender: str = "CLIENT1",
    target: str = "MDGW",
    sending_time: str | None = None,
) -> bytes:
    return encode(
        mt,
        [
            (49, sender),
            (56, target),
            (34, seq),
            (52, sending_time or utc_timestamp(clock())),
            *extra,
        ],
    )


# --- state table -----------------------------------------------------------------------------------
def test_state_table() -> None:
    assert transition(State.AWAITING_LOGON, Event.RECV_LOGON) is State.ACTIVE
    assert transition(State.ACTIVE, Event.SEND_LOGOUT) is State.LOGOUT_SENT
    assert transition(State.LOGOUT_SENT, Event.RECV_LOGOUT) is State.CLOSED
    assert transition(State.ACTIVE, Event.TIMEOUT) is State.CLOSED
    with pytest.raises(SessionMisuse):
        transition(State.CLOSED, Event.RECV_LOGON)


# --- logon ----------------------------------------------------------------------------------------
def test_logon_default_session_and_answer() -> None:
    clock = Clock()
    acc = FixSession(resolve=Gateway(), clock=clock)
    cli = initiator(clock=clock, heartbeat=10)
    cli.connect()
    to_acc, to_cli = pump(cli, acc)
    assert [m.msg_type for m in to_acc] == ["A"] and [m.msg_type for m in to_cli] == ["A"]
    answer = to_cli[0]
    assert (
        answer.get(49),
        answer.get(56),
        answer.get(34),
        answer.get(108),
        answer.get(141),
        answer.get(98),
    ) == ("MDGW", "CLIENT1", "1", "10", "Y", "0")
    assert isinstance(acc.events_received()[0], LoggedOn)
    assert acc.heartbeat == 10


def test_first_message_not_logon_disconnects_without_answer() -> None:
    clock = Clock()
    acc = FixSession(resolve=Gateway(), clock=clock)
    acc.receive_data(raw("0", 1, clock))
    assert acc.closed and acc.data_to_send() == []


def test_unknown_comp_id_disconnects_without_answer() -> None:
    clock = Clock()
    acc = FixSession(resolve=Gateway(), clock=clock)
    acc.receive_data(raw("A", 1, clock, (98, 0), (108, 30), sender="INTRUDER"))
    assert acc.closed and acc.data_to_send() == [] and acc.counters["logons_refused"] == 1


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        (((98, 0), (108, 30), (554, "wrong")), "Password"),
        (((98, 0), (108, 30)), "Password"),
        (((98, 1), (108, 30), (554, "pw")), "EncryptMethod"),
        (((98, 0), (108, 0), (554, "pw")), "HeartBtInt"),
        (((98, 0), (554, "pw")), "108"),
    ],
)
def test_refused_logon_answers_logout_with_text(
    fields: tuple[tuple[int, str | int], ...], text: str
) -> None:
    clock = Clock()
    gw = Gateway(SessionConfig(peer_comp_id="FUND7", password="pw", reset_time=None))
    acc = FixSession(resolve=gw, clock=clock)
    acc.receive_data(raw("A", 1, clock, *fields, sender="FUND7"))
    out = decode(acc.data_to_send())
    assert [m.msg_type for m in out] == ["5"] and text in (out[0].get(58) or "")
    assert acc.closed


def test_password_logon_accepted() -> None:
    clock = Clock()
    gw = Gateway(SessionConfig(peer_comp_id="FUND7", username="u", password="pw", reset_time=None))
    acc = FixSession(resolve=gw, clock=clock)
    acc.receive_data(
        raw("A", 1, clock, (98, 0), (108, 30), (553, "u"), (554, "pw"), sender="FUND7")
    )
    assert acc.state is State.ACTIVE


@pytest.mark.parametrize("good", [True, False])
def test_hmac_signed_logon(good: bool) -> None:
    clock = Clock()
    key = b"k" * 32
    gw = Gateway(SessionConfig(peer_comp_id="FUND8", hmac_key=key, reset_time=None))
    acc = FixSession(resolve=gw, clock=clock)
    st = utc_timestamp(clock())
    sig = hmac_signature(key if good else b"x" * 32, st, 1, "FUND8", "MDGW")
    acc.receive_data(
        raw(
            "A",
            1,
            clock,
            (98, 0),
            (108, 30),
            (95, len(sig)),
            (96, sig),
            sender="FUND8",
            sending_time=st,
        )
    )
    assert (acc.state is State.ACTIVE) is good
    assert base64.b64decode(sig)


def test_logon_sending_time_off_is_refused() -> None:
    clock = Clock()
    acc = FixSession(resolve=Gateway(), clock=clock)
    acc.receive_data(
        raw("A", 1, clock, (98, 0), (108, 30), sending_time=utc_timestamp(clock() - 600 * 10**9))
    )
    out = decode(acc.data_to_send())
    assert out[0].msg_type == "5" and "SendingTime" in (out[0].get(58) or "") and acc.closed


def test_logon_seq_too_low_is_refused_and_higher_triggers_resend_request() -> None:
    clock = Clock()
    gw = Gateway()
    acc, cli, _ = logged_on(gw, clock)
    store = gw.stores["MDGW-CLIENT1"]
    assert store.next_target_seq == 2
    acc2 = FixSession(resolve=gw, clock=clock)
    acc2.receive_data(raw("A", 1, clock, (98, 0), (108, 30)))
    out = decode(acc2.data_to_send())
    assert out[0].msg_type == "5" and "MsgSeqNum too low, expecting 2 but received 1" in (
        out[0].get(58) or ""
    )
    acc3 = FixSession(resolve=gw, clock=clock)
    acc3.receive_data(raw("A", 5, clock, (98, 0), (108, 30)))
    out = decode(acc3.data_to_send())
    assert [m.msg_type for m in out] == ["A", "2"] and (out[1].get(7), out[1].get(16)) == ("2", "0")


# --- heartbeats -------------------------------------------------------------------------------------
def test_heartbeat_test_request_and_timeout() -> None:
    acc, cli, clock = logged_on()
    clock.advance(10)
    acc.tick()
    out = decode(acc.data_to_send())
    assert [m.msg_type for m in out] == ["0"]
    clock.advance(2.1)  # 12.1 s since the peer's last message: > 1.2 x HeartBtInt
    acc.tick()
    out = decode(acc.data_to_send())
    assert [m.msg_type for m in out] == ["1"] and out[0].get(112) == "TEST1"
    clock.advance(5)
    acc.tick()
    assert not acc.closed
    clock.advance(5)
    acc.tick()
    assert acc.closed and acc.close_reason and "heartbeat timeout" in acc.close_reason
    assert isinstance(acc.events_received()[-1], Closed)


def test_test_request_answered_with_echo() -> None:
    acc, cli, clock = logged_on()
    acc.receive_data(raw("1", 2, clock, (112, "PING-7")))
    out = decode(acc.data_to_send())
    assert out[0].msg_type == "0" and out[0].get(112) == "PING-7"


def test_peer_answering_test_request_keeps_session() -> None:
    acc, cli, clock = logged_on()
    clock.advance(12.5)
    acc.tick()
    cli.tick()  # the client also sends its heartbeat
    pump(acc, cli)
    clock.advance(9)
    acc.tick()
    assert acc.state is State.ACTIVE


# --- sequence numbers, resend -------------------------------------------------------------------------
def test_resend_request_answered_with_possdup_and_gap_fill() -> None:
    acc, cli, clock = logged_on()
    for i in range(3):
        acc.send("y", [(320, f"r{i}"), (322, "1"), (560, 0)])  # seq 2,3,4
    clock.advance(10)
    acc.tick()  # Heartbeat seq 5
    acc.send("y", [(320, "r3"), (322, "1"), (560, 0)])  # seq 6
    acc.data_to_send()
    clock.advance(1)
    acc.receive_data(raw("2", 2, clock, (7, 2), (16, 0)))
    out = decode(acc.data_to_send())
    assert [(m.msg_type, m.get(34), m.get(43)) for m in out] == [
        ("y", "2", "Y"),
        ("y", "3", "Y"),
        ("y", "4", "Y"),
        ("4", "5", "Y"),
        ("y", "6", "Y"),
    ]
    assert out[3].get(123) == "Y" and out[3].get(36) == "6"
    assert all(m.get(122) for m in out)
    assert out[0].get(320) == "r0" and out[4].get(320) == "r3"
    assert out[0].get(122) != out[0].get(52)
    assert acc.counters["resent"] == 4 and acc.counters["gap_fills"] == 1


def test_resend_through_initiator_fills_the_gap() -> None:
    """The initiator core, fed a gap, asks for a resend and ends in sync with the acceptor."""
    acc, cli, clock = logged_on()
    acc.send("y", [(320, "a"), (322, "1"), (560, 0)])
    acc.data_to_send()  # lost in transit
    acc.send("y", [(320, "b"), (322, "1"), (560, 0)])
    to_cli = acc.data_to_send()
    for d in to_cli:
        cli.receive_data(d)
    out = decode(cli.data_to_send())
    assert out[0].msg_type == "2" and out[0].get(7) == "2"
    acc.receive_data(b"".join(encode_back(out)))
    pump(acc, cli)
    apps = [e for e in cli.events_received() if isinstance(e, AppMessage)]
    assert [e.msg.get(320) for e in apps] == ["a", "b"] and all(e.poss_dup for e in apps)
    assert cli.store is not None and cli.store.next_target_seq == 4


def test_initiator_accepts_microsecond_stamps_through_a_resend() -> None:
    """MD_FIX_TIMESTAMP_PRECISION=micros: every SendingTime(52) and OrigSendingTime(122) the
    acceptor sends has 6 fraction digits, and a FIX client (our initiator, millisecond stamps
    itself) logs on, takes them, asks for a gap and ends in sync without a Reject either way."""
    clock = Clock()
    clock.t += 123_456_789  # a clock reading with sub-millisecond digits
    acc = FixSession(resolve=Gateway(), clock=clock, timestamp=utc_timestamp_us)
    cli = initiator(clock=clock, heartbeat=10)
    cli.connect()
    _, logon = pump(cli, acc)
    assert acc.state is State.ACTIVE and cli.state is State.ACTIVE
    assert logon[0].get(52) == utc_timestamp_us(clock.t) and len(logon[0].get(52) or "") == 24
    acc.send("y", [(320, "a"), (322, "1"), (560, 0)])
    acc.data_to_send()  # lost in transit: the client asks for it again
    clock.advance(0.000_250)
    acc.send("y", [(320, "b"), (322, "1"), (560, 0)])
    for d in acc.data_to_send():
        cli.receive_data(d)
    acc.receive_data(b"".join(cli.data_to_send()))  # its ResendRequest(2)
    resent, _ = pump(acc, cli)
    assert [m.get(320) for m in resent] == ["a", "b"]
    assert all(len(m.get(52) or "") == 24 and len(m.get(122) or "") == 24 for m in resent)
    apps = [e for e in cli.events_received() if isinstance(e, AppMessage)]
    assert [e.msg.get(320) for e in apps] == ["a", "b"]
    assert cli.counters["rejects_sent"] == 0 and acc.counters["rejects_received"] == 0
    assert not cli.closed and cli.store is not None and cli.store.next_target_seq == 4


def encode_back(msgs: list[Message]) -> list[bytes]:
    return [m.raw for m in msgs]


def test_gap_from_client_triggers_one_resend_request() -> None:
    acc, cli, clock = logged_on()
    acc.receive_data(raw("0", 5, clock))
    acc.receive_data(raw("0", 6, clock))
    out = decode(acc.data_to_send())
    assert [(m.msg_type, m.get(7), m.get(16)) for m in out] == [("2", "2", "0")]
    # the client gap-fills 2..6 and sends 7: in sync
    acc.receive_data(
        raw("4", 2, clock, (43, "Y"), (122, utc_timestamp(clock())), (123, "Y"), (36, 7))
    )
    acc.receive_data(raw("0", 7, clock))
    assert acc.store is not None and acc.store.next_target_seq == 8 and acc.state is State.ACTIVE


def test_seq_too_low_without_possdup_logs_out() -> None:
    acc, cli, clock = logged_on()
    acc.receive_data(raw("0", 1, clock))
    out = decode(acc.data_to_send())
    assert (
        out[0].msg_type == "5" and out[0].get(58) == "MsgSeqNum too low, expecting 2 but received 1"
    )
    assert acc.closed and acc.counters["seq_too_low"] == 1


def test_seq_too_low_with_possdup_is_ignored() -> None:
    acc, cli, clock = logged_on()
    acc.receive_data(raw("0", 1, clock, (43, "Y"), (122, utc_timestamp(clock()))))
    assert acc.data_to_send() == [] and acc.state is State.ACTIVE


def test_possdup_without_orig_sending_time_is_rejected() -> None:
    acc, cli, clock = logged_on()
    acc.receive_data(raw("0", 2, clock, (43, "Y")))
    out = decode(acc.data_to_send())
    assert out[0].msg_type == "3" and (out[0].get(45), out[0].get(373), out[0].get(371)) == (
        "2",
        "1",
        "122",
    )


def test_sequence_reset_reset_mode() -> None:
    acc, cli, clock = logged_on()
    acc.receive_data(raw("4", 99, clock, (36, 50)))
    assert acc.store is not None and acc.store.next_target_seq == 50
    acc.receive_data(raw("4", 50, clock, (36, 10)))
    out = decode(acc.data_to_send())
    assert out[0].msg_type == "3" and out[0].get(373) == "5" and out[0].get(371) == "36"


# --- rejects ---------------------------------------------------------------------------------------------
def test_field_error_rejected_with_reason_and_ref_seq() -> None:
    acc, cli, clock = logged_on()
    data = raw("1", 2, clock, (112, "x")).replace(b"112=x", b"112=")
    from fix_gateway.codec import frame

    inner = data[data.index(b"49=") : data.index(b"10=")]
    acc.receive_data(frame("1", b"", inner))
    out = decode(acc.data_to_send())
    assert out[0].msg_type == "3"
    assert (out[0].get(45), out[0].get(373), out[0].get(371), out[0].get(372)) == (
        "2",
        "4",
        "112",
        "1",
    )
    assert acc.store is not None and acc.store.next_target_seq == 3
    assert acc.counters["rejects_sent"] == 1


def test_comp_id_problem_rejects_then_logs_out() -> None:
    acc, cli, clock = logged_on()
    acc.receive_data(raw("0", 2, clock, sender="OTHER"))
    out = decode(acc.data_to_send())
    assert [m.msg_type for m in out] == ["3", "5"] and out[0].get(373) == "9" and acc.closed


def test_sending_time_accuracy_rejects_then_logs_out() -> None:
    acc, cli, clock = logged_on()
    acc.receive_data(raw("0", 2, clock, sending_time=utc_timestamp(clock() + 300 * 10**9)))
    out = decode(acc.data_to_send())
    assert (
        [m.msg_type for m in out] == ["3", "5"]
        and out[0].get(373) == "10"
        and out[0].get(45) == "2"
    )


def test_garbled_mid_session_dropped_counted_seq_unchanged() -> None:
    acc, cli, clock = logged_on()
    good = raw("0", 2, clock)
    acc.receive_data(good.replace(b"10=", b"10=9")[:-1])  # garbled checksum
    acc.receive_data(good)
    assert acc.counters["garbled"] == 1
    assert acc.store is not None and acc.store.next_target_seq == 3 and acc.data_to_send() == []


# --- logout ----------------------------------------------------------------------------------------------
def test_logout_initiated_by_client() -> None:
    acc, cli, clock = logged_on()
    cli.logout("bye")
    to_acc, to_cli = pump(cli, acc)
    assert [m.msg_type for m in to_acc] == ["5"] and [m.msg_type for m in to_cli] == ["5"]
    assert acc.closed and cli.closed


def test_logout_initiated_by_gateway_and_timeout() -> None:
    acc, cli, clock = logged_on()
    acc.logout("maintenance")
    assert acc.state is State.LOGOUT_SENT
    pump(acc, cli)
    assert acc.closed and cli.closed
    acc2, cli2, clock2 = logged_on()
    acc2.logout()
    acc2.data_to_send()
    clock2.advance(6)
    acc2.tick()
    assert acc2.closed and acc2.close_reason == "logout timeout"


def test_send_before_logon_is_misuse() -> None:
    acc = FixSession(resolve=Gateway(), clock=Clock())
    with pytest.raises(SessionMisuse):
        acc.send("W", [(262, "x")])


# --- persistence and reset schedule ---------------------------------------------------------------------
def test_file_store_survives_restart(tmp_path: Path) -> None:
    clock = Clock()
    cfg = SessionConfig(peer_comp_id="CLIENT1", reset_time=None)

    def resolve(peer: str, ours: str) -> tuple[SessionConfig, Store]:
        return cfg, FileStore(tmp_path, cfg.session_id)

    acc = FixSession(resolve=resolve, clock=clock)
    acc.receive_data(raw("A", 1, clock, (98, 0), (108, 30), (141, "Y")))
    acc.send("y", [(320, "keep"), (322, "1"), (560, 0)])
    acc.receive_data(raw("0", 2, clock))
    acc.data_to_send()
    assert acc.store is not None
    acc.store.close()
    # "restart": a new acceptor, a new store object on the same files
    acc2 = FixSession(resolve=resolve, clock=clock)
    acc2.receive_data(raw("A", 3, clock, (98, 0), (108, 30)))
    acc2.receive_data(raw("2", 4, clock, (7, 1), (16, 0)))
    out = decode(acc2.data_to_send())
    assert out[0].msg_type == "A" and out[0].get(34) == "3"
    resent = [(m.msg_type, m.get(34)) for m in out[1:]]
    assert resent == [("4", "1"), ("y", "2"), ("4", "3")]
    assert out[2].get(320) == "keep"


def test_reset_schedule_resets_sequence_at_logon() -> None:
    clock = Clock()
    gw = Gateway(SessionConfig(peer_comp_id="CLIENT1", reset_time=(0, 0)))
    acc, cli, _ = logged_on(gw, clock)
    store = gw.stores["MDGW-CLIENT1"]
    store.created_ns = clock()
    acc.send("y", [(320, "x"), (322, "1"), (560, 0)])
    clock.advance(86400)
    acc.tick()
    assert acc.state is State.LOGOUT_SENT  # the scheduled reset ends the running session
    acc2 = FixSession(resolve=gw, clock=clock)
    acc2.receive_data(raw("A", 1, clock, (98, 0), (108, 30)))
    out = decode(acc2.data_to_send())
    assert out[0].msg_type == "A" and out[0].get(34) == "1"


# --- configuration --------------------------------------------------------------------------------------
def test_sessions_file(tmp_path: Path) -> None:
    from core.errors import ConfigError
    from fix_gateway.config import GatewayConfig, load_sessions

    f = tmp_path / "s.toml"
    f.write_text(
        '[defaults]\nreset_time = "17:30"\n'
        '[[session]]\nsender_comp_id = "FUND7"\npassword = "pw"\n'
        '[[session]]\nsender_comp_id = "FUND8"\ntarget_comp_id = "MDGW2"\nhmac_key = "a2V5"\nreset_time = ""\n'
    )
    s = load_sessions(f)
    assert s[("FUND7", "MDGW")].password == "pw" and s[("FUND7", "MDGW")].reset_time == (17, 30)
    assert s[("FUND8", "MDGW2")].hmac_key == b"key" and s[("FUND8", "MDGW2")].reset_time is None
    f.write_text('[[session]]\nsender_comp_id = "X"\nreset_time = "25:00"\n')
    with pytest.raises(ConfigError) as e:
        load_sessions(f)
    assert "reset_time" in e.value.key
    f.write_text("[defaults]\n")
    with pytest.raises(ConfigError):
        load_sessions(f)
    from core.settings import Settings

    cfg = GatewayConfig.from_settings(Settings.from_env({}))
    assert (
        list(cfg.sessions) == [("CLIENT1", "MDGW")]
        and cfg.sessions[("CLIENT1", "MDGW")].password is None
    )
    with pytest.raises(ConfigError) as e:
        GatewayConfig.from_settings(Settings.from_env({"MD_FIX_TLS_KEY": "k.pem"}))
    assert e.value.key == "MD_FIX_TLS_CERT"


def test_docs_state_diagram_is_generated_from_the_table() -> None:
    from fix_gateway.states import mermaid

    doc = (Path(__file__).resolve().parents[2] / "docs" / "fix.md").read_text()
    assert f"```mermaid\n{mermaid()}\n```" in doc


def test_file_store_drops_a_torn_tail_and_resets(tmp_path: Path) -> None:
    st = FileStore(tmp_path, "S")
    st.save(1, "A", "20260101-00:00:00.000", b"98=0\x01108=30\x01")
    st.save(2, "W", "20260101-00:00:01.000", b"262=x\x01")
    st.set_next_target(7)
    st.close()
    log = tmp_path / "S" / "messages.log"
    log.write_bytes(log.read_bytes() + b"3 X 20260101-00:00:02.000 50\n262=")  # crash mid-record
    st2 = FileStore(tmp_path, "S")
    assert (st2.next_sender_seq, st2.next_target_seq) == (3, 7)
    assert [m.seq for m in st2.get(1, 10)] == [1, 2] and st2.get(2, 2)[0].body == b"262=x\x01"
    st2.save(3, "X", "20260101-00:00:03.000", b"262=y\x01")
    assert st2.get(3, 3)[0].body == b"262=y\x01"
    st2.reset()
    assert (st2.next_sender_seq, st2.next_target_seq, st2.get(1, 10)) == (1, 1, [])
    st2.save(1, "A", "20260101-00:00:04.000", b"98=0\x01")
    st2.close()
    st3 = FileStore(tmp_path, "S")
    assert st3.next_sender_seq == 2 and st3.get(1, 1)[0].sending_time == "20260101-00:00:04.000"
    st3.close()


def test_file_store_keeps_what_a_killed_process_saved(tmp_path: Path) -> None:
    """Saved records are in the file without a flush or a close: a process killed with SIGKILL
    right after saving (what a peer may have seen) loses none, and the zeros the file was grown
    by are cut when it is loaded again."""
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from fix_gateway.store import FileStore\n"
        "st = FileStore(Path(sys.argv[1]), 'K')\n"
        "for seq in range(1, 1001):\n"
        "    st.save(seq, 'X', '20260101-00:00:00.000', b'262=r\\x01268=1\\x01' * 20)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=root, check=False)
    assert p.returncode == -9
    log = tmp_path / "K" / "messages.log"
    assert log.stat().st_size % GROW_BYTES == 0  # grown, with zeros past the last record
    st = FileStore(tmp_path, "K")
    assert st.next_sender_seq == 1001
    got = st.get(1, 1000)
    assert [m.seq for m in got] == list(range(1, 1001))
    assert got[-1].body == b"262=r\x01268=1\x01" * 20
    st.close()
    body = b"262=r\x01268=1\x01" * 20
    assert log.stat().st_size == sum(
        len(b"%d X 20260101-00:00:00.000 %d\n" % (q, len(body))) + len(body) + 1
        for q in range(1, 1001)
    )


def test_invalid_msg_type_is_a_session_reject_and_unsupported_goes_to_the_app() -> None:
    acc, cli, clock = logged_on()
    acc.receive_data(raw("ZZ", 2, clock))
    out = decode(acc.data_to_send())
    assert out[0].msg_type == "3" and (out[0].get(373), out[0].get(371), out[0].get(45)) == (
        "11",
        "35",
        "2",
    )
    acc.receive_data(raw("D", 3, clock, (11, "o1")))
    assert [type(e).__name__ for e in acc.events_received()] == ["AppMessage"]
    assert acc.store is not None and acc.store.next_target_seq == 4


# --- fuzz: whatever a logged-on peer sends, the session core never raises --------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_values = st.one_of(
    st.integers(min_value=-3, max_value=40).map(str),
    st.sampled_from(["Y", "N", "", "abc", "20261124-06:51:12.000", "99999999999999999999"]),
)
_fields = st.lists(
    st.tuples(
        st.sampled_from(
            [7, 16, 36, 43, 45, 58, 108, 112, 122, 123, 141, 262, 263, 267, 269, 146, 55, 999]
        ),
        _values,
    ),
    max_size=8,
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["0", "1", "2", "3", "4", "5", "A", "V", "ZZ", "x"]),
            st.integers(min_value=-1, max_value=4),
            _fields,
        ),
        max_size=12,
    )
)
def test_fuzz_session_never_raises(msgs: list[tuple[str, int, list[tuple[int, str]]]]) -> None:
    acc, cli, clock = logged_on()
    for mt, seq_delta, fields in msgs:
        if acc.closed:
            break
        assert acc.store is not None
        seq = max(1, acc.store.next_target_seq + seq_delta)
        from fix_gateway.codec import frame

        body = "".join(f"{t}={v}\x01" for t, v in fields if v != "").encode()
        head = f"49=CLIENT1\x0156=MDGW\x0134={seq}\x0152={utc_timestamp(clock())}\x01".encode()
        acc.receive_data(frame(mt, head, body))
        acc.tick()
        for m in decode(acc.data_to_send()):
            assert m.get(34) and m.get(49) == "MDGW"
        acc.events_received()
        clock.advance(0.3)
    assert acc.state in set(State)
