"""The aggregator process: a deterministic sequencer from md.in to md.<stream>, hot-standby pairs.

Theory of operation (docs/aggregator.md "Sequencer and failover")
-----------------------------------------------------------------

The output is a pure function of the input log: each input record is applied to its symbol's
:class:`SymbolState` and flushed on its own (the record is the conflation unit, so batching
never depends on timing), the ``epoch`` of a symbol is the timestamp of the record that created
it, and ``seq`` counts messages per ``(channel, symbol)``. Any instance that reads the same
input from the same checkpoint derives byte-identical ``data`` for every ``seq``.

So every instance of a group reads *all* its input partitions and computes everything; one of
them, the leader (``aggregator/leadership.py``: heartbeats every ``MD_AGG_HEARTBEAT_MS`` on the
control topic, lease ``MD_AGG_LEASE_MS``), publishes with an idempotent, non-transactional
producer, and consumers read ``read_uncommitted`` and drop ``seq <= last``: no transaction puts
a floor under the latency. Standbys keep the outputs the leader has not acknowledged yet
(``aggregator/outbox.py``); when the heartbeats stop, a standby claims the next term, scans the
output partitions from the old leader's last acknowledged offsets and publishes exactly what is
missing: no gap, no duplicate a client can see, the same ``epoch``, and a pause of about one
lease. Two leaders at once (a paused leader that comes back) publish identical messages, which
consumers drop; the lower claim steps down at the next heartbeat it reads.

A publishing leader also takes each input record a source pushes once Kafka has acknowledged
it (``aggregator/source_feed.py``), when it is exactly the next offset of its partition, and
checks Kafka's copy against it: the order of application stays Kafka's, only sooner.

The leader also writes the public snapshots (every ``MD_AGG_SNAPSHOT_MS``) and the private
checkpoints (every ``MD_AGG_CHECKPOINT_MS``: after a producer flush, each symbol's state and the
partition's ``agg:index``), from which a restarted instance replays the input.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import Counter, Gauge, Histogram

from aggregator import events as ev
from aggregator.leadership import Claim, Heartbeat, Lease
from aggregator.outbox import Gate, Out, StandbyBuffer
from aggregator.recovery import (
    Checkpoint,
    load_checkpoints,
    out_key,
    scan_published,
    start_probe,
    stop_consumer,
)
from aggregator.recovery import (
    last_heartbeat as read_last_heartbeat,
)
from aggregator.source_feed import SourceFeedMismatch, SourceIntake
from aggregator.state import AggConfig, SymbolState
from core.codec import now_ns
from core.errors import ConfigError
from core.feed import FeedServer, parse_addresses
from core.health import Health
from core.isotime import HOP_BUCKETS
from core.kafka import Pacer, ensure_topics, make_producer, partitions_of
from core.kafka_rd import RdConsumer, input_consumer
from core.settings import Settings
from core.topics import Topics

log = logging.getLogger("aggregator")

EVENTS_IN = Counter("md_agg_events_in_total", "input events applied", ["type"])
MALFORMED = Counter("md_agg_malformed_input_total", "input records dropped as invalid")
MESSAGES_OUT = Counter("md_agg_messages_out_total", "data messages published", ["channel"])
_MESSAGES_OUT: dict[str, Any] = {}  # channel -> its MESSAGES_OUT child
SNAPSHOTS_OUT = Counter("md_agg_snapshots_out_total", "snapshot records published", ["kind"])
TAKEOVERS = Counter("md_agg_takeovers_total", "times this instance became the leader")
STEPDOWNS = Counter("md_agg_stepdowns_total", "times a higher claim made this instance a standby")
REPUBLISHED = Counter(
    "md_agg_takeover_published_total", "buffered messages a new leader published at takeover"
)
LEADER = Gauge("md_agg_leader", "1 while this instance publishes")
SYMBOLS = Gauge("md_agg_symbols", "symbols this instance computes")
STANDBY_BUFFER = Gauge("md_agg_standby_buffer", "outputs kept for a takeover (standby)")
INPUT_PACED = Gauge(
    "md_agg_input_paced_partitions",
    "md.in partitions a publishing leader reads paced: every record comes by push (_pace_input)",
)
STANDBY_DEFERRED = Gauge(
    "md_agg_standby_deferred", "input records a standby read and waits to apply (see _defer)"
)
HOP = Histogram(
    "md_agg_hop_seconds",
    "latency hops measured by the aggregator: upstream event time -> md.in append "
    "(event_to_append), md.in append -> published (append_to_publish)",
    ["hop"],
    buckets=HOP_BUCKETS,
)
_HOP_EVENT = HOP.labels("event_to_append")
_HOP_PUBLISH = HOP.labels("append_to_publish")


#: Output batching with a direct feed: Kafka is the durable copy and every gateway's backup, not
#: the latency path. Each produce request carries a batch per output partition (11 stream topics
#: x 6 partitions), and its cost to the broker and the aggregator is per request and partition,
#: not per record: 10 -> 100 ms took the broker from 27 to 15 % of a core at the default simulator
#: rate (docs/aggregator.md "Kafka batching", issue 10).
FEED_LINGER_MS = 100
#: Without a direct feed Kafka is the only path to the gateways: batch briefly.
NO_FEED_LINGER_MS = 5
#: With a direct feed, held outputs leave this long after the last input was applied (at most
#: twice the linger after they were first held): a source's ticks come every 50 ms, and a ship
#: due at the next tick put a produce request, its append and the storage fetch it wakes in
#: front of that tick's input (the simulator's acknowledgement took +0.5 ms when one did)
SHIP_QUIET_S = 0.01
# a publishing leader reads the control partition at most this often: what it finds there is its
# own heartbeats (10 a second, each woke its input fetch) or, rarely, a higher claim, whose
# only cost until read is identical duplicates (leadership.py)
LEADER_CONTROL_READ_S = 0.5


def _opt_int(raw: str, name: str) -> int | None:
    if not raw.strip():
        return None
    try:
        v = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {raw!r}") from None
    if v < 0:
        raise ConfigError(name, "must be >= 0")
    return v


def _addresses(raw: str, name: str) -> tuple[tuple[str, int], ...]:
    try:
        return tuple(parse_addresses(raw))
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from exc


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    group: str
    heartbeat_ms: int = 100  # leader heartbeat period
    lease_ms: int = 500  # a standby takes over after this long without a heartbeat
    # ... and after reading back this many of its own presence records (leadership.py)
    lease_presence: int = 3
    # the output producer's batching; None: FEED_LINGER_MS with a direct feed (gateways get
    # every message from it at once, so Kafka only has to be durable), NO_FEED_LINGER_MS without
    kafka_linger_ms: int | None = None
    checkpoint_ms: int = 5000  # private checkpoint per partition at most this often
    snapshot_ms: int = 2000  # public snapshots per symbol at most this often (docs/aggregator.md)
    max_batch: int = 5000  # records per poll: bounds memory and per-batch latency
    partitions: tuple[int, ...] = ()  # input partitions of this group (empty: all)
    ident: str = ""
    standby_fetch_ms: int = 100  # a standby reads in batches: what the leader acked is not encoded
    # the sources' feeds (core/input_feed.py) the leader takes acknowledged records from
    source_feed: tuple[tuple[str, int], ...] = ()
    # a publishing leader whose pushes are in step reads Kafka's copy of md.in this often, to
    # verify them (0: continuously, as without a source feed); see _pace_input
    input_verify_ms: int = 200
    agg: AggConfig = field(default_factory=AggConfig)

    @classmethod
    def from_settings(cls, s: Settings) -> ServiceConfig:
        parts = s.get("MD_AGG_PARTITIONS", str, "")
        return cls(
            group=s.get("MD_AGG_GROUP", str, f"{s.topic_prefix}.aggregator"),
            heartbeat_ms=s.get("MD_AGG_HEARTBEAT_MS", int, 100),
            lease_ms=s.get("MD_AGG_LEASE_MS", int, 500),
            lease_presence=s.get("MD_AGG_LEASE_PRESENCE", int, 3),
            kafka_linger_ms=_opt_int(
                s.get("MD_AGG_KAFKA_LINGER_MS", str, ""), "MD_AGG_KAFKA_LINGER_MS"
            ),
            checkpoint_ms=s.get("MD_AGG_CHECKPOINT_MS", int, 5000),
            snapshot_ms=s.get("MD_AGG_SNAPSHOT_MS", int, 2000),
            max_batch=s.get("MD_AGG_MAX_BATCH", int, 5000),
            partitions=tuple(int(p) for p in parts.split(",") if p.strip()),
            ident=s.get("MD_AGG_ID", str, ""),
            standby_fetch_ms=s.get("MD_AGG_STANDBY_FETCH_MS", int, 100),
            source_feed=_addresses(s.get("MD_AGG_SOURCE_FEED", str, ""), "MD_AGG_SOURCE_FEED"),
            input_verify_ms=s.get("MD_AGG_INPUT_VERIFY_MS", int, 200),
            agg=AggConfig(
                checksum_depth=s.book_checksum_depth,
                trades_snapshot_n=s.get("MD_AGG_TRADES_SNAPSHOT", int, 100),
                stats_mid_window=s.get("MD_STATS_MID_WINDOW", int, 10),
                stats_vwap_window=s.get("MD_STATS_VWAP_WINDOW", int, 200),
                candle_update_ms=s.get("MD_AGG_CANDLE_UPDATE_MS", int, 1000),
            ),
        )


@dataclass(frozen=True, slots=True)
class _ScanContext:
    """What a takeover's scan needs when it ends: the old leader's acknowledged inputs, its last
    heartbeat, our claim, when the scan began, and the lease as it was (to go back on failure)."""

    acked: dict[int, int]
    prev: Heartbeat | None
    claim: Claim
    started: float
    saved: tuple[Claim | None, float, Heartbeat | None]


@dataclass
class _Tick:
    """One processed poll batch as leader: its input positions and its sends' futures."""

    inputs: dict[int, int]
    futures: list[tuple[str, asyncio.Future[Any]]]


class Aggregator:
    def __init__(
        self, settings: Settings, cfg: ServiceConfig | None = None, *, feed_port: int | None = None
    ) -> None:
        self.settings = settings
        # the direct feed to gateways (core/feed.py); port 0 or unset MD_AGG_FEED_PORT: none
        port = feed_port if feed_port is not None else settings.get("MD_AGG_FEED_PORT", int, 0)
        self.feed = (
            FeedServer(settings.get("MD_AGG_FEED_HOST", str, "127.0.0.1"), port) if port else None
        )
        self.cfg = cfg or ServiceConfig.from_settings(settings)
        self.topics = Topics.from_settings(settings)
        # unique per run: a restarted instance must never mistake its old heartbeats for its own
        self.ident = (
            f"{self.cfg.ident or socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        )
        self.lease = Lease(self.ident, self.cfg.lease_ms / 1000, self.cfg.lease_presence)
        self._presence: asyncio.Future[Any] | None = None
        self.symbols: dict[str, SymbolState] = {}
        self.skip_upto: dict[str, int] = {}  # symbol -> its checkpoint's input offset
        self.checkpointed: set[str] = set()
        self.positions: dict[int, int] = {}  # input partition -> last offset read
        # a standby's input records not applied yet, per partition: (read at, record); _defer
        self._deferred: dict[int, deque[tuple[float, Any]]] = {}
        self.buffer = StandbyBuffer()
        self.gate: Gate | None = None
        # a takeover's scan of the outputs, running while the new leader goes on deriving
        self._scan: asyncio.Task[dict[Any, int]] | None = None
        self._scan_ctx: _ScanContext | None = None
        # the acknowledged point: input offset per partition, output offsets ("topic|part")
        self.acked: dict[int, int] = {}
        self.out: dict[str, int] = {}
        self.ticks: deque[_Tick] = deque()
        # outputs held for Kafka (_hold): per output partition a batch, and the inputs they settle
        self._builders: dict[tuple[str, int], Any] = {}
        self._held_inputs: dict[int, int] = {}
        self._held_since: float | None = None
        self._ship_s = 0.0  # set in run(): MD_AGG_KAFKA_LINGER_MS
        self._input_at = 0.0  # monotonic time inputs were last applied (SHIP_QUIET_S)
        self.snap_pending: set[str] = set()
        self.ckpt_pending: set[str] = set()
        self.last_snapshot: dict[str, float] = {}
        self.last_checkpoint = 0.0
        self.last_heartbeat = 0.0
        self._last_commit = 0.0
        self.producer: AIOKafkaProducer | None = None
        # heartbeats and presence records leave at once, whatever the outputs' batching: the
        # lease is timed in hundreds of milliseconds (leadership.py)
        self.control_producer: AIOKafkaProducer | None = None
        # the input (md.in + control) consumer: aiokafka, or librdkafka with MD_KAFKA_CLIENT
        # (core/kafka_rd.py)
        self.consumer: RdConsumer | AIOKafkaConsumer | None = None
        self._probe: AIOKafkaConsumer | None = None  # takeover reads (recovery.start_probe)
        self.health = Health("aggregator")
        self.health.add("consumer", self._health_consumer)
        self._last_poll = time.monotonic()
        self._snapshot_partitions = 1
        self._partitioner = DefaultPartitioner()
        self._partition_cache: dict[tuple[str, bytes], int] = {}
        self._events_in: dict[str, int] = {}
        self._committed: dict[int, int] = {}
        self.fatal: str | None = None
        self._ctp: TopicPartition | None = None  # the control partition, once assigned
        # records the sources push once Kafka has them (core/input_feed.py): a publishing
        # leader applies the next offset of a partition without waiting for its own fetch
        self.intake = SourceIntake(self.topics.input, self.cfg.source_feed)
        # the main loop's poll and the intake's records are applied one at a time
        self._apply_lock = asyncio.Lock()
        self._control_at = 0.0  # monotonic time the control partition was last read
        self._input_read_at: dict[int, float] = {}  # md.in partition -> last Kafka read

    def _health_consumer(self) -> tuple[bool, Any]:
        age = time.monotonic() - self._last_poll
        return age < 30 and not self.fatal, {
            "last_poll_s": round(age, 2),
            "role": "leader" if self.lease.leader else "standby",
            "term": self.lease.current.term if self.lease.current else 0,
            # a standby's own presence records read back since the leader's last heartbeat
            "presence": self.lease.presence,
            "partitions": sorted(self.positions),
            "symbols": len(self.symbols),
            "error": self.fatal,
        }

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await ensure_topics(
            s
        )  # idempotent; a fresh prefix (tests, `make run-recording`) just works
        self.consumer = input_consumer(s, group_id=self.cfg.group)
        # the gateways get every message over the direct feed at once; Kafka is the durable
        # copy, so holding the outputs of MD_AGG_KAFKA_LINGER_MS for one produce request costs
        # no client latency and saves the aggregator and the broker a request per record
        linger = self.cfg.kafka_linger_ms
        if linger is None:
            linger = FEED_LINGER_MS if self.feed is not None else NO_FEED_LINGER_MS
        self._ship_s = linger / 1000
        self.producer = make_producer(s, linger_ms=0)
        self.control_producer = make_producer(s, linger_ms=0)
        await self.consumer.start()
        await self.producer.start()
        await self.control_producer.start()
        self._probe = await start_probe(s)
        if self.feed is not None:
            await self.feed.start()
        beat = asyncio.create_task(self._heartbeat_loop(stop))
        intake = asyncio.create_task(self._intake_loop(), name="source-intake")
        try:
            await self._start()
            standby_pacer = Pacer(self.cfg.standby_fetch_ms / 1000)
            while not stop.is_set():
                if self.fatal:
                    raise RuntimeError(self.fatal)  # exit non-zero: the supervisor restarts us
                if not self.lease.leader:
                    # a standby reads in batches (one fetch per MD_AGG_STANDBY_FETCH_MS) and
                    # applies a record once the leader has acked it, without encoding it
                    # (_defer); the acks trail the input by 150-250 ms
                    await standby_pacer.wait()
                wait_ms = self.cfg.heartbeat_ms
                due = self._ship_wait(time.monotonic())
                if due is not None:  # wake up when what is held is due
                    wait_ms = max(1, min(wait_ms, int(due * 1000) + 1))
                self._pace_control()
                self._pace_input()
                batch = await self.consumer.getmany(
                    timeout_ms=wait_ms, max_records=self.cfg.max_batch
                )
                self._last_poll = now = time.monotonic()
                for tp in batch:
                    if tp.topic == self.topics.input:
                        self._input_read_at[tp.partition] = now
                async with self._apply_lock:
                    await self._process(batch)
                    await self._timers()
                await self._sync_intake()
            async with self._apply_lock:
                intake.cancel()  # between two batches, never inside one
            await self.intake.disconnect()
            if self.lease.leader:
                beat.cancel()  # no ordinary heartbeat may follow the resignation
                await self._ship_held()
                await self.producer.flush()
                self._settle_ticks()
                await self._heartbeat(time.monotonic(), resign=True)
                await self.control_producer.flush()
        finally:
            beat.cancel()
            intake.cancel()
            await self.intake.disconnect()
            if self._scan is not None:
                self._scan.cancel()
            LEADER.set(0)
            if self.feed is not None:
                await self.feed.stop()
            await self.consumer.stop()
            await self.producer.stop()
            await self.control_producer.stop()
            if self._probe is not None:
                await stop_consumer(self._probe)

    async def _start(self) -> None:
        s, c = self.settings, self.consumer
        assert c is not None
        parts = await self._partitions(self.topics.snapshot)
        self._snapshot_partitions = len(parts) or 1
        inputs = list(self.cfg.partitions) or sorted(await self._partitions(self.topics.input))
        checkpoints = await load_checkpoints(
            s, self.topics, inputs, self._snapshot_partitions, self.cfg.agg
        )
        hb = await read_last_heartbeat(s, self.topics, self.cfg.group, self._probe)
        await self._warm_probe()
        self._baseline(checkpoints, hb[0] if hb else None)
        now = time.monotonic()
        if hb is not None:
            self.lease.observe(hb[0], now - max(0, hb[1]) / 1000)
            # a leader beat moments ago: if it died, the standby that was running has every
            # message in memory; this instance is still replaying, so it lets that one go first
            self.lease.defer_until = now + self.cfg.lease_ms / 1000
        for p, ck in checkpoints.items():
            for sym, st in ck.states.items():
                self.symbols[sym] = st
                self.skip_upto[sym] = ck.upto[sym]
                self.checkpointed.add(sym)
            self.positions[p] = ck.start - 1
        SYMBOLS.set(len(self.symbols))
        itps = [TopicPartition(self.topics.input, p) for p in inputs]
        ctp = TopicPartition(self.topics.control, 0)
        assert self._probe is not None
        self._probe.assign([ctp])  # the control topic's end, through aiokafka's client
        try:
            control_end = (await self._probe.end_offsets([ctp]))[ctp]
        finally:
            self._probe.unsubscribe()
        c.assign([*itps, ctp])
        self._ctp = ctp
        for tp in itps:
            c.seek(tp, checkpoints[tp.partition].start)
        c.seek(ctp, control_end)
        # No "lead at once" even when the last heartbeat is old or a resignation: a hot standby
        # may be claiming this very moment, and two claims of one term settle by ident, which
        # let a restarted instance (still replaying) displace the standby that had just taken
        # over (seen in make chaos: a second takeover and a 2.3 s pause). The lease and the
        # presence rule decide, as for everyone; a cold start waits one lease.
        log.info(
            "aggregator started",
            extra={
                "id": self.ident,
                "partitions": inputs,
                "symbols": sorted(self.symbols),
                "from": {str(p): ck.start for p, ck in checkpoints.items()},
                "leader_seen": hb[0].claim.ident if hb else None,
            },
        )

    async def _warm_probe(self) -> None:
        """Connections and metadata of every output partition, ready before a takeover needs
        them (a cold probe's first scan took ~0.9 s on a busy host, most of a failover)."""
        assert self._probe is not None
        tps = [
            TopicPartition(t, p)
            for t in self.topics.all_streams()
            for p in sorted(await self._partitions(t))
        ]
        self._probe.assign(tps)
        try:
            await self._probe.end_offsets(tps)
        finally:
            self._probe.unsubscribe()

    def _baseline(self, checkpoints: dict[int, Checkpoint], hb: Heartbeat | None) -> None:
        """What is known to be in Kafka at start: the newer of the last heartbeat and the checkpoints.
        Output offsets are lower bounds, so the smaller of two is always safe to scan from."""
        for p, ck in checkpoints.items():
            a = max(ck.acked, hb.acked.get(p, -1) if hb else -1)
            self.acked[p] = a
        outs = [ck.out for ck in checkpoints.values()] + ([hb.out] if hb else [])
        for o in outs:
            for k, v in o.items():
                self.out[k] = min(self.out.get(k, v), v)

    async def _partitions(self, topic: str) -> set[int]:
        assert self._probe is not None  # metadata through aiokafka's client, whatever reads input
        return await partitions_of(self._probe, topic)

    # ------------------------------------------------------------------ processing
    async def _process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Apply and route each record: the direct feed gets each partition's messages as soon
        as its records of this poll are applied, Kafka's batches get them after every partition,
        and what is held ships between ticks (``_ship_wait``)."""
        control = self.topics.control
        builders = self._builders
        inputs: dict[int, int] = {}
        for tp, recs in batch.items():  # heartbeats first: their acks decide what to encode
            if tp.topic == control:
                self._on_control(recs)
        to_kafka: list[Out] = []
        for tp, recs in self._watched_first(batch):
            if tp.topic == control:
                continue
            p = tp.partition
            for i, r in enumerate(recs):
                if i and not i % 256:
                    await asyncio.sleep(0)  # let the heartbeat task beat during a long catch-up
                if r.offset <= self.positions.get(p, -1):
                    # applied: taken from a source's push (the same bytes, or stop) or fetched
                    # before a re-seek
                    self._verify_pushed(p, r)
                    continue
                self.positions[p] = r.offset
                inputs[p] = r.offset
                if not self.lease.leader:
                    self._defer(p, r)
                    continue
                outs = self._apply_record(p, r)
                if outs:
                    to_kafka += self._route(outs)
            if self.feed is not None:
                # one write per receiver for a partition's records of this poll (a tick of every
                # symbol on it), not one per record: a write costs the sender and wakes the
                # receiver, and the records of one poll arrived together anyway; and before
                # the Kafka batching below, which the gateways do not wait for
                self.feed.flush()
        # Kafka's copy after every partition's direct-feed write: a tick brings one record per
        # symbol, and the next symbol's record need not wait for this one's appends
        for o in to_kafka:
            await self._append(o, builders)
        await self._apply_deferred()
        await self._after_poll(inputs, builders)

    def _watched_first(
        self, batch: dict[TopicPartition, list[Any]]
    ) -> list[tuple[TopicPartition, list[Any]]]:
        """The partitions of ``batch`` with a record of a symbol some gateway reads first, the
        rest after, each group in its order. A tick brings one record per symbol, derived one
        after another: a watched symbol's record behind two unwatched ones waited ~0.7 ms for
        them (issue 10), though their messages only go to Kafka. Each partition's records keep
        their order, and a stream is one symbol on one partition, so no stream sees a change."""
        items = list(batch.items())
        if self.feed is None or len(items) < 2:
            return items
        watched = self.feed.watched_symbols()
        if not watched:  # None (every symbol read) or empty (no reader): arrival order
            return items
        hot = [any(r.key in watched for r in recs) for _, recs in items]
        if all(hot) or not any(hot):
            return items
        pairs = list(zip(items, hot, strict=True))
        return [kv for kv, h in pairs if h] + [kv for kv, h in pairs if not h]

    async def _after_poll(self, inputs: dict[int, int], builders: dict[Any, Any]) -> None:
        """Hold what a poll produced for Kafka, and ship what is due."""
        if inputs:
            self._input_at = time.monotonic()
        if builders or (inputs and self._publishing):
            self._hold(inputs)
        due = self._ship_wait(time.monotonic())
        if due is not None and due <= 0:
            await self._ship_held()
        for t, n in self._events_in.items():
            EVENTS_IN.labels(t).inc(n)
        self._events_in.clear()

    def _verify_pushed(self, p: int, r: Any) -> None:
        try:
            self.intake.verify(p, r.offset, r.value)
        except SourceFeedMismatch as exc:
            self.fatal = str(exc)  # exit non-zero: the restart derives from Kafka alone

    async def _intake_loop(self) -> None:
        """Apply what the sources push (``aggregator/source_feed.py``), as soon as it comes."""
        intake = self.intake
        while True:
            await intake.wake.wait()
            async with self._apply_lock:
                batch = intake.take(intake.drain(), self.positions, self._publishing)
                if batch:
                    await self._process(batch)
                self._pace_input()  # a push past a hole resumes the partition's reads at once

    async def _sync_intake(self) -> None:
        """Connected to the sources' feeds while publishing, not otherwise."""
        if self._publishing:
            if not self.intake.connected:
                self.intake.connect()
        elif self.intake.connected:
            await self.intake.disconnect()

    def _hold(self, inputs: dict[int, int]) -> None:
        """Outputs wait in ``_builders`` (one per output partition) for ``_ship_s``: the batching
        is ours, not the producer's linger, because aiokafka's ``send_batch`` waits until the
        previous batch of a partition has left, which with a linger stalled this loop for the
        whole linger (seen: md.in append -> publish p50 220 ms at a 100 ms linger)."""
        for p, o in inputs.items():
            self._held_inputs[p] = max(self._held_inputs.get(p, -1), o)
        if self._held_since is None:
            self._held_since = time.monotonic()

    def _ship_wait(self, now: float) -> float | None:
        """Seconds until what is held is due for Kafka (<= 0: now; None: nothing held). With a
        direct feed, not before ``SHIP_QUIET_S`` after the last input: between two ticks."""
        held = self._held_since
        if held is None:
            return None
        due = held + self._ship_s
        if self.feed is not None:
            due = min(max(due, self._input_at + SHIP_QUIET_S), held + 2 * self._ship_s)
        return due - now

    async def _ship_held(self) -> None:
        """Hand what is held to the producer now (its interval passed, a checkpoint, shutdown)."""
        if self._held_since is None and not self._builders:
            return
        builders, inputs = self._builders, self._held_inputs
        self._builders, self._held_inputs, self._held_since = {}, {}, None
        await self._ship(builders, inputs)

    async def _ship(self, builders: dict[tuple[str, int], Any], inputs: dict[int, int]) -> None:
        """Hand the built batches to the producer; their futures settle ``inputs`` (a tick)."""
        assert self.producer is not None
        futures = []
        for (topic, part), b in builders.items():
            fut = await self.producer.send_batch(b, topic, partition=part)
            futures.append((out_key(topic, part), fut))
        self.ticks.append(_Tick(inputs, futures))
        # add_batch never suspends: without a turn of the loop the sender task would only
        # write these once the whole poll batch is processed
        await asyncio.sleep(0)

    def _apply_record(self, p: int, r: Any) -> list[Out] | None:
        try:
            events = ev.decode_record(r.value or b"")
        except ev.EventError as exc:
            MALFORMED.inc()
            log.warning("malformed input dropped", extra={"partition": p, "error": str(exc)})
            return None
        e = events[0]
        sym = e.symbol
        if r.offset <= self.skip_upto.get(sym, -1):
            return None  # this symbol's checkpoint already includes it
        st = self.symbols.get(sym)
        if st is None:
            # the epoch is the creating record's time: every instance derives the same one
            st = self.symbols[sym] = SymbolState(sym, int(r.timestamp), self.cfg.agg)
            SYMBOLS.set(len(self.symbols))
            log.info("new symbol stream", extra={"symbol": sym, "epoch": st.epoch})
        try:
            for x in events:
                st.apply(x)
        except Exception as exc:  # noqa: BLE001 - a validated event should never get here
            # Crashing would not help: the restarted process would meet the same record again
            # (a poison pill). Count it loudly instead; validation in events.py is the real guard.
            MALFORMED.inc()
            log.error(
                "event rejected by state", extra={"symbol": sym, "error": repr(exc)}, exc_info=True
            )
            st.discard()
            return None
        for x in events:
            self._events_in[x.type] = self._events_in.get(x.type, 0) + 1
        self.snap_pending.add(sym)
        self.ckpt_pending.add(sym)
        leader = self.lease.leader
        if (leader and self.gate is not None and self.gate.covered(p, r.offset)) or (
            not leader and r.offset <= self._leader_acked(p)
        ):
            st.discard()  # already in Kafka: keep the counters, skip the encoding
            return None
        # the publish time is taken once the record is applied: a record of a busy feed packet
        # holds tens of events, and their apply is the aggregator's time, not the hop after it
        now = now_ns()
        ts_ms = r.timestamp
        _HOP_EVENT.observe(max(0.0, ts_ms / 1000 - events[-1].ts / 1e9))
        if leader:
            _HOP_PUBLISH.observe(max(0.0, now / 1e9 - ts_ms / 1000))
        key = sym.encode()
        dumps = orjson.dumps
        stream = self.topics.stream
        return [
            Out(p, r.offset, (ch, sym), msg["epoch"], msg["seq"], stream(ch), key, dumps(msg))
            for ch, msg in st.flush(now)
        ]

    def _defer(self, p: int, r: Any) -> None:
        """A standby applies a record once the leader's heartbeat says it is published (then it
        is applied without being encoded: ``SymbolState.discard``), or once it waited a lease.
        Applied at once, almost every record was encoded and buffered, because the leader's acks
        trail its input by its Kafka linger and a heartbeat (150-250 ms): that was half a
        leader's CPU for messages that are thrown away a moment later. A takeover applies what
        waits first (``_take_over``), so the claimant derives from exactly the input it read."""
        q = self._deferred.get(p)
        if q is None:
            q = self._deferred[p] = deque()
        q.append((time.monotonic(), r))

    async def _apply_deferred(self, *, every: bool = False) -> None:
        """Apply the deferred records that are acked or waited a lease (``every``: all of them,
        in order, as a standby: what the leader has not acked goes to the buffer)."""
        if not self._deferred:
            return
        due = time.monotonic() - self.cfg.lease_ms / 1000
        n = 0
        for p, q in list(self._deferred.items()):
            acked = self._leader_acked(p)
            while q and (every or q[0][1].offset <= acked or q[0][0] <= due):
                r = q.popleft()[1]
                outs = self._apply_record(p, r)
                if outs:
                    self._route(outs)
                n += 1
                if not n % 256:
                    await asyncio.sleep(0)  # a long catch-up must not starve the heartbeats
            if not q:
                del self._deferred[p]
        STANDBY_DEFERRED.set(sum(len(q) for q in self._deferred.values()))

    def _leader_acked(self, p: int) -> int:
        hb = self.lease.last
        return hb.acked.get(p, -1) if hb is not None else self.acked.get(p, -1)

    @property
    def _publishing(self) -> bool:
        """Leading and done with the takeover scan: outputs go to Kafka and inputs get acked."""
        return self.lease.leader and self._scan is None

    def _route(self, outs: list[Out]) -> list[Out]:
        """Queue ``outs`` on the direct feed (leading) or in the standby buffer; returns the ones
        that go to Kafka now (publishing: all that the takeover gate lets through)."""
        feed = self.feed
        if not self._publishing:
            for o in outs:
                self.buffer.add(o)
            if self.lease.leader and feed is not None:
                # taking over: gateways get it now (they drop what they had by seq); Kafka gets
                # it when the scan has told what the old leader wrote
                for o in outs:
                    feed.publish(o.value, (o.stream, o.epoch, o.seq))
            return []
        gate = self.gate
        if gate is not None:
            outs = [o for o in outs if gate.allows(o.partition, o.offset, o.stream, o.epoch, o.seq)]
        if feed is not None:  # gateways get it now; Kafka is the durable copy
            for o in outs:
                feed.publish(o.value, (o.stream, o.epoch, o.seq))
        return outs

    async def _append(self, o: Out, builders: dict[tuple[str, int], Any]) -> None:
        producer = self.producer
        assert producer is not None
        tp = (o.topic, await self._partition_for(o.topic, o.key))
        b = builders.get(tp)
        if b is None:
            b = builders[tp] = producer.create_batch()
        if b.append(key=o.key, value=o.value, timestamp=None) is None:  # full: ship it
            fut = await producer.send_batch(b, tp[0], partition=tp[1])
            self.ticks.append(_Tick({}, [(out_key(*tp), fut)]))
            b = builders[tp] = producer.create_batch()
            b.append(key=o.key, value=o.value, timestamp=None)
        child = _MESSAGES_OUT.get(o.stream[0])
        if child is None:
            child = _MESSAGES_OUT[o.stream[0]] = MESSAGES_OUT.labels(o.stream[0])
        child.inc()  # labels() per message was ~2 % of the leader's samples

    async def _partition_for(self, topic: str, key: bytes) -> int:
        k = (topic, key)
        p = self._partition_cache.get(k)
        if p is None:
            assert self.producer is not None
            all_parts = sorted(await self.producer.partitions_for(topic))  # cached: once a key
            p = self._partitioner(key, all_parts, all_parts)
            self._partition_cache[k] = p
        return p

    # ------------------------------------------------------------------ leadership
    def _pace_control(self) -> None:
        """A publishing leader leaves the control partition unread between reads
        ``LEADER_CONTROL_READ_S`` apart (aiokafka's pause; the librdkafka consumer reads it
        always). A standby, a claimant and a leader still scanning read it all the time."""
        c = self.consumer
        if not isinstance(c, AIOKafkaConsumer) or self._ctp is None:
            return
        rest = self._publishing and time.monotonic() - self._control_at < LEADER_CONTROL_READ_S
        if rest != (self._ctp in c.paused()):
            if rest:
                c.pause(self._ctp)
            else:
                c.resume(self._ctp)

    def _pace_input(self) -> None:
        """A publishing leader pauses its Kafka reads of an md.in partition whose every record
        comes by push (``SourceIntake.in_step``), and reads it once per ``input_verify_ms``:
        Kafka's copy of a pushed record is then only the check of its bytes (``verify``), and
        reading it as it is appended put a fetch response, its decoding and a poll in front of
        every tick's pushes (the fetch answered the append ~0.3 ms before the push arrived).
        A partition out of step (a hole, a source that does not push, no intake) is read as
        before; the librdkafka consumer reads everything always."""
        c = self.consumer
        period = self.cfg.input_verify_ms / 1000
        if not isinstance(c, AIOKafkaConsumer) or period <= 0:
            return
        now = time.monotonic()
        pace = self._publishing and self.intake.connected
        paused = c.paused()
        n = 0
        for tp in c.assignment():
            if tp.topic != self.topics.input:
                continue
            p = tp.partition
            step = pace and self.intake.in_step(p, now)
            n += step
            rest = step and now - self._input_read_at.get(p, 0.0) < period
            if rest != (tp in paused):
                if rest:
                    c.pause(tp)
                else:
                    c.resume(tp)
        INPUT_PACED.set(n)

    def _on_control(self, recs: list[Any]) -> None:
        now = time.monotonic()
        self._control_at = now
        group = self.cfg.group.encode()
        for r in recs:
            if r.key != group:
                continue  # another pair (MD_AGG_PARTITIONS) leads its own partitions
            try:
                raw = orjson.loads(r.value)
                if "presence" in raw:
                    self.lease.observe_presence(str(raw["presence"]))
                    continue
                hb = Heartbeat.decode(raw)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("unreadable heartbeat ignored", extra={"offset": r.offset})
                continue
            if self.lease.observe(hb, now):
                STEPDOWNS.inc()
                LEADER.set(0)
                self.gate = None
                log.warning(
                    "a higher claim leads: standing by",
                    extra={"leader": hb.claim.ident, "term": hb.claim.term},
                )
            if hb.claim.ident != self.ident and hb.claim == self.lease.current:
                self.buffer.trim(hb.acked)
        STANDBY_BUFFER.set(self.buffer.size)

    async def _try_take_over(self) -> None:
        """Take over unless the leader is in fact alive; if the broker cannot be reached (no
        heartbeat can be read, no scan can be made), stay a standby and try again later: a
        leader without a scan could not know what to publish, and could not publish anyway."""
        saved = (self.lease.current, self.lease.seen_at, self.lease.last)
        try:
            if not await self._leader_alive():
                await self._take_over(time.monotonic())
        except Exception as exc:  # noqa: BLE001 - KafkaConnectionError, timeouts, RecoveryError
            self._postpone_take_over(saved, exc)

    def _postpone_take_over(
        self, saved: tuple[Claim | None, float, Heartbeat | None], exc: Exception
    ) -> None:
        """Back to standby with the lease as it was before the claim; retry in a lease."""
        self.lease.current, self.lease.seen_at, self.lease.last = saved
        self.lease.seen_at = self.lease.started_at = time.monotonic()
        self.gate = None
        LEADER.set(0)
        log.warning("takeover postponed: Kafka unreachable", extra={"error": repr(exc)})

    async def _leader_alive(self) -> bool:
        """Confirm a missed lease by reading the control topic afresh: a standby busy with a big
        batch may simply not have read the heartbeats that are there."""
        hb = await read_last_heartbeat(self.settings, self.topics, self.cfg.group, self._probe)
        if hb is None or hb[1] >= self.cfg.lease_ms or hb[0].resign:
            return False
        self.lease.observe(hb[0], time.monotonic() - max(0, hb[1]) / 1000)
        return not self.lease.should_take_over(time.monotonic())

    async def _take_over(self, now: float) -> None:
        """Claim, give the gateways what the buffer holds, and start the scan of the outputs.

        The scan (what did the old leader write after its last acknowledged point?) is a few
        hundred ms of Kafka reads, more on a busy machine (1.8 s measured at load 16). It runs
        beside the main loop: meanwhile new input is derived and sent to the direct feed at
        once, as a leader does, and buffered for Kafka, as a standby does; inputs are not
        acknowledged. Gateways drop by ``seq`` what they already had, so the feed may repeat;
        it never skips, since every output after the old leader's ``acked`` is in the buffer.
        """
        # derive from everything read first, as the standby it still is: what the old leader
        # did not ack lands in the buffer, which the feed and the scan's gate work from
        await self._apply_deferred(every=True)
        if self.buffer.lost:
            self.fatal = "standby buffer overflowed: restart from a checkpoint before leading"
            return
        prev = self.lease.last
        # One consistent (acked, out) pair: the last leader's, which is the newest truth. Mixing
        # in this instance's own start-up baseline (min of offsets) made a standby that had run
        # for a while scan minutes of output at takeover (measured 3.6 s). Using the old leader's
        # pair can only make us republish identical messages, never skip a missing one.
        if prev is not None:
            acked, out = dict(prev.acked), dict(prev.out)
        else:
            acked, out = dict(self.acked), dict(self.out)
        saved = (self.lease.current, self.lease.seen_at, self.lease.last)
        claim = self.lease.take_over(now)
        self.acked, self.out = acked, out
        self.gate = None
        await self._heartbeat(now)  # tell the others first: a second claimant settles sooner
        if self.feed is not None:
            for q in self.buffer.by_partition.values():
                for o in q:
                    self.feed.publish(o.value, (o.stream, o.epoch, o.seq))
            self.feed.flush()
        LEADER.set(1)
        log.warning(
            "claimed the lead: scanning the outputs",
            extra={"term": claim.term, "previous": prev.claim.ident if prev else None},
        )
        self._scan_ctx = _ScanContext(acked, prev, claim, time.monotonic(), saved)
        self._scan = asyncio.create_task(
            scan_published(self.settings, out, self.topics.all_streams(), self._probe),
            name="takeover-scan",
        )

    async def _finish_take_over(self) -> None:
        """The scan is done: publish to Kafka what the old leader did not, then lead normally."""
        scan, self._scan = self._scan, None
        assert scan is not None
        ctx = self._scan_ctx
        assert ctx is not None
        acked, prev, claim, t0, saved = ctx.acked, ctx.prev, ctx.claim, ctx.started, ctx.saved
        try:
            published = scan.result()
        except Exception as exc:  # noqa: BLE001 - KafkaConnectionError, timeouts, RecoveryError
            self._postpone_take_over(saved, exc)  # the buffer is intact
            return
        self.gate = Gate(acked, published)
        builders: dict[tuple[str, int], Any] = {}
        drained = self.buffer.drain(self.gate)
        for o in drained:
            await self._append(o, builders)  # the feed had them at the claim
        await self._ship(builders, dict(self.positions))
        self.snap_pending |= set(self.symbols)
        self.last_snapshot.clear()
        TAKEOVERS.inc()
        REPUBLISHED.inc(len(drained))
        log.warning(
            "took over as leader",
            extra={
                "term": claim.term,
                "previous": prev.claim.ident if prev else None,
                "published_from_buffer": len(drained),
                "streams_scanned": len(published),
                "scan_ms": round((time.monotonic() - t0) * 1000, 1),
            },
        )

    def _settle_ticks(self) -> None:
        """Advance the acknowledged point over every leading tick whose sends all completed."""
        while self.ticks:
            t = self.ticks[0]
            if not all(f.done() for _, f in t.futures):
                return
            for k, f in t.futures:
                exc = f.exception()
                if exc is not None:
                    # the idempotent producer gave up: a message may be missing, and only a
                    # restart (checkpoint + scan) can tell which; never carry on past a gap
                    self.fatal = f"output send failed: {exc!r}"
                    return
                self.out[k] = max(self.out.get(k, 0), f.result().offset)
            for p, o in t.inputs.items():
                self.acked[p] = max(self.acked.get(p, -1), o)
            self.ticks.popleft()

    async def _send_presence(self) -> asyncio.Future[Any]:
        assert self.control_producer is not None
        return await self.control_producer.send(
            self.topics.control,
            key=self.cfg.group.encode(),
            value=orjson.dumps({"presence": self.ident, "ts_ms": int(time.time() * 1000)}),
            partition=0,
        )

    async def _heartbeat(self, now: float, *, resign: bool = False) -> None:
        assert self.control_producer is not None and self.lease.current is not None
        hb = Heartbeat(self.lease.current, dict(self.acked), dict(self.out), resign)
        await self.control_producer.send(
            self.topics.control,
            key=self.cfg.group.encode(),
            value=orjson.dumps(hb.encode(int(time.time() * 1000))),
            partition=0,
        )
        self.last_heartbeat = now
        if now - self._last_commit < 1.0:
            return  # the group's offsets are for lag monitoring: once a second is plenty
        self._last_commit = now
        offsets = {
            TopicPartition(self.topics.input, p): o + 1
            for p, o in self.acked.items()
            if self._committed.get(p) != o
        }
        if offsets and self.consumer is not None:
            try:
                await self.consumer.commit(offsets)  # for lag monitoring only: not a resume point
                for tp, o in offsets.items():
                    self._committed[tp.partition] = o - 1
            except Exception as exc:  # noqa: BLE001 - monitoring must not stop the sequencer
                log.warning("offset commit failed", extra={"error": repr(exc)})

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        """Beats on its own clock, so a long takeover scan or a big batch does not look like death."""
        period = self.cfg.heartbeat_ms / 1000
        while not stop.is_set():
            # wake when the next heartbeat (leading) or presence record (standby) is due, at
            # most a period: a fixed half-period tick was 20 wake-ups a second per instance
            now = time.monotonic()
            due = self.last_heartbeat + period
            if not self.lease.leader:
                due = max(due, self.lease.presence_from(period))
            await asyncio.sleep(min(period, max(0.002, due - now)))
            now = time.monotonic()
            if self.lease.leader and now - self.last_heartbeat >= period:
                self._settle_ticks()
                if self.feed is not None:
                    # the heads tell each gateway that its copy of the feed is whole, so it can
                    # leave Kafka unread (core/feed.py); they go first: the broker may be away
                    self.feed.heartbeat(int(time.time() * 1000))
                try:
                    await self._heartbeat(now)
                except Exception as exc:  # noqa: BLE001 - the broker may be away; keep beating
                    log.warning("heartbeat failed", extra={"error": repr(exc)})
            elif (
                self.lease.presence_due(now, period)
                and now - self.last_heartbeat >= period
                # one presence record in flight at a time: records queued while the partition
                # had no leader must not land in a burst and pass for a lease's worth of silence
                and (self._presence is None or self._presence.done())
            ):
                try:
                    self._presence = await self._send_presence()
                except Exception as exc:  # noqa: BLE001 - as above
                    log.warning("presence record failed", extra={"error": repr(exc)})
                self.last_heartbeat = now

    async def _timers(self) -> None:
        now = time.monotonic()
        due = self._ship_wait(now)
        if due is not None and due <= 0:
            await self._ship_held()  # a quiet poll: what is held still leaves on time
        if self._scan is not None:
            if not self.lease.leader:  # a higher claim came while scanning
                self._scan.cancel()
                self._scan = None
                log.warning("takeover abandoned: a higher claim leads")
            elif self._scan.done():
                await self._finish_take_over()
            return
        if not self.lease.leader:
            if self.lease.should_take_over(now):
                await self._try_take_over()
            return
        await self._snapshots(now)
        if self.ckpt_pending and now - self.last_checkpoint >= self.cfg.checkpoint_ms / 1000:
            await self._checkpoint(now)

    async def _snapshots(self, now_m: float) -> None:
        assert self.producer is not None
        due = [
            sym
            for sym in self.snap_pending
            if now_m - self.last_snapshot.get(sym, 0) >= self.cfg.snapshot_ms / 1000
        ]
        if not due:
            return
        now = now_ns()
        for sym in due:
            st = self.symbols[sym]
            for key, msg in [*st.snapshots(now), st.status_snapshot(now)]:
                await self.producer.send(
                    self.topics.snapshot, key=key.encode(), value=orjson.dumps(msg)
                )
            self.last_snapshot[sym] = now_m
            self.snap_pending.discard(sym)
            SNAPSHOTS_OUT.labels("public").inc()

    async def _checkpoint(self, now_m: float) -> None:
        """States at the current input position, written once every output before it is acked,
        so the index's ``acked``/``out`` describe exactly what a restart may assume in Kafka."""
        assert self.producer is not None
        await self._ship_held()
        await self.producer.flush()
        self._settle_ticks()
        snap = self.topics.snapshot
        by_part: dict[int, list[str]] = {}
        for sym in self.symbols:
            p = await self._input_partition(sym)
            by_part.setdefault(p, []).append(sym)
        for p, syms in by_part.items():
            part = p % self._snapshot_partitions
            pos = self.positions.get(p, -1)
            for sym in syms:
                if sym not in self.ckpt_pending and sym in self.checkpointed:
                    continue  # unchanged since its last checkpoint, which stays valid
                state = self.symbols[sym].to_state()
                state["offset"] = pos
                state["partition"] = p
                await self.producer.send(
                    snap, key=f"agg:state:{sym}".encode(), partition=part, value=orjson.dumps(state)
                )
                self.checkpointed.add(sym)
                SNAPSHOTS_OUT.labels("agg_state").inc()
            index = {
                "symbols": sorted(syms),
                "offset": pos,
                "acked": self.acked.get(p, -1),
                "out": self.out,
            }
            await self.producer.send(
                snap, key=f"agg:index:p{p}".encode(), partition=part, value=orjson.dumps(index)
            )
        self.ckpt_pending.clear()
        self.last_checkpoint = now_m

    async def _input_partition(self, sym: str) -> int:
        return await self._partition_for(self.topics.input, sym.encode())
