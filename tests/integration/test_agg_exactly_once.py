"""Exactly once across a crash and a scale-out, on the real broker, with real processes.

Two aggregator subprocesses share the consumer group while the simulator publishes; one is
killed with SIGKILL mid-stream (its open transaction is lost), the survivor takes its
partitions over. Every consumed stream must be gapless with no duplicate in one epoch, the l2
and l3 books must pass every checksum and equal a reference rebuilt from the input topic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from aggregator.sources.simulator import run_simulator
from aggregator.testing import (
    StreamCheck,
    l2book_as_dict,
    read_topic,
    reference_books,
)
from core.settings import Settings
from core.topics import Topics
from tests.conftest import free_port
from tests.helpers import stop_procs
from tests.integration.test_agg_pipeline import as_dec, wait_caught_up

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def start_aggregator(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    e = dict(
        env,
        MD_AGGREGATOR_HTTP_PORT=str(free_port()),
        MD_AGG_CHECKPOINT_MS="300",
        MD_AGG_SNAPSHOT_MS="200",
        MD_AGG_TXN_MS="50",
        MD_AGG_SESSION_MS="6000",
        MD_LOG_LEVEL="INFO",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "aggregator"],
        cwd=ROOT,
        env=e,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


async def wait_owns_partitions(settings: Settings, group: str) -> None:
    """Until the group has committed at least one offset (an instance is processing)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        for _ in range(300):
            offs = await admin.list_consumer_group_offsets(group)
            if sum(o.offset for o in offs.values()) > 200:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("aggregator never committed")
    finally:
        await admin.close()


async def test_kill_9_takeover_is_gapless_and_exact(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    s = dataclasses.replace(settings, sim_rate=150.0)
    group = f"{s.topic_prefix}.aggregator"
    stop_sim = asyncio.Event()
    sim = asyncio.create_task(run_simulator(s, stop_sim, ops=False))
    a = start_aggregator(env_for, tmp_path / "a.log")
    b = start_aggregator(env_for, tmp_path / "b.log")
    try:
        await wait_owns_partitions(s, group)
        await asyncio.sleep(3.0)  # both instances own partitions, transactions in flight
        os.kill(a.pid, signal.SIGKILL)
        a.wait(10)
        await asyncio.sleep(4.0)  # keep publishing while the survivor takes over
        stop_sim.set()
        await sim
        await wait_caught_up(s, group, limit_s=90)
    finally:
        stop_sim.set()
        stop_procs((a, b), 20)
    b_log = (tmp_path / "b.log").read_text()
    assert "partition assigned" in b_log
    assert '"replayed"' in b_log

    t = Topics.from_settings(s)
    check = StreamCheck(depth=s.book_checksum_depth)
    for topic in t.all_streams():
        recs = sorted(await read_topic(s, topic), key=lambda r: (r.partition, r.offset))
        for r in recs:
            check.feed(r.value)
    assert not check.errors, check.errors[:10]
    for ch in ("l2", "l3", "trades", "ticker", "stats", "status", "candles_1m"):
        assert check.counts[ch] > 0, f"no {ch} messages"

    ref = reference_books(await read_topic(s, t.input))
    for sym in s.symbols:
        assert as_dec(l2book_as_dict(check.books[sym])) == as_dec(ref[sym]), f"{sym}: l2 differs"
        assert as_dec(l2book_as_dict(check.l3_as_l2(sym))) == as_dec(ref[sym]), f"{sym}: l3 differs"
        assert sum(ref[sym]["buy"].values(), Decimal(0)) > 0
