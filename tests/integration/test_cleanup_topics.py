"""``make clean-topics``: what killed runs left is deleted by prefix, nothing else."""

from __future__ import annotations

import dataclasses

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from core.kafka import ensure_topics
from core.settings import Settings
from loadtests.cleanup import drop_stale
from tests.conftest import unique

pytestmark = pytest.mark.integration


async def _topics(s: Settings) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_only_the_named_prefixes_are_deleted(settings: Settings) -> None:
    left = dataclasses.replace(settings, topic_prefix=f"test.{unique()}.killed")
    await ensure_topics(left, partitions=1)
    before = await _topics(settings)
    assert any(t.startswith(left.topic_prefix + ".") for t in before)
    counts = await drop_stale(settings, (left.topic_prefix,))
    after = await _topics(settings)
    assert counts[left.topic_prefix] >= 9  # a prefix's whole set of topics
    assert not any(t.startswith(left.topic_prefix + ".") for t in after)
    assert {t for t in before if t.startswith(settings.topic_prefix + ".")} <= after  # ours stay
