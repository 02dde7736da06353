"""core/kafka.py's client settings that failover depends on (no broker needed)."""

from __future__ import annotations

from core.follower import StreamFollower
from core.kafka import METADATA_MAX_AGE_MS, make_consumer, make_producer
from core.settings import Settings


async def test_every_client_refreshes_its_view_of_the_cluster_within_seconds() -> None:
    """aiokafka asks only the brokers of its last metadata for new metadata: with the default
    5 minutes, a client that refreshed while a restarted cluster had one broker up could not
    learn new leaders when that broker died (make chaos: 43 s without input). Every client the
    platform makes must refresh within METADATA_MAX_AGE_MS."""
    s = Settings()
    producer = make_producer(s)
    consumers = [make_consumer(s), StreamFollower(s)._consumer()]  # noqa: SLF001
    try:
        assert producer.client._metadata_max_age_ms == METADATA_MAX_AGE_MS  # noqa: SLF001
        for c in consumers:
            assert c._client._metadata_max_age_ms == METADATA_MAX_AGE_MS  # noqa: SLF001
        assert METADATA_MAX_AGE_MS <= 10_000
    finally:
        await producer.stop()
        for c in consumers:
            await c.stop()
