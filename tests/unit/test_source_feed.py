"""The source feed (core/input_feed.py, aggregator/source_feed.py): the frame contract, which
pushed records a leader may apply (exactly the next offset, publishing only), the byte check
against Kafka's copy, and a publisher pushing only what Kafka acknowledged, with its offset."""

from __future__ import annotations

import asyncio
from collections import namedtuple

import pytest
from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from aggregator import events as ev
from aggregator import source_feed
from aggregator.source_feed import IN_STEP_S, SOURCE_FEED, SourceFeedMismatch, SourceIntake
from aggregator.sources.publish import EventPublisher
from core.feed import FeedClient
from core.input_feed import HEAD, InputFrameError, decode_input_frame, encode_input_frame
from core.kafka_rd import Record
from core.settings import Settings
from tests.conftest import free_port
from tests.helpers import AckProducer

TOPIC = "md.in"


def rec(p: int, offset: int, value: bytes = b"v") -> Record:
    return Record(TOPIC, p, offset, 1_000, b"BTC-USD", value)


def count(result: str) -> float:
    return float(SOURCE_FEED.labels(result)._value.get())  # noqa: SLF001 - the counter's value


@given(
    topic=st.text(min_size=1, max_size=40),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**63 - 1),
    ts=st.integers(-(2**63), 2**63 - 1),
    key=st.one_of(st.none(), st.binary(min_size=1, max_size=64)),
    value=st.binary(max_size=2048),
)
def test_frames_round_trip(
    topic: str, partition: int, offset: int, ts: int, key: bytes | None, value: bytes
) -> None:
    raw = encode_input_frame(topic, partition, offset, ts, key, value)
    assert decode_input_frame(raw) == Record(topic, partition, offset, ts, key, value)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "shorter than its header"),
        (HEAD.pack(1, 2, 0, 10, 0) + b"md", "shorter than its topic"),
        (HEAD.pack(-1, 2, 0, 2, 0) + b"md", "offset -1"),
        (HEAD.pack(1, 2, -3, 2, 0) + b"md", "partition -3"),
        (HEAD.pack(1, 2, 0, 2, 0) + b"\xff\xfe", "not UTF-8"),
    ],
)
def test_a_broken_frame_is_refused_with_the_reason(raw: bytes, why: str) -> None:
    with pytest.raises(InputFrameError, match=why):
        decode_input_frame(raw)


def test_only_the_next_offset_of_a_partition_is_taken() -> None:
    intake = SourceIntake(TOPIC, [])
    before = {r: count(r) for r in ("taken", "late", "ahead", "foreign", "standing_by")}
    positions = {0: 9, 1: 4}
    recs = [rec(0, 10), rec(0, 11), rec(0, 13), rec(1, 4), rec(1, 5), rec(2, 0), rec(0, 12)]
    batch = intake.take(recs, positions, publishing=True)
    # 0: 10 and 11 chain; 13 is past a hole, and 12 came after it was refused: Kafka brings both
    assert [r.offset for r in batch[TopicPartition(TOPIC, 0)]] == [10, 11, 12]
    assert [r.offset for r in batch[TopicPartition(TOPIC, 1)]] == [5]  # 4 was applied already
    assert TopicPartition(TOPIC, 2) not in batch  # not a partition this instance reads
    assert count("taken") - before["taken"] == 4
    assert count("ahead") - before["ahead"] == 1
    assert count("late") - before["late"] == 1
    assert count("foreign") - before["foreign"] == 1
    assert positions == {0: 9, 1: 4}  # the caller's _process moves them, not take
    assert intake.take([rec(0, 10)], positions, publishing=False) == {}
    assert count("standing_by") - before["standing_by"] == 1


def test_kafkas_copy_must_be_the_pushed_bytes() -> None:
    intake = SourceIntake(TOPIC, [])
    intake.take([rec(0, 10, b"a"), rec(0, 11, b"b")], {0: 9}, publishing=True)
    intake.verify(0, 10, b"a")
    intake.verify(3, 10, b"zzz")  # nothing was taken there: nothing to compare
    with pytest.raises(SourceFeedMismatch, match="md.in/0@11"):
        intake.verify(0, 11, b"B")
    assert not intake.taken[0]


def test_a_partition_is_in_step_while_its_pushes_come_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What lets the leader pace its Kafka reads of a partition (``Aggregator._pace_input``)."""
    clock = [100.0]
    monkeypatch.setattr(source_feed.time, "monotonic", lambda: clock[0])
    intake = SourceIntake(TOPIC, [])
    assert not intake.in_step(0, 100.0)  # nothing pushed yet
    intake.take([rec(0, 10), rec(1, 4)], {0: 9, 1: 4}, publishing=True)  # 1@4: late, not taken
    assert intake.in_step(0, 100.5) and not intake.in_step(1, 100.5)
    assert not intake.in_step(0, 100 + IN_STEP_S)  # pushes stopped coming
    clock[0] = 102.0
    intake.take([rec(0, 12)], {0: 10}, publishing=True)  # past a hole: 11 was never pushed
    clock[0] = 102.1
    intake.take([rec(0, 11)], {0: 10}, publishing=True)  # Kafka filled it: taken again
    assert not intake.in_step(0, 102.5)  # the hole is recent
    clock[0] = 102 + IN_STEP_S
    intake.take([rec(0, 13)], {0: 12}, publishing=True)
    assert intake.in_step(0, 102 + IN_STEP_S)  # a step after the hole, pushes whole since
    asyncio.run(intake.disconnect())  # a new connection proves nothing yet
    assert not intake.in_step(0, 102 + IN_STEP_S)


def test_frames_that_are_not_records_of_the_input_topic_are_dropped() -> None:
    intake = SourceIntake(TOPIC, [])
    malformed, foreign = count("malformed"), count("foreign")
    intake.on_frame(b"\x00\x01")
    intake.on_frame(encode_input_frame("other.in", 0, 1, 1, None, b"x"))
    assert intake.pending == [] and not intake.wake.is_set()
    assert count("malformed") == malformed + 1 and count("foreign") == foreign + 1
    intake.on_frame(encode_input_frame(TOPIC, 0, 1, 5, b"k", b"x"))
    assert intake.wake.is_set()
    assert intake.drain() == [Record(TOPIC, 0, 1, 5, b"k", b"x")]
    assert not intake.wake.is_set() and intake.pending == []


Meta = namedtuple("Meta", "topic partition offset timestamp")


async def test_a_publisher_pushes_what_kafka_acknowledged_with_its_offset() -> None:
    port = free_port()
    pub = EventPublisher(Settings(extra={"MD_SOURCE_FEED_PORT": str(port)}), "test")
    assert pub.feed is not None
    await pub.feed.start()
    prod = AckProducer()
    pub.producer = prod
    got: list[bytes] = []
    client = FeedClient([("127.0.0.1", port)], got.append)
    client.start()
    try:
        for _ in range(100):
            if pub.feed.receivers:
                break
            await asyncio.sleep(0.02)
        await pub.publish_many([ev.reset("BTC-USD", 1, "a")])
        await pub.publish_many([ev.reset("ETH-USD", 2, "b")])
        prod.futures[1].set_exception(RuntimeError("not acknowledged"))
        prod.futures[0].set_result(Meta(TOPIC, 3, 41, 1234))
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # a push of the failed send would have come by now
    finally:
        await client.stop()
        await pub.feed.stop()
    assert len(got) == 1
    r = decode_input_frame(got[0])
    assert (r.topic, r.partition, r.offset, r.timestamp, r.key) == (TOPIC, 3, 41, 1234, b"BTC-USD")
    assert ev.decode_record(r.value or b"")[0].symbol == "BTC-USD"


def test_a_bad_source_feed_address_refuses_to_start() -> None:
    from aggregator.service import ServiceConfig
    from core.errors import ConfigError

    ok = ServiceConfig.from_settings(Settings(extra={"MD_AGG_SOURCE_FEED": "h:1, 127.0.0.1:8033"}))
    assert ok.source_feed == (("h", 1), ("127.0.0.1", 8033))
    with pytest.raises(ConfigError, match="MD_AGG_SOURCE_FEED"):
        ServiceConfig.from_settings(Settings(extra={"MD_AGG_SOURCE_FEED": "simulator"}))
