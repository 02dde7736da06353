"""The source feed against a real broker: the leader applies pushed records, ignores pushes that
are not records or not the next offset, and stops when Kafka's copy of a record it took from a
push differs (core/input_feed.py, aggregator/source_feed.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from aggregator import events as ev
from aggregator.service import INPUT_PACED, Aggregator, ServiceConfig
from aggregator.source_feed import SOURCE_FEED
from aggregator.sources.flow import OrderFlow
from aggregator.sources.publish import EventPublisher
from core.codec import now_ns
from core.feed import FeedServer
from core.input_feed import encode_input_frame
from core.kafka import make_producer
from core.settings import Settings
from core.topics import Topics
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def count(result: str) -> float:
    return float(SOURCE_FEED.labels(result)._value.get())  # noqa: SLF001 - the counter's value


async def until(cond: object, what: str, limit_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not cond():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def leader_on_a_hand_written_feed(
    settings: Settings, **cfg: Any
) -> AsyncIterator[tuple[Aggregator, FeedServer, asyncio.Task[None]]]:
    """A real aggregator leading, connected to a source feed that the test writes by hand;
    stopped (or its own exit awaited) afterwards."""
    port = free_port()
    fake = FeedServer("127.0.0.1", port)
    await fake.start()
    agg = Aggregator(
        settings,
        dataclasses.replace(
            ServiceConfig.from_settings(settings), source_feed=(("127.0.0.1", port),), **cfg
        ),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(agg.run(stop))
    try:
        await until(lambda: agg._publishing and fake.receivers, "never led with the feed")  # noqa: SLF001
        yield agg, fake, task
    finally:
        stop.set()
        await fake.stop()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task


async def test_a_pushed_record_that_kafka_contradicts_stops_the_leader(settings: Settings) -> None:
    pub = EventPublisher(settings, "test")  # no feed of its own: Kafka only
    await pub.start()
    topic = Topics.from_settings(settings).input
    async with leader_on_a_hand_written_feed(settings) as (agg, fake, task):
        try:
            await pub.publish_many([ev.reset("BTC-USD", 1, "first")])
            await pub.flush()
            p = await agg._input_partition("BTC-USD")  # noqa: SLF001
            await until(lambda: agg.positions.get(p, -1) >= 0, "the first record was not applied")
            nxt = agg.positions[p] + 1
            malformed, ahead, taken = count("malformed"), count("ahead"), count("taken")
            fake.publish(b"\x00garbage")  # not a record
            fake.publish(encode_input_frame(topic, p, nxt + 5, 1, b"BTC-USD", b"[]"))  # past a hole
            fake.flush()
            await until(lambda: count("ahead") > ahead, "the ahead push was not seen")
            assert count("malformed") == malformed + 1
            assert not task.done() and agg.positions[p] == nxt - 1  # neither was applied
            # a well-formed record at the next offset, which Kafka will not hold
            forged = ev.encode_record([ev.reset("BTC-USD", 2, "forged")])
            fake.publish(encode_input_frame(topic, p, nxt, 2, b"BTC-USD", forged))
            fake.flush()
            await until(lambda: count("taken") > taken, "the forged push was not taken")
            await pub.publish_many([ev.reset("BTC-USD", 3, "real")])  # Kafka's record at nxt
            await pub.flush()
            with pytest.raises(RuntimeError, match=f"{topic}/{p}@{nxt} is not Kafka's"):
                await asyncio.wait_for(task, 30)
        finally:
            await pub.stop()


async def test_a_leader_in_step_with_the_pushes_reads_kafka_paced_and_still_verifies(
    settings: Settings,
) -> None:
    """While every record of a partition comes by push, the leader pauses its Kafka reads of it
    between checks (``_pace_input``): each pushed record is still compared with Kafka's copy, a
    push past a hole resumes the reads until Kafka fills it, and a forged record taken while
    paced still stops the leader. The test is the source: it pushes each record just before
    producing it, at the offset Kafka will give it (nobody else writes the topic)."""
    producer = make_producer(settings)
    await producer.start()
    topic = Topics.from_settings(settings).input
    flow = OrderFlow("BTC-USD", 7)
    last = [-1]

    async def send(*, push: bool = True, forged: bytes | None = None) -> int:
        real = ev.encode_record(flow.step(now_ns()) or [ev.reset("BTC-USD", now_ns(), "x")])
        if push:
            frame = encode_input_frame(
                topic, p, last[0] + 1, now_ns() // 10**6, b"BTC-USD", forged or real
            )
            fake.publish(frame)
            fake.flush()
        md = await producer.send_and_wait(topic, real, key=b"BTC-USD")
        assert md.partition == p and (not push or md.offset == last[0] + 1)
        last[0] = md.offset
        return int(md.offset)

    async def tick_for(n: int) -> int:
        """Send n records ~20 a second, as the simulator's ticks; how often it saw p paused."""
        paused = 0
        c = agg.consumer
        assert isinstance(c, AIOKafkaConsumer)
        for _ in range(n):
            await send()
            await asyncio.sleep(0.05)
            paused += tp in c.paused()
        return paused

    async with leader_on_a_hand_written_feed(settings, input_verify_ms=300) as (agg, fake, task):
        try:
            p = await agg._input_partition("BTC-USD")  # noqa: SLF001
            tp = TopicPartition(topic, p)
            consumer = agg.consumer
            assert isinstance(consumer, AIOKafkaConsumer)
            await send(push=False)  # the first record: the leader's position comes from Kafka
            await until(lambda: agg.positions.get(p) == last[0], "the first record was not applied")
            taken = count("taken")
            assert await tick_for(40) > 20  # paused between its checks most of the time
            assert count("taken") - taken == 40  # every record came by push
            assert INPUT_PACED._value.get() >= 1  # noqa: SLF001 - the gauge's value
            # checked while paced: about one period's records wait for Kafka's copy, not all 40
            assert len(agg.intake.taken.get(p, ())) < 20
            await until(lambda: not agg.intake.taken.get(p), "taken records never met Kafka's copy")

            # a lost push: the next one is past a hole, and Kafka brings both at once. No paced
            # read meanwhile (a long period), so the hole is seen whatever the timing
            agg.cfg = dataclasses.replace(agg.cfg, input_verify_ms=600_000)
            await tick_for(25)  # in step again, a step after any earlier out-of-step moment
            ahead = count("ahead")
            await send(push=False)
            await send()
            await until(lambda: count("ahead") > ahead, "the push past the hole was not seen")
            await until(lambda: tp not in consumer.paused(), "a hole did not resume the reads")
            assert not agg.intake.in_step(p, time.monotonic())
            await until(lambda: agg.positions.get(p) == last[0], "Kafka did not fill the hole")

            # in step again, then a forged push while paced: the next check of Kafka's copy stops
            assert await tick_for(30) > 0, "never paced again after the hole"
            agg.cfg = dataclasses.replace(agg.cfg, input_verify_ms=300)
            taken = count("taken")
            forged = ev.encode_record([ev.reset("BTC-USD", 2, "forged")])
            nxt = await send(
                forged=forged
            )  # Kafka holds the real record at nxt, the push a forgery
            await until(lambda: count("taken") > taken, "the forged push was not taken")
            with pytest.raises(RuntimeError, match=f"{topic}/{p}@{nxt} is not Kafka's"):
                await asyncio.wait_for(task, 30)
        finally:
            await producer.stop()
