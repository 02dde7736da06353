"""The aggregator process: md.in -> per-symbol state -> md.<stream> + md.snapshot, exactly once.

Theory of operation
-------------------

Aggregators form one consumer group on the input topic; each input partition (and so each of
its symbols) is owned by one instance at a time. Each owned partition ``p`` has its own
:class:`Worker` with its own *transactional producer*, ``transactional_id =
<group>.p<p>``. Per partition the loop is the read-process-write cycle of Kafka transactions:

1. read a batch of input records, apply them to the symbols' :class:`SymbolState`;
2. send the resulting data messages (``seq`` +1 per ``(channel, symbol)``) inside the open
   transaction;
3. every ``MD_AGG_TXN_MS`` (default 10 ms): add the recovery records of the symbols touched in
   this transaction (``agg:seq:<symbol>`` always, the full ``agg:state:<symbol>`` at most every
   ``MD_AGG_CHECKPOINT_MS``), the public snapshots that are due, then
   ``send_offsets_to_transaction`` (the input offset) and ``commit_transaction``.

Outputs, recovery state and the input offset commit together or not at all (KIP-98). A crash
loses the open transaction; ``read_committed`` consumers never see it. The next owner of ``p``
loads ``agg:state``/``agg:seq`` from md.snapshot partition ``p`` (written there explicitly so a
recovery reads one partition), replays the input from the checkpoint's offset up to the
committed offset *silently* (the book, candles and windows are a function of the events, not
of the batching), takes the ``seq`` counters from ``agg:seq``, and continues: no gap, no dup.

Zombie fencing without KIP-447
------------------------------

aiokafka has no consumer-group-aware fencing (KIP-447: ``sendOffsetsToTransaction`` with the
group metadata), so a stalled instance that lost its partitions could still commit a
transaction. We use the pre-KIP-447 scheme of KIP-98 instead: one transactional id *per input
partition*. The new owner's ``InitProducerId`` (awaited before it reads any state) bumps the
producer epoch of ``<group>.p<p>``: the old owner's open transaction is aborted and any later
commit of it fails with ``ProducerFenced``, after which it drops the partition. Rebalances
during a transaction (aiokafka issue 844) cannot split one: ``on_partitions_revoked`` takes the
same lock as the processing loop and commits the revoked partitions' transactions before the
group moves on. As a last line, ``seq`` is deterministic per stream, so consumers de-duplicate
``seq <= last seen`` (docs/aggregator.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import ProducerFenced
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import Counter, Gauge

from aggregator import events as ev
from aggregator.recovery import recover_partition
from aggregator.state import AggConfig, SymbolState
from core.backoff import Backoff
from core.codec import now_ns
from core.health import Health
from core.kafka import ensure_topics, make_consumer, make_producer
from core.settings import Settings
from core.topics import Topics

log = logging.getLogger("aggregator")

EVENTS_IN = Counter("md_agg_events_in_total", "input events applied", ["type"])
MALFORMED = Counter("md_agg_malformed_input_total", "input records dropped as invalid")
MESSAGES_OUT = Counter("md_agg_messages_out_total", "data messages published", ["channel"])
SNAPSHOTS_OUT = Counter("md_agg_snapshots_out_total", "snapshot records published", ["kind"])
TXN_COMMITTED = Counter("md_agg_transactions_committed_total", "transactions committed")
TXN_ABORTED = Counter("md_agg_transactions_aborted_total", "transactions aborted (state rebuilt)")
FENCED = Counter("md_agg_fenced_total", "partitions dropped because a newer owner fenced us")
RECOVERIES = Counter("md_agg_recoveries_total", "partition state recoveries", ["kind"])
REPLAYED = Counter("md_agg_replayed_events_total", "input events replayed silently during recovery")
OFFSET_GAPS = Counter("md_agg_offset_gaps_total", "unexpected input offset jumps (re-seeked)")
PARTITIONS = Gauge("md_agg_partitions_owned", "input partitions this instance owns")
SYMBOLS = Gauge("md_agg_symbols", "symbols this instance owns")


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    group: str
    txn_ms: int = 10  # transaction length: read_committed consumers see output this much later
    checkpoint_ms: int = 5000  # full agg:state per symbol at most this often (bounds replay)
    snapshot_ms: int = 500  # public snapshots per symbol at most this often
    max_batch: int = 5000  # records per poll: bounds memory and per-batch latency
    retake_s: float = 9.0  # after being fenced, take a still-assigned partition back after this
    agg: AggConfig = field(default_factory=AggConfig)

    @classmethod
    def from_settings(cls, s: Settings) -> ServiceConfig:
        return cls(
            group=s.get("MD_AGG_GROUP", str, f"{s.topic_prefix}.aggregator"),
            txn_ms=s.get("MD_AGG_TXN_MS", int, 10),
            checkpoint_ms=s.get("MD_AGG_CHECKPOINT_MS", int, 5000),
            snapshot_ms=s.get("MD_AGG_SNAPSHOT_MS", int, 500),
            max_batch=s.get("MD_AGG_MAX_BATCH", int, 5000),
            retake_s=1.5 * s.get("MD_AGG_SESSION_MS", int, 6000) / 1000,
            agg=AggConfig(
                checksum_depth=s.book_checksum_depth,
                trades_snapshot_n=s.get("MD_AGG_TRADES_SNAPSHOT", int, 100),
                stats_mid_window=s.get("MD_STATS_MID_WINDOW", int, 10),
                stats_vwap_window=s.get("MD_STATS_VWAP_WINDOW", int, 200),
            ),
        )


class Worker:
    """One owned input partition: its symbols, transactional producer and open transaction."""

    def __init__(self, partition: int, producer: AIOKafkaProducer) -> None:
        self.partition = partition
        self.producer = producer
        self.symbols: dict[str, SymbolState] = {}
        self.next_offset = 0
        self.txn_open = False
        self.txn_events = 0
        self.dirty: set[str] = set()
        self.new: set[str] = set()  # need a full checkpoint + snapshots in this transaction
        self.last_checkpoint: dict[str, float] = {}
        self.last_snapshot: dict[str, float] = {}
        self.status_changed: set[str] = set()
        # changed since their last public snapshot: written once due, even if the symbol then
        # goes quiet (otherwise md.snapshot would keep a stale ticker/book forever)
        self.snap_pending: set[str] = set()
        self.ckpt_pending: set[str] = set()  # changed since their last agg:state checkpoint


class Aggregator:
    def __init__(self, settings: Settings, cfg: ServiceConfig | None = None) -> None:
        self.settings = settings
        self.cfg = cfg or ServiceConfig.from_settings(settings)
        self.topics = Topics.from_settings(settings)
        self.workers: dict[int, Worker] = {}
        self.lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self.health = Health("aggregator")
        self.health.add("consumer", self._health_consumer)
        self._last_poll = time.monotonic()
        self._snapshot_partitions = 0
        self._txn_started = time.monotonic()
        self._partitioner = DefaultPartitioner()
        self._partition_cache: dict[tuple[str, bytes], int] = {}
        self._events_in: dict[str, int] = {}
        self.fatal: str | None = None
        self._retakes: set[asyncio.Task[None]] = set()

    def _health_consumer(self) -> tuple[bool, Any]:
        age = time.monotonic() - self._last_poll
        return age < 30 and not self.fatal, {
            "last_poll_s": round(age, 2),
            "partitions": sorted(self.workers),
            "symbols": sum(len(w.symbols) for w in self.workers.values()),
        }

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await ensure_topics(
            s
        )  # idempotent; a fresh prefix (tests, `make run-recording`) just works
        self.consumer = make_consumer(
            s,
            group_id=self.cfg.group,
            session_timeout_ms=s.get("MD_AGG_SESSION_MS", int, 6000),
            heartbeat_interval_ms=1000,
            max_poll_interval_ms=300_000,
        )
        await self.consumer.start()
        parts = self.consumer.partitions_for_topic(self.topics.snapshot)
        if parts is None:
            await self.consumer._client.force_metadata_update()  # noqa: SLF001 - one-time lookup
            parts = self.consumer._client.cluster.partitions_for_topic(self.topics.snapshot)  # noqa: SLF001
        self._snapshot_partitions = len(parts or ()) or 1
        self.consumer.subscribe([self.topics.input], listener=_Listener(self))
        log.info(
            "aggregator consuming", extra={"topic": self.topics.input, "group": self.cfg.group}
        )
        try:
            while not stop.is_set():
                if self.fatal:
                    raise RuntimeError(self.fatal)  # exit non-zero: the supervisor restarts us
                batch = await self.consumer.getmany(
                    timeout_ms=self.cfg.txn_ms, max_records=self.cfg.max_batch
                )
                self._last_poll = time.monotonic()
                async with self.lock:
                    await self._process(batch)
                    if time.monotonic() - self._txn_started >= self.cfg.txn_ms / 1000:
                        await self._commit_all()
                        self._txn_started = time.monotonic()
            async with self.lock:
                await self._commit_all()
        finally:
            for task in self._retakes:
                task.cancel()
            async with self.lock:
                for w in list(self.workers.values()):
                    await self._drop(w, commit=False)
            await self.consumer.stop()

    # ------------------------------------------------------------------ processing
    async def _process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        now = now_ns()
        for tp, recs in batch.items():
            w = self.workers.get(tp.partition)
            if w is None or not recs:
                continue  # revoked while fetched
            touched: set[str] = set()
            for r in recs:
                if r.offset < w.next_offset:
                    continue  # fetched before a re-seek: already applied
                w.next_offset = r.offset + 1
                self._apply_record(w, r.value, touched)
            if touched:
                w.txn_events += len(recs)
                try:
                    await self._emit(w, touched, now)
                except Exception as exc:  # noqa: BLE001 - e.g. fenced while sending
                    await self._txn_failed(w, exc, revoking=False)
        # metrics once per batch, not per event: labels().inc() costs ~10% of the hot path
        for t, n in self._events_in.items():
            EVENTS_IN.labels(t).inc(n)
        self._events_in.clear()

    def _apply_record(self, w: Worker, value: bytes | None, touched: set[str]) -> None:
        try:
            e = ev.decode(value or b"")
        except ev.EventError as exc:
            MALFORMED.inc()
            log.warning(
                "malformed input dropped", extra={"partition": w.partition, "error": str(exc)}
            )
            return
        st = w.symbols.get(e.symbol)
        if st is None:
            st = w.symbols[e.symbol] = SymbolState(e.symbol, int(time.time() * 1000), self.cfg.agg)
            w.new.add(e.symbol)
            SYMBOLS.inc()
            log.info("new symbol stream", extra={"symbol": e.symbol, "epoch": st.epoch})
        try:
            st.apply(e)
        except Exception as exc:  # noqa: BLE001 - a validated event should never get here
            # Crashing would not help: the restarted process would meet the same record again
            # (a poison pill). Count it loudly instead; validation in events.py is the real guard.
            MALFORMED.inc()
            log.error(
                "event rejected by state",
                extra={"symbol": e.symbol, "error": repr(exc)},
                exc_info=True,
            )
            return
        self._events_in[e.type] = self._events_in.get(e.type, 0) + 1
        touched.add(e.symbol)

    async def _begin(self, w: Worker) -> None:
        if not w.txn_open:
            await w.producer.begin_transaction()
            w.txn_open = True

    async def _emit(self, w: Worker, symbols: set[str], now: int) -> None:
        """Send the symbols' new messages in the open transaction.

        Records are appended to one aiokafka ``BatchBuilder`` per output topic-partition and
        submitted with ``send_batch``: the per-record cost of ``send()`` (metadata wait,
        partitioner, accumulator lookup) would otherwise dominate the aggregator's CPU. The
        partition is the default partitioner's (murmur2 of the symbol key), so records land
        exactly where ``send(key=symbol)`` would put them.
        """
        await self._begin(w)
        builders: dict[tuple[str, int], Any] = {}
        producer = w.producer
        dumps = orjson.dumps
        sent: dict[str, int] = {}
        for sym in symbols:
            st = w.symbols[sym]
            key = sym.encode()
            for channel, msg in st.flush(now):
                topic = self.topics.stream(channel)
                tp = (topic, await self._partition_for(producer, topic, key))
                b = builders.get(tp)
                if b is None:
                    b = builders[tp] = producer.create_batch()
                value = dumps(msg)
                if (
                    b.append(key=key, value=value, timestamp=None) is None
                ):  # full: ship it, start anew
                    await producer.send_batch(b, tp[0], partition=tp[1])
                    b = builders[tp] = producer.create_batch()
                    b.append(key=key, value=value, timestamp=None)
                sent[channel] = sent.get(channel, 0) + 1
                if channel == "status":
                    w.status_changed.add(sym)
            w.dirty.add(sym)
            w.snap_pending.add(sym)
            w.ckpt_pending.add(sym)
        for (topic, part), b in builders.items():
            await producer.send_batch(b, topic, partition=part)
        for channel, n in sent.items():
            MESSAGES_OUT.labels(channel).inc(n)

    async def _partition_for(self, producer: AIOKafkaProducer, topic: str, key: bytes) -> int:
        k = (topic, key)
        p = self._partition_cache.get(k)
        if p is None:
            parts = producer.client.cluster.partitions_for_topic(topic)
            if not parts:
                await producer.client._wait_on_metadata(topic)  # noqa: SLF001 - first use of the topic
                parts = producer.client.cluster.partitions_for_topic(topic)
            all_parts = sorted(parts)
            p = self._partitioner(key, all_parts, all_parts)
            self._partition_cache[k] = p
        return p

    async def _commit_all(self) -> None:
        now_m = time.monotonic()
        for w in list(self.workers.values()):
            # a quiet symbol's pending snapshot/checkpoint still gets written (in its own transaction)
            if (
                w.txn_open
                or any(self._snapshot_due(w, sym, now_m) for sym in w.snap_pending)
                or any(self._checkpoint_due(w, sym, now_m) for sym in w.ckpt_pending)
            ):
                await self._commit(w)

    def _checkpoint_due(self, w: Worker, sym: str, now_m: float) -> bool:
        return (
            sym in w.new or now_m - w.last_checkpoint.get(sym, 0) >= self.cfg.checkpoint_ms / 1000
        )

    def _snapshot_due(self, w: Worker, sym: str, now_m: float) -> bool:
        return sym in w.new or now_m - w.last_snapshot.get(sym, 0) >= self.cfg.snapshot_ms / 1000

    async def _commit(self, w: Worker, *, revoking: bool = False) -> bool:
        try:
            if not w.txn_open:
                await self._begin(w)
            await self._add_recovery_and_snapshots(w)
            tp = TopicPartition(self.topics.input, w.partition)
            await w.producer.send_offsets_to_transaction({tp: w.next_offset}, self.cfg.group)
            await w.producer.commit_transaction()
            TXN_COMMITTED.inc()
        except Exception as exc:  # noqa: BLE001 - any failure leaves the transaction unusable
            await self._txn_failed(w, exc, revoking=revoking)
            return False
        w.txn_open = False
        w.txn_events = 0
        w.dirty.clear()
        w.new.clear()
        w.status_changed.clear()
        return True

    async def _txn_failed(self, w: Worker, exc: BaseException, *, revoking: bool) -> None:
        """The open transaction of ``w`` cannot commit: its outputs will never be visible, so the
        in-memory state (which includes them) is dropped and rebuilt from Kafka.

        Fenced (``ProducerFenced``, or aiokafka's transaction manager in its fatal state, which
        is how a fence seen by the background sender surfaces): by a new owner, and our consumer
        will be revoked ``p`` at its next heartbeat; or by the broker's transaction timeout after
        a long stall, and nobody else owns ``p`` - so it is taken back, from Kafka, once the group
        has had ``retake_s`` to tell us otherwise. Any other error: abort and recover at once.
        """
        tm = getattr(w.producer, "_txn_manager", None)
        fenced = isinstance(exc, ProducerFenced) or (tm is not None and tm.is_fatal_error())
        if fenced:
            FENCED.inc()
            log.warning(
                "transactional producer fenced, dropping partition",
                extra={"partition": w.partition, "error": repr(exc)},
            )
        else:
            TXN_ABORTED.inc()
            log.error(
                "transaction failed, rebuilding partition state",
                extra={"partition": w.partition, "error": repr(exc)},
            )
        await self._drop(w, commit=False)
        if revoking:
            return
        if fenced:
            self._retakes.add(asyncio.create_task(self._retake_later(w.partition)))
        else:
            await self._assign_with_retry(w.partition)

    async def _add_recovery_and_snapshots(self, w: Worker) -> None:
        now_m = time.monotonic()
        now = now_ns()
        snap_topic = self.topics.snapshot
        part = w.partition % self._snapshot_partitions
        last = w.next_offset - 1
        for sym in w.dirty | w.new | w.snap_pending | w.ckpt_pending:
            st = w.symbols[sym]
            if sym in w.snap_pending and self._snapshot_due(w, sym, now_m):
                for key, msg in st.snapshots(now):
                    await w.producer.send(snap_topic, key=key.encode(), value=orjson.dumps(msg))
                w.last_snapshot[sym] = now_m
                w.snap_pending.discard(sym)
                SNAPSHOTS_OUT.labels("public").inc()
            if sym in w.dirty or sym in w.new:
                await w.producer.send(
                    snap_topic,
                    key=f"agg:seq:{sym}".encode(),
                    partition=part,
                    value=orjson.dumps(
                        {
                            "symbol": sym,
                            "partition": w.partition,
                            "epoch": st.epoch,
                            "seq": st.seq,
                            "offset": last,
                        }
                    ),
                )
            if (sym in w.ckpt_pending or sym in w.new) and self._checkpoint_due(w, sym, now_m):
                # a quiet symbol's last checkpoint covers all its events: its takeover replays nothing
                state = st.to_state()
                state["offset"] = last
                state["partition"] = w.partition
                await w.producer.send(
                    snap_topic,
                    key=f"agg:state:{sym}".encode(),
                    partition=part,
                    value=orjson.dumps(state),
                )
                w.last_checkpoint[sym] = now_m
                w.ckpt_pending.discard(sym)
                SNAPSHOTS_OUT.labels("agg_state").inc()
            if sym in w.new or sym in w.status_changed:
                key, msg = st.status_snapshot(now)
                await w.producer.send(snap_topic, key=key.encode(), value=orjson.dumps(msg))

    # ------------------------------------------------------------------ rebalance
    async def _assign(self, partition: int) -> None:
        """Take ownership of ``partition``: fence the previous owner, then recover its state."""
        s = self.settings
        txid = f"{self.cfg.group}.p{partition}"
        producer = make_producer(s, transactional_id=txid, transaction_timeout_ms=60_000)
        await producer.start()
        w = Worker(partition, producer)
        assert self.consumer is not None
        tp = TopicPartition(self.topics.input, partition)
        try:
            # InitProducerId happens here: from now on the previous owner can commit nothing.
            await producer.begin_transaction()
            w.txn_open = True
            committed = await self.consumer.committed(tp)
            states, replayed = await recover_partition(
                s, self.topics, partition, self._snapshot_partitions, committed, self.cfg.agg
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        w.symbols = states
        w.new = set(states)  # publish fresh snapshots + status on takeover
        w.dirty = set(states)
        w.snap_pending = set(states)
        w.ckpt_pending = set(states)
        w.next_offset = committed or 0
        if committed is not None:
            self.consumer.seek(tp, committed)
        else:
            await self.consumer.seek_to_beginning(tp)
        self.workers[partition] = w
        PARTITIONS.set(len(self.workers))
        SYMBOLS.inc(len(states))
        RECOVERIES.labels("recovered" if states else "fresh").inc()
        REPLAYED.inc(replayed)
        log.info(
            "partition assigned",
            extra={
                "partition": partition,
                "committed": committed,
                "symbols": sorted(states),
                "replayed": replayed,
            },
        )

    async def _drop(self, w: Worker, *, commit: bool) -> None:
        if commit and w.txn_open:
            if not await self._commit(w, revoking=True):
                return  # _commit failed and already dropped it
        if self.workers.get(w.partition) is w:
            self.workers.pop(w.partition)
            PARTITIONS.set(len(self.workers))
            SYMBOLS.dec(len(w.symbols))
        tm = getattr(w.producer, "_txn_manager", None)
        if w.txn_open and not (tm is not None and tm.is_fatal_error()):
            with contextlib.suppress(
                Exception
            ):  # best effort: the broker aborts it on timeout anyway
                await w.producer.abort_transaction()
        w.txn_open = False
        with contextlib.suppress(Exception):
            await w.producer.stop()

    async def on_revoked(self, tps: list[TopicPartition]) -> None:
        async with self.lock:
            for tp in tps:
                w = self.workers.get(tp.partition)
                if w is not None and tp.topic == self.topics.input:
                    await self._drop(w, commit=True)
                    log.info("partition revoked", extra={"partition": tp.partition})

    async def on_assigned(self, tps: list[TopicPartition]) -> None:
        async with self.lock:
            for tp in sorted(tps):
                if tp.topic == self.topics.input and tp.partition not in self.workers:
                    await self._assign_with_retry(tp.partition)

    async def _retake_later(self, partition: int) -> None:
        await asyncio.sleep(self.cfg.retake_s)
        async with self.lock:
            assert self.consumer is not None
            tp = TopicPartition(self.topics.input, partition)
            if tp in self.consumer.assignment() and partition not in self.workers:
                log.warning(
                    "still assigned after being fenced: taking the partition back",
                    extra={"partition": partition},
                )
                await self._assign_with_retry(partition)

    async def _assign_with_retry(self, partition: int) -> None:
        """Recovery may meet a slow broker; retry, and if it keeps failing stop the process
        (``fatal``) rather than own a partition whose records would be skipped."""
        backoff = Backoff(initial=0.5, maximum=5.0)
        for attempt in range(1, 6):
            try:
                await self._assign(partition)
                return
            except Exception as exc:  # noqa: BLE001 - KafkaError, RecoveryError, OSError, aiokafka asserts
                log.error(
                    "partition takeover failed",
                    extra={"partition": partition, "attempt": attempt, "error": repr(exc)},
                )
                await asyncio.sleep(backoff.next())
        self.fatal = f"cannot take over partition {partition}"


class _Listener(ConsumerRebalanceListener):
    def __init__(self, agg: Aggregator) -> None:
        self.agg = agg

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.agg.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.agg.on_assigned(list(assigned))
