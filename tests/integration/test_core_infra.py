"""The real servers the project starts: Kafka (with transactions), PostgreSQL, Redis."""

from __future__ import annotations

import asyncio

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from core.settings import Settings
from core.topics import Topics


async def _drain(consumer: AIOKafkaConsumer, want: int, within: float = 15.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + within
    while len(got) < want and asyncio.get_running_loop().time() < deadline:
        batch = await consumer.getmany(timeout_ms=200)
        for recs in batch.values():
            got.extend(r.value for r in recs)
    return got


async def test_topics_created_with_compacted_snapshot(settings: Settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    t = Topics.from_settings(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        assert set(t.all()) <= set(await admin.list_topics())
        res = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t.snapshot)])
        entries = {e[0]: e[1] for e in res[0].resources[0][4]}
        assert entries["cleanup.policy"] == "compact"
    finally:
        await admin.close()


async def test_postgres_and_redis_answer(settings: Settings, pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    assert version.startswith("15")
    r = aioredis.from_url(settings.redis_url)
    try:
        key = f"{settings.redis_prefix}:ping"
        await r.set(key, b"pong", ex=10)
        assert await r.get(key) == b"pong"
    finally:
        await r.aclose()
