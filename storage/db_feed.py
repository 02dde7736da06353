"""Where the database writer takes each partition's records from: its own consumer, or the cache
writer's fetches (one Kafka fetch of the shared topics in a ``storage run`` process instead of
two; docs/storage.md "One fetch for both writers").

The database writer stays a member of its consumer group (``MD_STORAGE_DB_GROUP``): the group
assigns it partitions and holds its committed offsets, so several writer processes can still
share the ingest, and a process can switch feeds without losing its place. For each assigned
partition :class:`FeedRoutes` keeps the next offset the writer needs (``next``) and the position
the cache writer's feed has reached (``shared``):

- ``own``: records come from the writer's own consumer (after an assignment, while it is behind
  the shared feed, e.g. with a backlog after downtime, and after a stall);
- ``shared``: the own consumer is paused on the partition and records come from the shared
  feed. A partition moves there once ``next >= shared``: every record the shared feed delivers
  from now on is at or after ``shared``, so nothing between is missed, and records before
  ``next`` (already taken) are dropped.

The shared feed must not block the cache writer (a slow database never stops the cache), so when
the writer cannot take more (its queue is full and the open batch is at its bound) every shared
partition goes back to ``own`` at ``next``, where Kafka holds the backlog, as before.

The shared feed is contiguous per partition from its first delivery (the cache writer never
seeks after start-up); offsets may still skip (compaction of the snapshot topic, transaction
markers), which is why ``next`` only ever moves forward and "at or after" is the test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

TP = tuple[str, int]  # (topic, partition)


class FeedTap(Protocol):
    """What the cache writer hands its fetches to (the database writer of the same process)."""

    def offer(self, topic: str, partition: int, records: Sequence[Any]) -> None:
        """Records of one partition, in order, as fetched."""

    def at(self, topic: str, partition: int, offset: int) -> None:
        """The feed reads ``partition`` from ``offset`` on (its start, before any record)."""


class Feed(Enum):
    OWN = "own"
    SHARED = "shared"


@dataclass
class Route:
    feed: Feed = Feed.OWN
    next: int | None = None  # the next offset the writer needs (None: not known yet)


class FeedRoutes:
    """Per assigned partition: which feed the database writer takes its records from. Pure
    state, no I/O: the writer pauses/resumes/seeks its consumer as the calls answer."""

    def __init__(self) -> None:
        self.routes: dict[TP, Route] = {}
        self.shared: dict[TP, int] = {}  # position the shared feed has delivered up to
        self.switches = 0  # own -> shared moves (counted for the metrics and tests)
        self.fallbacks = 0  # shared -> own moves after a stall

    def assign(self, tps: list[TP]) -> None:
        for tp in tps:
            self.routes[tp] = Route()

    def revoke(self, tps: list[TP]) -> None:
        for tp in tps:
            self.routes.pop(tp, None)

    def unknown(self) -> list[TP]:
        """Own partitions whose next offset is not known (ask the consumer's position)."""
        return [tp for tp, r in self.routes.items() if r.feed is Feed.OWN and r.next is None]

    def position(self, tp: TP, offset: int) -> None:
        """The own consumer's position on ``tp`` (its committed offset after an assignment)."""
        r = self.routes.get(tp)
        if r is not None and r.feed is Feed.OWN and (r.next is None or offset > r.next):
            r.next = offset

    def _take(self, r: Route, offset: int) -> bool:
        if r.next is not None and offset < r.next:
            return False  # already taken
        r.next = offset + 1
        return True

    def from_own(self, tp: TP, offset: int) -> bool:
        """Is this record of the own consumer to be written?"""
        r = self.routes.get(tp)
        return r is not None and r.feed is Feed.OWN and self._take(r, offset)

    def from_shared(self, tp: TP, offset: int) -> bool:
        """Is this record of the shared feed to be written? (Called for every record the shared
        feed delivers, in order, whatever the answer.)"""
        self.shared[tp] = offset + 1
        r = self.routes.get(tp)
        return r is not None and r.feed is Feed.SHARED and self._take(r, offset)

    def shared_from(self, tp: TP, offset: int) -> None:
        """The shared feed starts reading ``tp`` at ``offset`` (so an idle partition can move
        to it without waiting for a record)."""
        self.shared[tp] = max(offset, self.shared.get(tp, offset))

    def to_shared(self) -> list[TP]:
        """Own partitions that caught up with the shared feed move to it (pause them)."""
        moved = []
        for tp, r in self.routes.items():
            at = self.shared.get(tp)
            if r.feed is Feed.OWN and r.next is not None and at is not None and r.next >= at:
                r.feed = Feed.SHARED
                moved.append(tp)
        self.switches += len(moved)
        return moved

    def to_own(self) -> list[tuple[TP, int]]:
        """Every shared partition back to the own consumer, at its next offset (resume and seek
        them there)."""
        moved = []
        for tp, r in self.routes.items():
            if r.feed is Feed.SHARED and r.next is not None:
                r.feed = Feed.OWN
                moved.append((tp, r.next))
        self.fallbacks += len(moved)
        return moved

    def count(self, feed: Feed) -> int:
        return sum(1 for r in self.routes.values() if r.feed is feed)
