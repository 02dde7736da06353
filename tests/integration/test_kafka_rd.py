"""The librdkafka input consumer (core/kafka_rd.py) on the real broker: positions, order,
re-seeks that never deliver what was fetched before them, and commits."""

from __future__ import annotations

import dataclasses

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from core.errors import ConfigError
from core.kafka import make_producer
from core.kafka_rd import RdConsumer, Record, input_consumer
from core.settings import Settings
from core.topics import Topics

pytestmark = pytest.mark.integration


async def produce(s: Settings, topic: str, partition: int, values: list[bytes]) -> None:
    p = make_producer(s)
    await p.start()
    try:
        for v in values:
            await p.send_and_wait(topic, v, partition=partition)
    finally:
        await p.stop()


async def read(c: RdConsumer, n: int) -> list[Record]:
    got: list[Record] = []
    for _ in range(100):
        for recs in (await c.getmany(timeout_ms=100, max_records=7)).values():
            got += recs
        if len(got) >= n:
            break
    return got


async def test_positions_order_reseek_and_commit(settings: Settings) -> None:
    t = Topics.from_settings(settings).input
    await produce(settings, t, 0, [b"a%d" % i for i in range(20)])
    await produce(settings, t, 1, [b"b%d" % i for i in range(10)])
    c = RdConsumer(settings, group_id=f"{settings.topic_prefix}.g")
    await c.start()
    try:
        tp0, tp1 = TopicPartition(t, 0), TopicPartition(t, 1)
        c.assign([tp0, tp1])
        c.seek(tp0, 5)
        c.seek(tp1, 8)
        got = await read(c, 17)
        by = {p: [r.value for r in got if r.partition == p] for p in (0, 1)}
        assert by[0] == [b"a%d" % i for i in range(5, 20)] and by[1] == [b"b8", b"b9"]
        assert all(r.key is None and r.timestamp > 0 for r in got)
        assert [r.offset for r in got if r.partition == 0] == list(range(5, 20))
        # back to an earlier offset: what follows starts exactly there, nothing stale first
        c.seek(tp0, 2)
        again = await read(c, 18)
        assert [r.offset for r in again if r.partition == 0][:3] == [2, 3, 4]
        assert [r.offset for r in again if r.partition == 0] == list(range(2, 20))
        assert not [r for r in again if r.partition == 1]  # tp1 stays where it was
        # forward past what is there: only what is written afterwards
        c.seek(tp0, 20)
        assert await c.getmany(timeout_ms=300) == {}
        await produce(settings, t, 0, [b"late"])
        assert [r.value for r in await read(c, 1)] == [b"late"]
        await c.commit({tp0: 21, tp1: 10})
    finally:
        await c.stop()
    check = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.topic_prefix}.g",
        enable_auto_commit=False,
    )
    await check.start()
    try:
        assert await check.committed(TopicPartition(t, 0)) == 21
    finally:
        await check.stop()


async def test_the_client_setting_is_checked() -> None:
    s = dataclasses.replace(Settings(), extra={"MD_KAFKA_CLIENT": "kafka-python"})
    with pytest.raises(ConfigError, match="MD_KAFKA_CLIENT"):
        input_consumer(s, group_id="g")
    s = dataclasses.replace(Settings(), extra={"MD_KAFKA_CLIENT": "aiokafka"})
    assert isinstance(input_consumer(s, group_id="g"), AIOKafkaConsumer)
