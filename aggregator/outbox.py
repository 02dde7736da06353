"""What a standby keeps and what a new leader may publish: the sequencer's no-gap, no-dup rule.

Pure and synchronous. An output message is derived from one input record ``(partition,
offset)`` and belongs to one stream ``(channel, symbol)`` with ``(epoch, seq)``. Since every
instance derives the same message for the same ``seq``, a new leader only has to find where the
old one stopped:

- the old leader's heartbeat says up to which input offset its outputs were all acknowledged
  (``acked``): everything derived from input at or before it is in Kafka;
- past that, the new leader scans the output partitions from the heartbeat's ``out`` offsets and
  finds the highest ``seq`` per stream of each epoch that made it (``published``).

A message is published iff it comes from input after ``acked`` and is newer than ``published``.
Messages the old leader also wrote (a paused leader that comes back) are identical and dropped
by every consumer (``seq <= last``); none can be missing, because each publisher's messages of
a stream are contiguous and the new one starts at most one past what Kafka already holds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

StreamKey = tuple[str, str]  # (channel, symbol)


@dataclass(slots=True)
class Out:
    """One encoded output message, with where it came from and where it goes."""

    partition: int  # input partition it was derived from
    offset: int  # input offset it was derived from
    stream: StreamKey
    epoch: int
    seq: int
    topic: str
    key: bytes
    value: bytes


class Gate:
    """The publish rule of a new leader (module docstring). Once a stream has passed, it stays open."""

    def __init__(self, acked: dict[int, int], published: dict[tuple[StreamKey, int], int]) -> None:
        self.acked = dict(acked)
        self.published = dict(published)

    def allows(self, partition: int, offset: int, stream: StreamKey, epoch: int, seq: int) -> bool:
        if offset <= self.acked.get(partition, -1):
            return False
        key = (stream, epoch)  # another epoch in Kafka is another incarnation: it does not count
        last = self.published.get(key)
        if last is None:
            return True
        if seq > last:
            del self.published[key]  # contiguous from here on: no more lookups for it
            return True
        return False

    def covered(self, partition: int, offset: int) -> bool:
        """Outputs of this input record are known to be in Kafka already (no need to encode them)."""
        return offset <= self.acked.get(partition, -1)


class StandbyBuffer:
    """Outputs a standby computed but the leader has not acknowledged yet, per input partition.

    Trimmed by every leader heartbeat; bounded so a leader that stalls without losing its lease
    cannot grow it without limit. ``lost`` records that the bound dropped something the leader
    had not acknowledged: such a standby must rebuild from a checkpoint before it may lead.
    """

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self.by_partition: dict[int, deque[Out]] = {}
        self.size = 0
        self.lost = False

    def add(self, out: Out) -> None:
        q = self.by_partition.get(out.partition)
        if q is None:
            q = self.by_partition[out.partition] = deque()
        q.append(out)
        self.size += 1
        if self.size > self.limit:
            biggest = max(self.by_partition.values(), key=len)
            biggest.popleft()
            self.size -= 1
            self.lost = True

    def trim(self, acked: dict[int, int]) -> None:
        for p, q in self.by_partition.items():
            a = acked.get(p, -1)
            while q and q[0].offset <= a:
                q.popleft()
                self.size -= 1

    def drain(self, gate: Gate) -> list[Out]:
        """What the new leader must publish now, in derivation order per input partition."""
        out = [
            m
            for q in self.by_partition.values()
            for m in q
            if gate.allows(m.partition, m.offset, m.stream, m.epoch, m.seq)
        ]
        self.by_partition.clear()
        self.size = 0
        return out
