"""Cache writer restart with Redis intact: the resume window continues without a reset; a new
epoch deletes the window before its first message (docs/internals.md "Redis")."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
import redis.asyncio as aioredis

from core.cache_keys import CacheKeys
from core.kafka import make_producer
from core.settings import Settings
from core.topics import Topics
from storage.cache_writer import CacheWriter
from testkit import fake_aggregator as T
from tests.helpers import run_until, stream_entries

pytestmark = pytest.mark.integration
SYM = "RS-USD"


async def _run_until(w: CacheWriter, pred: Callable[[], object]) -> None:
    await run_until(w, pred, 20, lambda: f"not reached: {w.counters} {w.model.counters}")


async def test_restart_continues_window_and_new_epoch_resets_it(settings: Settings) -> None:
    t = Topics.from_settings(settings)
    k = CacheKeys(settings.redis_prefix)
    r = aioredis.Redis.from_url(settings.redis_url)
    p = make_producer(settings)
    await p.start()

    async def ids() -> list[int]:
        return [int(e.split(b"-")[0]) for e, _ in await stream_entries(r, k.hist("l2", SYM))]

    async def book_seq() -> tuple[int, int]:
        b = await r.hget(k.book(SYM), "d1")
        if b is None:
            return (0, 0)
        d = orjson.loads(b)
        return (d["epoch"], d["seq"])

    def upd(seq: int, epoch: int = 1) -> tuple[str, bytes]:
        return (SYM, T.l2_update(SYM, seq, [["buy", str(100 + seq), "1"]], epoch=epoch))

    try:
        await T.produce(
            p, t.snapshot, [(f"l2:{SYM}", T.l2_snapshot(SYM, 10, [["100", "1"]], [], epoch=1))]
        )
        await T.produce_stream(p, t, "l2", [upd(i) for i in range(1, 21)])
        w1 = CacheWriter(settings)

        async def first() -> bool:
            return await book_seq() == (1, 20)

        await _run_until(w1, first)
        assert await ids() == list(range(1, 21))

        await T.produce_stream(p, t, "l2", [upd(i) for i in range(21, 31)])
        w2 = CacheWriter(settings)

        async def second() -> bool:
            return await book_seq() == (1, 30)

        await _run_until(w2, second)
        assert await ids() == list(range(1, 31))
        assert w2.counters.hist_resets == 0 and w2.counters.rebuilds == 1

        # the aggregator lost the symbol's state: new epoch, seq from 1
        await T.produce(
            p, t.snapshot, [(f"l2:{SYM}", T.l2_snapshot(SYM, 0, [["7", "1"]], [], epoch=2))]
        )
        await T.produce_stream(p, t, "l2", [upd(1, epoch=2), upd(2, epoch=2)])
        w3 = CacheWriter(settings)

        async def third() -> bool:
            return await book_seq() == (2, 2)

        await _run_until(w3, third)
        assert await ids() == [1, 2]
        entries = await stream_entries(r, k.hist("l2", SYM))
        assert all(f[b"e"] == b"2" for _, f in entries)
        assert orjson.loads(entries[0][1][b"m"])["epoch"] == 2
        assert w3.counters.hist_resets == 1
    finally:
        await p.stop()
        await r.aclose()
