"""The FIX tag=value codec from recorded byte sequences, including every garbling case."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fix_gateway import tags as T
from fix_gateway.codec import (
    Body,
    Message,
    Parser,
    encode,
    encode_fields,
    frame,
    parse_utc_timestamp,
    timestamper,
    utc_timestamp,
    utc_timestamp_us,
)
from fix_gateway.errors import FieldError, GarbledMessage
from fix_gateway.states import ParserState


def wire(text: str) -> bytes:
    """Recorded messages are written with '|' for SOH."""
    return text.replace("|", "\x01").encode()


# A widely published FIX Logon (BodyLength 65, CheckSum 062), as recorded.
RECORDED_LOGON = wire(
    "8=FIX.4.2|9=65|35=A|49=SERVER|56=CLIENT|34=177|52=20090107-18:15:16|98=0|108=30|10=062|"
)
HB = wire("8=FIX.4.4|9=54|35=0|49=CLIENT1|56=MDGW|34=2|52=20261124-07:00:00.000|10=222|")


def parse(
    data: bytes, chunks: list[int] | None = None
) -> tuple[list[Message], list[GarbledMessage], Parser]:
    p = Parser()
    if chunks is None:
        p.receive_data(data)
    else:
        pos = 0
        for n in chunks:
            p.receive_data(data[pos : pos + n])
            pos += n
        p.receive_data(data[pos:])
    ev = p.events_received()
    return (
        [e for e in ev if isinstance(e, Message)],
        [e for e in ev if isinstance(e, GarbledMessage)],
        p,
    )


def test_recorded_logon_decodes_and_reencodes_byte_for_byte() -> None:
    msgs, bad, _ = parse(RECORDED_LOGON)
    assert not bad and len(msgs) == 1
    m = msgs[0]
    assert (m.begin_string, m.msg_type, m.get(34), m.get(108)) == ("FIX.4.2", "A", "177", "30")
    assert encode("A", m.fields, begin_string="FIX.4.2") == RECORDED_LOGON


def test_recorded_heartbeat_is_valid() -> None:
    msgs, bad, _ = parse(HB)
    assert not bad and msgs[0].msg_type == "0" and msgs[0].raw == HB


def test_body_length_and_checksum_exact() -> None:
    data = encode("0", [(49, "A"), (56, "B"), (34, 1), (52, "20260101-00:00:00.000")])
    body = data[data.index(b"35=") : data.index(b"10=")]
    assert int(data.split(b"\x01")[1][2:]) == len(body)
    assert data.endswith(b"10=%03d\x01" % (sum(data[: data.index(b"10=")]) % 256))
    assert data.startswith(b"8=FIX.4.4\x019=") and data.split(b"\x01")[2].startswith(b"35=")


def test_frame_with_cached_body_sum_equals_plain_encode() -> None:
    fields: list[tuple[int, str | int]] = [(262, "req1"), (268, 1), (279, 0), (269, 0)]
    fields += [(270, "100.5"), (271, "2")]
    head = encode_fields([(49, "MDGW"), (56, "C"), (34, 9), (52, "20260101-00:00:00.000")])
    body = Body.from_fields(fields)
    assert frame("X", head, body) == encode(
        "X", [(49, "MDGW"), (56, "C"), (34, 9), (52, "20260101-00:00:00.000"), *fields]
    )


@pytest.mark.parametrize("split", [1, 2, 3, 7, 11, 64])
def test_framing_across_reads(split: int) -> None:
    data = HB + RECORDED_LOGON + HB
    msgs, bad, p = parse(data, [split] * (len(data) // split))
    assert not bad and [m.msg_type for m in msgs] == ["0", "A", "0"] and p.buffered == 0


def test_every_byte_separately() -> None:
    p = Parser()
    for b in HB + HB:
        p.receive_data(bytes([b]))
    assert [e.msg_type for e in p.events_received() if isinstance(e, Message)] == ["0", "0"]


def test_partial_message_waits() -> None:
    msgs, bad, p = parse(HB[:-3])
    assert not msgs and not bad and p.buffered == len(HB) - 3


GARBLED = {
    "not 8= first": wire("9=54|35=0|49=CLIENT1|10=000|"),
    "BeginString not FIX": wire("8=XYZ.4.4|9=5|35=0|10=000|"),
    "9 not second": wire(
        "8=FIX.4.4|35=0|9=54|49=CLIENT1|56=MDGW|34=2|52=20261124-07:00:00.000|10=222|"
    ),
    "9 not a number": wire(
        "8=FIX.4.4|9=5x|35=0|49=CLIENT1|56=MDGW|34=2|52=20261124-07:00:00.000|10=222|"
    ),
    "BodyLength too small": HB.replace(b"9=54", b"9=50"),
    "BodyLength too large": HB.replace(b"9=54", b"9=58"),
    "CheckSum wrong": HB.replace(b"10=222", b"10=223"),
    "CheckSum not digits": HB.replace(b"10=222", b"10=2x2"),
    "CheckSum two digits": wire(
        "8=FIX.4.4|9=54|35=0|49=CLIENT1|56=MDGW|34=2|52=20261124-07:00:00.000|10=05|"
    ),
    "35 not third": wire(
        "8=FIX.4.4|9=54|49=CLIENT1|35=0|56=MDGW|34=2|52=20261124-07:00:00.000|10=222|"
    ),
    "SOH missing at end": HB[:-1] + b"X",
    "length above bound": wire("8=FIX.4.4|9=99999999|35=0|"),
}


@pytest.mark.parametrize("case", sorted(GARBLED))
def test_garbled_is_dropped_counted_and_next_message_parses(case: str) -> None:
    data = GARBLED[case] + HB
    msgs, bad, p = parse(data)
    assert len(bad) == 1 and p.garbled == 1, bad
    assert [m.raw for m in msgs] == [HB]
    assert p.state is ParserState.READING and p.buffered == 0


@pytest.mark.parametrize("case", sorted(GARBLED))
def test_garbled_byte_by_byte_resyncs(case: str) -> None:
    data = GARBLED[case] + HB
    msgs, bad, p = parse(data, [1] * len(data))
    assert len(bad) >= 1 and [m.raw for m in msgs] == [HB]


def test_garbage_between_messages_and_discarding_state() -> None:
    p = Parser()
    p.receive_data(HB + b"\x01\x01noise noise")
    assert p.state is ParserState.DISCARDING
    p.receive_data(b" more\x01" + HB)
    ev = p.events_received()
    assert [type(e).__name__ for e in ev] == ["Message", "GarbledMessage", "Message"]
    assert p.garbled == 1


def test_resync_marker_split_across_reads() -> None:
    p = Parser()
    p.receive_data(b"junk\x018=F")
    p.receive_data(HB[3:])
    ev = p.events_received()
    assert isinstance(ev[0], GarbledMessage) and isinstance(ev[1], Message)


@pytest.mark.parametrize(
    ("field", "reason", "tag"),
    [
        ("58=", T.REJ_TAG_WITHOUT_VALUE, 58),
        ("58", T.REJ_TAG_WITHOUT_VALUE, 58),
        ("x8=a", T.REJ_INVALID_TAG, None),
        ("058=a", T.REJ_INVALID_TAG, None),
        ("10=123", T.REJ_OUT_OF_ORDER, 10),
    ],
)
def test_well_framed_bad_field_is_delivered_with_error(
    field: str, reason: int, tag: int | None
) -> None:
    inner = f"49=CLIENT1|56=MDGW|34=2|52=20261124-07:00:00.000|{field}|"
    data = encode_fields([]) + frame("0", b"", wire(inner))
    msgs, bad, _ = parse(data)
    assert not bad and msgs[0].error is not None
    assert (msgs[0].error.reason, msgs[0].error.tag) == (reason, tag)


def test_repeating_group() -> None:
    m = Message(
        "V",
        [
            (262, "r"),
            (267, "2"),
            (269, "0"),
            (269, "1"),
            (146, "2"),
            (55, "BTC-USD"),
            (55, "ETH-USD"),
        ],
    )
    assert m.group(267, frozenset({269})) == [{269: "0"}, {269: "1"}]
    assert [e[55] for e in m.group(146, frozenset({55, 48, 22}))] == ["BTC-USD", "ETH-USD"]
    entries = Message(
        "X", [(268, "2"), (279, "0"), (269, "0"), (270, "1"), (279, "2"), (269, "1"), (270, "2")]
    )
    assert entries.group(268, frozenset({279, 269, 270})) == [
        {279: "0", 269: "0", 270: "1"},
        {279: "2", 269: "1", 270: "2"},
    ]


def test_repeating_group_count_mismatch() -> None:
    m = Message("V", [(267, "3"), (269, "0"), (269, "1"), (146, "1"), (55, "BTC-USD")])
    with pytest.raises(FieldError) as e:
        m.group(267, frozenset({269}))
    assert e.value.reason == T.REJ_GROUP_COUNT and e.value.tag == 267


def test_int_field_format_error() -> None:
    with pytest.raises(FieldError) as e:
        Message("0", [(34, "abc")]).get_int(34)
    assert e.value.reason == T.REJ_INCORRECT_FORMAT


def test_utc_timestamp_round_trip() -> None:
    ns = 1_795_503_072_123_000_000
    assert utc_timestamp(ns) == "20261124-06:51:12.123"
    assert parse_utc_timestamp("20261124-06:51:12.123") == ns
    assert parse_utc_timestamp("20261124-06:51:12") == ns - 123_000_000
    for bad in ("2026-11-24T06:51:12", "20261124-06:51:12.", "20261124-06:51:12.12a"):
        with pytest.raises(ValueError):
            parse_utc_timestamp(bad)


def test_timestamp_at_each_precision() -> None:
    """millis: FIX 4.4's ``.sss``; micros: ``.ssssss`` (QuickFIX/J's TimeStampPrecision=MICROS);
    both truncate (never a time later than the clock read) and parse back to what they show."""
    ns = 1_795_503_072_123_456_789
    ms, us = timestamper("millis")(ns), timestamper("micros")(ns)
    assert ms == "20261124-06:51:12.123" and us == "20261124-06:51:12.123456"
    assert parse_utc_timestamp(ms) == 1_795_503_072_123_000_000
    assert parse_utc_timestamp(us) == 1_795_503_072_123_456_000
    # the second's text is cached: a stamp in the next second is not the previous one's
    assert utc_timestamp_us(ns + 10**9) == "20261124-06:51:13.123456"
    assert utc_timestamp_us(1_795_503_072_000_000_999) == "20261124-06:51:12.000000"
    assert utc_timestamp(ns - 10**9) == "20261124-06:51:11.123"
    with pytest.raises(ValueError, match="millis, micros"):
        timestamper("nanos")


# --- fuzz ---------------------------------------------------------------------------------------
valid_fields = st.lists(
    st.tuples(
        st.integers(min_value=11, max_value=9999).filter(lambda t: t not in (35, 8, 9, 10)),
        st.text(
            alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12
        ),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=40), max_size=10))
def test_fuzz_parser_never_raises_and_always_resyncs(noise: bytes, cuts: list[int]) -> None:
    """Whatever precedes it, a valid message that follows a SOH is always recovered."""
    data = noise + b"\x01" + HB
    p = Parser()
    pos = 0
    for c in cuts:
        p.receive_data(data[pos : pos + c])
        pos += c
    p.receive_data(data[pos:])
    ev = p.events_received()
    assert all(isinstance(e, Message | GarbledMessage) for e in ev)
    assert p.buffered < len(HB) + 300
    msgs = [e for e in ev if isinstance(e, Message)]
    if msgs:
        assert msgs[-1].raw == HB or b"8=FIX" in noise


@settings(max_examples=200, deadline=None)
@given(valid_fields, st.sampled_from(["0", "1", "A", "V", "X"]))
def test_fuzz_round_trip(fields: list[tuple[int, str]], msg_type: str) -> None:
    data = encode(msg_type, fields)
    msgs, bad, _ = parse(data, [5] * (len(data) // 5))
    assert (
        not bad
        and msgs[0].msg_type == msg_type
        and msgs[0].fields == fields
        and msgs[0].error is None
    )


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(HB) - 1), st.integers(min_value=0, max_value=255))
def test_fuzz_single_byte_corruption_is_never_accepted_silently(pos: int, value: int) -> None:
    """Any one-byte change of a message is either detected (garbled) or changes nothing."""
    corrupted = bytearray(HB)
    corrupted[pos] = value
    msgs, bad, _ = parse(bytes(corrupted) + HB)
    if bytes(corrupted) == HB:
        assert len(msgs) == 2
    else:
        assert msgs[-1].raw == HB
        assert (
            not any(m.raw == bytes(corrupted) and m.error is None for m in msgs[:-1]) or bad == []
        )
