"""A librdkafka consumer (confluent-kafka) behind the part of aiokafka's consumer API that the
aggregator's input loop uses: ``assign``, ``seek``, ``getmany``, ``commit``. Positions are
explicit offsets (a re-assignment to the logical end, ``OFFSET_END``, was found to skip records
written while librdkafka resolved it behind a pending long poll: librdkafka 2.16, tried).

Why it exists: aiokafka decodes every fetch response and encodes every fetch request in
Python, about a third of the leader's CPU by py-spy (issue 10). Alone, one consumer of ``md.in``
at the default rate costs 1.6 % of a core this way against 3.0 % with aiokafka. In the whole
stack it did not pay (docs/benchmarks.md "Kafka clients", four alternating runs): the leader
saved ~1 point, but the standby, whose paced reads no longer space librdkafka's background
fetches, and the broker each spent ~1 point more. So it is not the default; it stays for a
higher input rate, where the per-record saving grows and the fetches batch anyway.

How it stays correct with a thread:

- one thread makes every call on the librdkafka handle (polls, assignments, commits) and hands
  each batch to the event loop;
- positions are set by re-assigning with explicit offsets (librdkafka's ``seek`` needs a
  partition that is already fetching), and the re-assignment runs in the polling thread
  between two polls: every batch carries the generation of the assignment it was polled
  under, and the loop drops those of an older one, so nothing fetched before a seek is
  delivered after it and nothing fetched after it is lost;
- records keep their order per partition (one thread, one queue).

``MD_KAFKA_CLIENT=librdkafka`` selects it (:func:`input_consumer`); the default is aiokafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import OFFSET_STORED, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as RdTopicPartition

from core.errors import ConfigError
from core.kafka import make_consumer
from core.kafka_auth import rdkafka_security_config
from core.settings import Settings

log = logging.getLogger(__name__)

CLIENTS = ("librdkafka", "aiokafka")


class Record(NamedTuple):
    """What the aggregator reads of a record (the same attribute names as aiokafka's)."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms
    key: bytes | None
    value: bytes | None


class RdConsumer:
    """See the module docstring. ``group_id`` is used for offset commits only (lag monitoring):
    partitions are assigned by hand, never by the group."""

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str,
        poll_s: float = 0.02,
        fetch_wait_ms: int | None = None,
    ) -> None:
        self.conf: dict[str, Any] = {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_uncommitted",
            "enable.partition.eof": False,
            # a long poll answered as soon as one byte is there, as make_consumer's
            "fetch.wait.max.ms": fetch_wait_ms
            if fetch_wait_ms is not None
            else settings.get("MD_KAFKA_FETCH_WAIT_MS", int, 500),
            "fetch.min.bytes": 1,
            "max.partition.fetch.bytes": 4 << 20,
            "topic.metadata.refresh.interval.ms": 5_000,
            "retry.backoff.ms": settings.get("MD_KAFKA_RETRY_BACKOFF_MS", int, 50),
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 1_000,
            **rdkafka_security_config(settings),
        }
        self.poll_s = poll_s
        self._consumer: Consumer | None = None
        self._stop = threading.Event()
        # (generation, assignment) for the polling thread; the lock guards only this hand-off
        self._assign_to: tuple[int, list[RdTopicPartition]] | None = None
        self._handoff = threading.Lock()
        self._commit: list[RdTopicPartition] | None = None  # for the polling thread too
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gen = 0
        self._positions: dict[tuple[str, int], int] = {}
        self._pending: deque[Record] = deque()
        self._ready = asyncio.Event()
        self.errors = 0

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._consumer = Consumer(self.conf, logger=log)
        self._thread = threading.Thread(target=self._run, name="rdkafka-poll", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                if self._commit:  # the last one, if the thread stopped before it
                    self._consumer.commit(offsets=self._commit, asynchronous=False)
                self._consumer.close()
            self._consumer = None

    # ----------------------------------------------------------------- positions

    def assign(self, tps: list[TopicPartition]) -> None:
        self._positions = {(tp.topic, tp.partition): OFFSET_STORED for tp in tps}
        self._reassign()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._positions[(tp.topic, tp.partition)] = offset
        self._reassign()

    def _reassign(self) -> None:
        # the polling thread applies it before its next poll
        self._gen += 1
        self._pending.clear()
        tps = [RdTopicPartition(t, p, o) for (t, p), o in self._positions.items()]
        with self._handoff:
            self._assign_to = (self._gen, tps)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Asynchronous, like every call on the handle made by the polling thread (a commit
        from the loop's thread while it polled hung, confluent-kafka 2.16)."""
        tps = [RdTopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
        with self._handoff:
            self._commit = tps

    # ----------------------------------------------------------------- reading

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        """What arrived, up to ``max_records``, waiting at most ``timeout_ms`` for the first."""
        if not self._pending and timeout_ms > 0:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout_ms / 1000)
        out: dict[TopicPartition, list[Record]] = {}
        pending = self._pending
        n = len(pending) if max_records is None else min(max_records, len(pending))
        for _ in range(n):
            r = pending.popleft()
            self._positions[(r.topic, r.partition)] = r.offset + 1  # a later re-assign keeps it
            tp = TopicPartition(r.topic, r.partition)
            lst = out.get(tp)
            if lst is None:
                lst = out[tp] = []
            lst.append(r)
        return out

    def _run(self) -> None:
        c, loop = self._consumer, self._loop
        assert c is not None and loop is not None
        gen = 0
        while not self._stop.is_set():
            with self._handoff:
                todo, self._assign_to = self._assign_to, None
                commit, self._commit = self._commit, None
            if commit:
                try:
                    c.commit(offsets=commit, asynchronous=True)
                except KafkaException as exc:  # lag monitoring only: never stops the reads
                    log.warning("offset commit failed", extra={"error": str(exc)})
            if todo is not None:
                gen = todo[0]
                c.unassign()  # an assign() of partitions already assigned keeps their fetch going
                c.assign(todo[1])
            m = c.poll(self.poll_s)
            if m is None:
                continue
            batch = [m, *c.consume(10_000, 0)]
            try:
                loop.call_soon_threadsafe(self._arrived, gen, batch)
            except RuntimeError:  # the loop closed under us: shutting down
                return

    def _arrived(self, gen: int, batch: list[Any]) -> None:
        if gen != self._gen:
            return  # polled before a re-assignment: the new positions decide
        for m in batch:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001 - librdkafka's name
                    self.errors += 1
                    log.warning("kafka consumer error", extra={"error": str(err)})
                continue
            self._pending.append(
                Record(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value())
            )
        if self._pending:
            self._ready.set()


def input_consumer(settings: Settings, *, group_id: str) -> RdConsumer | AIOKafkaConsumer:
    """The aggregator's input consumer: aiokafka unless ``MD_KAFKA_CLIENT=librdkafka``."""
    client = settings.get("MD_KAFKA_CLIENT", str, "aiokafka")
    if client not in CLIENTS:
        raise ConfigError("MD_KAFKA_CLIENT", f"expected one of {', '.join(CLIENTS)}")
    if client == "aiokafka":
        return make_consumer(settings, group_id=group_id, isolation_level="read_uncommitted")
    return RdConsumer(settings, group_id=group_id)
