"""A publishing leader reads the control partition at most every LEADER_CONTROL_READ_S: its own
heartbeats woke its input fetch 10 times a second. A standby, a claimant, and a leader that was
away longer than that read it at once (a higher claim must not wait). It reads md.in paced where
every record comes by push, and ships Kafka's copy of its outputs between two ticks."""

from __future__ import annotations

import dataclasses
import time

import pytest
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


async def test_a_leader_rests_only_the_input_partitions_whose_pushes_are_in_step() -> None:
    """md.in is read paced (once per input_verify_ms) only while publishing, connected to the
    sources' feeds and taking every record of the partition by push (``_pace_input``)."""
    agg = Aggregator(Settings())
    p0, p1 = TopicPartition(agg.topics.input, 0), TopicPartition(agg.topics.input, 1)
    c = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")  # never started: pause state only
    c.assign([p0, p1, CTP])
    agg.consumer = c
    period = agg.cfg.input_verify_ms / 1000
    try:
        now = time.monotonic()
        agg.intake.took_at[0] = now  # partition 0 takes pushes; partition 1 does not
        agg._input_read_at = {0: now, 1: now}  # noqa: SLF001 - both just read from Kafka
        agg._pace_input()  # noqa: SLF001
        assert c.paused() == set()  # a standby reads everything
        agg.lease.current = Claim(1, agg.ident)
        agg._pace_input()  # noqa: SLF001
        assert c.paused() == set()  # leading, but not connected to a source feed
        agg.intake.client = object()  # type: ignore[assignment]  # connected, never started
        agg._pace_input()  # noqa: SLF001
        assert c.paused() == {p0}
        agg._input_read_at[0] -= period  # noqa: SLF001 - its check of Kafka's copy is due
        agg._pace_input()  # noqa: SLF001
        assert c.paused() == set()
        agg._input_read_at[0] = time.monotonic()  # noqa: SLF001
        agg._pace_input()  # noqa: SLF001
        assert c.paused() == {p0}
        agg.intake.ahead_at[0] = time.monotonic()  # a push came past a hole: Kafka fills it
        agg._pace_input()  # noqa: SLF001
        assert c.paused() == set()
        del agg.intake.ahead_at[0]
        agg._scan = object()  # type: ignore[assignment]  # noqa: SLF001 - a takeover's scan
        agg._pace_input()  # noqa: SLF001
        assert c.paused() == set()
        agg._scan = None  # noqa: SLF001
        agg.cfg = dataclasses.replace(agg.cfg, input_verify_ms=0)  # reads continuously
        agg._pace_input()  # noqa: SLF001
        assert c.paused() == set()
    finally:
        agg.intake.client = None
        agg._scan = None  # noqa: SLF001
        await c.stop()


def test_held_outputs_ship_between_ticks_with_a_direct_feed() -> None:
    """Kafka's copy leaves SHIP_QUIET_S after the last input (never later than twice the
    linger); without a direct feed Kafka is the gateways' path and leaves on the linger."""
    agg = Aggregator(Settings(), feed_port=1)  # a feed (never started)
    agg._ship_s = 0.1  # noqa: SLF001 - run() sets it from the linger
    assert agg._ship_wait(5.0) is None  # noqa: SLF001 - nothing held
    agg._held_since, agg._input_at = 5.0, 5.095  # noqa: SLF001 - a tick came just before due
    assert agg._ship_wait(5.1) == pytest.approx(0.005)  # noqa: SLF001 - 10 ms after it
    agg._input_at = 5.0  # noqa: SLF001 - quiet since the outputs were held
    assert agg._ship_wait(5.1) == pytest.approx(0.0)  # noqa: SLF001 - due on the linger
    agg._input_at = 5.3  # noqa: SLF001 - input never pauses
    assert agg._ship_wait(5.2) == pytest.approx(0.0)  # noqa: SLF001 - twice the linger at most
    bare = Aggregator(Settings(), feed_port=0)
    bare._ship_s, bare._held_since, bare._input_at = 0.005, 5.0, 5.004  # noqa: SLF001
    assert bare._ship_wait(5.0) == pytest.approx(0.005)  # noqa: SLF001
