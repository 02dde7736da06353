"""aiokafka client factories and topic creation.

Producers are idempotent (``enable_idempotence``) with ``acks=all`` so a retried send never
duplicates; consumers that read aggregator output use ``read_committed`` so they never see an
aborted transaction's messages (the aggregator publishes transactionally).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from core.backoff import Backoff
from core.kafka_auth import kafka_security_options
from core.settings import Settings
from core.topics import PARTITIONS, STREAM_PARTITIONS, Topics

log = logging.getLogger(__name__)

# The snapshot topic is compacted: a reader (every gateway at start) reads it whole, so what
# compaction has not reached yet is start-up time. With 10-minute segments and the default
# dirty ratio a gateway read 60-130 MB (6-11 s) at start after half an hour of `make up`; with
# one-minute segments compacted as soon as they close, a few MB.
SNAPSHOT_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "min.compaction.lag.ms": "0",
    "max.compaction.lag.ms": "60000",
    "min.cleanable.dirty.ratio": "0.01",
    "segment.ms": "60000",
}


#: How stale a client's view of the cluster (brokers, partition leaders) may get before it asks
#: again, whatever happens: one small request per client per interval.
METADATA_MAX_AGE_MS = 5_000


def make_producer(
    s: Settings, *, transactional_id: str | None = None, **kw: Any
) -> AIOKafkaProducer:
    opts: dict[str, Any] = {
        "bootstrap_servers": s.kafka_bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        # 0: a record leaves at the sender's next turn; under load batches form anyway while the
        # previous request of a partition is in flight (issue 10: 2 ms here was 2 ms per hop)
        "linger_ms": s.get("MD_KAFKA_LINGER_MS", int, 0),
        "max_batch_size": 1 << 20,
        "max_request_size": 4 << 20,
        "compression_type": None,
        # after a broker's death: how soon the client asks again who leads (default 100 ms)
        "retry_backoff_ms": s.get("MD_KAFKA_RETRY_BACKOFF_MS", int, 50),
        # aiokafka asks only the brokers of its last metadata for new metadata: a producer that
        # refreshed while a restarted cluster had one broker up knew no other for the default 5
        # minutes, and when that broker died it could not learn the new leaders (make chaos:
        # 43 s without input after kafka-restart + broker-kill); consumers refresh this often too
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
    }
    if transactional_id:
        opts["transactional_id"] = transactional_id
    opts.update(kafka_security_options(s))
    opts.update(kw)
    return AIOKafkaProducer(**opts)


#: aiokafka's ``consumer_timeout_ms``: see make_consumer
CONSUMER_IDLE_WAKE_MS = 2000


def make_consumer(
    s: Settings, *topics: str, group_id: str | None = None, **kw: Any
) -> AIOKafkaConsumer:
    opts: dict[str, Any] = {
        "bootstrap_servers": s.kafka_bootstrap,
        "group_id": group_id,
        "isolation_level": "read_uncommitted",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        # long poll: the broker answers as soon as one byte is there (fetch_min_bytes=1), so
        # this bounds nothing on the hot path; 5 ms made every idle consumer cost the broker
        # ~200 requests/s (issue 10: the broker took half a core with no traffic)
        "fetch_max_wait_ms": s.get("MD_KAFKA_FETCH_WAIT_MS", int, 500),
        "max_partition_fetch_bytes": 4 << 20,
        # a group member that joined before its topic's metadata reached it has no partitions
        # until the next refresh: keep that window short (the default is 5 minutes)
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
        "retry_backoff_ms": s.get("MD_KAFKA_RETRY_BACKOFF_MS", int, 50),
        # aiokafka's background fetcher wakes up this often when it has nothing to do (every
        # partition paused, or records held until the application reads them); everything it
        # waits for (a fetch answered, a read, a seek, a resume, an assignment) wakes it anyway.
        # The default 200 ms was 5 idle wake-ups a second per consumer: 0.2-0.4 points of a
        # core per gateway process with no client (issue 10, docs/benchmarks.md)
        "consumer_timeout_ms": CONSUMER_IDLE_WAKE_MS,
    }
    opts.update(kafka_security_options(s))
    opts.update(kw)
    return AIOKafkaConsumer(*topics, **opts)


class Pacer:
    """Client-side fetch batching: at most one fetch per ``interval_s``.

    Consumers that need no sub-millisecond latency (storage, a standby, a follower whose direct
    feed is live) still long-poll (``fetch_min_bytes=1``), so an idle topic costs one fetch per
    ``fetch_max_wait_ms``; under load they take what accumulated since their last fetch, once per
    interval, instead of answering every produce (broker-side ``fetch_min_bytes`` batching would
    instead wake them every ``fetch_max_wait_ms`` even with nothing to read).
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = 0.0

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._last + self.interval_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self._last = loop.time()


def own_metadata_only(consumer: AIOKafkaConsumer, topics: list[str]) -> None:
    """Keep the periodic metadata refresh of a consumer that has nothing assigned to ``topics``.

    aiokafka asks for the metadata of *every* topic of the cluster when a client has none of
    its own, and refreshes every ``METADATA_MAX_AGE_MS``: a kept idle consumer (the aggregator's
    takeover probe) decoded the whole cluster every 5 s. 331 topics left by killed test runs
    made that part of a quarter of the idle stack's CPU here; a shared production cluster has
    thousands. Call it after ``start()`` and after each ``unsubscribe()``. Through the client's
    private ``_client``, as :func:`partitions_of` does."""
    consumer._client.set_topics(topics)  # noqa: SLF001


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partition numbers of ``topic``. aiokafka's public ``partitions_for_topic`` answers only
    from metadata the client already holds (nothing for a topic it has not subscribed to or been
    assigned); then one metadata refresh answers, through the client's private ``_client`` as
    aiokafka has no public call for it. The one place in the tree that reaches into it."""
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()  # noqa: SLF001
        parts = consumer._client.cluster.partitions_for_topic(topic)  # noqa: SLF001
    return set(parts or ())


async def _wait_led(admin: AIOKafkaAdminClient, names: list[str], partitions: int) -> None:
    """Until every partition of ``names`` has a leader in the metadata the broker serves.

    A consumer group that joins while its topic is still missing from the metadata gets no
    partitions assigned, and only notices the topic at its next metadata refresh.
    """
    backoff = Backoff(initial=0.05, maximum=1.0)
    for _ in range(100):
        described = await admin.describe_topics(names)
        if all(
            d["error_code"] == 0
            and len(d["partitions"]) >= min(partitions, 1)
            and all(p["leader"] >= 0 for p in d["partitions"])
            for d in described
        ):
            return
        await asyncio.sleep(backoff.next())
    log.warning("topics not led in time", extra={"topics": names})


async def ensure_topics(
    s: Settings,
    topics: Topics | None = None,
    *,
    partitions: int = PARTITIONS,
    stream_partitions: int | None = None,
) -> list[str]:
    """Create the platform's topics if missing; returns the names created. ``partitions``: of
    the input and snapshot topics; ``stream_partitions`` (default ``MD_KAFKA_STREAM_PARTITIONS``,
    core/topics.py says why it is 1): of each stream topic."""
    t = topics or Topics.from_settings(s)
    if stream_partitions is None:
        stream_partitions = s.get("MD_KAFKA_STREAM_PARTITIONS", int, STREAM_PARTITIONS)
    if stream_partitions < 1:
        raise ValueError(f"MD_KAFKA_STREAM_PARTITIONS must be at least 1, not {stream_partitions}")
    streams = set(t.all_streams())
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, **kafka_security_options(s))
    backoff = Backoff(initial=0.2, maximum=3.0)
    for attempt in range(30):
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            if attempt == 29:
                raise
            await asyncio.sleep(backoff.next())
    try:
        existing = set(await admin.list_topics())
        # one broker locally; RF 3 / min ISR 2 on a real cluster (compose, k8s): acks=all then
        # survives the loss of any one broker with zero loss (docs/scaling.md)
        rf = s.get("MD_KAFKA_REPLICATION_FACTOR", int, 1)
        min_isr = str(s.get("MD_KAFKA_MIN_ISR", int, 1))
        new: list[NewTopic] = []
        for name in t.all():
            if name in existing:
                continue
            cfg = {"retention.ms": str(7 * 86400 * 1000)}
            n = stream_partitions if name in streams else partitions
            if name == t.control:
                cfg, n = {"retention.ms": str(3600 * 1000), "segment.ms": "600000"}, 1
            elif name == t.snapshot:
                cfg = dict(SNAPSHOT_TOPIC_CONFIG)
            cfg["min.insync.replicas"] = min_isr
            new.append(NewTopic(name, num_partitions=n, replication_factor=rf, topic_configs=cfg))
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
            log.info("topics created", extra={"topics": [n.name for n in new]})
        # always (one request): a topic an older version made, or one a racing creator made
        # first (list_topics may not show it yet), gets the same compaction
        cfg = {**SNAPSHOT_TOPIC_CONFIG, "min.insync.replicas": min_isr}
        try:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t.snapshot, cfg)])
        except Exception as exc:  # noqa: BLE001 - an ACL may forbid it: readers are slower only
            log.warning("snapshot topic config not updated", extra={"error": repr(exc)})
        await _wait_led(admin, t.all(), partitions)
        return [n.name for n in new]
    finally:
        await admin.close()


async def partitions_by_topic(consumer: AIOKafkaConsumer, topics: list[str]) -> dict[str, set[int]]:
    """The partition numbers of each of ``topics`` from ONE metadata fetch of the whole cluster
    (a topic missing from it maps to an empty set): for a consumer that assigns partitions
    itself, before it subscribed to or was assigned any. Through the client's private
    ``_client`` for the reason :func:`partitions_of` gives."""
    cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001
    return {t: set(cluster.partitions_for_topic(t) or ()) for t in topics}


async def delete_prefix_topics(settings: Settings, prefix: str | None = None) -> int:
    """Delete every topic of a test or benchmark prefix (``<prefix>.*``); returns how many.

    Each prefix holds 9-11 topics (27-66 partition logs, a file handle each on the broker), and
    every client's metadata refresh decodes every topic: 700 left behind by earlier benchmark
    runs made each refresh of the platform's own clients decode ~780 topics on this machine."""
    pre = f"{prefix or settings.topic_prefix}."
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **kafka_security_options(settings)
    )
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(pre)]
        if names:
            await admin.delete_topics(names)
            # the controller has committed the deletion; the broker's metadata answers it a
            # moment later: a caller (make clean-topics, a test) expects them gone on return
            deadline = asyncio.get_running_loop().time() + 10
            while asyncio.get_running_loop().time() < deadline:
                if not any(t.startswith(pre) for t in await admin.list_topics()):
                    break
                await asyncio.sleep(0.1)
        return len(names)
    finally:
        await admin.close()
