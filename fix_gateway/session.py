"""Sans-I/O FIX 4.4 session core (FIX 4.4 Vol. 2 "Session Protocol").

Bytes in through :meth:`FixSession.receive_data`, messages out through
:meth:`FixSession.send`, results through :meth:`FixSession.events_received` and
:meth:`FixSession.data_to_send`; timers advance in :meth:`FixSession.tick`. The state machine is
the table in ``states.py``; this module decides which event a message is and what to answer.
No sockets, no event loop: the clock is injected (``clock`` returns epoch nanoseconds).

What it implements, by message:

- Logon(A): EncryptMethod(98)=0, HeartBtInt(108) within the configured bounds,
  ResetSeqNumFlag(141)=Y resets both sequence numbers, SenderCompID(49)/TargetCompID(56) must
  name a configured session, Username(553)/Password(554) or an HMAC signature in RawData(96)
  when configured. A refused Logon is answered by Logout(5) with Text(58), then disconnect;
  an unknown session or a first message that is not a Logon by a disconnect with no answer.
- Heartbeat(0) every HeartBtInt without other traffic; TestRequest(1) after 1.2 x HeartBtInt
  of silence and a disconnect if nothing arrives for another HeartBtInt; a TestRequest is
  answered by a Heartbeat echoing TestReqID(112).
- ResendRequest(2) is answered with the stored application messages, original MsgSeqNum(34),
  PossDupFlag(43)=Y and OrigSendingTime(122), and SequenceReset(4) GapFillFlag(123)=Y over
  admin messages; a gap in what we receive is answered by our ResendRequest(7=expected, 16=0).
- Reject(3) with RefSeqNum(45), RefTagID(371), RefMsgType(372), SessionRejectReason(373) for
  a framed message with a bad field, a wrong CompID (then Logout), a SendingTime(52) outside
  the tolerance (then Logout), a PossDup without OrigSendingTime(122).
- MsgSeqNum(34) lower than expected without PossDupFlag(43)=Y: Logout(5) and disconnect.
- Logout(5) both ways: ours waits for the peer's answer; the peer's is answered, then closed.
- Garbled frames (codec) are dropped and counted; the expected sequence number is unchanged.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from fix_gateway import tags as T
from fix_gateway.codec import (
    TRAILERS,
    Body,
    Message,
    Parser,
    Value,
    encode_fields,
    frame,
    parse_utc_timestamp,
    utc_timestamp,
)
from fix_gateway.config import SessionConfig
from fix_gateway.errors import FieldError, GarbledMessage, SessionMisuse
from fix_gateway.states import ALLOWED, ON_UNEXPECTED, Event, State, transition
from fix_gateway.store import MemoryStore, Store

log = logging.getLogger(__name__)


class Role(Enum):
    ACCEPTOR = "acceptor"
    INITIATOR = "initiator"


# --- events delivered to the application --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LoggedOn:
    session_id: str
    heartbeat: int
    reset: bool


@dataclass(frozen=True, slots=True)
class AppMessage:
    msg: Message
    poss_dup: bool


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str


@dataclass(frozen=True, slots=True)
class RejectReceived:
    msg: Message


SessionEvent = LoggedOn | AppMessage | Closed | RejectReceived
# acceptor: (peer SenderCompID, our CompID) -> (config, store) or the reason for refusing
Resolver = Callable[[str, str], "tuple[SessionConfig, Store] | str"]

NS = 1_000_000_000
GARBLED_LOG_INTERVAL_S = 10


# "8=FIX.4.4|9=<BodyLength>|" and its byte sum by BodyLength, for the lengths of messages sent
# (a few hundred distinct ones; bounded: longer messages are formatted each time)
_BEGIN = b"8=" + T.BEGIN_STRING.encode("latin-1") + b"\x019="
_STARTS: dict[int, tuple[bytes, int]] = {}
_STARTS_MAX_LENGTH = 4096


def _start(n: int) -> tuple[bytes, int]:
    b = _BEGIN + b"%d\x01" % n
    out = (b, sum(b))
    if n <= _STARTS_MAX_LENGTH:
        _STARTS[n] = out
    return out


def hmac_signature(key: bytes, sending_time: str, seq: int, sender: str, target: str) -> str:
    """RawData(96) of a signed Logon: base64(HMAC-SHA256(key, 52 SOH 34 SOH 49 SOH 56))."""
    pre = "\x01".join((sending_time, str(seq), sender, target)).encode()
    return base64.b64encode(hmac.new(key, pre, hashlib.sha256).digest()).decode()


def last_reset_boundary(now_ns: int, hhmm: tuple[int, int]) -> int:
    """Epoch ns of the most recent daily reset time (UTC) at or before ``now_ns``."""
    t = time.gmtime(now_ns // NS)
    today = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, hhmm[0], hhmm[1], 0, 0, 0, 0)) * NS
    return today if today <= now_ns else today - 86400 * NS


class FixSession:
    """One FIX connection. ``role=ACCEPTOR`` needs ``resolve``; ``INITIATOR`` needs ``config``
    (``peer_comp_id`` = the acceptor's CompID) and ``store``."""

    def __init__(
        self,
        *,
        role: Role = Role.ACCEPTOR,
        resolve: Resolver | None = None,
        config: SessionConfig | None = None,
        store: Store | None = None,
        clock: Callable[[], int] = time.time_ns,
        heartbeat: int = 30,
        reset_on_logon: bool = False,
        logon_timeout: float = 10.0,
        logout_timeout: float = 5.0,
        logon_fields: Iterable[tuple[int, Value]] = (),
        resend_chunk: int = 500,
        claim: Callable[[str], str | None] | None = None,
        timestamp: Callable[[int], str] = utc_timestamp,
    ) -> None:
        self.role = role
        # SendingTime(52) / OrigSendingTime(122) formatter: codec.utc_timestamp (milliseconds,
        # FIX 4.4) or codec.utc_timestamp_us (MD_FIX_TIMESTAMP_PRECISION=micros)
        self._stamp = timestamp
        self._claim = claim  # acceptor: take the session once authenticated (None = refused)
        self._resolve = resolve
        self.config = config
        self.store: Store | None = store
        self.clock = clock
        self.heartbeat = heartbeat
        self.reset_on_logon = reset_on_logon
        self.logon_timeout = logon_timeout
        self.logout_timeout = logout_timeout
        self._logon_fields = tuple(logon_fields)
        self.state = State.AWAITING_LOGON
        self.parser = Parser()
        self.counters: Counter[str] = Counter()
        self._out: list[bytes] = []
        self._events: list[SessionEvent] = []
        now = clock()
        self._connected_at = now
        self._last_sent = now
        self._last_recv = now
        self._test_req: tuple[str, int] | None = None  # (TestReqID, sent at)
        self._test_req_n = 0
        self._logout_at = 0
        self._resend_until: int | None = None  # our pending ResendRequest covers up to this seq
        self._garbled_logged_at = -(10**30)
        self.resend_chunk = resend_chunk
        self._resend_next, self._resend_end = 1, 0  # the ResendRequest being answered
        self._garbled_unlogged = 0
        self.close_reason: str | None = None
        self._fixed: dict[str, tuple[bytes, int]] = {}  # MsgType -> constant header part, byte sum
        if role is Role.INITIATOR and (config is None or store is None):
            raise SessionMisuse("an initiator needs config and store")
        if role is Role.ACCEPTOR and resolve is None:
            raise SessionMisuse("an acceptor needs resolve")

    # --- public API ------------------------------------------------------------------------------
    @property
    def session_id(self) -> str | None:
        return self.config.session_id if self.config else None

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def data_to_send(self) -> list[bytes]:
        """Bytes to write, in order. The store has the sent messages flushed before they are returned."""
        out, self._out = self._out, []
        if out and self.store is not None:
            self.store.flush()
        return out

    def events_received(self) -> list[SessionEvent]:
        ev, self._events = self._events, []
        return ev

    def connect(self) -> None:
        """Initiator: send Logon(A)."""
        assert self.config is not None and self.store is not None
        if self.reset_on_logon:
            self.store.reset(self.clock())
        fields: list[tuple[int, Value]] = [(T.EncryptMethod, 0), (T.HeartBtInt, self.heartbeat)]
        if self.reset_on_logon:
            fields.append((T.ResetSeqNumFlag, "Y"))
        fields.extend(self._logon_fields)
        self._send_admin(T.LOGON, fields)
        self._to(Event.SEND_LOGON)

    def receive_data(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self.parser.receive_data(data)
        for item in self.parser.events_received():
            if self.state is State.CLOSED:  # type: ignore[comparison-overlap]  # set by an item
                break
            if isinstance(item, GarbledMessage):
                self.counters["garbled"] += 1
                if self.state is State.AWAITING_LOGON:
                    # the first message must be a Logon(A): a peer that opens with garbage is
                    # disconnected, with one log line for the connection, never one per frame
                    # (a garbage flood wrote a WARNING per frame and starved every session)
                    self._close(f"garbled data before Logon: {item.reason}")
                    break
                self._log_garbled(item)
                continue
            self.counters["messages_in"] += 1
            self._last_recv = self.clock()
            self._test_req = None
            self._handle(item)

    def _log_garbled(self, item: GarbledMessage) -> None:
        """Garbled frames of a logged-on peer: the first logged, then one line per
        ``GARBLED_LOG_INTERVAL_S`` with the count meanwhile (FIX 4.4 Vol. 2: drop, do not
        disconnect; but a log line per frame turns a noisy peer into a disk and CPU problem)."""
        now = self.clock()
        if now - self._garbled_logged_at < GARBLED_LOG_INTERVAL_S * NS:
            self._garbled_unlogged += 1
            return
        log.warning(
            "garbled FIX message dropped",
            extra={
                "session": self.session_id,
                "reason": item.reason,
                "dropped_since_last_line": self._garbled_unlogged,
            },
        )
        self._garbled_logged_at = now
        self._garbled_unlogged = 0

    def send(self, msg_type: str, body: Body | Iterable[tuple[int, Value]]) -> int:
        """Send an application message; returns its MsgSeqNum(34)."""
        if self.state not in (State.ACTIVE, State.LOGOUT_SENT):
            raise SessionMisuse(f"cannot send {msg_type} in state {self.state.value}")
        if not isinstance(body, Body):
            body = Body.from_fields(body)
        return self._send(msg_type, body)

    def send_many(self, messages: Iterable[tuple[str, Body]]) -> None:
        """Send application messages (MsgType, body) in order with one SendingTime(52), read
        once: what a transport queued for this session in one event-loop pass."""
        if self.state not in (State.ACTIVE, State.LOGOUT_SENT):
            raise SessionMisuse(f"cannot send application messages in state {self.state.value}")
        now = self.clock()
        st = self._stamp(now)
        stb = st.encode()
        n = 0
        for msg_type, body in messages:
            self._frame(msg_type, body, now, st, stb)
            n += 1
        self.counters["messages_out"] += n

    def reject(self, msg: Message, error: FieldError) -> None:
        """Reject(3) an application message the application found malformed (373 from ``error``)."""
        if self.state in (State.ACTIVE, State.LOGOUT_SENT):
            self._reject(msg, msg.get_int_or_none(T.MsgSeqNum), error.reason, error.tag, error.text)

    def logout(self, text: str = "") -> None:
        """Start a Logout(5) handshake (FIX 4.4 Vol. 2 "Logout")."""
        if self.state in (State.ACTIVE, State.LOGON_SENT):
            self._send_admin(T.LOGOUT, [(T.Text, text)] if text else [])
            self._logout_at = self.clock()
            self._to(Event.SEND_LOGOUT)
        elif self.state is State.AWAITING_LOGON:
            self._close("logout before logon")

    def terminate(self, text: str) -> None:
        """Logout(5) with ``text`` and close at once, without waiting for the peer's answer
        (the session was taken over by a newer authenticated logon)."""
        if self.state in (State.ACTIVE, State.LOGOUT_SENT):
            self._logout_and_close(text)
        elif self.state is not State.CLOSED:
            self._close(text)

    def connection_lost(self) -> None:
        if self.state is not State.CLOSED:
            self._close("connection lost", Event.CLOSED_BY_PEER)

    def tick(self) -> None:
        """Advance timers: Heartbeat, TestRequest, heartbeat timeout, logon/logout timeouts."""
        now = self.clock()
        st = self.state
        if st is State.AWAITING_LOGON or st is State.LOGON_SENT:
            if now - self._connected_at > self.logon_timeout * NS:
                self._close("logon timeout", Event.TIMEOUT)
            return
        if st is State.LOGOUT_SENT:
            if now - self._logout_at > self.logout_timeout * NS:
                self._close("logout timeout", Event.TIMEOUT)
            return
        if st is not State.ACTIVE:
            return
        hb = self.heartbeat * NS
        if (
            self.config
            and self.config.reset_time
            and self.store
            and self.store.created_ns < last_reset_boundary(now, self.config.reset_time)
        ):
            self.logout("scheduled sequence reset")
            return
        if self._test_req is not None:
            if now - self._test_req[1] >= hb:
                self.counters["heartbeat_timeouts"] += 1
                self._close("heartbeat timeout: no answer to TestRequest", Event.TIMEOUT)
                return
        elif now - self._last_recv >= hb * 12 // 10:
            self._test_req_n += 1
            req_id = f"TEST{self._test_req_n}"
            self._send_admin(T.TEST_REQUEST, [(T.TestReqID, req_id)])
            self._test_req = (req_id, now)
        if now - self._last_sent >= hb:
            self._send_admin(T.HEARTBEAT, [])
        if self.resend_pending:  # the transport normally drives it; this keeps it moving
            self.continue_resend()

    # --- sending ---------------------------------------------------------------------------------
    def _to(self, event: Event) -> None:
        self.state = transition(self.state, event)

    def _close(self, reason: str, event: Event = Event.FATAL) -> None:
        if self.state is State.CLOSED:
            return
        self._to(event)
        self.close_reason = reason
        self._events.append(Closed(reason))
        log.info("FIX session closed", extra={"session": self.session_id, "reason": reason})

    def _header(self, seq: int, sending_time: str, orig_sending_time: str | None = None) -> bytes:
        assert self.config is not None
        h = f"49={self.config.our_comp_id}\x0156={self.config.peer_comp_id}\x0134={seq}\x01"
        if orig_sending_time is not None:
            h += f"43=Y\x0152={sending_time}\x01122={orig_sending_time}\x01"
        else:
            h += f"52={sending_time}\x01"
        return h.encode("latin-1")

    def _send(self, msg_type: str, body: Body) -> int:
        """Frame, store and queue one message with the next MsgSeqNum(34).

        Hot path (once per message per session): the constant part of the header
        (``35=..|49=..|56=..|34=``) and its byte sum are cached per MsgType, so only the seq,
        SendingTime(52) and BodyLength(9) digits are summed here; the body's sum is cached in
        :class:`~fix_gateway.codec.Body`."""
        now = self.clock()
        st = self._stamp(now)
        seq = self._frame(msg_type, body, now, st, st.encode())
        self.counters["messages_out"] += 1
        return seq

    def _frame(self, msg_type: str, body: Body, now: int, st: str, stb: bytes) -> int:
        """Frame one message with the next MsgSeqNum(34) and SendingTime ``st`` (``stb``: its
        bytes, encoded once per batch), store it, queue it for :meth:`data_to_send`."""
        store = self.store
        assert store is not None
        seq = store.next_sender_seq
        fixed = self._fixed.get(msg_type)
        if fixed is None:
            fixed = self._fixed_header(msg_type)
        head, head_sum = fixed
        data = body.data
        var = b"%d\x0152=%s\x01" % (seq, stb)
        n = len(head) + len(var) + len(data)
        start = _STARTS.get(n)
        if start is None:
            start = _start(n)
        cs = (start[1] + head_sum + sum(var) + body.byte_sum) & 0xFF
        self._out.append(b"".join((start[0], head, var, data, TRAILERS[cs])))
        store.save(seq, msg_type, st, data)
        self._last_sent = now
        return seq

    def _fixed_header(self, msg_type: str) -> tuple[bytes, int]:
        assert self.config is not None
        head = f"35={msg_type}\x0149={self.config.our_comp_id}\x0156={self.config.peer_comp_id}\x0134=".encode(
            "latin-1"
        )
        self._fixed[msg_type] = (head, sum(head))
        return self._fixed[msg_type]

    def _send_admin(self, msg_type: str, fields: Iterable[tuple[int, Value]]) -> int:
        return self._send(msg_type, Body.from_fields(fields))

    def _reject(
        self, msg: Message, seq: int | None, reason: int, tag: int | None, text: str
    ) -> None:
        """Reject(3) (FIX 4.4 Vol. 2): RefSeqNum(45), RefTagID(371), RefMsgType(372), 373, 58."""
        fields: list[tuple[int, Value]] = [(T.RefSeqNum, seq if seq is not None else 0)]
        if tag is not None:
            fields.append((T.RefTagID, tag))
        fields += [
            (T.RefMsgType, msg.msg_type),
            (T.SessionRejectReason, reason),
            (T.Text, text[:200]),
        ]
        self._send_admin(T.REJECT, fields)
        self.counters["rejects_sent"] += 1
        log.info(
            "FIX reject sent",
            extra={"session": self.session_id, "ref_seq": seq, "reason": reason, "text": text},
        )

    def _logout_and_close(self, text: str) -> None:
        if self.store is not None and self.config is not None:
            self._send_admin(T.LOGOUT, [(T.Text, text)])
        self._close(text)

    # --- receiving -------------------------------------------------------------------------------
    def _handle(self, msg: Message) -> None:
        st = self.state
        if msg.begin_string != T.BEGIN_STRING:
            if st is State.AWAITING_LOGON:
                self._close(f"BeginString {msg.begin_string} not supported")
            else:
                self._logout_and_close(f"Incorrect BeginString {msg.begin_string}")
            return
        allowed = ALLOWED[st]
        if allowed is not None and msg.msg_type not in allowed:
            # the state table decides (states.py): before logon anything else disconnects
            if ON_UNEXPECTED[st] == "disconnect":
                self._close(f"{msg.msg_type!r} not allowed in state {st.value}")
            return
        if st is State.AWAITING_LOGON:
            if self.role is not Role.ACCEPTOR:
                self._close("data before connect(): an initiator speaks first")
                return
            self._on_logon_acceptor(msg)
            return
        try:
            seq = msg.require_int(T.MsgSeqNum)
        except FieldError:
            self._logout_and_close("MsgSeqNum(34) missing or malformed")
            return
        if not self._check_header(msg, seq):
            return
        assert self.store is not None
        expected = self.store.next_target_seq
        mt = msg.msg_type
        if st is State.LOGON_SENT:
            if mt == T.LOGON:
                self._on_logon_answer(msg, seq)
            else:
                self._on_logout(msg)
            return
        if mt == T.SEQUENCE_RESET and msg.get(T.GapFillFlag) != "Y":
            self._on_sequence_reset(msg, seq, gap_fill=False)
            return
        if seq > expected:
            self._on_seq_too_high(msg, seq)
        elif seq < expected:
            self._on_seq_too_low(msg, seq, expected)
        else:
            self._on_in_sequence(msg, seq)

    def _on_seq_too_high(self, msg: Message, seq: int) -> None:
        """A gap: a Logout is honoured, a ResendRequest served, then ours asks for the gap."""
        if msg.msg_type == T.LOGOUT:
            self._on_logout(msg)
            return
        if msg.msg_type == T.RESEND_REQUEST:
            self._on_resend_request(msg, seq)
        self._request_resend(seq)

    def _on_seq_too_low(self, msg: Message, seq: int, expected: int) -> None:
        """A possible duplicate is checked; any other message below the expected seq is fatal."""
        if msg.get(T.PossDupFlag) == "Y":
            self._check_poss_dup(msg, seq)
            return
        self.counters["seq_too_low"] += 1
        self._logout_and_close(f"MsgSeqNum too low, expecting {expected} but received {seq}")

    def _on_in_sequence(self, msg: Message, seq: int) -> None:
        """The expected seq: a garbled body is rejected (and counted), else dispatched."""
        assert self.store is not None
        if msg.error is not None:
            self.store.set_next_target(seq + 1)
            self._reject(msg, seq, msg.error.reason, msg.error.tag, msg.error.text)
            return
        if msg.get(T.PossDupFlag) == "Y" and not self._check_poss_dup(msg, seq, in_order=True):
            return
        if msg.msg_type != T.SEQUENCE_RESET:
            self.store.set_next_target(seq + 1)
        if self._resend_until is not None and seq >= self._resend_until:
            self._resend_until = None
        self._dispatch(msg, seq)

    def _check_header(self, msg: Message, seq: int) -> bool:
        """CompIDs (373=9) and SendingTime accuracy (373=10); a failure rejects then logs out."""
        assert self.config is not None and self.store is not None
        for tag, want in (
            (T.SenderCompID, self.config.peer_comp_id),
            (T.TargetCompID, self.config.our_comp_id),
        ):
            if msg.get(tag) != want:
                self.store.set_next_target(max(self.store.next_target_seq, seq + 1))
                self._reject(msg, seq, T.REJ_COMPID, tag, f"CompID problem: {tag}={msg.get(tag)}")
                self._logout_and_close("CompID problem")
                return False
        st = msg.get(T.SendingTime)
        if st is None:
            self.store.set_next_target(max(self.store.next_target_seq, seq + 1))
            self._reject(
                msg, seq, T.REJ_REQUIRED_TAG_MISSING, T.SendingTime, "SendingTime(52) missing"
            )
            return False
        try:
            sent = parse_utc_timestamp(st)
        except ValueError:
            self.store.set_next_target(max(self.store.next_target_seq, seq + 1))
            self._reject(
                msg, seq, T.REJ_INCORRECT_FORMAT, T.SendingTime, "SendingTime(52) malformed"
            )
            return False
        if abs(self.clock() - sent) > self.config.sending_time_tolerance * NS:
            self.store.set_next_target(max(self.store.next_target_seq, seq + 1))
            self._reject(
                msg, seq, T.REJ_SENDING_TIME, T.SendingTime, "SendingTime accuracy problem"
            )
            self._logout_and_close("SendingTime accuracy problem")
            return False
        return True

    def _check_poss_dup(self, msg: Message, seq: int, *, in_order: bool = False) -> bool:
        """PossDupFlag(43)=Y needs OrigSendingTime(122) <= SendingTime(52). True = process it."""
        assert self.store is not None
        orig = msg.get(T.OrigSendingTime)
        if orig is None:
            if msg.msg_type == T.SEQUENCE_RESET:
                return True  # some engines omit 122 on gap fills; FIX 4.4 makes it conditional
            if in_order:
                self.store.set_next_target(seq + 1)
            self._reject(
                msg,
                seq,
                T.REJ_REQUIRED_TAG_MISSING,
                T.OrigSendingTime,
                "OrigSendingTime(122) missing",
            )
            return False
        try:
            orig_ns = parse_utc_timestamp(orig)
            sent_ns = parse_utc_timestamp(msg.require(T.SendingTime))
        except ValueError:
            if in_order:
                self.store.set_next_target(seq + 1)
            self._reject(
                msg,
                seq,
                T.REJ_INCORRECT_FORMAT,
                T.OrigSendingTime,
                "OrigSendingTime(122) malformed",
            )
            return False
        if orig_ns > sent_ns:
            self._reject(
                msg, seq, T.REJ_SENDING_TIME, T.OrigSendingTime, "OrigSendingTime after SendingTime"
            )
            self._logout_and_close("SendingTime accuracy problem")
            return False
        return in_order

    def _request_resend(self, seq: int) -> None:
        assert self.store is not None
        if self._resend_until is not None and self.store.next_target_seq <= self._resend_until:
            return  # already asked for this gap
        self._resend_until = seq
        self._send_admin(
            T.RESEND_REQUEST, [(T.BeginSeqNo, self.store.next_target_seq), (T.EndSeqNo, 0)]
        )
        self.counters["resend_requests_sent"] += 1

    def _dispatch(self, msg: Message, seq: int) -> None:
        mt = msg.msg_type
        if mt == T.HEARTBEAT:
            return
        if mt == T.TEST_REQUEST:
            req = msg.get(T.TestReqID)
            if req is None:
                self._reject(
                    msg, seq, T.REJ_REQUIRED_TAG_MISSING, T.TestReqID, "TestReqID(112) missing"
                )
                return
            self._send_admin(T.HEARTBEAT, [(T.TestReqID, req)])
            return
        if mt == T.RESEND_REQUEST:
            self._on_resend_request(msg, seq)
            return
        if mt == T.REJECT:
            self.counters["rejects_received"] += 1
            self._events.append(RejectReceived(msg))
            return
        if mt == T.SEQUENCE_RESET:
            self._on_sequence_reset(msg, seq, gap_fill=True)
            return
        if mt == T.LOGOUT:
            self._on_logout(msg)
            return
        if mt == T.LOGON:
            self._logout_and_close("Logon(A) received on an active session")
            return
        if mt not in T.FIX44_TYPES:
            self._reject(msg, seq, T.REJ_INVALID_MSGTYPE, T.MsgType, f"invalid MsgType {mt}")
            return
        self._events.append(AppMessage(msg, msg.get(T.PossDupFlag) == "Y"))

    def _on_logout(self, msg: Message) -> None:
        if self.state is State.ACTIVE:
            self._send_admin(T.LOGOUT, [])
            self._to(Event.RECV_LOGOUT)
            self.close_reason = "logout by peer"
            self._events.append(Closed(f"logout by peer: {msg.get(T.Text) or ''}".rstrip(": ")))
        elif self.state in (State.LOGOUT_SENT, State.LOGON_SENT):
            self._to(Event.RECV_LOGOUT)
            self.close_reason = "logout completed"
            self._events.append(Closed(f"logout: {msg.get(T.Text) or 'completed'}"))

    def _on_sequence_reset(self, msg: Message, seq: int, *, gap_fill: bool) -> None:
        """SequenceReset(4): NewSeqNo(36) must not lower the expected number (373=5)."""
        assert self.store is not None
        try:
            new = msg.require_int(T.NewSeqNo)
        except FieldError as e:
            self._reject(msg, seq, e.reason, e.tag, e.text)
            return
        expected = self.store.next_target_seq
        if new < expected or (gap_fill and new == expected and new <= seq):
            self._reject(
                msg,
                seq,
                T.REJ_VALUE_INCORRECT,
                T.NewSeqNo,
                f"NewSeqNo {new} lower than expected {expected}",
            )
            return
        self.store.set_next_target(new)
        if self._resend_until is not None and new > self._resend_until:
            self._resend_until = None

    def _on_resend_request(self, msg: Message, seq: int) -> None:
        """Resend [7, 16] (16=0: through the last sent): application messages with 43=Y/122,
        admin messages and missing ones gap-filled with SequenceReset(4) 123=Y."""
        assert self.store is not None
        try:
            begin = msg.require_int(T.BeginSeqNo)
            end = msg.require_int(T.EndSeqNo)
        except FieldError as e:
            self._reject(msg, seq, e.reason, e.tag, e.text)
            return
        last = self.store.next_sender_seq - 1
        if end == 0 or end > last:
            end = last
        if begin < 1 or begin > end:
            if begin == last + 1:
                return
            self._reject(
                msg,
                seq,
                T.REJ_VALUE_INCORRECT,
                T.BeginSeqNo,
                f"BeginSeqNo {begin} outside 1..{last}",
            )
            return
        self.counters["resend_requests_received"] += 1
        # a later ResendRequest replaces one still being answered: the peer asks from where it is
        self._resend_next, self._resend_end = begin, end
        self.continue_resend()

    @property
    def resend_pending(self) -> bool:
        """A ResendRequest is being answered in steps (:meth:`continue_resend`)."""
        return self._resend_next <= self._resend_end

    def continue_resend(self) -> None:
        """Answer the next ``resend_chunk`` sequence numbers of the pending ResendRequest.

        Bounded and incremental (issue 12): ``7=1 16=0`` on a day's store was one synchronous
        replay of every message (~42 µs each: minutes with the loop blocked). The transport
        calls this again once the socket has drained (or the ticker does), so a long resend
        runs between the other sessions' traffic and never holds more than one chunk in memory.
        Numbers older than what the store keeps (``oldest_seq``) are one gap fill."""
        if not self.resend_pending or self.store is None:
            return
        if self.state not in (State.ACTIVE, State.LOGOUT_SENT):
            self._resend_next, self._resend_end = 1, 0
            return
        begin, end = self._resend_next, self._resend_end
        now_st = self._stamp(self.clock())
        oldest = self.store.oldest_seq()
        if begin < oldest:  # trimmed from the store: one gap fill over all of it
            top = min(oldest, end + 1)
            self._gap_fill(begin, top, now_st)
            begin = top
        stop = min(end, begin + self.resend_chunk - 1)
        stored = {m.seq: m for m in self.store.get(begin, stop)} if begin <= stop else {}
        gap_start: int | None = None
        for s in range(begin, stop + 1):
            m = stored.get(s)
            if m is None or m.msg_type in T.ADMIN_TYPES:
                if gap_start is None:
                    gap_start = s
                continue
            if gap_start is not None:
                self._gap_fill(gap_start, s, now_st)
                gap_start = None
            self._out.append(
                frame(m.msg_type, self._header(s, now_st, m.sending_time), Body.of(m.body))
            )
            self.counters["resent"] += 1
        if gap_start is not None:
            self._gap_fill(gap_start, stop + 1, now_st)
        self._resend_next = stop + 1
        self._last_sent = self.clock()

    def _gap_fill(self, seq: int, new_seq: int, now_st: str) -> None:
        body = encode_fields([(T.GapFillFlag, "Y"), (T.NewSeqNo, new_seq)])
        self._out.append(frame(T.SEQUENCE_RESET, self._header(seq, now_st, now_st), body))
        self.counters["gap_fills"] += 1

    # --- logon -----------------------------------------------------------------------------------
    def _on_logon_acceptor(self, msg: Message) -> None:
        if msg.error is not None:
            self._close(f"malformed Logon: {msg.error}")
            return
        peer, ours = msg.get(T.SenderCompID) or "", msg.get(T.TargetCompID) or ""
        assert self._resolve is not None
        resolved = self._resolve(peer, ours)
        if isinstance(resolved, str):
            self.counters["logons_refused"] += 1
            self._close(f"logon refused for {peer}->{ours}: {resolved}")
            return
        self.config, self.store = resolved
        cfg, store = self.config, self.store
        now = self.clock()
        try:
            seq = msg.require_int(T.MsgSeqNum)
            hb = msg.require_int(T.HeartBtInt)
            enc = msg.require_int(T.EncryptMethod)
            sent = parse_utc_timestamp(msg.require(T.SendingTime))
        except (FieldError, ValueError) as e:
            self._refuse(f"Logon rejected: {e}")
            return
        if enc != 0:
            self._refuse("Logon rejected: EncryptMethod(98) must be 0")
            return
        if not cfg.min_heartbeat <= hb <= cfg.max_heartbeat:
            self._refuse(
                f"Logon rejected: HeartBtInt(108) must be {cfg.min_heartbeat}..{cfg.max_heartbeat}"
            )
            return
        if abs(now - sent) > cfg.sending_time_tolerance * NS:
            self._refuse("Logon rejected: SendingTime accuracy problem")
            return
        problem = self._check_credentials(msg, seq, sent)
        if problem:
            self.counters["auth_failures"] += 1
            self._refuse(f"Logon rejected: {problem}")
            return
        if self._claim is not None and (taken := self._claim(cfg.session_id)):
            self._refuse(f"Logon rejected: {taken}")
            return
        reset = msg.get(T.ResetSeqNumFlag) == "Y"
        if reset:
            if seq != 1:
                self._refuse("Logon rejected: ResetSeqNumFlag=Y needs MsgSeqNum=1")
                return
            store.reset(now)
        elif cfg.reset_time and store.created_ns < last_reset_boundary(now, cfg.reset_time):
            store.reset(now)
        expected = store.next_target_seq
        if seq < expected:
            self._refuse(f"MsgSeqNum too low, expecting {expected} but received {seq}")
            return
        self.heartbeat = hb
        self._to(Event.RECV_LOGON)
        fields: list[tuple[int, Value]] = [(T.EncryptMethod, 0), (T.HeartBtInt, hb)]
        if reset:
            fields.append((T.ResetSeqNumFlag, "Y"))
        self._send_admin(T.LOGON, fields)
        self.counters["logons"] += 1
        self._events.append(LoggedOn(cfg.session_id, hb, reset))
        log.info(
            "FIX logon",
            extra={"session": cfg.session_id, "heartbeat": hb, "reset": reset, "seq": seq},
        )
        if seq > expected:
            self._request_resend(seq)
        else:
            store.set_next_target(seq + 1)

    def _refuse(self, text: str) -> None:
        """A refused Logon: Logout(5) with Text(58), then disconnect (FIX 4.4 Vol. 2 "Logon").

        The Logout is not stored and takes no sequence number of the session: whoever failed
        to log on must not grow the real peer's store nor move its sequence (issue 12)."""
        self.counters["logons_refused"] += 1
        assert self.store is not None
        now = self.clock()
        self._out.append(
            frame(
                T.LOGOUT,
                self._header(self.store.next_sender_seq, self._stamp(now)),
                Body.from_fields([(T.Text, text)]),
            )
        )
        self._last_sent = now
        self._to(Event.SEND_LOGOUT)
        self.close_reason = text
        self._events.append(Closed(text))
        log.info("FIX logon refused", extra={"session": self.session_id, "reason": text})

    def _check_credentials(self, msg: Message, seq: int, sent_ns: int) -> str | None:
        cfg = self.config
        assert cfg is not None and self.store is not None
        if cfg.username is not None and not hmac.compare_digest(
            (msg.get(T.Username) or "").encode(), cfg.username.encode()
        ):
            return "bad Username(553)"
        if cfg.password is not None and not hmac.compare_digest(
            (msg.get(T.Password) or "").encode(), cfg.password.encode()
        ):
            return "bad Password(554)"
        if cfg.hmac_key is not None:
            want = hmac_signature(
                cfg.hmac_key, msg.get(T.SendingTime) or "", seq, cfg.peer_comp_id, cfg.our_comp_id
            )
            if not hmac.compare_digest((msg.get(T.RawData) or "").encode(), want.encode()):
                return "bad signature in RawData(96)"
            # the signature covers SendingTime(52): a signed Logon is good once. One whose
            # SendingTime is not after the last accepted one is a replay (within the SendingTime
            # tolerance a captured Logon was otherwise good for 120 s)
            if sent_ns <= self.store.last_signed_logon_ns:
                return "signed Logon replayed (SendingTime not after the last signed Logon)"
            self.store.set_last_signed_logon(sent_ns)
        return None

    def _on_logon_answer(self, msg: Message, seq: int) -> None:
        """Initiator: the acceptor's Logon(A) answer."""
        assert self.store is not None and self.config is not None
        if msg.get(T.ResetSeqNumFlag) == "Y" and seq == 1:
            self.store.set_next_target(1)
        expected = self.store.next_target_seq
        if seq < expected:
            self._logout_and_close(f"MsgSeqNum too low, expecting {expected} but received {seq}")
            return
        self.heartbeat = msg.get_int(T.HeartBtInt) or self.heartbeat
        self._to(Event.RECV_LOGON)
        self._events.append(
            LoggedOn(self.config.session_id, self.heartbeat, msg.get(T.ResetSeqNumFlag) == "Y")
        )
        if seq > expected:
            self._request_resend(seq)
        else:
            self.store.set_next_target(seq + 1)


def initiator(
    sender: str = "CLIENT1",
    target: str = "MDGW",
    *,
    store: Store | None = None,
    clock: Callable[[], int] = time.time_ns,
    heartbeat: int = 30,
    reset: bool = True,
    logon_fields: Iterable[tuple[int, Value]] = (),
    timestamp: Callable[[int], str] = utc_timestamp,
) -> FixSession:
    """A client-side session (tests and benchmarks): our CompID ``sender``, the acceptor's ``target``."""
    cfg = SessionConfig(peer_comp_id=target, our_comp_id=sender, reset_time=None)
    return FixSession(
        role=Role.INITIATOR,
        config=cfg,
        store=store or MemoryStore(),
        clock=clock,
        heartbeat=heartbeat,
        reset_on_logon=reset,
        logon_fields=logon_fields,
        timestamp=timestamp,
    )
