"""The cache writer's Kafka reader on librdkafka (confluent-kafka), behind the few aiokafka
consumer calls :class:`storage.cache_writer.CacheWriter` makes (``MD_STORAGE_KAFKA_CLIENT``).

Why: at the default simulator rate the storage process reads ~900 records/s from ~60 partitions
and aiokafka spent ~1.8 % of a core on it (its fetch responses are decoded in Python, every
requested partition of every response), librdkafka ~0.5 % (decoding in C on its own threads,
incremental fetch sessions); docs/benchmarks.md "Storage CPU". The consumer joins no group and
commits nothing (the cache writer's contract); ``consume(timeout=0)`` never blocks the event
loop, and the calls that wait on the broker (metadata, watermarks, offsets for times) run in a
thread at start-up only.

Start offsets are decided before a partition is handed to librdkafka: ``assign`` and ``seek*``
only record them, ``pause`` keeps a partition unassigned, and ``getmany`` assigns what is
positioned and not paused (``incremental_assign`` with the offsets), as the cache writer's
start-up (snapshot topic first, streams from a time) needs.

``core/kafka_rd.py`` (the aggregator's input consumer, issue 10) is the other librdkafka
consumer of the tree: a polling thread that owns the handle, with ``assign``/``seek``/
``getmany``/``commit`` for a group member. This one needs a different subset (pause/resume,
watermarks, offsets for times, no group, no commit) and polls with ``timeout=0`` from the event
loop, so it has no thread; both take their security settings from
``core.kafka_auth.rdkafka_security_config``. Folding the two into one core class is left to do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as RdTopicPartition

from core.kafka_auth import rdkafka_security_config
from core.settings import Settings

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0  # broker calls at start-up (metadata, watermarks, offsets for times)


class Record(NamedTuple):
    """What the cache writer and the database writer read of a record (aiokafka's names)."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # ms


class OffsetAt(NamedTuple):
    offset: int


def rd_config(s: Settings, client_id: str) -> dict[str, Any]:
    """librdkafka settings equivalent to core.kafka.make_consumer's (security included)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": s.kafka_bootstrap,
        "client.id": client_id,
        # required by the client even though this consumer never joins it or commits
        "group.id": f"{s.topic_prefix}.storage-cache-nogroup",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": s.get("MD_KAFKA_FETCH_WAIT_MS", int, 500),
        # what librdkafka prefetches ahead of the writer, for the whole consumer (one queue):
        # bounds memory during a catch-up; a turn takes at most 5,000 records (~2 MB)
        "queued.max.messages.kbytes": 4096,
        "isolation.level": "read_uncommitted",
        "topic.metadata.refresh.interval.ms": 10_000,
    }
    # the same MD_KAFKA_* security as every client, validated and translated once in core/
    conf.update(rdkafka_security_config(s))
    return conf


class RdConsumer:
    """The subset of ``AIOKafkaConsumer`` the cache writer uses, on confluent-kafka."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self._conf = conf
        self._c: Consumer | None = None
        self._start: dict[TopicPartition, int] = {}  # decided start offsets, not yet assigned
        self._paused: set[TopicPartition] = set()
        self._assigned: set[TopicPartition] = set()  # handed to librdkafka
        self._next: dict[TopicPartition, int] = {}  # next offset, from what was consumed

    @property
    def _rd(self) -> Consumer:
        if self._c is None:
            raise RuntimeError("RdConsumer used before start()")
        return self._c

    async def start(self) -> None:
        self._c = Consumer(self._conf, logger=log)

    async def stop(self) -> None:
        if self._c is not None:
            c, self._c = self._c, None
            await asyncio.to_thread(c.close)

    async def partitions_by_topic(self, topics: Iterable[str]) -> dict[str, set[int]]:
        md = await asyncio.to_thread(self._rd.list_topics, None, TIMEOUT_S)
        out: dict[str, set[int]] = {}
        for t in topics:
            tm = md.topics.get(t)
            out[t] = set(tm.partitions) if tm is not None and tm.error is None else set()
        return out

    def assign(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self._start.setdefault(tp, -1)  # -1: not positioned yet

    def pause(self, *tps: TopicPartition) -> None:
        self._paused.update(tps)
        on = [self._rd_tp(tp) for tp in tps if tp in self._assigned]
        if on:
            self._rd.pause(on)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused.difference_update(tps)
        on = [self._rd_tp(tp) for tp in tps if tp in self._assigned]
        if on:
            self._rd.resume(on)

    async def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        lo, hi = await asyncio.to_thread(
            self._rd.get_watermark_offsets, self._rd_tp(tp), TIMEOUT_S, False
        )
        return int(lo), int(hi)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: (await self._watermarks(tp))[1] for tp in tps}

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.seek(tp, (await self._watermarks(tp))[0])

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.seek(tp, (await self._watermarks(tp))[1])

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._next[tp] = offset
        if tp in self._assigned:
            self._rd.seek(self._rd_tp(tp, offset))
        else:
            self._start[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        if tp in self._assigned:
            (p,) = self._rd.position([self._rd_tp(tp)])
            if p.offset >= 0:  # librdkafka's own (past transaction markers and compaction)
                return max(int(p.offset), self._next.get(tp, 0))
        return self._next.get(tp, self._start.get(tp, 0))

    async def offsets_for_times(
        self, at: dict[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAt | None]:
        got = await asyncio.to_thread(
            self._rd.offsets_for_times,
            [RdTopicPartition(tp.topic, tp.partition, ms) for tp, ms in at.items()],
            TIMEOUT_S,
        )
        return {
            TopicPartition(r.topic, r.partition): OffsetAt(r.offset) if r.offset >= 0 else None
            for r in got
        }

    def _assign_positioned(self) -> None:
        ready = [tp for tp, off in self._start.items() if off >= 0 and tp not in self._paused]
        if ready:
            self._rd.incremental_assign([self._rd_tp(tp, self._start.pop(tp)) for tp in ready])
            self._assigned.update(ready)

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int = 500
    ) -> dict[TopicPartition, list[Record]]:
        """What librdkafka has fetched, grouped by partition in order; waits at most
        ``timeout_ms`` when nothing is there yet (``tps`` is accepted for aiokafka's signature:
        the partitions not asked for are paused or unassigned at the cache writer's calls)."""
        self._assign_positioned()
        msgs = self._rd.consume(max_records, 0)
        if not msgs and timeout_ms > 0:
            await asyncio.sleep(timeout_ms / 1000)
            msgs = self._rd.consume(max_records, 0)
        out: dict[TopicPartition, list[Record]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("kafka fetch error", extra={"error": str(err)})
                continue
            tp = TopicPartition(m.topic(), m.partition())
            off = m.offset() or 0  # set on every message librdkafka delivers without error
            rec = Record(off, m.key(), m.value(), m.timestamp()[1])
            lst = out.get(tp)
            if lst is None:
                out[tp] = [rec]
            else:
                lst.append(rec)
            self._next[tp] = off + 1
        return out

    @staticmethod
    def _rd_tp(tp: TopicPartition, offset: int | None = None) -> RdTopicPartition:
        if offset is None:
            return RdTopicPartition(tp.topic, tp.partition)
        return RdTopicPartition(tp.topic, tp.partition, offset)
