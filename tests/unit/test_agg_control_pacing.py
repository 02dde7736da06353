"""A publishing leader reads the control partition at most every LEADER_CONTROL_READ_S: its own
heartbeats woke its input fetch 10 times a second. A standby, a claimant, and a leader that was
away longer than that read it at once (a higher claim must not wait)."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from aggregator.leadership import Claim
from aggregator.service import LEADER_CONTROL_READ_S, Aggregator
from core.settings import Settings

CTP, ITP = TopicPartition("t.agg", 0), TopicPartition("t.in", 0)


async def test_only_a_publishing_leader_rests_the_control_partition_between_reads() -> None:
    agg = Aggregator(Settings())
    c = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")  # never started: pause state only
    c.assign([ITP, CTP])
    agg.consumer, agg._ctp = c, CTP  # noqa: SLF001 - what run() assigns
    try:
        agg._control_at = time.monotonic()  # noqa: SLF001 - just read
        agg._pace_control()  # noqa: SLF001
        assert c.paused() == set()  # a standby reads the leader's heartbeats all the time
        agg.lease.current = Claim(1, agg.ident)
        agg._pace_control()  # noqa: SLF001
        assert c.paused() == {CTP}  # leading, read a moment ago: rests
        agg._control_at -= LEADER_CONTROL_READ_S  # noqa: SLF001
        agg._pace_control()  # noqa: SLF001
        assert c.paused() == set()  # due again
        agg._control_at = time.monotonic()  # noqa: SLF001
        agg._pace_control()  # noqa: SLF001
        agg.lease.current = Claim(2, "someone-else")  # a higher claim was read: standing by
        agg._pace_control()  # noqa: SLF001
        assert c.paused() == set()
        agg.lease.current = Claim(3, agg.ident)
        agg._scan = object()  # type: ignore[assignment]  # noqa: SLF001 - still scanning
        agg._pace_control()  # noqa: SLF001
        assert c.paused() == set()
    finally:
        agg._scan = None  # noqa: SLF001
        await c.stop()
