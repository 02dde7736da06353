"""The Kafka hop probe (loadtests/kafka_hop.py) measures every record it sends and leaves no
topic behind."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from core.settings import Settings
from loadtests.kafka_hop import acks, report, roundtrip

pytestmark = pytest.mark.integration


async def _hop_topics_left(settings: Settings) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        return [t for t in await admin.list_topics() if t.startswith("bench.hop.")]
    finally:
        await admin.close()


async def test_roundtrip_measures_each_record_and_cleans_up(settings: Settings) -> None:
    got = await roundtrip(settings, 0.5, interval=0.05)
    assert 5 <= len(got) <= 12  # one per 50 ms, each received once
    assert all(0 < ms < 5000 for ms in got)
    assert report("x", got).startswith(f"x: n={len(got)} p50 ")
    assert await _hop_topics_left(settings) == []


@pytest.mark.parametrize("client", ["aiokafka", "librdkafka"])
async def test_acks_times_every_record_of_every_tick_and_cleans_up(
    settings: Settings, client: str
) -> None:
    got = await acks(settings, 0.5, partitions=3, size=100, client=client, interval=0.05)
    assert 15 <= len(got) <= 36 and len(got) % 3 == 0  # three a tick, each acknowledged once
    assert all(0 < ms < 5000 for ms in got)
    assert await _hop_topics_left(settings) == []
