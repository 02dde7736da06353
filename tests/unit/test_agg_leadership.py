"""The aggregator's lease and takeover rule (aggregator/leadership.py, aggregator/outbox.py): pure."""

from __future__ import annotations

from aggregator.leadership import Claim, Heartbeat, Lease
from aggregator.outbox import Gate, Out, StandbyBuffer


def hb(term: int, ident: str, acked: dict[int, int] | None = None) -> Heartbeat:
    return Heartbeat(Claim(term, ident), acked or {}, {"md.l2|0": 5})


def test_heartbeat_roundtrip() -> None:
    h = Heartbeat(Claim(3, "a"), {0: 10, 2: -1}, {"md.l2|1": 7})
    assert Heartbeat.decode(h.encode(123)) == h
    r = Heartbeat(Claim(3, "a"), {}, {}, resign=True)
    assert Heartbeat.decode(r.encode(1)).resign


def test_a_fresh_instance_waits_one_lease_then_leads() -> None:
    lease = Lease("a", 0.5)
    assert not lease.should_take_over(10.0)
    assert not lease.should_take_over(10.4)
    assert lease.should_take_over(10.5)
    assert lease.take_over(10.5) == Claim(1, "a") and lease.leader


def test_a_standby_takes_over_only_when_the_leaders_heartbeats_stop() -> None:
    lease = Lease("b", 0.5)
    lease.observe(hb(4, "a"), 1.0)
    assert not lease.leader and not lease.should_take_over(1.4)
    lease.observe(hb(4, "a"), 1.4)
    assert not lease.should_take_over(1.8)
    assert lease.should_take_over(1.9)
    assert lease.take_over(1.9) == Claim(5, "b")


def test_the_higher_claim_wins_and_the_lower_steps_down() -> None:
    a = Lease("a", 0.5)
    a.take_over(0.0)
    assert a.leader
    assert a.observe(hb(1, "b"), 0.1)  # same term, greater ident: a steps down
    assert not a.leader and a.current == Claim(1, "b")
    assert not a.observe(hb(1, "a"), 0.2)  # an older claim changes nothing
    assert a.current == Claim(1, "b")


def out(p: int, off: int, seq: int, epoch: int = 9, stream: tuple[str, str] = ("l2", "X")) -> Out:
    return Out(p, off, stream, epoch, seq, "md.l2", b"X", b"v%d" % seq)


def test_gate_publishes_exactly_what_kafka_lacks() -> None:
    # acked up to input offset 10; Kafka holds seq 7 of epoch 9 written after that
    g = Gate({0: 10}, {(("l2", "X"), 9): 7})
    assert not g.allows(0, 10, ("l2", "X"), 9, 6)  # covered by the acked input
    assert not g.allows(0, 11, ("l2", "X"), 9, 7)  # in Kafka already
    assert g.allows(0, 12, ("l2", "X"), 9, 8)  # missing: publish
    assert g.allows(0, 13, ("l2", "X"), 9, 9)  # and everything after
    assert g.allows(0, 11, ("l2", "Y"), 9, 3)  # a stream Kafka has nothing of since the ack
    assert Gate({}, {(("l2", "X"), 8): 50}).allows(0, 0, ("l2", "X"), 9, 1)  # other epoch


def test_standby_buffer_trims_by_the_leaders_ack_and_drains_through_the_gate() -> None:
    b = StandbyBuffer()
    for i in range(1, 6):
        b.add(out(0, 10 + i, i))
    b.add(out(1, 3, 1, stream=("l2", "Y")))
    b.trim({0: 12, 1: 3})  # the leader acked offsets <= 12 of p0 and <= 3 of p1
    assert b.size == 3
    got = b.drain(Gate({0: 12, 1: 3}, {(("l2", "X"), 9): 4}))
    assert [(o.partition, o.seq) for o in got] == [(0, 5)]
    assert b.size == 0


def test_standby_buffer_is_bounded_and_says_it_lost_something() -> None:
    b = StandbyBuffer(limit=3)
    for i in range(5):
        b.add(out(0, i, i + 1))
    assert b.size == 3 and b.lost


def test_a_restarted_instance_lets_the_running_standby_claim_first() -> None:
    lease = Lease("c", 0.5)
    lease.observe(hb(4, "a"), 10.0)  # the leader's last heartbeat, read at start
    lease.defer_until = 10.0 + 1.0
    assert not lease.should_take_over(10.6)  # the lease ran out, but the standby goes first
    assert lease.should_take_over(11.0)


def test_a_resigning_leader_is_replaced_at_once() -> None:
    """A clean stop (SIGTERM, a rolling update) must not cost a whole lease of silence."""
    lease = Lease("b", 0.5)
    lease.observe(hb(4, "a"), 1.0)
    assert not lease.should_take_over(1.01)
    lease.observe(Heartbeat(Claim(4, "a"), {}, {}, resign=True), 1.02)
    assert lease.should_take_over(1.03)


def test_a_silent_control_partition_is_not_a_dead_leader() -> None:
    """The broker leading the control partition died: neither the leader's heartbeats nor the
    standby's presence records land, so the lease running out on the clock is not enough."""
    lease = Lease("b", 0.5, presence_needed=3)
    lease.observe(Heartbeat(Claim(1, "a")), 1.0)
    assert not lease.should_take_over(5.0)  # seconds of silence, no presence read back
    lease.observe_presence("b")
    lease.observe_presence("b")
    assert not lease.should_take_over(5.1)
    lease.observe(Heartbeat(Claim(1, "a")), 5.2)  # the partition is back: so is the leader
    lease.observe_presence("b")
    assert not lease.should_take_over(5.8)  # one presence since the heartbeat, not three


def test_presence_after_the_last_heartbeat_expires_the_lease() -> None:
    lease = Lease("b", 0.5, presence_needed=3)
    lease.observe(Heartbeat(Claim(1, "a")), 1.0)
    for _ in range(3):
        lease.observe_presence("b")
        lease.observe_presence("c")  # another standby's records count for it, not for b
    assert not lease.should_take_over(1.4)  # presence enough, lease not yet over
    assert lease.should_take_over(1.5)
    claim = lease.take_over(1.5)
    assert claim == Claim(2, "b") and lease.leader and lease.presence == 0


def test_only_own_presence_counts() -> None:
    lease = Lease("b", 0.5, presence_needed=3)
    lease.observe(Heartbeat(Claim(1, "a")), 1.0)
    for _ in range(5):
        lease.observe_presence("c")
    assert not lease.should_take_over(3.0)


def test_a_resigning_leader_needs_no_presence() -> None:
    lease = Lease("b", 0.5, presence_needed=3)
    lease.observe(Heartbeat(Claim(1, "a")), 1.0)
    lease.observe(Heartbeat(Claim(1, "a"), resign=True), 1.1)
    assert lease.should_take_over(1.1)


def test_presence_is_written_only_once_the_heartbeat_is_late() -> None:
    lease = Lease("b", 0.5, presence_needed=3)
    assert lease.presence_due(0.0, 0.1)  # nobody leads yet: the rule decides from the start
    lease.observe(Heartbeat(Claim(1, "a")), 1.0)
    assert not lease.presence_due(1.1, 0.1)  # on time: nothing to prove
    assert not lease.presence_due(1.149, 0.1)
    assert lease.presence_due(1.151, 0.1)  # 0.5 - 3.5 x 0.1 s late: three periods to go
    lease.take_over(2.0)
    assert not lease.presence_due(5.0, 0.1)  # a leader never writes presence


def test_a_dead_leader_still_costs_no_more_than_the_lease() -> None:
    """The standby's loop (aggregator/service.py _heartbeat_loop) on a 50 ms tick: presence
    records start late, one per period, each read back 20 ms after it is written; the takeover
    still comes when the lease runs out."""
    period, lease = 0.1, Lease("b", 0.5, presence_needed=3)
    lease.observe(Heartbeat(Claim(1, "a")), 1.0)  # the leader's last heartbeat, then it dies
    sent_at = -1.0
    readback: list[float] = []
    sent: list[float] = []
    now = 1.0
    while not lease.should_take_over(now):
        now = round(now + 0.01, 3)
        for t in [t for t in readback if t <= now]:
            readback.remove(t)
            lease.observe_presence("b")
        if (
            round(now * 100) % 5 == 0
            and lease.presence_due(now, period)
            and now - sent_at >= period
        ):
            sent_at = now
            sent.append(now)
            readback.append(round(now + 0.02, 3))
        assert now < 2.0
    assert now == 1.5  # the lease, not later
    assert sent[0] >= 1.149 and len(sent) <= 4  # none while the leader was on time
