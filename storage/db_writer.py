"""Kafka -> PostgreSQL history writer: consumer group, bounded queue, batched idempotent writes.

Flow: a fetch task turns each Kafka fetch (up to ``batch_records``) into a :class:`RowBatch`
and puts it on a bounded queue (``queue_batches``: when the database is slow or down the queue
fills, the fetch task blocks, and Kafka holds the backlog, not our memory). The write task takes
one batch, writes it in ONE transaction, and only after ``COMMIT`` commits the batch's Kafka
offsets. A crash between the two re-delivers the batch; natural primary keys make that harmless:

- trades (text COPY) and whole messages (``stream_messages``, ``book_snapshots``: binary COPY)
  go straight into their table under a savepoint; only a batch that holds an already stored
  row (a re-delivery) is rolled back to it and goes through a staging table and ``INSERT ...
  SELECT ... ON CONFLICT DO NOTHING`` (COPY itself cannot skip duplicates);
- candles: ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE ... WHERE`` the stored
  candle is older by ``(epoch, seq)``, so a replayed candle never overwrites a newer one;
- L2 snapshots: ``unnest`` insert, ``ON CONFLICT DO NOTHING``; symbols: upsert.

Database errors are classified by asyncpg's exception classes (:mod:`storage.errors`):
retriable ones (connection lost, server shutting down, ...) retry the same batch with backoff
forever (until shutdown); a permanent one (a value PostgreSQL rejects) re-runs the batch row by
row under savepoints and counts the rejected rows instead of stalling the partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from core.backoff import Backoff
from core.channels import is_data_channel
from core.errors import ConfigError
from core.kafka import Pacer, make_consumer
from core.settings import Settings, parse_list
from core.topics import Topics
from storage.db_feed import FeedRoutes
from storage.db_rows import (
    DEFAULT_HISTORY_CHANNELS,
    MESSAGE_COLUMNS,
    TRADE_COLUMNS,
    RowBatch,
    RowBuilder,
    TradeCopy,
    messages_copy,
)
from storage.errors import is_retriable_db_error
from storage.migrate import maintain_partitions, recorded_backend

log = logging.getLogger(__name__)

_TS = "timestamptz 'epoch' + {} * interval '1 microsecond'"
SQL_TRADE_ONE = (
    f"INSERT INTO trades ({', '.join(TRADE_COLUMNS)}) "
    f"VALUES ($1, $2, {_TS.format('$3::bigint')}, $4::text::numeric, $5::text::numeric, $6, $7, $8) "
    "ON CONFLICT DO NOTHING"
)
SQL_CANDLES = """
INSERT INTO candles AS c (symbol, interval, bucket, open, high, low, close, volume, trades, closed, seq, epoch,
                          vwap)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::numeric[], $5::numeric[], $6::numeric[],
                     $7::numeric[], $8::numeric[], $9::int[], $10::bool[], $11::bigint[], $12::bigint[],
                     $13::numeric[])
ON CONFLICT (symbol, interval, bucket) DO UPDATE SET
  open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
  volume = EXCLUDED.volume, trades = EXCLUDED.trades, closed = EXCLUDED.closed,
  seq = EXCLUDED.seq, epoch = EXCLUDED.epoch, vwap = EXCLUDED.vwap
WHERE (c.epoch, c.seq) < (EXCLUDED.epoch, EXCLUDED.seq)"""
SQL_MSG_ONE = (
    "INSERT INTO {table} (channel, symbol, epoch, seq, ts, msg) "
    f"VALUES ($1, $2, $3, $4, {_TS.format('$5::bigint')}, $6) ON CONFLICT DO NOTHING"
)
SQL_SNAPSHOTS = """
INSERT INTO l2_snapshots (symbol, ts, seq, epoch, checksum, bids, asks)
SELECT s, ts, seq, e, ck, b::jsonb, a::jsonb
FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::text[])
  AS u(s, ts, seq, e, ck, b, a)
ON CONFLICT DO NOTHING"""
SQL_SYMBOLS = """
INSERT INTO symbols AS y (symbol, base, quote, tick_size, min_size, status, source, channels, seq, updated_at)
SELECT s, b, q, t, m, st, src, string_to_array(ch, ','), seq, now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::numeric[], $6::text[], $7::text[],
            $8::text[], $9::bigint[]) AS u(s, b, q, t, m, st, src, ch, seq)
ON CONFLICT (symbol) DO UPDATE SET base = EXCLUDED.base, quote = EXCLUDED.quote,
  tick_size = EXCLUDED.tick_size, min_size = EXCLUDED.min_size, status = EXCLUDED.status,
  source = EXCLUDED.source, channels = EXCLUDED.channels, seq = EXCLUDED.seq, updated_at = now()"""


def _count(status: str) -> int:
    """Rows affected from a command tag such as ``INSERT 0 17``."""
    try:
        return int(status.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return 0


def _columns(rows: Sequence[tuple[Any, ...]], n: int) -> list[list[Any]]:
    return [[r[i] for r in rows] for i in range(n)]


@dataclass
class DbWriterCounters:
    records: int = 0
    records_shared: int = 0  # of which taken from the cache writer's fetches (storage/db_feed.py)
    bad_records: int = 0
    batches: int = 0
    trades_inserted: int = 0
    trades_duplicate: int = 0
    candles_written: int = 0
    candles_unchanged: int = 0
    snapshots_inserted: int = 0
    messages_inserted: int = 0
    messages_duplicate: int = 0
    book_snapshots_inserted: int = 0
    symbols_written: int = 0
    rows_rejected: int = 0
    copy_conflicts: int = 0  # batches that held an already stored row (went through staging)
    db_retries: int = 0
    commits: int = 0
    commit_failures: int = 0


@dataclass(frozen=True, kw_only=True)
class DbWriterConfig:
    group_id: str
    batch_records: int = 5000  # at most this many records per transaction
    # ...and a batch ships at the latest this long after its first record: at a live rate of a
    # few hundred messages/s, one transaction and one offset commit per second instead of one
    # per fetch (each costs a few round trips: most of this writer's CPU at the default rate)
    batch_ms: int = 1000
    queue_batches: int = 4  # bounded queue: at most ~4 x 5000 records (a few MB) in memory
    l2_every_s: int = 10  # one stored L2 snapshot per symbol per this many seconds
    l2_depth: int = 50  # levels per side stored
    maintain_every_s: float = 3600.0  # native partitions: create ahead / drop expired
    history_channels: tuple[str, ...] = DEFAULT_HISTORY_CHANNELS  # kept whole, for replay
    book_snapshot_s: float = 10.0  # one full book snapshot per symbol per this many seconds
    # "shared": take records from the cache writer's fetches when both writers run in one
    # process (storage/db_feed.py); "own": always fetch with this writer's own consumer
    feed: str = "shared"

    @classmethod
    def from_settings(cls, s: Settings) -> DbWriterConfig:
        return cls(
            group_id=s.get("MD_STORAGE_DB_GROUP", str, f"{s.topic_prefix}.storage-db"),
            batch_records=s.get("MD_STORAGE_BATCH", int, 5000),
            batch_ms=s.get("MD_STORAGE_BATCH_MS", int, 1000),
            l2_every_s=s.get("MD_STORAGE_L2_SNAPSHOT_S", int, 10),
            l2_depth=s.get("MD_STORAGE_L2_SNAPSHOT_DEPTH", int, 50),
            history_channels=_history_channels(
                s.get("MD_STORAGE_HISTORY_CHANNELS", parse_list, DEFAULT_HISTORY_CHANNELS)
            ),
            book_snapshot_s=s.get("MD_STORAGE_BOOK_SNAPSHOT_S", float, 10.0),
            feed=_feed(s.get("MD_STORAGE_DB_FEED", str, "shared")),
        )


def _feed(name: str) -> str:
    if name not in ("shared", "own"):
        raise ConfigError("MD_STORAGE_DB_FEED", f"expected 'shared' or 'own', got {name!r}")
    return name


def _history_channels(names: tuple[str, ...]) -> tuple[str, ...]:
    bad = [n for n in names if not is_data_channel(n)]
    if bad:
        raise ConfigError("MD_STORAGE_HISTORY_CHANNELS", f"unknown channel(s) {bad}")
    return tuple(names)


@dataclass
class BatchWindow:
    """When the batch being fetched ships to the write task: once it holds ``max_records``
    records, or ``max_age_s`` after its first record arrived (the clock starts at the first
    :meth:`due` call that sees records), whichever comes first."""

    max_records: int
    max_age_s: float
    _started: float | None = None

    def room(self, b: RowBatch) -> int:
        return max(1, self.max_records - b.records)

    def due(self, b: RowBatch, now: float) -> bool:
        if not b.records:
            return False
        if self._started is None:
            self._started = now
        if b.records >= self.max_records or now - self._started >= self.max_age_s:
            self._started = None
            return True
        return False


class DbWriter:
    def __init__(self, settings: Settings, config: DbWriterConfig | None = None) -> None:
        self.settings = settings
        self.config = config or DbWriterConfig.from_settings(settings)
        self.topics = Topics.from_settings(settings)
        self.builder = RowBuilder(
            snapshot_topic=self.topics.snapshot,
            l2_every_s=self.config.l2_every_s,
            l2_depth=self.config.l2_depth,
            history_channels=self.config.history_channels,
            book_every_s=self.config.book_snapshot_s,
        )
        self.counters = DbWriterCounters()
        self.queue: asyncio.Queue[RowBatch] = asyncio.Queue(maxsize=self.config.queue_batches)
        self.db_ok = False
        self.last_error: str | None = None
        self.running = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._last_maintain = 0.0
        # written by the transaction, counted only once it committed
        self._pending_msgs: tuple[int, int] = (0, 0)
        self._pending_books = 0
        self._trade_copy = TradeCopy()
        t = self.topics
        # trades, candles and the catalogue always; every history channel's topic besides
        base = [t.stream("trades"), t.stream("candles_1m"), t.stream("status")]
        history = {t.stream(ch) for ch in self.config.history_channels} - set(base)
        self.topic_names: tuple[str, ...] = (*base, *sorted(history), t.snapshot)
        self._wanted = frozenset(self.topic_names)
        self.routes = FeedRoutes()
        self.shared_feed = False  # set by the service when the cache writer's fetches feed it
        self._consumer: Any = None
        self._rb = RowBatch()  # the batch being filled (by either feed)
        self._window = BatchWindow(self.config.batch_records, self.config.batch_ms / 1000)

    def queue_size(self) -> int:
        return self.queue.qsize()

    def health_check(self) -> tuple[bool, object]:
        return self.db_ok and self.running.is_set(), {
            "database": "up" if self.db_ok else "down",
            "last_error": self.last_error,
            "queued_batches": self.queue.qsize(),
        }

    # --- database ------------------------------------------------------------------------

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.settings.pg_dsn,
                min_size=0,
                max_size=2,
                command_timeout=60,
                # the Kafka offsets are committed right after COMMIT returns: the rows must be
                # on disk by then, whatever the server default (the local cluster runs with
                # synchronous_commit=off for everyone else; issue 11)
                server_settings={"synchronous_commit": "on"},
            )
        return self._pool

    async def _copy(
        self,
        conn: asyncpg.Connection,
        table: str,
        columns: list[str],
        payload: bytes,
        fmt: str,
        rows: int,
    ) -> int:
        """COPY straight into the table (the fast path: no staging, no ON CONFLICT); when the
        batch holds a row already stored (a re-delivery after a crash), the COPY's savepoint is
        rolled back and the batch goes through a staging table with ``ON CONFLICT DO NOTHING``.
        Returns the rows inserted."""
        try:
            async with conn.transaction():  # a savepoint inside the batch's transaction
                await conn.copy_to_table(
                    table, source=memoryview(payload), columns=columns, format=fmt
                )
            return rows
        except asyncpg.UniqueViolationError:
            self.counters.copy_conflicts += 1
        stage = f"{table}_stage"
        cols = ", ".join(columns)
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS"
        )
        await conn.copy_to_table(stage, source=memoryview(payload), columns=columns, format=fmt)
        n = _count(
            await conn.execute(
                f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING"
            )
        )
        await conn.execute(f"TRUNCATE {stage}")
        return n

    async def _write_tx(self, conn: asyncpg.Connection, b: RowBatch) -> tuple[int, int, int, int]:
        t = c = s = y = 0
        if b.messages:
            m = await self._copy(
                conn,
                "stream_messages",
                MESSAGE_COLUMNS,
                messages_copy(b.messages),
                "binary",
                len(b.messages),
            )
            self._pending_msgs = (m, len(b.messages) - m)
        if b.book_snapshots:
            self._pending_books = await self._copy(
                conn,
                "book_snapshots",
                MESSAGE_COLUMNS,
                messages_copy(b.book_snapshots),
                "binary",
                len(b.book_snapshots),
            )
        if b.trades:
            t = await self._copy(
                conn,
                "trades",
                TRADE_COLUMNS,
                self._trade_copy.build(b.trades),
                "text",
                len(b.trades),
            )
        if b.candles:
            candles = [r for _, r in b.candles.values()]
            c = _count(await conn.execute(SQL_CANDLES, *_columns(candles, 13)))
        if b.snapshots:
            snaps = list(b.snapshots.values())
            s = _count(await conn.execute(SQL_SNAPSHOTS, *_columns(snaps, 7)))
        if b.symbols:
            syms = [(*r[:7], ",".join(r[7]), r[8]) for _, r in b.symbols.values()]
            y = _count(await conn.execute(SQL_SYMBOLS, *_columns(syms, 9)))
        return t, c, s, y

    async def _write_rowwise(
        self, conn: asyncpg.Connection, b: RowBatch
    ) -> tuple[int, int, int, int]:
        """After a permanent error: each row under its own savepoint; bad rows are counted."""
        t = c = s = y = m = k = 0
        for table, mrows in (("stream_messages", b.messages), ("book_snapshots", b.book_snapshots)):
            sql = SQL_MSG_ONE.format(table=table)
            n = sum([await self._one_row(conn, sql, mrow) for mrow in mrows])
            if table == "stream_messages":
                m = n
            else:
                k = n
        self._pending_msgs, self._pending_books = (m, len(b.messages) - m), k
        for row in b.trades:
            t += await self._one_row(conn, SQL_TRADE_ONE, row, warn="trade")
        for _, crow in b.candles.values():
            c += await self._one_row(conn, SQL_CANDLES, _columns([crow], 13))
        for srow in b.snapshots.values():
            s += await self._one_row(conn, SQL_SNAPSHOTS, _columns([srow], 7))
        for _, r in b.symbols.values():
            y += await self._one_row(
                conn, SQL_SYMBOLS, _columns([(*r[:7], ",".join(r[7]), r[8])], 9)
            )
        return t, c, s, y

    async def _one_row(
        self, conn: asyncpg.Connection, sql: str, args: Sequence[Any], warn: str = ""
    ) -> int:
        """Rows ``sql`` wrote under its own savepoint; a permanent error counts the row as
        rejected (logged when ``warn`` names it) and writes 0; a retriable one is raised."""
        try:
            async with conn.transaction():
                return _count(await conn.execute(sql, *args))
        except asyncpg.PostgresError as exc:
            if is_retriable_db_error(exc):
                raise
            self.counters.rows_rejected += 1
            if warn:
                log.warning(
                    f"{warn} rejected by the database",
                    extra={"row": repr(args), "error": repr(exc)},
                )
            return 0

    async def write(self, b: RowBatch, stop: asyncio.Event | None = None) -> bool:
        """Write one batch, retrying retriable failures until done (True) or stopped (False)."""
        backoff = Backoff(initial=0.05, maximum=2.0)
        rowwise = False
        while True:
            self._pending_msgs, self._pending_books = (0, 0), 0
            try:
                pool = await self._get_pool()
                async with pool.acquire() as conn, conn.transaction():
                    if rowwise:
                        t, c, s, y = await self._write_rowwise(conn, b)
                    else:
                        t, c, s, y = await self._write_tx(conn, b)
            except Exception as exc:
                if is_retriable_db_error(exc):
                    self.counters.db_retries += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if self.db_ok or self.counters.db_retries == 1:
                        log.warning(
                            "database unavailable; retrying, Kafka holds the backlog",
                            extra={"error": self.last_error},
                        )
                    self.db_ok = False
                    delay = backoff.next()
                    if stop is not None:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), delay)
                        if stop.is_set():
                            return False
                    else:
                        await asyncio.sleep(delay)
                    continue
                if isinstance(exc, asyncpg.PostgresError) and not rowwise:
                    log.warning("batch rejected; writing it row by row", extra={"error": repr(exc)})
                    rowwise = True
                    continue
                raise
            break
        if not self.db_ok:
            log.info("database writes succeeding", extra={"retries": self.counters.db_retries})
        self.db_ok = True
        self.last_error = None
        self.counters.batches += 1
        self.counters.trades_inserted += t
        self.counters.trades_duplicate += len(b.trades) - t
        self.counters.candles_written += c
        self.counters.candles_unchanged += len(b.candles) - c
        self.counters.snapshots_inserted += s
        self.counters.messages_inserted += self._pending_msgs[0]
        self.counters.messages_duplicate += self._pending_msgs[1]
        self.counters.book_snapshots_inserted += self._pending_books
        self.counters.symbols_written += y
        return True

    async def _probe(self) -> None:
        try:
            pool = await self._get_pool()
            await pool.fetchval("SELECT 1", timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.db_ok = False  # not ready; classified for the log only
            self.last_error = f"{type(exc).__name__}: {exc}"
            return
        self.db_ok = True
        self.last_error = None

    async def _maintain(self) -> None:
        now = time.monotonic()
        if now - self._last_maintain < self.config.maintain_every_s:
            return
        self._last_maintain = now
        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                if await recorded_backend(conn) == "native":
                    await maintain_partitions(conn)
        except Exception as exc:  # noqa: BLE001 - maintenance never stops the writer; retried
            self._last_maintain = now - self.config.maintain_every_s + 60
            log.warning("partition maintenance failed", extra={"error": repr(exc)})

    # --- loops ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(
            self.settings,
            group_id=self.config.group_id,
            # a long database outage must not make us leave the group (which would rebalance
            # and re-deliver to whoever joins); the backlog simply waits in Kafka
            max_poll_interval_ms=3_600_000,
            session_timeout_ms=30_000,
            heartbeat_interval_ms=3_000,
        )
        await consumer.start()
        consumer.subscribe(list(self.topic_names), listener=_Routing(self.routes))
        self._consumer = consumer
        self.running.set()
        fetcher = asyncio.create_task(self._fetch(consumer, stop), name="db-fetch")
        try:
            await self._probe()
            await self._maintain()
            while not stop.is_set() or not self.queue.empty():
                if fetcher.done() and self.queue.empty():
                    fetcher.result()  # the fetch loop died: surface its error, do not idle healthy
                    break
                get = asyncio.create_task(self.queue.get())
                stopper = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait(
                    {get, stopper}, timeout=2.0, return_when=asyncio.FIRST_COMPLETED
                )
                stopper.cancel()
                if get not in done:
                    get.cancel()
                    if stop.is_set():
                        break
                    await self._probe()  # idle: keep health honest
                    await self._maintain()
                    continue
                b = get.result()
                self.counters.records += b.records
                self.counters.bad_records += b.bad
                if b.rows() and not await self.write(b, stop):
                    break  # stopped while the database was down: offsets stay uncommitted
                await self._commit(consumer, b)
                await self._maintain()
        finally:
            self.running.clear()
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher
            await consumer.stop()
            if self._pool is not None:
                await self._pool.close()

    async def _fetch(self, consumer: Any, stop: asyncio.Event) -> None:
        """Fetch into the open :class:`RowBatch` until :class:`BatchWindow` ships it. A full
        fetch (a backlog) is followed at once by the next; otherwise at most one fetch per
        ``MD_DB_FETCH_WAIT_MS``. Partitions that follow the shared feed are paused here."""
        pacer = Pacer(self.settings.get("MD_DB_FETCH_WAIT_MS", int, 250) / 1000)
        full = False
        while not stop.is_set():
            if not full:
                await pacer.wait()
            await self._route(consumer)
            want = self._window.room(self._rb)
            try:
                batch = await consumer.getmany(timeout_ms=200, max_records=want)
            except KafkaError as exc:
                log.warning("kafka fetch failed", extra={"error": repr(exc)})
                await asyncio.sleep(0.5)
                continue
            got = 0
            for tp, recs in batch.items():
                got += len(recs)
                key = (tp.topic, tp.partition)
                rb = self._rb
                for r in recs:
                    if self.routes.from_own(key, r.offset):
                        self.builder.add(rb, tp.topic, tp.partition, r.offset, r.key, r.value)
            full = got >= want
            if self._window.due(self._rb, asyncio.get_running_loop().time()):
                rb, self._rb = self._rb, RowBatch()
                await self.queue.put(rb)  # blocks when full: back-pressure to Kafka

    async def _route(self, consumer: Any) -> None:
        """Learn the own consumer's positions, and pause the partitions that caught up with the
        shared feed (storage/db_feed.py)."""
        for topic, part in self.routes.unknown():
            try:
                self.routes.position(
                    (topic, part), await consumer.position(TopicPartition(topic, part))
                )
            except (IllegalStateError, KafkaError):
                continue  # revoked meanwhile, or not positioned yet: asked again next turn
        if self.shared_feed:
            moved = self.routes.to_shared()
            if moved:
                consumer.pause(*(TopicPartition(t, p) for t, p in moved))

    def offer(self, topic: str, partition: int, records: Sequence[Any]) -> None:
        """The cache writer's records of one partition, in order (called after each of its
        fetches). Taken for the partitions that follow the shared feed; never blocks: when the
        queue is full and the open batch holds twice a batch, every shared partition goes back
        to the own consumer (Kafka holds the backlog) rather than make the cache writer wait."""
        if topic not in self._wanted or not records:
            return
        key = (topic, partition)
        rb = self._rb
        for r in records:
            if self.routes.from_shared(key, r.offset):
                self.builder.add(rb, topic, partition, r.offset, r.key, r.value)
                self.counters.records_shared += 1
        if self.queue.full():
            if rb.records >= 2 * self.config.batch_records:
                self._fall_back()
        elif self._window.due(rb, asyncio.get_running_loop().time()):
            self.queue.put_nowait(rb)
            self._rb = RowBatch()

    def at(self, topic: str, partition: int, offset: int) -> None:
        """Where the cache writer starts reading a partition (storage/db_feed.py)."""
        if topic in self._wanted:
            self.routes.shared_from((topic, partition), offset)

    def _fall_back(self) -> None:
        moved = self.routes.to_own()
        if not moved or self._consumer is None:
            return
        log.info(
            "database behind: its partitions back on its own consumer", extra={"n": len(moved)}
        )
        tps = [TopicPartition(t, p) for (t, p), _ in moved]
        self._consumer.resume(*tps)
        for tp, (_, offset) in zip(tps, moved, strict=True):
            self._consumer.seek(tp, offset)

    async def _commit(self, consumer: Any, b: RowBatch) -> None:
        if not b.offsets:
            return
        offsets = {TopicPartition(tp, p): off for (tp, p), off in b.offsets.items()}
        try:
            await consumer.commit(offsets)
            self.counters.commits += 1
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # partitions moved to another member: it re-reads from the last commit and the
            # natural keys absorb the duplicates
            self.counters.commit_failures += 1
            log.warning("offset commit failed", extra={"error": repr(exc)})


class _Routing(ConsumerRebalanceListener):
    """Keeps :class:`FeedRoutes` in step with the group's assignment: a partition assigned
    starts on the own consumer at its committed offset."""

    def __init__(self, routes: FeedRoutes) -> None:
        self.routes = routes

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.routes.revoke([(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.routes.assign([(tp.topic, tp.partition) for tp in assigned])
