"""The resume window in Redis (docs/internals.md "Redis"): ``<prefix>:hist:<channel>:<symbol>``.

A capped Redis stream written by the storage cache writer, entry IDs ``<seq>-0``, fields ``m``
(the message bytes as published) and ``e`` (epoch); the writer deletes the key when the epoch
changes. Any gateway instance can therefore serve "everything after seq N" to a client that
reconnects elsewhere. Reads are bounded by ``count`` (``MD_WS_RESUME_MAX``).

Older than the window, the stored channels are read from history instead
(:mod:`gateway_ws.history_resume`, when a :class:`~gateway_ws.history_resume.StoredHistory` is
given): :meth:`History.chunk` picks, per chunk, Redis or the database.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from core.anonymize import apply as anonymize
from core.cache_keys import HIST_EPOCH, HIST_MESSAGE, CacheKeys
from core.codec import ns_from_iso
from core.signing import sign
from gateway_ws.history_resume import Opening, StoredHistory, plan_read

Entry = tuple[int, int, bytes]  # seq, epoch, message bytes
_E, _M = HIST_EPOCH.encode(), HIST_MESSAGE.encode()


def hist_key(prefix: str, channel: str, symbol: str) -> str:
    return CacheKeys(prefix).hist(channel, symbol)  # the names live in core/cache_keys.py


def _entry(item: Any) -> Entry:
    eid, fields = item
    eid = eid.decode() if isinstance(eid, bytes) else eid
    seq = int(eid.split("-", 1)[0])
    e = fields.get(_E, fields.get(HIST_EPOCH, 0))
    m = fields.get(_M, fields.get(HIST_MESSAGE, b""))
    return seq, int(e), sign(anonymize(bytes(m)))  # core/anonymize.py, core/signing.py


class History:
    def __init__(self, redis_url: str, prefix: str, stored: StoredHistory | None = None) -> None:
        self.redis = aioredis.Redis.from_url(
            redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self.prefix = prefix
        self.stored = stored  # None: nothing older than the window is served

    async def close(self) -> None:
        await self.redis.aclose()
        if self.stored is not None:
            await self.stored.close()

    async def chunk(
        self, channel: str, symbol: str, last: int, epoch: int | None, count: int, head: int | None
    ) -> tuple[list[Entry], bool]:
        """The next entries after ``last``: from Redis, or, where the window starts after
        ``last + 1`` (or holds nothing up to ``head``), the stored ones of that hole
        (:func:`~gateway_ws.history_resume.plan_read`). The flag says they came from the
        database. When history cannot help (not a stored channel, unknown epoch, nothing
        stored, database down) the Redis entries are returned as they are, and the caller's
        continuity check answers ``too_old``/``gap`` as without history."""
        entries = await self.after(channel, symbol, last, count)
        st = self.stored
        if st is None or epoch is None or not st.serves(channel):
            return entries, False
        seqs = plan_read(last, entries[0][0] if entries else None, head, count)
        if seqs is None:
            return entries, False
        rows = await st.messages(channel, symbol, epoch, seqs)
        if not rows:
            return entries, False
        return rows, True

    async def opening(self, channel: str, symbol: str, since_ns: int) -> Opening | None:
        """A resume by time older than the window: where it starts in stored history."""
        if self.stored is None:
            return None
        return await self.stored.opening(channel, symbol, since_ns)

    async def beyond_history(
        self, beyond: dict[tuple[str, str], str | None], since_ns: int
    ) -> dict[tuple[str, str], str | None]:
        """Of the streams whose window starts after ``since_ns``, those stored history cannot
        serve either (all of them without history)."""
        if self.stored is None or not beyond:
            return beyond
        return await self.stored.still_beyond(beyond, since_ns)

    async def after(self, channel: str, symbol: str, seq: int, count: int) -> list[Entry]:
        """Entries with ``seq`` greater than the given one, oldest first, at most ``count``."""
        items = await self.redis.xrange(
            hist_key(self.prefix, channel, symbol), min=f"{seq + 1}-0", max="+", count=count
        )
        return [_entry(i) for i in items or ()]

    async def window_starts(
        self, keys: list[tuple[str, str]], since_ns: int
    ) -> dict[tuple[str, str], str | None]:
        """The streams of ``keys`` whose window does not reach back to ``since_ns``: key ->
        the ISO time of its oldest retained message (None when nothing is retained). One
        pipelined round trip; the same rule as :meth:`seq_at` returning None."""
        if not keys:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for ch, sym in keys:
            pipe.xrange(hist_key(self.prefix, ch, sym), count=1)
        firsts = await pipe.execute()
        out: dict[tuple[str, str], str | None] = {}
        for key, first in zip(keys, firsts, strict=True):
            if not first:
                out[key] = None
                continue
            _seq, _fields = first[0]
            m = _fields.get(_M, _fields.get(HIST_MESSAGE, b""))
            try:
                ts = orjson.loads(m)["timestamp"]
                if ns_from_iso(ts) >= since_ns:
                    out[key] = ts
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # unreadable: the replay itself will say too_old or gap
        return out

    async def seq_at(self, channel: str, symbol: str, since_ns: int) -> int | None:
        """The last seq published before ``since_ns``: resuming after it gives every message
        at or after that time. None when the window does not reach back that far."""
        key = hist_key(self.prefix, channel, symbol)
        first = await self.redis.xrange(key, count=1)
        last = await self.redis.xrevrange(key, count=1)
        if not first or not last:
            return None

        def ts(e: Entry) -> int:
            return ns_from_iso(orjson.loads(e[2])["timestamp"])

        f, la = _entry(first[0]), _entry(last[0])
        if ts(f) >= since_ns:
            return None
        if ts(la) < since_ns:
            return la[0]
        lo, hi = f[0], la[0]  # invariant: ts(lo) < since <= ts(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            got = await self.redis.xrange(key, min=f"{mid}-0", max="+", count=1)
            e = _entry(
                got[0] if got else (f"{mid}-0", {})
            )  # seqs are contiguous in a window, so e is seq mid
            if ts(e) < since_ns:
                lo = max(lo + 1, min(e[0], hi - 1))
            else:
                hi = mid
        return lo
