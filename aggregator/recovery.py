"""Reading back what the aggregator left in Kafka: checkpoints, the last heartbeat, the published tail.

- Checkpoints (md.snapshot partition ``p mod n``, private ``agg:`` keys): ``agg:state:<symbol>``
  is a symbol's full :class:`SymbolState` as of input offset ``offset``; ``agg:index:p<p>`` is
  written after the states of one checkpoint of input partition ``p`` and names its symbols,
  the input offsets whose outputs were all acknowledged then (``acked``) and the output offsets
  at that point (``out``). A symbol first seen after the index is rebuilt by the replay (which
  starts at the smallest checkpoint offset), because every known symbol is in the index.
- The last heartbeat of the control topic: the previous leader's ``acked``/``out``.
- :func:`scan_published`: the highest ``(epoch, seq)`` per stream written since ``out``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from aggregator.errors import AggregatorError
from aggregator.leadership import Heartbeat
from aggregator.outbox import StreamKey
from aggregator.state import AggConfig, SymbolState
from core.kafka import make_consumer, own_metadata_only, partitions_of
from core.settings import Settings
from core.topics import Topics

log = logging.getLogger("aggregator.recovery")
READ_TIMEOUT_S = 30.0


class RecoveryError(AggregatorError):
    """Recovery could not read what it needs (retriable: the broker may be slow)."""

    retriable = True


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``stop()`` a group-less consumer safely: aiokafka 0.14 cancels its internal
    ``_reset_committed_routine`` task on close and re-raises ``CancelledError`` if that task never
    got to run (a consumer stopped right after ``start()``); one loop turn lets it start."""
    await asyncio.sleep(0)
    await consumer.stop()


def out_key(topic: str, partition: int) -> str:
    return f"{topic}|{partition}"


async def _read_range(
    consumer: AIOKafkaConsumer,
    ranges: dict[TopicPartition, tuple[int | None, int]],
    on_record: Callable[[Any], None],
) -> None:
    """Every record of each partition from ``start`` (None: the beginning) up to ``end``."""
    todo = {tp: r for tp, r in ranges.items() if r[1] > (r[0] or 0)}
    if not todo:
        return
    consumer.assign(list(todo))
    for tp, (start, _end) in todo.items():
        if start is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, start)
    deadline = time.monotonic() + READ_TIMEOUT_S
    while todo:
        if time.monotonic() > deadline:
            raise RecoveryError(f"reading {sorted(map(str, todo))} timed out")
        batch = await consumer.getmany(*todo, timeout_ms=200, max_records=10_000)
        for tp, recs in batch.items():
            end = todo[tp][1] if tp in todo else -1
            for r in recs:
                if r.offset >= end:
                    break
                on_record(r)
        for tp in list(todo):
            if await consumer.position(tp) >= todo[tp][1]:
                del todo[tp]


@dataclass
class Checkpoint:
    """What an input partition restarts from."""

    states: dict[str, SymbolState] = field(default_factory=dict)
    upto: dict[str, int] = field(default_factory=dict)  # symbol -> input offset its state includes
    acked: int = -1  # input offset whose outputs were all acknowledged at checkpoint time
    out: dict[str, int] = field(default_factory=dict)

    @property
    def start(self) -> int:
        """First input offset to read: every symbol's state is older than this plus one."""
        if not self.upto:
            return 0
        return min(self.upto.values()) + 1


async def load_checkpoints(
    settings: Settings,
    topics: Topics,
    partitions: Iterable[int],
    snap_parts: int,
    cfg: AggConfig,
) -> dict[int, Checkpoint]:
    parts = sorted(partitions)
    consumer = make_consumer(settings, group_id=None, fetch_max_wait_ms=10)
    await consumer.start()
    try:
        stps = {TopicPartition(topics.snapshot, p % snap_parts) for p in parts}
        consumer.assign(list(stps))
        ends = await consumer.end_offsets(list(stps))
        states: dict[str, bytes] = {}
        index: dict[int, dict[str, Any]] = {}

        def on_record(r: Any) -> None:
            k = r.key.decode() if r.key else ""
            if k.startswith("agg:state:"):
                if r.value is None:
                    states.pop(k[10:], None)
                else:
                    states[k[10:]] = r.value
            elif k.startswith("agg:index:p") and r.value is not None:
                index[int(k[11:])] = orjson.loads(r.value)

        await _read_range(consumer, {tp: (None, ends[tp]) for tp in stps}, on_record)
    finally:
        await stop_consumer(consumer)
    out: dict[int, Checkpoint] = {p: Checkpoint() for p in parts}
    for p in parts:
        idx = index.get(p)
        if idx is None:
            continue
        ck = out[p]
        ck.acked = int(idx["acked"])
        ck.out = {str(k): int(v) for k, v in idx["out"].items()}
        for sym in idx["symbols"]:
            raw = states.get(sym)
            if raw is None:
                raise RecoveryError(f"checkpoint index of partition {p} names {sym} without state")
            st = orjson.loads(raw)
            ck.states[sym] = SymbolState.from_state(st, cfg)
            ck.upto[sym] = int(st["offset"])
    return out


async def start_probe(settings: Settings) -> AIOKafkaConsumer:
    """The takeover probe an instance keeps, started, refreshing only the platform's topics
    while it has nothing assigned (``core.kafka.own_metadata_only``)."""
    c = probe_consumer(settings)
    await c.start()
    own_metadata_only(c, Topics.from_settings(settings).all())
    return c


def probe_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A consumer for the short reads of a takeover. An instance keeps one started, so that
    confirming a missed lease and scanning the outputs do not pay a bootstrap and a metadata
    round trip in the middle of a failover."""
    return make_consumer(
        settings, group_id=None, isolation_level="read_uncommitted", fetch_max_wait_ms=10
    )


@contextlib.asynccontextmanager
async def _probe(
    settings: Settings, consumer: AIOKafkaConsumer | None
) -> AsyncIterator[AIOKafkaConsumer]:
    if consumer is not None:
        try:
            yield consumer
        finally:
            # a kept consumer must not go on fetching what it was assigned for this read
            # (21 output partitions, every 10 ms: measured +8 % CPU in the aggregator and the
            # broker while idle), nor refresh the whole cluster's metadata while it waits
            consumer.unsubscribe()
            own_metadata_only(consumer, Topics.from_settings(settings).all())
        return
    c = probe_consumer(settings)
    await c.start()
    try:
        yield c
    finally:
        await stop_consumer(c)


async def last_heartbeat(
    settings: Settings,
    topics: Topics,
    group: str,
    consumer: AIOKafkaConsumer | None = None,
) -> tuple[Heartbeat, int] | None:
    """The newest heartbeat of ``group`` (the record key) on the control topic and its age in
    ms by the writer's clock. Pairs with other partition sets write there too, under their own
    group."""
    tp = TopicPartition(topics.control, 0)
    found: list[Any] = []
    async with _probe(settings, consumer) as c:
        c.assign([tp])
        end = (await c.end_offsets([tp]))[tp]
        await _read_range(c, {tp: (max(0, end - 500), end)}, found.append)
    key = group.encode()
    for r in reversed(found):
        if r.key != key:
            continue
        try:
            raw = orjson.loads(r.value)
            return Heartbeat.decode(raw), int(time.time() * 1000) - int(raw["ts_ms"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return None


async def scan_published(
    settings: Settings,
    out: dict[str, int],
    topics: Iterable[str],
    consumer: AIOKafkaConsumer | None = None,
) -> dict[tuple[StreamKey, int], int]:
    """Highest ``seq`` per stream and epoch in the output topics at or after ``out``.

    Partitions missing from ``out`` are read from their beginning (nobody acknowledged a write
    to them). Reads up to the high watermark, ``read_uncommitted``: what any consumer can see.
    """
    found: dict[tuple[StreamKey, int], int] = {}

    def on_record(r: Any) -> None:
        try:
            m = orjson.loads(r.value)
            key = ((m["channel"], m["symbol"]), int(m["epoch"]))
            seq = int(m["seq"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        if seq > found.get(key, -1):
            found[key] = seq

    async with _probe(settings, consumer) as c:
        tps: list[TopicPartition] = []
        for t in topics:
            tps.extend(TopicPartition(t, p) for p in sorted(await partitions_of(c, t)))
        c.assign(tps)
        ends = await c.end_offsets(tps)
        ranges = {tp: (out.get(out_key(tp.topic, tp.partition)), ends[tp]) for tp in tps}
        await _read_range(c, ranges, on_record)
    return found
