"""The leader's side of the source feed (``core/input_feed.py``): which pushed records it may
apply now, and the check that Kafka's copy of each is the same record.

A pushed record is taken only when it is exactly the next offset of its partition (the leader's
``positions``); anything else is left to the leader's Kafka fetch, which brings every record
anyway: a record Kafka brought first (``late``), one past a hole (``ahead``: a lost push, a
second source on the partition, a source that is not connected), a partition this instance does
not read (``foreign``), a push while not publishing (``standing_by``: a standby, a takeover's
scan), a frame that is not a record (``malformed``). So the order of application is Kafka's
whatever arrives when, and the derived messages cannot differ from the standby's.

What it does not prove is that the pushed bytes are Kafka's: every taken record waits in
``taken`` until the Kafka copy of its offset comes, and :meth:`verify` compares the two. A
difference is a source bug or a hostile peer; the caller stops (a restart derives from Kafka).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import Counter

from aggregator.errors import AggregatorError
from core.feed import FeedClient
from core.input_feed import InputFrameError, decode_input_frame
from core.kafka_rd import Record

log = logging.getLogger("aggregator")

SOURCE_FEED = Counter(
    "md_agg_source_feed_records_total",
    "records pushed by sources (core/input_feed.py), by what the leader did with them",
    ["result"],
)
RESULTS = ("taken", "late", "ahead", "foreign", "standing_by", "malformed", "backlog")
for _r in RESULTS:
    SOURCE_FEED.labels(_r)  # every result exported from the start, at 0: a rate has a base
_TAKEN = SOURCE_FEED.labels("taken")

#: A partition's pushes are in step while one was taken within this long and none came past a
#: hole (``ahead``): its Kafka reads may then be paced (the leader's ``_pace_input``).
IN_STEP_S = 1.0

#: Taken records waiting for their Kafka copy, per partition, at most: beyond it (the leader's
#: fetch stalled) pushes are refused as ``backlog`` until Kafka catches up.
TAKEN_MAX = 50_000


class SourceFeedMismatch(AggregatorError):
    """Kafka's copy of a record differs from the pushed one the leader applied."""


class SourceIntake:
    """Pushed records between the feed connections and the leader's loop (one instance each)."""

    def __init__(self, topic: str, addresses: Iterable[tuple[str, int]]) -> None:
        self.topic = topic
        self.addresses = list(addresses)
        self.pending: list[Record] = []
        self.wake = asyncio.Event()
        self.taken: dict[int, deque[tuple[int, bytes | None]]] = {}
        self.client: FeedClient | None = None
        self.took_at: dict[int, float] = {}  # partition -> monotonic time of its last take
        self.ahead_at: dict[int, float] = {}  # partition -> the last push past a hole

    # ------------------------------------------------------------------ connections
    @property
    def connected(self) -> bool:
        return self.client is not None

    def connect(self) -> None:
        """Open the connections (a publishing leader): only it has a use for pushes."""
        if self.client is None and self.addresses:
            self.client = FeedClient(self.addresses, self.on_frame)
            self.client.start()

    async def disconnect(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.stop()
        self.pending.clear()
        self.took_at.clear()

    def in_step(self, p: int, now: float) -> bool:
        """Whether every record of partition ``p`` comes by push, as far as the pushes show: one
        was taken within ``IN_STEP_S`` and none came past a hole. A hole shows at the next
        push after it; a source that pushes nothing for ``p`` takes it out of step."""
        took = self.took_at.get(p)
        if took is None or now - took >= IN_STEP_S:
            return False
        ahead = self.ahead_at.get(p)
        return ahead is None or now - ahead >= IN_STEP_S

    def on_frame(self, raw: bytes) -> None:
        try:
            rec = decode_input_frame(raw)
        except InputFrameError as exc:
            SOURCE_FEED.labels("malformed").inc()
            log.warning("source feed frame refused", extra={"error": str(exc)})
            return
        if rec.topic != self.topic:
            SOURCE_FEED.labels("foreign").inc()
            return
        self.pending.append(rec)
        self.wake.set()

    def drain(self) -> list[Record]:
        self.wake.clear()
        recs, self.pending = self.pending, []
        return recs

    # ------------------------------------------------------------------ arbitration
    def take(
        self, recs: list[Record], positions: dict[int, int], publishing: bool
    ) -> dict[TopicPartition, list[Any]]:
        """The records to apply now, as a poll batch: each exactly the next offset of its
        partition after ``positions`` (the last offset applied) and the ones taken before it."""
        if not publishing:
            SOURCE_FEED.labels("standing_by").inc(len(recs))
            return {}
        batch: dict[TopicPartition, list[Any]] = {}
        expect: dict[int, int] = {}
        now = time.monotonic()
        for r in recs:
            p = r.partition
            nxt = expect.get(p)
            if nxt is None:
                pos = positions.get(p)
                if pos is None:
                    SOURCE_FEED.labels("foreign").inc()
                    continue
                nxt = pos + 1
            if r.offset < nxt:
                SOURCE_FEED.labels("late").inc()
                continue
            if r.offset > nxt:
                SOURCE_FEED.labels("ahead").inc()
                self.ahead_at[p] = now
                continue
            q = self.taken.get(p)
            if q is None:
                q = self.taken[p] = deque()
            if len(q) >= TAKEN_MAX:
                SOURCE_FEED.labels("backlog").inc()
                continue
            q.append((r.offset, r.value))
            expect[p] = nxt + 1
            self.took_at[p] = now
            batch.setdefault(TopicPartition(self.topic, p), []).append(r)
            _TAKEN.inc()
        return batch

    def verify(self, p: int, offset: int, value: bytes | None) -> None:
        """Kafka's copy of an offset the leader already applied: if it was taken from a push,
        the bytes must be the same (raises :class:`SourceFeedMismatch`)."""
        q = self.taken.get(p)
        if not q:
            return
        while q and q[0][0] < offset:
            q.popleft()  # the fetch went past it without bringing it: nothing to compare
        if q and q[0][0] == offset:
            _, pushed = q.popleft()
            if pushed != value:
                raise SourceFeedMismatch(
                    f"the source feed's record at {self.topic}/{p}@{offset} is not Kafka's"
                )
