"""RFC 6455 frames as a server reads and answers them, sans I/O (no socket, no loop).

:class:`FrameReader` turns the bytes a client sends into whole messages and control frames:
``feed(data)`` returns :class:`Message`, :class:`Ping`, :class:`Pong` and :class:`CloseFrame`
events and raises :class:`FrameError` (with the close code to answer) when the client broke
the protocol. The asyncio shell (gateway_ws/listener.py) writes the answers built by
:func:`control_frame` / :func:`close_frame`; data frames are built once per message by
:func:`gateway_ws.fanout.frame`.

The rules, as python-websockets (the fallback server, ``MD_WS_SERVER=websockets``) applies
them, so a client sees the same close codes from either:

- every client frame is masked (§5.1), else 1002; RSV bits are 0 (no extension is
  negotiated here, §5.2), else 1002; opcodes other than 0, 1, 2, 8, 9, 10 are 1002;
- control frames are at most 125 bytes and never fragmented (§5.5), else 1002; a
  continuation without a started message, or a new message inside one, is 1002 (§5.4);
- a message (all its fragments) above ``max_size`` is 1009 (§7.4.1), checked on the frame
  header, before its payload is buffered;
- a text message that is not UTF-8 is 1007 (§8.1);
- a close frame's code must be one a peer may send (§7.4.1-7.4.2) and its reason UTF-8,
  else 1002; a 1-byte close payload is 1002 (§5.5.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gateway_ws.errors import GatewayWsError

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_DATA = (OP_TEXT, OP_BINARY)
_CONTROL = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL = 1002
CLOSE_NO_STATUS = 1005  # never on the wire: "the close frame had no code" (§7.1.5)
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011  # websockets' code for a keepalive ping timeout, kept for the same clients

# codes a peer may put in a close frame (§7.4.1; 1012-1014 registered with IANA since)
_SENDABLE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


class FrameError(GatewayWsError):
    """The client broke RFC 6455: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message (fragments joined, unmasked); ``text`` is validated UTF-8."""

    payload: bytes | str
    binary: bool


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseFrame:
    """The client's close frame; ``code`` is CLOSE_NO_STATUS when it carried none."""

    code: int
    reason: str


Event = Message | Ping | Pong | CloseFrame


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte masking key (§5.3), as one big-integer operation (no Python loop)."""
    n = len(payload)
    if n == 0 or mask == b"\x00\x00\x00\x00":
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """An unmasked server control frame (ping, pong, close): payload at most 125 bytes."""
    return bytes((0x80 | opcode, len(payload))) + payload[:125]


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and ``reason`` (truncated to fit 125 bytes, §5.5)."""
    if code == CLOSE_NO_STATUS:
        return control_frame(OP_CLOSE)
    body = reason.encode()[:123]
    while True:  # never cut a UTF-8 sequence in two
        try:
            body.decode()
            break
        except UnicodeDecodeError:
            body = body[:-1]
    return control_frame(OP_CLOSE, struct.pack("!H", code) + body)


def parse_close(payload: bytes) -> CloseFrame:
    """A close frame's payload (§5.5.1): empty, or a sendable code and a UTF-8 reason."""
    if not payload:
        return CloseFrame(CLOSE_NO_STATUS, "")
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL, "close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if code not in _SENDABLE and not 3000 <= code <= 4999:
        raise FrameError(CLOSE_PROTOCOL, f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None
    return CloseFrame(code, reason)


class FrameReader:
    """A client's frames, from bytes in any chunking; see the module docstring."""

    __slots__ = ("max_size", "_buf", "_frag_op", "_frags", "_frag_len")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size  # bytes per message, all fragments together
        self._buf = b""
        self._frag_op: int | None = None  # opcode of the message being fragmented
        self._frags: list[bytes] = []
        self._frag_len = 0

    def feed(self, data: bytes) -> list[Event]:
        """Every complete frame in ``data`` (and what was left of earlier calls)."""
        buf = self._buf + data if self._buf else data
        out: list[Event] = []
        i, n = 0, len(buf)
        while n - i >= 2:
            b0, b1 = buf[i], buf[i + 1]
            ln = b1 & 0x7F
            hl = 2
            if ln == 126:
                if n - i < 4:
                    break
                (ln,) = struct.unpack_from("!H", buf, i + 2)
                hl = 4
            elif ln == 127:
                if n - i < 10:
                    break
                (ln,) = struct.unpack_from("!Q", buf, i + 2)
                hl = 10
            op = b0 & 0x0F
            self._check_header(b0, b1, op, ln)
            if n - i < hl + 4 + ln:
                break
            mask = buf[i + hl : i + hl + 4]
            payload = unmask(buf[i + hl + 4 : i + hl + 4 + ln], mask)
            i += hl + 4 + ln
            ev = self._frame(op, bool(b0 & 0x80), payload)
            if ev is not None:
                out.append(ev)
        self._buf = buf[i:] if i < n else b""
        return out

    def _check_header(self, b0: int, b1: int, op: int, ln: int) -> None:
        """Everything that can be refused before the payload has arrived."""
        if b0 & 0x70:
            raise FrameError(CLOSE_PROTOCOL, "reserved bits must be 0")
        if not b1 & 0x80:
            raise FrameError(CLOSE_PROTOCOL, "incorrect masking: client frames are masked")
        if op in _CONTROL:
            if not b0 & 0x80:
                raise FrameError(CLOSE_PROTOCOL, "fragmented control frame")
            if ln > 125:
                raise FrameError(CLOSE_PROTOCOL, "control frame too long")
            return
        if op not in _DATA and op != OP_CONT:
            raise FrameError(CLOSE_PROTOCOL, f"invalid opcode {op}")
        total = ln + (self._frag_len if op == OP_CONT else 0)
        if total > self.max_size:
            raise FrameError(CLOSE_TOO_BIG, f"message over {self.max_size} bytes")

    def _frame(self, op: int, fin: bool, payload: bytes) -> Event | None:
        if op == OP_PING:
            return Ping(payload)
        if op == OP_PONG:
            return Pong(payload)
        if op == OP_CLOSE:
            return parse_close(payload)
        if op == OP_CONT:
            if self._frag_op is None:
                raise FrameError(CLOSE_PROTOCOL, "unexpected continuation frame")
            self._frags.append(payload)
            self._frag_len += len(payload)
            if not fin:
                return None
            op, payload = self._frag_op, b"".join(self._frags)
            self._frag_op, self._frags, self._frag_len = None, [], 0
        elif self._frag_op is not None:
            raise FrameError(CLOSE_PROTOCOL, "expected a continuation frame")
        elif not fin:
            self._frag_op, self._frags, self._frag_len = op, [payload], len(payload)
            return None
        if op == OP_BINARY:
            return Message(payload, True)
        try:
            return Message(payload.decode(), False)
        except UnicodeDecodeError:
            raise FrameError(CLOSE_INVALID_DATA, "invalid UTF-8 in a text frame") from None
