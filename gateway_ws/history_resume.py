"""Resume beyond the Redis window, served from stored history (issue 15 item 4, issue 13).

The Redis window (:mod:`gateway_ws.resume`) keeps the last ``MD_REDIS_HIST_LEN`` messages per
stream. The storage writer keeps every message of the channels it stores whole
(``MD_STORAGE_HISTORY_CHANNELS``: ``l2``, ``l3``, ``trades``) in ``stream_messages`` with its
``seq``/``epoch``, and full book snapshots in ``book_snapshots`` (docs/storage.md). A resume
older than the window reads the missing part from there, then the Redis part, then live:

- :func:`plan_read` (pure) decides, per chunk, whether the next messages come from the
  database and which ``seq`` range: from the client's last seq up to where the Redis window
  starts (or up to the follower's head when the window is empty), at most one chunk;
- :class:`StoredHistory` reads that range with the history SQL of :mod:`core.history.sql`
  (``SQL_UPDATES``: one epoch, a ``seq`` range, so at most a chunk of rows per query), and, for
  a resume by time, the start point and, on book channels, the book at that moment
  (:func:`core.history.book.rebuild`), sent as a snapshot before the updates.

Keeping the live hub safe: reads run only in the resume tasks (at most
``MD_WS_RESUME_CONCURRENCY`` per process, each chunk once the connection has drained), through a
small pool of its own (``MD_WS_HISTORY_DB_POOL``, default 2; 0 switches this off) with short
timeouts; a resume takes at most ``MD_WS_HISTORY_RESUME_MAX`` messages from the database. A
database that fails is left alone for ``DOWN_S`` and every resume meanwhile gets today's answer
(``beyond_window``, ``resume_too_old`` and a flagged snapshot) at once: no error loop, no pile
of waiting resumes. The Parquet archive is not read here (its reader is synchronous and would
stall the event loop of live clients): archived days are the replay server's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from core.anonymize import apply as anonymize
from core.db_errors import is_retriable_db_error
from core.errors import ConfigError
from core.history.book import BOOK_CHANNELS, HistoryError, rebuild, resolve_target
from core.history.replay import snapshot_message
from core.history.sql import SQL_AT, SQL_UPDATES, dt_from_ns
from core.settings import Settings, parse_list
from core.signing import sign

log = logging.getLogger(__name__)

Entry = tuple[int, int, bytes]  # seq, epoch, message bytes (as gateway_ws.resume.Entry)
T = TypeVar("T")

# after a failed read the database is not asked again for this long: during an outage a storm
# of resumes gets the beyond-window answer at once instead of each waiting on a timeout
DOWN_S = 5.0
# a connection attempt and a statement give up after this long (the resume then falls back)
CONNECT_TIMEOUT_S = 2.0
QUERY_TIMEOUT_S = 5.0


@dataclass(frozen=True, kw_only=True)
class HistoryResumeConfig:
    """``MD_WS_HISTORY_*``: the database side of resume (docs/websocket.md "Resume")."""

    # connections of this gateway process to the history database (0: resume never reads it);
    # 2 lets one resume read while another waits, and caps what a resume storm costs PostgreSQL
    db_pool: int = 2
    # messages one resume may take from the database (~250 B each: 25 MB sent at the client's
    # pace, a chunk at a time); the Redis part keeps its own MD_WS_RESUME_MAX
    max_messages: int = 100_000
    # the channels the storage writer keeps whole (the same setting as the writer's)
    channels: tuple[str, ...] = ("l2", "l3", "trades")

    @classmethod
    def from_settings(cls, s: Settings) -> HistoryResumeConfig:
        d = cls()
        return cls(
            db_pool=s.get("MD_WS_HISTORY_DB_POOL", int, d.db_pool),
            max_messages=s.get("MD_WS_HISTORY_RESUME_MAX", int, d.max_messages),
            channels=tuple(s.get("MD_STORAGE_HISTORY_CHANNELS", parse_list, d.channels)),
        )

    def __post_init__(self) -> None:
        if self.db_pool < 0:
            raise ConfigError("MD_WS_HISTORY_DB_POOL", "must be >= 0 (0: off)")
        if self.max_messages < 1:
            raise ConfigError("MD_WS_HISTORY_RESUME_MAX", "must be >= 1")


def plan_read(last: int, window_first: int | None, head: int | None, chunk: int) -> range | None:
    """The ``seq`` range to read from the database next, or None when it has nothing to add.

    ``last`` is the last seq the client has; ``window_first`` the seq of the first Redis entry
    after it (None: Redis has none); ``head`` the newest seq this gateway's follower holds.
    The database fills the hole between ``last`` and the window, or, with no window at all, up
    to ``head``; never more than ``chunk`` messages, never what Redis already serves."""
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    if window_first is not None:
        end = window_first - 1
    elif head is not None:
        end = head
    else:
        return None
    if end <= last:
        return None
    return range(last + 1, min(end, last + chunk) + 1)


@dataclass(frozen=True, slots=True)
class Opening:
    """Where a resume by time starts in stored history: after message ``seq`` of ``epoch`` (the
    last one published before ``since``); on a book channel, ``snapshot`` is the book after it
    (the ``*_snapshot`` message, stamped with that seq), which the client gets first."""

    epoch: int
    seq: int
    snapshot: bytes | None


class StoredHistory:
    """Bounded reads of the stored stream messages for resumes (see the module docstring)."""

    def __init__(
        self,
        dsn: str,
        cfg: HistoryResumeConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dsn = dsn
        self.cfg = cfg
        self.clock = clock
        self._pool: asyncpg.Pool | None = None
        self.down_until = 0.0
        self.failures = 0  # reads that failed (database down, no schema, timeout)

    @classmethod
    def from_settings(cls, s: Settings) -> StoredHistory | None:
        cfg = HistoryResumeConfig.from_settings(s)
        return cls(s.pg_dsn, cfg) if cfg.db_pool > 0 else None

    def serves(self, channel: str) -> bool:
        """Whether a resume of ``channel`` may ask the database now."""
        return channel in self.cfg.channels and self.clock() >= self.down_until

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            # min_size=0: no connection is opened until a resume needs one
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=0,
                max_size=self.cfg.db_pool,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=QUERY_TIMEOUT_S,
            )
        return self._pool

    async def _guard(self, what: str, read: Callable[[asyncpg.Pool], Awaitable[T]]) -> T | None:
        """``read`` on the pool; None when history cannot answer (the caller falls back)."""
        try:
            return await read(await self._db())
        except HistoryError:
            return None  # nothing stored there (retention, never published): not a failure
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            self.failures += 1
            self.down_until = self.clock() + DOWN_S
            log.warning(
                "history read failed; resumes fall back to the Redis window",
                extra={
                    "read": what,
                    "error": repr(exc),
                    "retriable": is_retriable_db_error(exc),
                    "retry_in_s": DOWN_S,
                },
            )
            return None

    async def messages(
        self, channel: str, symbol: str, epoch: int, seqs: range
    ) -> list[Entry] | None:
        """The stored messages of ``epoch`` with seq in ``seqs`` (oldest first, signed and
        anonymized like the Redis entries); None when the database cannot be read."""

        async def read(db: asyncpg.Pool) -> list[Entry]:
            rows = await db.fetch(
                SQL_UPDATES,
                channel,
                symbol,
                epoch,
                seqs.start,
                seqs.stop - 1,
                timeout=QUERY_TIMEOUT_S,
            )
            return [(int(r["seq"]), epoch, sign(anonymize(bytes(r["msg"])))) for r in rows]

        if not self.serves(channel) or not seqs:
            return None
        return await self._guard("messages", read)

    async def opening(self, channel: str, symbol: str, since_ns: int) -> Opening | None:
        """Where a resume by time starts (:class:`Opening`); None when history has nothing
        before ``since_ns`` (retention, the stream began later) or cannot be read."""

        async def read(db: asyncpg.Pool) -> Opening:
            # the last message published before since (strictly: one at since is sent)
            target = await resolve_target(db, channel, symbol, at_ns=since_ns - 1)
            snap = None
            if channel in BOOK_CHANNELS:
                book = await rebuild(db, channel, symbol, target)
                snap = sign(anonymize(snapshot_message(book)))
            return Opening(target.epoch, target.seq, snap)

        if not self.serves(channel):
            return None
        return await self._guard("opening", read)

    async def reaches(self, channel: str, symbol: str, since_ns: int) -> bool:
        """Whether stored history holds ``channel:symbol`` from before ``since_ns`` (one
        indexed lookup): a resume from ``since`` can then be served whole."""

        async def read(db: asyncpg.Pool) -> bool:
            row = await db.fetchrow(SQL_AT, channel, symbol, dt_from_ns(since_ns - 1))
            return row is not None

        if not self.serves(channel):
            return False
        return bool(await self._guard("reaches", read))

    async def still_beyond(
        self, beyond: Mapping[tuple[str, str], str | None], since_ns: int
    ) -> dict[tuple[str, str], str | None]:
        """Of the streams whose Redis window starts after ``since_ns``, those history cannot
        serve either (the ``beyond_window`` of a client-id resume)."""
        out: dict[tuple[str, str], str | None] = {}
        for (channel, symbol), start in beyond.items():
            if not await self.reaches(channel, symbol, since_ns):
                out[(channel, symbol)] = start
        return out


__all__ = ["Entry", "HistoryResumeConfig", "Opening", "StoredHistory", "plan_read"]
