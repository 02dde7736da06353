"""The source feed against a real broker: the leader applies pushed records, ignores pushes that
are not records or not the next offset, and stops when Kafka's copy of a record it took from a
push differs (core/input_feed.py, aggregator/source_feed.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest

from aggregator import events as ev
from aggregator.service import Aggregator, ServiceConfig
from aggregator.source_feed import SOURCE_FEED
from aggregator.sources.publish import EventPublisher
from core.feed import FeedServer
from core.input_feed import encode_input_frame
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


async def test_a_pushed_record_that_kafka_contradicts_stops_the_leader(settings: Settings) -> None:
    port = free_port()
    fake = FeedServer("127.0.0.1", port)  # a source feed the test writes by hand
    await fake.start()
    cfg = dataclasses.replace(
        ServiceConfig.from_settings(settings), source_feed=(("127.0.0.1", port),)
    )
    agg = Aggregator(settings, cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agg.run(stop))
    pub = EventPublisher(settings, "test")  # no feed of its own: Kafka only
    await pub.start()
    topic = Topics.from_settings(settings).input
    try:
        await until(lambda: agg._publishing and fake.receivers, "never led with the feed")  # noqa: SLF001
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
        stop.set()
        await pub.stop()
        await fake.stop()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task
