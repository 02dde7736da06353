"""Rebuild one input partition's symbol states after a takeover (see aggregator/service.py).

1. Read md.snapshot partition ``p mod n`` (where the owner of input partition ``p`` writes its
   private ``agg:`` records) from the beginning to its last stable offset, ``read_committed``:
   the latest ``agg:state:<symbol>`` (full state, with the input offset it includes) and
   ``agg:seq:<symbol>`` (seq counters after the last transaction that touched the symbol).
2. Replay the input partition from the oldest checkpoint's offset + 1 up to the group's
   committed offset, applying each event to its symbol only past that symbol's checkpoint, and
   discarding the outputs (they were published by the previous owner in committed transactions).
3. Take each symbol's ``seq`` from ``agg:seq`` when it is newer than the checkpoint.

Step 2 is exact because everything in :class:`SymbolState` except ``seq`` depends only on the
events; ``seq`` depends on the batching, which is why ``agg:seq`` is written in every transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from aggregator import events as ev
from aggregator.state import AggConfig, SymbolState
from core.kafka import make_consumer
from core.settings import Settings
from core.topics import Topics

log = logging.getLogger("aggregator.recovery")
READ_TIMEOUT_S = (
    90.0  # > the 60 s transaction timeout: a stalled instance's transaction ends by then
)


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``stop()`` a group-less consumer safely: aiokafka 0.14 cancels its internal
    ``_reset_committed_routine`` task on close and re-raises ``CancelledError`` if that task never
    got to run (a consumer stopped right after ``start()``); one loop turn lets it start."""
    await asyncio.sleep(0)
    await consumer.stop()


class RecoveryError(Exception):
    """Recovery could not read what it needs (retriable: the broker may be slow)."""

    retriable = True


async def _read_to_end(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int | None, end: int, on_record: Any
) -> None:
    consumer.assign([tp])
    if start is None:
        await consumer.seek_to_beginning(tp)
    else:
        consumer.seek(tp, start)
    deadline = time.monotonic() + READ_TIMEOUT_S
    while await consumer.position(tp) < end:
        if time.monotonic() > deadline:
            raise RecoveryError(f"reading {tp} to {end} timed out")
        batch = await consumer.getmany(tp, timeout_ms=200, max_records=10_000)
        for r in batch.get(tp, []):
            if r.offset >= end:
                return
            on_record(r)


async def high_watermark(settings: Settings, tp: TopicPartition) -> int:
    """The partition's high watermark (``read_uncommitted`` end offset), open transactions included."""
    c = make_consumer(settings, group_id=None, isolation_level="read_uncommitted")
    await c.start()
    try:
        c.assign([tp])
        return int((await c.end_offsets([tp]))[tp])
    finally:
        await stop_consumer(c)


async def load_private_state(
    consumer: AIOKafkaConsumer, topics: Topics, partition: int, snap_parts: int, end: int
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Latest ``agg:state``/``agg:seq`` records of ``partition``'s symbols, read ``read_committed``
    up to ``end`` = the *high watermark* taken after fencing, not the last stable offset: another
    instance's open transaction (a public snapshot hashed to this partition) may hold the LSO
    *below* the previous owner's last committed ``agg:`` records; stopping at the LSO would load an
    older ``agg:seq`` and reuse sequence numbers. The read waits (``READ_TIMEOUT_S``) for those
    transactions to end, which takes one ``MD_AGG_TXN_MS`` normally and the transaction timeout at
    worst (a stalled instance)."""
    stp = TopicPartition(topics.snapshot, partition % snap_parts)
    states: dict[str, bytes] = {}
    seqs: dict[str, bytes] = {}

    def on_record(r: Any) -> None:
        k = r.key.decode() if r.key else ""
        if k.startswith("agg:state:"):
            target = states
        elif k.startswith("agg:seq:"):
            target = seqs
        else:
            return
        sym = k.split(":", 2)[2]
        if r.value is None:
            target.pop(sym, None)
        else:
            target[sym] = r.value

    await _read_to_end(consumer, stp, None, end, on_record)
    st = {s: orjson.loads(v) for s, v in states.items()}
    sq = {s: orjson.loads(v) for s, v in seqs.items()}
    # a snapshot partition may serve several input partitions: keep ours
    st = {s: v for s, v in st.items() if v.get("partition", partition) == partition}
    sq = {s: v for s, v in sq.items() if v.get("partition", partition) == partition}
    return st, sq


async def recover_partition(
    settings: Settings,
    topics: Topics,
    partition: int,
    snap_parts: int,
    committed: int | None,
    cfg: AggConfig,
) -> tuple[dict[str, SymbolState], int]:
    """States of ``partition``'s symbols as of input offset ``committed`` (exclusive)."""
    if committed is None:
        return {}, 0  # the group never committed: a fresh start (new epochs)
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        stp = TopicPartition(topics.snapshot, partition % snap_parts)
        raw_states, seqs = await load_private_state(
            consumer, topics, partition, snap_parts, await high_watermark(settings, stp)
        )
        states: dict[str, SymbolState] = {}
        upto: dict[str, int] = {}
        for sym, raw in raw_states.items():
            states[sym] = SymbolState.from_state(raw, cfg)
            upto[sym] = int(raw["offset"])
        replayed = 0
        replayed_by: dict[str, int] = {}
        if states:
            start = min(upto.values()) + 1
        else:
            start = 0
        if start < committed:
            itp = TopicPartition(topics.input, partition)

            def on_record(r: Any) -> None:
                nonlocal replayed
                try:
                    e = ev.decode(r.value or b"")
                except ev.EventError:
                    return
                st = states.get(e.symbol)
                if st is None:
                    # never checkpointed: only possible when its first transaction was lost
                    st = states[e.symbol] = SymbolState(e.symbol, int(time.time() * 1000), cfg)
                    upto[e.symbol] = -1
                    log.warning(
                        "symbol without checkpoint during replay", extra={"symbol": e.symbol}
                    )
                if r.offset <= upto[e.symbol]:
                    return
                try:
                    st.apply(e)
                except (ArithmeticError, ValueError, KeyError):
                    return
                replayed += 1
                replayed_by[e.symbol] = replayed_by.get(e.symbol, 0) + 1
                if replayed % 10_000 == 0:
                    for s in states.values():
                        s.discard()

            await _read_to_end(consumer, itp, start, committed, on_record)
        for sym, st in states.items():
            st.discard()
            sq = seqs.get(sym)
            if sq is not None and int(sq["offset"]) > upto[sym] and int(sq["epoch"]) == st.epoch:
                st.seq = {k: int(v) for k, v in sq["seq"].items()}
            elif replayed_by.get(sym):
                # Events were replayed but no agg:seq covers them: the counters cannot be known.
                # Never guess a seq (a reused one is a silent duplicate): break continuity openly.
                log.error(
                    "no agg:seq for replayed events, starting a new epoch", extra={"symbol": sym}
                )
                st.epoch = int(time.time() * 1000)
                st.seq = {}
        return states, replayed
    finally:
        await stop_consumer(consumer)
