"""The cache writer's resume-window writes on the real Redis (storage/cache_writer.py): one
script call per flush adds every window's entries in order, a reset inside one flush leaves only
what follows it, an already stored entry is skipped, and a Redis that lost the script (restart,
``SCRIPT FLUSH``) is noticed and the cache re-written; the window restarts there rather than
serve the failed flush's gap as continuous history."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from core.cache_keys import HIST_EPOCH, HIST_MESSAGE, CacheKeys
from core.settings import Settings
from storage.cache_model import Writes
from storage.cache_writer import CacheWriter
from tests.helpers import stream_entries

pytestmark = pytest.mark.integration
SYM = "HW-USD"


def _msg(seq: int, epoch: int = 1) -> bytes:
    return f'{{"seq":{seq},"epoch":{epoch}}}'.encode()


def _hist(*pos: tuple[int, int]) -> Writes:
    return Writes(hist=[("l2", SYM, e, s, _msg(s, e)) for e, s in pos])


async def _window(r: aioredis.Redis, key: str) -> list[tuple[int, int, bytes]]:
    out = []
    for eid, fields in await stream_entries(r, key):
        out.append(
            (
                int(eid.split(b"-")[0]),
                int(fields[HIST_EPOCH.encode()]),
                fields[HIST_MESSAGE.encode()],
            )
        )
    return out


async def test_window_writes_in_order_with_reset_skip_and_lost_script(
    redis_settings: Settings,
) -> None:
    s = redis_settings
    key = CacheKeys(s.redis_prefix).hist("l2", SYM)
    r = aioredis.Redis.from_url(s.redis_url)
    w = CacheWriter(s)
    try:
        await w.flush()  # the first flush is a full write: it loads the script
        assert w.redis_ok and w._xadd_sha  # noqa: SLF001

        assert await w._apply(_hist((1, 1), (1, 2), (1, 3)), full=False)  # noqa: SLF001
        assert await _window(r, key) == [(i, 1, _msg(i)) for i in (1, 2, 3)]

        # 3 is there already (skipped); 4 added; then a gap (6) resets the window in the same
        # flush: only 6 and 7 remain
        assert await w._apply(_hist((1, 3), (1, 4), (1, 6), (1, 7)), full=False)  # noqa: SLF001
        assert await _window(r, key) == [(6, 1, _msg(6)), (7, 1, _msg(7))]
        assert w.counters.hist_resets == 1

        # a new epoch starts a fresh window
        assert await w._apply(_hist((2, 1), (2, 2)), full=False)  # noqa: SLF001
        assert await _window(r, key) == [(1, 2, _msg(1, 2)), (2, 2, _msg(2, 2))]

        # Redis lost the script: the flush fails, is counted, and the next one re-writes the
        # cache (script loaded again); 3 never reached Redis, so 4 starts a fresh window
        await r.script_flush()
        w.model._pending = _hist((2, 3))  # noqa: SLF001
        await w.flush()
        assert not w.redis_ok and w.counters.redis_errors == 1
        w._next_try = 0.0  # noqa: SLF001 - no backoff wait in the test
        w.model._pending = _hist((2, 4))  # noqa: SLF001
        await w.flush()
        assert w.redis_ok
        assert [e[0] for e in await _window(r, key)] == [4]
    finally:
        await r.delete(key, CacheKeys(s.redis_prefix).sentinel)
        await w.redis.aclose()
        await r.aclose()


async def test_one_flush_writes_several_windows_and_values(redis_settings: Settings) -> None:
    """One script call carries several windows (one reset inside the flush, one plain) and one
    MSET the plain values; each key ends as if written on its own."""
    s = redis_settings
    k = CacheKeys(s.redis_prefix)
    l2, l3, trades = k.hist("l2", SYM), k.hist("l3", SYM), k.hist("trades", "HX-USD")
    r = aioredis.Redis.from_url(s.redis_url)
    w = CacheWriter(s)
    try:
        await w.flush()
        assert await w._apply(_hist((1, 1), (1, 2)), full=False)  # noqa: SLF001
        batch = Writes(
            hist=[
                ("l3", SYM, 1, 5, _msg(5)),
                ("l2", SYM, 1, 3, _msg(3)),
                ("trades", "HX-USD", 4, 1, _msg(1, 4)),
                ("l2", SYM, 1, 9, _msg(9)),  # a gap: l2 restarts at 9 within this flush
                ("l3", SYM, 1, 6, _msg(6)),
                ("trades", "HX-USD", 4, 2, _msg(2, 4)),
                ("l2", SYM, 1, 10, _msg(10)),
            ],
            strings={f"ticker:{SYM}": b"t1", "stats:HX-USD": b"s1"},
            trades={SYM: [b"x"]},
            trades_pos={SYM: (3, 42)},
        )
        assert await w._apply(batch, full=False)  # noqa: SLF001
        assert await _window(r, l2) == [(9, 1, _msg(9)), (10, 1, _msg(10))]
        assert await _window(r, l3) == [(5, 1, _msg(5)), (6, 1, _msg(6))]
        assert await _window(r, trades) == [(1, 4, _msg(1, 4)), (2, 4, _msg(2, 4))]
        assert w.counters.hist_added == 2 + 7 and w.counters.hist_resets == 1
        got = await r.mget(k.under(f"ticker:{SYM}"), k.under("stats:HX-USD"), k.trades_seq(SYM))
        assert got == [b"t1", b"s1", b"3:42"]
        assert await r.lrange(k.trades(SYM), 0, -1) == [b"x"]
    finally:
        await r.delete(
            l2,
            l3,
            trades,
            k.sentinel,
            k.under(f"ticker:{SYM}"),
            k.under("stats:HX-USD"),
            k.trades_seq(SYM),
            k.trades(SYM),
        )
        await w.redis.aclose()
        await r.aclose()
