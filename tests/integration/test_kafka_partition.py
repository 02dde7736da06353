"""A gateway's follower partitioned from Kafka resumes by itself, with no gap and no duplicate.

The follower (what every gateway runs, here without the aggregators' direct feed so that Kafka
is its only source) is bootstrapped at the broker's CHAOS listener (deploy/local/kafka.sh),
which advertises ``loadtests/faultproxy.py``: every connection goes through the proxy. The
proxy holds all bytes for 3 s (a partition, not a reset) and heals; the aggregator and the
simulator run on the direct address throughout. Issue 11, item 4; ``make chaos`` runs the same
against a whole gateway_ws (scenario ``ws-kafka-cut``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from aggregator.sources.simulator import run_simulator
from aggregator.testing import StreamCheck
from core.follower import StreamFollower
from core.settings import Settings
from loadtests.faultproxy import FaultProxy
from tests.helpers import check_follower, stop_procs
from tests.integration.test_agg_exactly_once import start_aggregator, wait_roles
from tests.integration.test_agg_pipeline import wait_caught_up

pytestmark = pytest.mark.integration


async def _proxy_for(port: int) -> FaultProxy:
    try:
        _, w = await asyncio.open_connection("127.0.0.1", port + 100)
        w.close()
    except OSError:
        pytest.fail(
            f"no CHAOS listener on 127.0.0.1:{port + 100}: this broker predates it; restart it "
            "(deploy/local/kafka.sh stop && deploy/local/kafka.sh start)"
        )
    proxy = FaultProxy(port + 200, "127.0.0.1", port + 100)
    for _ in range(100):  # another run on this machine may hold the advertised port a moment
        try:
            await proxy.start()
            return proxy
        except OSError:
            await asyncio.sleep(0.2)
    pytest.fail(f"127.0.0.1:{port + 200} stays busy")


async def test_a_follower_partitioned_from_kafka_resumes_gapless(
    settings: Settings, env_for: dict[str, str], tmp_path: Path
) -> None:
    s = dataclasses.replace(settings, sim_rate=100.0)
    ports = [int(hp.rsplit(":", 1)[1]) for hp in s.kafka_bootstrap.split(",")]
    proxies = [await _proxy_for(p) for p in ports]
    stop_sim = asyncio.Event()
    sim = asyncio.create_task(run_simulator(s, stop_sim, ops=False))
    agg, http = start_aggregator(env_for, tmp_path / "agg.log")
    fs = dataclasses.replace(
        s,
        kafka_bootstrap=",".join(f"127.0.0.1:{p + 200}" for p in ports),
        extra={**s.extra, "MD_AGG_FEED": ""},
    )
    follower = StreamFollower(fs, channels=["l2", "trades", "ticker"])
    seen = StreamCheck(depth=s.book_checksum_depth)
    resets = check_follower(follower, seen)
    try:
        await wait_roles([http])
        await follower.start()
        await asyncio.sleep(3.0)
        before = sum(seen.counts.values())
        assert before > 0, "nothing through the proxy before the cut"
        for px in proxies:
            px.cut()
        at_cut = sum(px.bytes for px in proxies)
        await asyncio.sleep(3.0)
        assert sum(px.bytes for px in proxies) == at_cut  # the partition held
        during = sum(seen.counts.values()) - before
        for px in proxies:
            px.heal()
        await asyncio.sleep(4.0)
        stop_sim.set()
        await sim
        await wait_caught_up(s, f"{s.topic_prefix}.aggregator", limit_s=60)
        await asyncio.sleep(1.5)  # the follower reads what the heal released
    finally:
        stop_sim.set()
        await follower.stop()
        stop_procs((agg,), 20)
        for px in proxies:
            await px.stop()
    after = sum(seen.counts.values())
    assert after > before + during, "nothing after the heal"
    assert not seen.errors, seen.errors[:10]
    assert seen.duplicates == 0
    assert [r for r in resets if r.reason != "snapshot"] == []  # no gap, checksum or epoch reset
