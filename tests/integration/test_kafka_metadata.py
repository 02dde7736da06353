"""A kept idle consumer refreshes the metadata of the platform's topics only, not the cluster's.

aiokafka asks for every topic of the cluster when a client has none of its own (the
aggregator's takeover probe between two reads), every ``METADATA_MAX_AGE_MS``: on a shared
cluster that is thousands of topics decoded every 5 s (docs/benchmarks.md "fifth session")."""

from __future__ import annotations

import dataclasses

import pytest
from aiokafka import TopicPartition

from aggregator.recovery import _probe, probe_consumer
from core.kafka import ensure_topics, own_metadata_only
from core.settings import Settings
from core.topics import Topics
from tests.conftest import _delete_test_data, unique

pytestmark = pytest.mark.integration


async def test_the_kept_takeover_probe_refreshes_only_the_platforms_topics(
    settings: Settings,
) -> None:
    other = dataclasses.replace(settings, topic_prefix=f"test.{unique()}")  # another tenant
    await ensure_topics(other, partitions=1)
    own = set(Topics.from_settings(settings).all())
    c = probe_consumer(settings)
    await c.start()
    try:
        client = c._client  # noqa: SLF001 - what the client asks the broker for is the point
        await client.force_metadata_update()
        assert set(Topics.from_settings(other).all()) <= client.cluster.topics()  # everything

        own_metadata_only(c, sorted(own))
        await client.force_metadata_update()
        assert client.cluster.topics() == own

        # a takeover read assigns partitions, then leaves the consumer idle again
        async with _probe(settings, c) as probe:
            probe.assign([TopicPartition(Topics.from_settings(settings).control, 0)])
            await probe.getmany(timeout_ms=100)
        await client.force_metadata_update()
        assert client.cluster.topics() == own
    finally:
        await c.stop()
        await _delete_test_data(other)
