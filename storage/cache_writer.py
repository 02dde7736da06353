"""Kafka -> Redis cache writer: the I/O shell around :class:`storage.cache_model.CacheModel`.

Start-up follows the snapshot-join contract of docs/internals.md: read the compacted snapshot
topic to its end, then read the stream topics from ``offsets_for_times(oldest snapshot -
margin)``; the model drops stream messages the snapshots already include. The cache is derived
state, so this consumer commits no offsets and needs no group: every start rebuilds from Kafka.

Redis writes go out in one non-transactional pipeline per Kafka batch. Each pipeline starts
with ``SET <prefix>:cache:alive <id> NX``: if that key was missing while we had written before,
Redis lost its data (restart without persistence, FLUSHALL), so the whole state is re-written from
memory. While Redis is unreachable the writer keeps consuming into memory (the state is
latest-only, so memory stays bounded) and retries with backoff; on return it re-writes everything
and the resume windows restart (a gap would otherwise be served as continuous history).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TypeAlias

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.exceptions import RedisError

from core.backoff import Backoff
from core.cache_keys import HIST_EPOCH, HIST_MESSAGE, CacheKeys
from core.errors import ConfigError
from core.kafka import Pacer, make_consumer, partitions_by_topic
from core.settings import Settings
from core.topics import Topics
from storage.cache_model import CacheModel, HistAction, Pos, Writes, hist_action
from storage.db_feed import FeedTap
from storage.kafka_rd import RdConsumer, rd_config

# the consumer this writer reads with: aiokafka's, or librdkafka's behind the same calls
Reader: TypeAlias = AIOKafkaConsumer | RdConsumer
KAFKA_CLIENTS = ("confluent", "aiokafka")

log = logging.getLogger(__name__)

# One command for every resume window of a flush instead of one XADD per message (and, before,
# one EVALSHA per window): redis-py spends ~30 µs of Python per pipelined command (packing it,
# parsing its reply), which at live rates was the largest share of the cache writer's CPU, and a
# flush touches up to one window per channel and symbol (66 at the default 6 symbols). KEYS: the
# streams; ARGV: MAXLEN (approximate trim, as before), the two field names (core/cache_keys.py),
# then per key: "1" to delete it first (a new window) or "0", the entry count, and that many
# (id, message, epoch) triples. Every key is on the one Redis the project uses (no cluster).
XADD_MANY = """
local i, n = 4, 0
for k = 1, #KEYS do
  if ARGV[i] == '1' then redis.call('DEL', KEYS[k]) end
  local last = i + 1 + 3 * tonumber(ARGV[i + 1])
  for j = i + 2, last, 3 do
    redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[1], ARGV[j], ARGV[2], ARGV[j + 1], ARGV[3], ARGV[j + 2])
    n = n + 1
  end
  i = last + 1
end
return n
"""


@dataclass
class CacheWriterCounters:
    flushes: int = 0
    redis_errors: int = 0
    rebuilds: int = 0  # full re-writes after Redis lost data or came back
    hist_added: int = 0
    hist_resets: int = 0
    snapshot_records: int = 0


@dataclass(frozen=True, kw_only=True)
class CacheWriterConfig:
    book_depth: int = 100
    trades_len: int = 1000  # recent trades per symbol; ~150 B each -> 150 KB per symbol
    hist_len: int = 10000  # resume window per channel:symbol; ~250 B/msg -> ~2.5 MB per key
    max_records: int = 5000  # per Kafka fetch: bounds one flush's pipeline
    replay_margin_ms: int = 10_000  # stream read starts this long before the oldest snapshot
    max_replay_ms: int = 600_000  # ...but never further back than this (old compacted keys)

    @classmethod
    def from_settings(cls, s: Settings) -> CacheWriterConfig:
        return cls(
            book_depth=s.redis_book_depth,
            trades_len=s.get("MD_REDIS_TRADES_LEN", int, 1000),
            hist_len=s.get("MD_REDIS_HIST_LEN", int, 10000),
        )


class CacheWriter:
    def __init__(self, settings: Settings, config: CacheWriterConfig | None = None) -> None:
        self.settings = settings
        self.config = config or CacheWriterConfig.from_settings(settings)
        self.keys = CacheKeys(settings.redis_prefix)
        self.topics = Topics.from_settings(settings)
        self.model = CacheModel(
            book_depth=self.config.book_depth, trades_len=self.config.trades_len
        )
        self.counters = CacheWriterCounters()
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        self.writer_id = uuid.uuid4().hex
        self.ready = asyncio.Event()  # snapshot topic loaded and first full write done
        self.redis_ok = False
        self._hist_last: dict[str, Pos | None] = {}
        self._need_full = True
        self._backoff = Backoff(initial=0.1, maximum=2.0)
        self._next_try = 0.0
        self.last_flush_at = 0.0
        self.last_turn_at = 0.0  # each turn of the main loop, Redis up or not: liveness
        self._xadd_sha = ""  # XADD_MANY, loaded with every full write (a restarted Redis lost it)
        self._xadd_head = (str(self.config.hist_len), HIST_MESSAGE, HIST_EPOCH)
        # every fetched partition's records, in order, to the database writer of this process
        # (storage/db_feed.py: one fetch of the shared topics instead of two); set before run()
        self.tap: FeedTap | None = None

    # --- start-up --------------------------------------------------------------------------

    async def _partitions(
        self, consumer: Reader, topics: list[str]
    ) -> dict[str, list[TopicPartition]]:
        """Partitions of ``topics`` from one metadata fetch (the cluster may hold many topics)."""
        for _ in range(600):  # a minute: `python -m core.bootstrap` may still be creating topics
            found = {
                t: sorted(ps)
                for t, ps in (
                    await consumer.partitions_by_topic(topics)
                    if isinstance(consumer, RdConsumer)
                    else await partitions_by_topic(consumer, topics)
                ).items()
            }
            if all(found.values()):
                return {t: [TopicPartition(t, p) for p in ps] for t, ps in found.items()}
            await asyncio.sleep(0.1)
        missing = [t for t, ps in found.items() if not ps]
        raise RuntimeError(f"topics without partitions: {missing}")

    async def _load_snapshots(self, consumer: Reader, snap: list[TopicPartition]) -> int | None:
        """Read the snapshot topic to its end; returns where the streams must start (ms).

        Only the book needs a join (every other channel's message is a whole state), so the
        start is the oldest ``l2:`` snapshot; keys written once long ago (``status:``, private
        ``agg:`` state) would otherwise force a long, useless replay.
        """
        end = await consumer.end_offsets(snap)
        await consumer.seek_to_beginning(*snap)
        await self._tell_positions(consumer, snap)
        oldest_any: int | None = None
        oldest_book: int | None = None
        remaining = {tp for tp in snap if end[tp] > 0}
        while remaining:
            batch = await consumer.getmany(
                *remaining, timeout_ms=500, max_records=self.config.max_records
            )
            for tp, recs in batch.items():
                if self.tap is not None:
                    self.tap.offer(tp.topic, tp.partition, recs)
                for r in recs:
                    self.model.on_snapshot_record(r.key, r.value)
                    self.counters.snapshot_records += 1
                    if oldest_any is None or r.timestamp < oldest_any:
                        oldest_any = r.timestamp
                    if (
                        r.key is not None
                        and r.key.startswith(b"l2:")
                        and r.value is not None
                        and (oldest_book is None or r.timestamp < oldest_book)
                    ):
                        oldest_book = r.timestamp
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return oldest_book if oldest_book is not None else oldest_any

    async def _seek_streams(
        self, consumer: Reader, streams: list[TopicPartition], oldest: int | None
    ) -> None:
        if oldest is None:
            await consumer.seek_to_beginning(*streams)
            return
        floor = int(time.time() * 1000) - self.config.max_replay_ms
        at = max(oldest - self.config.replay_margin_ms, floor)
        found = await consumer.offsets_for_times({tp: at for tp in streams})
        to_end = []
        for tp in streams:
            ot = found.get(tp)
            if ot is None:
                to_end.append(tp)
            else:
                consumer.seek(tp, ot.offset)
        if to_end:  # one reset for all (each waits for the fetcher's long poll)
            await consumer.seek_to_end(*to_end)

    async def _tell_positions(self, consumer: Reader, tps: list[TopicPartition]) -> None:
        """Where this consumer starts each partition, for the database writer it feeds."""
        if self.tap is not None:
            for tp in tps:
                self.tap.at(tp.topic, tp.partition, await consumer.position(tp))

    # --- Redis -------------------------------------------------------------------------------

    async def _load_hist_last(self, keys: list[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for k in keys:
            pipe.xrevrange(k, "+", "-", count=1)
        res = await pipe.execute()
        for k, entries in zip(keys, res, strict=True):
            if not entries:
                self._hist_last[k] = None
                continue
            eid, fields = entries[0]
            seq = int(eid.split(b"-")[0])
            epoch = int(fields.get(HIST_EPOCH.encode(), b"0"))
            self._hist_last[k] = (epoch, seq)

    async def _apply(self, w: Writes, *, full: bool) -> bool:
        """Write ``w``; returns False if Redis reported it had lost the cache (re-write needed)."""
        k = self.keys
        unknown = sorted({k.hist(ch, sym) for ch, sym, *_ in w.hist} - self._hist_last.keys())
        if unknown:
            await self._load_hist_last(unknown)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(k.sentinel, self.writer_id, nx=True)
        for sym, fields in w.books.items():
            pipe.hset(k.book(sym), mapping=fields)  # type: ignore[arg-type]
        # every plain value of the flush (tickers, stats, candles, trade positions) in one MSET
        strings: dict[str, bytes | str] = {k.under(sx): body for sx, body in w.strings.items()}
        if w.symbols:
            pipe.hset(k.symbols, mapping=w.symbols)  # type: ignore[arg-type]
        for sym, entries in w.trades.items():
            key = k.trades(sym)
            if full or sym in w.trades_replace:
                pipe.delete(key)
            if entries:
                pipe.lpush(key, *entries)
                pipe.ltrim(key, 0, self.config.trades_len - 1)
            epoch, seq = w.trades_pos[sym]
            strings[k.trades_seq(sym)] = f"{epoch}:{seq}"
        if strings:
            pipe.mset(strings)
        added = resets = 0
        # per stream: the entries to add in order, and whether the key is deleted first
        adds: dict[str, tuple[bool, list[bytes | str]]] = {}
        for ch, sym, epoch, seq, raw in w.hist:
            if seq <= 0:
                continue  # stream IDs must be > 0-0
            key = k.hist(ch, sym)
            act = hist_action(self._hist_last.get(key), epoch, seq)
            if act is HistAction.SKIP:
                continue
            if act is HistAction.RESET:
                adds[key] = (True, [])  # what this batch added before is deleted with the rest
                resets += 1
            adds.setdefault(key, (False, []))[1].extend((f"{seq}-0", raw, str(epoch)))
            self._hist_last[key] = (epoch, seq)
            added += 1
        if adds:
            argv: list[bytes | str] = [*self._xadd_head]
            for reset, args in adds.values():
                argv += ("1" if reset else "0", str(len(args) // 3), *args)
            pipe.evalsha(self._xadd_sha, len(adds), *adds, *argv)
        res = await pipe.execute()
        self.counters.flushes += 1
        self.counters.hist_added += added
        self.counters.hist_resets += resets
        self.last_flush_at = time.monotonic()
        sentinel_was_missing = bool(res[0])
        return not (sentinel_was_missing and not full and self.counters.flushes > 1)

    async def flush(self) -> None:
        """Write pending changes; on Redis trouble keep them in memory and retry later."""
        w = self.model.take_writes()
        loop = asyncio.get_running_loop()
        if self._need_full:
            if loop.time() < self._next_try:
                return
            try:
                self._xadd_sha = await self.redis.script_load(XADD_MANY)
                self._hist_last.clear()
                full = self.model.full_writes()
                full.hist = w.hist
                await self._apply(full, full=True)
            except (RedisError, OSError) as exc:
                self._redis_failed(exc)
                return
            self._need_full = False
            self.counters.rebuilds += 1
            self._redis_up()
            return
        if w.empty():
            return
        try:
            intact = await self._apply(w, full=False)
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
            return
        self._redis_up()
        if not intact:
            log.warning("redis lost the cache; re-writing it from memory")
            self._need_full = True
            await self.flush()

    def _redis_failed(self, exc: BaseException) -> None:
        self.counters.redis_errors += 1
        if self.redis_ok or self.counters.redis_errors == 1:
            log.warning(
                "redis unavailable; caching in memory and retrying", extra={"error": repr(exc)}
            )
        self.redis_ok = False
        self._need_full = True
        self._next_try = asyncio.get_running_loop().time() + self._backoff.next()

    def _redis_up(self) -> None:
        if not self.redis_ok:
            log.info("redis cache written", extra={"rebuilds": self.counters.rebuilds})
        self.redis_ok = True
        self._backoff.reset()

    # --- main loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self._consumer()
        # not a latency path for clients: one fetch and one Redis pipeline per
        # MD_STORAGE_FETCH_WAIT_MS, not one per record. Each costs a Kafka fetch of every stream
        # partition and a round trip to Redis whatever it carries, so at live rates the pace is
        # the cost: 20 ms took 13.6 % of a core at the default simulator rate, 100 ms 6.4 %
        # (docs/benchmarks.md "Storage CPU"). REST answers are then at most ~0.1 s older than
        # the stream (they carry their `seq`), and a WebSocket resume that finds Redis behind
        # its gateway waits for it (up to 1 s, gateway_ws/hub.py).
        pacer = Pacer(self.settings.get("MD_STORAGE_FETCH_WAIT_MS", int, 100) / 1000)
        await consumer.start()
        try:
            parts = await self._partitions(
                consumer, [self.topics.snapshot, *self.topics.all_streams()]
            )
            snap = parts.pop(self.topics.snapshot)
            streams = [tp for tps in parts.values() for tp in tps]
            consumer.assign(snap + streams)
            consumer.pause(*streams)
            oldest = await self._load_snapshots(consumer, snap)
            await self._seek_streams(consumer, streams, oldest)
            await self._tell_positions(consumer, streams)
            consumer.resume(*streams)
            await self.flush()
            self.model.follow_streams()
            self.ready.set()
            log.info(
                "cache writer running", extra={"snapshot_records": self.counters.snapshot_records}
            )
            while not stop.is_set():
                self.last_turn_at = time.monotonic()
                await pacer.wait()
                batch = await consumer.getmany(timeout_ms=100, max_records=self.config.max_records)
                for tp, recs in batch.items():
                    if self.tap is not None:
                        self.tap.offer(tp.topic, tp.partition, recs)
                    if tp.topic == self.topics.snapshot:
                        for r in recs:
                            self.model.on_snapshot_record(r.key, r.value)
                    else:
                        for r in recs:
                            self.model.on_stream_record(r.value)
                await self.flush()
                if not batch and self.redis_ok:
                    await self._check_alive()
        finally:
            await consumer.stop()
            await self.redis.aclose()

    def _consumer(self) -> Reader:
        """``MD_STORAGE_KAFKA_CLIENT``: ``aiokafka`` (the default) or ``confluent`` (librdkafka,
        storage/kafka_rd.py: a quarter of aiokafka's CPU for the same records alone, ~0.3 point
        of the storage process in the stack; its start-up asks watermarks that a partition just
        created may not answer yet, which failed a fresh-clone `make test` once)."""
        client = self.settings.get("MD_STORAGE_KAFKA_CLIENT", str, "aiokafka")
        if client not in KAFKA_CLIENTS:
            raise ConfigError("MD_STORAGE_KAFKA_CLIENT", f"expected one of {KAFKA_CLIENTS}")
        if client == "confluent":
            return RdConsumer(rd_config(self.settings, f"storage-cache-{self.writer_id[:8]}"))
        return make_consumer(self.settings, group_id=None, enable_auto_commit=False)

    async def _check_alive(self) -> None:
        """When idle, notice a Redis that restarted empty even if no record arrives."""
        try:
            alive = await self.redis.exists(self.keys.sentinel)
            self.last_flush_at = time.monotonic()
            if not alive:
                log.warning("redis lost the cache; re-writing it from memory")
                self._need_full = True
                await self.flush()
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
