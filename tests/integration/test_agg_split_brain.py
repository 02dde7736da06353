"""Two leaders at once: a paused leader comes back after its standby took over.

The sequencer design has no fencing: a leader that was paused past its lease (GC, SIGSTOP, a
slow disk) resumes and keeps publishing until it reads the higher claim. That is safe because
both instances derive identical messages for every ``seq``: a consumer that drops
``seq <= last`` sees each stream once, gapless, and every copy it drops equals the first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from pathlib import Path

import pytest

from aggregator.sources.simulator import run_simulator
from aggregator.testing import StreamCheck, l2book_as_dict, read_topic, reference_books
from core.settings import Settings
from core.topics import Topics
from tests.helpers import stop_procs
from tests.integration.test_agg_exactly_once import role, start_aggregator, wait_roles
from tests.integration.test_agg_pipeline import as_dec, wait_caught_up

pytestmark = pytest.mark.integration


async def test_paused_leader_that_returns_duplicates_only_identical_messages(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    s = dataclasses.replace(settings, sim_rate=150.0)
    stop_sim = asyncio.Event()
    sim = asyncio.create_task(run_simulator(s, stop_sim, ops=False))
    a, pa = start_aggregator(env_for, tmp_path / "a.log")
    b, pb = start_aggregator(env_for, tmp_path / "b.log")
    procs = {pa: (a, tmp_path / "a.log"), pb: (b, tmp_path / "b.log")}
    try:
        roles = await wait_roles([pa, pb])
        await asyncio.sleep(2.0)
        old = next(p for p, r in roles.items() if r == "leader")
        new = pb if old == pa else pa
        os.kill(procs[old][0].pid, signal.SIGSTOP)  # frozen mid-stream, sends in flight
        for _ in range(100):
            if role(new) == "leader":
                break
            await asyncio.sleep(0.1)
        assert role(new) == "leader", "the standby did not take over a frozen leader"
        await asyncio.sleep(1.0)
        os.kill(procs[old][0].pid, signal.SIGCONT)  # back: publishes what it had, then reads
        await wait_roles([pa, pb])  # ... the higher claim and stands by
        assert role(old) == "standby"
        await asyncio.sleep(1.0)
        stop_sim.set()
        await sim
        await wait_caught_up(s, f"{s.topic_prefix}.aggregator", limit_s=90)
    finally:
        stop_sim.set()
        for p, _ in procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
        stop_procs((a, b), 20)
    assert "a higher claim leads: standing by" in procs[old][1].read_text()

    t = Topics.from_settings(s)
    check = StreamCheck(depth=s.book_checksum_depth)
    for topic in t.all_streams():
        for r in sorted(await read_topic(s, topic), key=lambda r: (r.partition, r.offset)):
            check.feed(r.value)
    assert not check.errors, check.errors[:10]
    ref = reference_books(await read_topic(s, t.input))
    for sym in s.symbols:
        assert as_dec(l2book_as_dict(check.books[sym])) == as_dec(ref[sym]), f"{sym}: l2 differs"
