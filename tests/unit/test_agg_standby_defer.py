"""A standby applies an input record only once the leader's heartbeat says it is published
(then without encoding it) or once it waited a lease; a takeover applies whatever still waits.
What it buffers must be exactly the leader's messages for the records the leader has not acked,
seq for seq (issue 10: a standby encoded nearly every record, half a leader's CPU)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from aggregator import events as ev
from aggregator import service
from aggregator.leadership import Claim, Heartbeat
from aggregator.service import Aggregator
from aggregator.sources.matching import MatchingEngine
from core.settings import Settings

SYM = "BTC-USD"
T0 = 1_700_000_000_000_000_000


@dataclass
class Rec:
    """What the service reads of a consumer record."""

    offset: int
    value: bytes
    timestamp: int
    key: bytes = SYM.encode()


def records(n: int) -> list[Rec]:
    e = MatchingEngine(SYM, price_decimals=2, size_decimals=2)
    out: list[Rec] = []
    for i in range(n):
        ts = T0 + i * 1_000_000_000
        side = "buy" if i % 2 else "sell"
        evs = e.limit(f"o{i}", side, 1000 + (i % 5) * (1 if side == "sell" else -1), 3, ts)
        if i % 3 == 2:
            evs += e.market(f"m{i}", "buy", 2, ts)
        out.append(Rec(i, ev.encode_record(evs), ts // 1_000_000))
    return out


def leader_messages(recs: list[Rec]) -> dict[int, list[bytes]]:
    """Per input offset, the messages a leader derives (its publish time is not compared)."""
    agg = Aggregator(Settings())
    agg.lease.current = Claim(1, agg.ident)
    out: dict[int, list[bytes]] = {}
    for r in recs:
        out[r.offset] = [_data(o.value) for o in agg._apply_record(0, r) or []]  # noqa: SLF001
    return out


def _data(raw: bytes) -> bytes:
    msg = orjson.loads(raw)
    msg.pop("timestamp", None)  # the publish time
    return orjson.dumps(msg)


def standby(acked: int) -> Aggregator:
    agg = Aggregator(Settings())
    agg.lease.current = Claim(1, "the-leader")
    agg.lease.last = Heartbeat(Claim(1, "the-leader"), acked={0: acked})
    return agg


async def test_acked_records_are_applied_unencoded_and_the_rest_wait() -> None:
    recs = records(12)
    agg = standby(acked=6)
    await agg._process({TopicPartition(agg.topics.input, 0): recs})  # noqa: SLF001
    assert agg.buffer.size == 0  # 0..6 acked: applied and discarded; 7..11 wait
    assert [r.offset for _, r in agg._deferred[0]] == [7, 8, 9, 10, 11]  # noqa: SLF001
    assert agg.positions[0] == 11
    assert agg.symbols[SYM].seq  # the acked ones were applied: seqs advanced

    agg.lease.last = Heartbeat(Claim(1, "the-leader"), acked={0: 9})  # a later heartbeat
    await agg._process({})  # noqa: SLF001
    assert [r.offset for _, r in agg._deferred[0]] == [10, 11]  # noqa: SLF001
    assert agg.buffer.size == 0


async def test_what_waited_a_lease_is_buffered_exactly_as_the_leader_publishes_it() -> None:
    recs = records(12)
    want = leader_messages(recs)
    agg = standby(acked=4)
    await agg._process({TopicPartition(agg.topics.input, 0): recs[:8]})  # noqa: SLF001
    assert agg.buffer.size == 0
    q = agg._deferred[0]  # noqa: SLF001
    for i, (_, r) in enumerate(list(q)):
        q[i] = (0.0, r)  # read long ago: the leader is late with its acks
    await agg._process({TopicPartition(agg.topics.input, 0): recs[8:]})  # noqa: SLF001
    assert [r.offset for _, r in agg._deferred[0]] == [8, 9, 10, 11]  # noqa: SLF001
    got: dict[int, list[bytes]] = {}
    for o in agg.buffer.by_partition[0]:
        got.setdefault(o.offset, []).append(_data(o.value))
    assert got == {k: v for k, v in want.items() if 5 <= k <= 7 and v}


async def test_a_takeover_applies_every_waiting_record_before_it_claims(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recs = records(12)
    want = leader_messages(recs)
    agg = standby(acked=3)
    await agg._process({TopicPartition(agg.topics.input, 0): recs})  # noqa: SLF001
    assert len(agg._deferred[0]) == 8  # noqa: SLF001

    async def no_beat(now: float, *, resign: bool = False) -> None:
        return None

    async def no_scan(*args: Any) -> dict[Any, int]:
        return {}

    monkeypatch.setattr(agg, "_heartbeat", no_beat)
    monkeypatch.setattr(service, "scan_published", no_scan)
    await agg._take_over(time.monotonic())  # noqa: SLF001
    assert agg.lease.leader and not agg._deferred  # noqa: SLF001
    got: dict[int, list[bytes]] = {}
    for o in agg.buffer.by_partition[0]:
        got.setdefault(o.offset, []).append(_data(o.value))
    assert got == {k: v for k, v in want.items() if k > 3 and v}
    assert agg._scan is not None  # noqa: SLF001
    await agg._scan  # noqa: SLF001
