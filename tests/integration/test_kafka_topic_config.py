"""The snapshot topic's compaction settings reach topics an older version created.

Every gateway reads md.snapshot whole at start; with 10-minute segments it read 60-130 MB after
half an hour of `make up`. ``ensure_topics`` now alters an existing snapshot topic to
``SNAPSHOT_TOPIC_CONFIG``, so an upgrade does not keep the old start-up cost.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from core.kafka import SNAPSHOT_TOPIC_CONFIG, ensure_topics
from core.settings import Settings
from core.topics import Topics


async def _config(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    for _ in range(50):  # a topic just created may not be described yet
        (res,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        got = {c[0]: c[1] for c in res.resources[0][4]}
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"{topic}: no config described: {res}")


async def test_an_old_snapshot_topic_gets_the_new_compaction(settings: Settings) -> None:
    s = dataclasses.replace(settings, topic_prefix=settings.topic_prefix + "-old")
    t = Topics.from_settings(s)
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    await admin.start()
    try:
        old = {"cleanup.policy": "compact", "segment.ms": "600000"}
        await admin.create_topics([NewTopic(t.snapshot, 3, 1, topic_configs=old)])
        assert (await _config(admin, t.snapshot))["segment.ms"] == "600000"
        await ensure_topics(s, partitions=3)
        for _ in range(50):  # the broker applies a topic's config change asynchronously
            got = await _config(admin, t.snapshot)
            if all(got.get(k) == v for k, v in SNAPSHOT_TOPIC_CONFIG.items()):
                break
            await asyncio.sleep(0.1)
        for k, v in SNAPSHOT_TOPIC_CONFIG.items():
            assert got[k] == v, k
    finally:
        await admin.delete_topics(
            [n for n in await admin.list_topics() if n.startswith(s.topic_prefix + ".")]
        )
        await admin.close()


async def _partitions(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(names)}


async def test_stream_topics_get_md_kafka_stream_partitions(settings: Settings) -> None:
    """Stream topics are created with ``MD_KAFKA_STREAM_PARTITIONS`` (default 1: the gateways
    and the cache writer read every partition; 6 in docker-compose and k8s, for brokers and
    database writers to share), the input and snapshot topics with ``partitions``; a value
    below 1 is refused before anything is made."""
    t = Topics.from_settings(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    six = dataclasses.replace(
        settings,
        topic_prefix=settings.topic_prefix + "-six",
        extra={**settings.extra, "MD_KAFKA_STREAM_PARTITIONS": "6"},
    )
    try:
        got = await _partitions(admin, t.all())  # the fixture's ensure_topics(partitions=3)
        assert got == {
            **{n: 1 for n in t.all_streams()},
            t.input: 3,
            t.snapshot: 3,
            t.control: 1,
        }
        await ensure_topics(six, partitions=2)
        t6 = Topics.from_settings(six)
        got = await _partitions(admin, t6.all())
        assert got == {
            **{n: 6 for n in t6.all_streams()},
            t6.input: 2,
            t6.snapshot: 2,
            t6.control: 1,
        }
        bad = dataclasses.replace(
            settings,
            topic_prefix=settings.topic_prefix + "-bad",
            extra={**settings.extra, "MD_KAFKA_STREAM_PARTITIONS": "0"},
        )
        with pytest.raises(ValueError, match="MD_KAFKA_STREAM_PARTITIONS"):
            await ensure_topics(bad)
        assert not [n for n in await admin.list_topics() if n.startswith(bad.topic_prefix + ".")]
    finally:
        await admin.delete_topics(
            [n for n in await admin.list_topics() if n.startswith(six.topic_prefix + ".")]
        )
        await admin.close()
