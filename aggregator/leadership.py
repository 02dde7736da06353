"""Who publishes: a lease held by heartbeats on the control topic, decided without a broker-side lock.

Every aggregator instance of a group computes every stream (the output is a pure function of the
input log, docs/aggregator.md "Sequencer"), so two publishers at once cost bandwidth, never
correctness: consumers drop ``seq <= last``. That is why the lease can be this simple and this
fast (heartbeat 100 ms, lease 500 ms) instead of waiting for a Kafka group session (6 s minimum):
a wrong guess (a paused leader, a slow heartbeat) only duplicates identical messages for a moment.

A silent leader is not always a dead one: when the broker that leads the control partition dies,
nobody can write there until Kafka moves that leadership (~1 s), and every standby's clock runs
out while the leader is fine. So a standby also writes its own *presence* records to the control
partition, one in flight at a time, and counts a lease as expired only when it has read back
``presence_needed`` of them after the leader's latest heartbeat: proof that the partition took
writes for a while and the leader's did not come. A dead leader costs no extra wait (presence
accumulates during the lease); an unwritable partition (both silent) never makes a takeover.

Pure and synchronous, with an explicit ``now`` (monotonic seconds): the service feeds it the
heartbeats it reads and asks it what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class Claim:
    """A leader's claim; the greater ``(term, ident)`` wins, so two claims of one term settle."""

    term: int
    ident: str


@dataclass
class Heartbeat:
    """What the leader tells the standbys: its claim, and per input partition the input offset
    whose outputs are all acknowledged by Kafka (``acked``) with the output offsets at that point
    (``out``, ``"topic|partition" -> offset``): a new leader scans the outputs from there."""

    claim: Claim
    acked: dict[int, int] = field(default_factory=dict)
    out: dict[str, int] = field(default_factory=dict)
    resign: bool = False  # the leader's last word before a clean stop: take over now

    def encode(self, now_ms: int) -> dict[str, Any]:
        return {
            "term": self.claim.term,
            "id": self.claim.ident,
            "ts_ms": now_ms,
            "acked": {str(p): o for p, o in self.acked.items()},
            "out": self.out,
            "resign": self.resign,
        }

    @classmethod
    def decode(cls, raw: dict[str, Any]) -> Heartbeat:
        return cls(
            Claim(int(raw["term"]), str(raw["id"])),
            {int(p): int(o) for p, o in dict(raw.get("acked") or {}).items()},
            {str(k): int(v) for k, v in dict(raw.get("out") or {}).items()},
            bool(raw.get("resign", False)),
        )


class Lease:
    """Role of one instance. ``observe`` every heartbeat read (own ones included), ``due`` on a timer."""

    def __init__(self, ident: str, lease_s: float, presence_needed: int = 0) -> None:
        self.ident = ident
        self.lease_s = lease_s
        self.presence_needed = presence_needed
        self.presence = 0  # own presence records read since the leader's latest heartbeat
        self.current: Claim | None = None  # the highest claim seen
        self.last: Heartbeat | None = None  # the current leader's latest heartbeat
        self.seen_at = 0.0  # when a heartbeat of the current claim was last read
        self.started_at: float | None = None
        self.defer_until = 0.0  # a restarted instance lets the hot standby claim first

    @property
    def leader(self) -> bool:
        return self.current is not None and self.current.ident == self.ident

    def observe(self, hb: Heartbeat, now: float) -> bool:
        """Take a heartbeat into account; True when this instance just lost the lead."""
        was_leader = self.leader
        if self.current is None or hb.claim >= self.current:
            self.current = hb.claim
            # a resigning leader's lease ends now (a rolling restart pauses for a scan, not a lease)
            self.seen_at = now - self.lease_s if hb.resign else now
            self.presence = self.presence_needed if hb.resign else 0
            if hb.claim.ident != self.ident:
                self.last = hb
                if hb.resign:
                    self.defer_until = 0.0
        return was_leader and not self.leader

    def observe_presence(self, ident: str) -> None:
        """A presence record read from the control partition (only this instance's own count)."""
        if ident == self.ident:
            self.presence += 1

    def presence_from(self, period_s: float) -> float:
        """When (monotonic) a standby starts writing presence records: once the leader's
        heartbeat is late, early enough that ``presence_needed`` of them, one per period, are
        read back before the lease runs out (so a dead leader still costs no extra wait). A
        record every period from every standby was ~20 of the broker's ~175 requests a
        second, and woke the leader, which reads the control partition, 10 times a second.
        Nobody leads yet: at once (the rule decides from the start)."""
        if self.current is None or self.presence_needed <= 0:
            return 0.0 if self.current is None else float("inf")
        return self.seen_at + self.lease_s - (self.presence_needed + 0.5) * period_s

    def presence_due(self, now: float, period_s: float) -> bool:
        return not self.leader and now >= self.presence_from(period_s)

    def should_take_over(self, now: float) -> bool:
        """Nobody leads, or the leader's heartbeats stopped for the lease while the control
        partition took this instance's presence records."""
        if self.started_at is None:
            self.started_at = now
        if self.leader or now < self.defer_until or self.presence < self.presence_needed:
            return False
        if self.current is None:
            # a fresh instance waits one lease for a heartbeat it has not read yet
            return now - self.started_at >= self.lease_s
        return now - self.seen_at >= self.lease_s

    def take_over(self, now: float) -> Claim:
        term = self.current.term + 1 if self.current else 1
        self.current = Claim(term, self.ident)
        self.seen_at = now
        self.presence = 0
        return self.current
