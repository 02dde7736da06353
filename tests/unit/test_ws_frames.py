"""RFC 6455 frames as the gateway's own server reads them (gateway_ws/frames.py), no socket."""

from __future__ import annotations

import os
import struct

import pytest

from gateway_ws.frames import (
    CLOSE_INVALID_DATA,
    CLOSE_NO_STATUS,
    CLOSE_PROTOCOL,
    CLOSE_TOO_BIG,
    CloseFrame,
    FrameError,
    FrameReader,
    Message,
    Ping,
    Pong,
    close_frame,
    parse_close,
    unmask,
)


def masked(payload: bytes, opcode: int = 0x1, fin: bool = True, key: bytes | None = None) -> bytes:
    """A client frame (§5.2) masked with ``key`` (random by default)."""
    key = os.urandom(4) if key is None else key
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body


def test_a_masked_text_frame_is_one_message_in_any_chunking() -> None:
    raw = masked('{"type":"ping","note":"é"}'.encode())
    whole = FrameReader(1 << 20).feed(raw)
    assert whole == [Message('{"type":"ping","note":"é"}', False)]
    r = FrameReader(1 << 20)
    got = []
    for i in range(len(raw)):  # byte by byte: nothing until the last byte
        got += r.feed(raw[i : i + 1])
        assert got == ([] if i < len(raw) - 1 else whole)


def test_lengths_of_16_and_64_bits_and_binary_messages() -> None:
    mid, big = os.urandom(300), os.urandom(70_000)
    evs = FrameReader(1 << 20).feed(masked(mid, 0x2) + masked(big, 0x2))
    assert evs == [Message(mid, True), Message(big, True)]


def test_fragments_are_joined_and_control_frames_pass_between_them() -> None:
    r = FrameReader(1 << 20)
    evs = r.feed(
        masked(b'{"type":', 0x1, fin=False)
        + masked(b"hb", 0x9)
        + masked(b'"ping"', 0x0, fin=False)
        + masked(b"}", 0x0)
    )
    assert evs == [Ping(b"hb"), Message('{"type":"ping"}', False)]


def test_pong_and_close_frames() -> None:
    evs = FrameReader(100).feed(masked(b"x", 0xA) + masked(struct.pack("!H", 4001) + b"bye", 0x8))
    assert evs == [Pong(b"x"), CloseFrame(4001, "bye")]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (bytes((0x81, 0x02)) + b"hi", CLOSE_PROTOCOL),  # unmasked client frame (§5.1)
        (bytes((0xC1, 0x80)) + b"\0\0\0\0", CLOSE_PROTOCOL),  # RSV1 without an extension
        (masked(b"", 0x3), CLOSE_PROTOCOL),  # reserved opcode
        (masked(b"x" * 126, 0x9), CLOSE_PROTOCOL),  # control frame over 125 bytes
        (masked(b"x", 0x9, fin=False), CLOSE_PROTOCOL),  # fragmented control frame
        (masked(b"x", 0x0), CLOSE_PROTOCOL),  # continuation without a message
        (masked(b"a", 0x1, fin=False) + masked(b"b", 0x1), CLOSE_PROTOCOL),  # new message inside
        (masked(b"\xff\xfe"), CLOSE_INVALID_DATA),  # text that is not UTF-8 (§8.1)
    ],
)
def test_protocol_violations_name_their_close_code(raw: bytes, code: int) -> None:
    with pytest.raises(FrameError) as exc:
        FrameReader(1 << 20).feed(raw)
    assert exc.value.code == code


def test_a_message_over_the_limit_is_refused_on_its_header() -> None:
    """1009 as soon as the length is known: the megabytes behind it are never buffered."""
    r = FrameReader(1000)
    head = masked(b"x" * 1001)[:8]  # 2-byte header, 16-bit length, masking key
    with pytest.raises(FrameError) as exc:
        r.feed(head)
    assert exc.value.code == CLOSE_TOO_BIG
    # the limit is per message: fragments add up
    r = FrameReader(1000)
    r.feed(masked(b"x" * 600, 0x1, fin=False))
    with pytest.raises(FrameError) as exc:
        r.feed(masked(b"x" * 600, 0x0))
    assert exc.value.code == CLOSE_TOO_BIG


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", CLOSE_PROTOCOL),  # one byte
        (struct.pack("!H", 999), CLOSE_PROTOCOL),
        (struct.pack("!H", 1005), CLOSE_PROTOCOL),  # never sent on the wire (§7.4.1)
        (struct.pack("!H", 2000), CLOSE_PROTOCOL),
        (struct.pack("!H", 1000) + b"\xff", CLOSE_INVALID_DATA),
    ],
)
def test_bad_close_payloads(payload: bytes, code: int) -> None:
    with pytest.raises(FrameError) as exc:
        parse_close(payload)
    assert exc.value.code == code


def test_close_payloads_and_frames_round_trip() -> None:
    assert parse_close(b"") == CloseFrame(CLOSE_NO_STATUS, "")
    assert parse_close(struct.pack("!H", 1013) + b"later") == CloseFrame(1013, "later")
    f = close_frame(4001, "slow consumer")
    assert f[0] == 0x88 and parse_close(f[2:]) == CloseFrame(4001, "slow consumer")
    assert close_frame(CLOSE_NO_STATUS) == b"\x88\x00"
    long = close_frame(1008, "é" * 100)  # 200 bytes of reason: cut to 123, not mid-character
    assert len(long) <= 2 + 125
    assert parse_close(long[2:]).reason == "é" * 61


def test_unmask_is_its_own_inverse() -> None:
    data, key = os.urandom(1001), os.urandom(4)
    once = unmask(data, key)
    assert once != data and unmask(once, key) == data
    assert once == bytes(b ^ key[i % 4] for i, b in enumerate(data))
