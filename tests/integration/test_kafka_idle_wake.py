"""Consumers wake their background fetcher only every ``CONSUMER_IDLE_WAKE_MS`` when idle
(core/kafka.py, issue 10). That is safe only because every event the fetcher waits for wakes it
at once: a resume, a seek, a read. Each is checked here against a real broker to answer well
inside the idle period."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition

from core.kafka import CONSUMER_IDLE_WAKE_MS, make_consumer, make_producer
from core.settings import Settings
from core.topics import Topics

pytestmark = pytest.mark.integration

WITHIN_S = CONSUMER_IDLE_WAKE_MS / 1000 / 2  # an answer that waited for the idle wake-up fails


async def test_resume_seek_and_new_records_do_not_wait_for_the_idle_wake(
    settings: Settings,
) -> None:
    topic = Topics.from_settings(settings).input
    tp = TopicPartition(topic, 0)
    producer = make_producer(settings)
    consumer = make_consumer(settings)
    await producer.start()
    await consumer.start()
    try:
        assert consumer._consumer_timeout == CONSUMER_IDLE_WAKE_MS / 1000  # noqa: SLF001
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        assert await consumer.getmany(tp, timeout_ms=300) == {}  # empty: the fetcher idles

        # paused: a record arrives, then the resume must fetch it at once
        consumer.pause(tp)
        await (await producer.send(topic, b"a", partition=0))
        await asyncio.sleep(0.05)
        consumer.resume(tp)
        t0 = time.monotonic()
        got = await consumer.getmany(tp, timeout_ms=int(WITHIN_S * 1000))
        assert [r.value for r in got.get(tp, [])] == [b"a"]
        assert time.monotonic() - t0 < WITHIN_S

        # a seek back re-reads at once
        consumer.seek(tp, 0)
        t0 = time.monotonic()
        got = await consumer.getmany(tp, timeout_ms=int(WITHIN_S * 1000))
        assert [r.value for r in got.get(tp, [])] == [b"a"]
        assert time.monotonic() - t0 < WITHIN_S

        # a new record reaches a consumer that was idle for longer than a wake period
        await consumer.getmany(tp, timeout_ms=CONSUMER_IDLE_WAKE_MS + 200)
        await (await producer.send(topic, b"b", partition=0))
        t0 = time.monotonic()
        got = await consumer.getmany(tp, timeout_ms=int(WITHIN_S * 1000))
        assert [r.value for r in got.get(tp, [])] == [b"b"]
        assert time.monotonic() - t0 < WITHIN_S
    finally:
        await consumer.stop()
        await producer.stop()
