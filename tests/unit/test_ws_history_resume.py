"""The range planning and the settings of resume from stored history
(gateway_ws/history_resume.py), without servers."""

from __future__ import annotations

import dataclasses

import pytest

from core.errors import ConfigError
from core.settings import Settings
from gateway_ws.history_resume import (
    DOWN_S,
    HistoryResumeConfig,
    StoredHistory,
    plan_read,
)


@pytest.mark.parametrize(
    ("last", "window_first", "head", "chunk", "want"),
    [
        # the window starts right after the client: Redis serves it, the database nothing
        (10, 11, 50, 500, None),
        # a hole 11..30 before the window (31..): read it, up to the window only
        (10, 31, 50, 500, (11, 30)),
        # a long hole: one chunk at a time
        (10, 5000, 9000, 500, (11, 510)),
        # the window is empty: up to the follower's head
        (10, None, 25, 500, (11, 25)),
        (10, None, 5000, 100, (11, 110)),
        # nothing after the client anywhere (it is at the head, or ahead of it)
        (25, None, 25, 500, None),
        (30, None, 25, 500, None),
        # no window and no head known: nothing to plan
        (10, None, None, 500, None),
        # the window's first entry is at or before the client's next (never read twice)
        (10, 5, 50, 500, None),
        (0, 2, 2, 500, (1, 1)),
    ],
)
def test_plan_read_fills_only_the_hole_before_the_window(
    last: int, window_first: int | None, head: int | None, chunk: int, want: tuple[int, int] | None
) -> None:
    got = plan_read(last, window_first, head, chunk)
    if want is None:
        assert got is None
    else:
        assert got is not None
        assert (got.start, got.stop - 1) == want
        assert len(got) <= chunk


def test_plan_read_chunks_cover_a_hole_exactly_once() -> None:
    last, seen = 0, list[int]()
    while (r := plan_read(last, 1234, 2000, 100)) is not None:
        seen.extend(r)
        last = r.stop - 1
    assert seen == list(range(1, 1234))


def test_plan_read_rejects_an_empty_chunk() -> None:
    with pytest.raises(ValueError):
        plan_read(1, None, 5, 0)


def test_settings_defaults_and_bad_values() -> None:
    base = Settings.from_env({})
    cfg = HistoryResumeConfig.from_settings(base)
    assert (cfg.db_pool, cfg.max_messages, cfg.channels) == (2, 100_000, ("l2", "l3", "trades"))
    assert StoredHistory.from_settings(base) is not None
    off = Settings.from_env({"MD_WS_HISTORY_DB_POOL": "0"})
    assert StoredHistory.from_settings(off) is None  # 0: resume never reads the database
    for env, name in (
        ({"MD_WS_HISTORY_DB_POOL": "-1"}, "MD_WS_HISTORY_DB_POOL"),
        ({"MD_WS_HISTORY_RESUME_MAX": "0"}, "MD_WS_HISTORY_RESUME_MAX"),
        ({"MD_WS_HISTORY_DB_POOL": "two"}, "MD_WS_HISTORY_DB_POOL"),
    ):
        with pytest.raises(ConfigError) as e:
            HistoryResumeConfig.from_settings(Settings.from_env(env))
        assert name in str(e.value)


async def test_a_failed_read_leaves_the_database_alone_for_a_while() -> None:
    """The outage rule on a database nobody listens for (a closed local port): the first read
    fails (None: the caller falls back), and until DOWN_S has passed no read is tried."""
    now = [100.0]
    cfg = dataclasses.replace(HistoryResumeConfig(), db_pool=1)
    st = StoredHistory("postgresql://md:md@127.0.0.1:1/none", cfg, clock=lambda: now[0])
    try:
        assert st.serves("l2") and not st.serves("ticker")
        assert await st.messages("l2", "BTC-USD", 1, range(1, 10)) is None
        assert st.failures == 1 and not st.serves("l2")
        assert await st.opening("l2", "BTC-USD", 10**18) is None
        assert await st.reaches("trades", "BTC-USD", 10**18) is False
        assert st.failures == 1  # not tried while down
        now[0] += DOWN_S
        assert st.serves("l2")
        assert await st.messages("l2", "BTC-USD", 1, range(1, 10)) is None
        assert st.failures == 2
    finally:
        await st.close()
