"""Which feed the database writer takes a partition's records from (storage/db_feed.py), and
the writer's fall-back to its own consumer when the shared feed would have to wait."""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import Settings
from storage.db_feed import Feed, FeedRoutes
from storage.db_rows import RowBatch
from storage.db_writer import DbWriter, DbWriterConfig

A, B = ("md.trades", 0), ("md.trades", 1)


def test_partition_moves_to_the_shared_feed_only_once_caught_up() -> None:
    r = FeedRoutes()
    r.assign([A])
    assert r.unknown() == [A]
    r.position(A, 10)  # committed offset
    assert r.unknown() == []
    # the shared feed is ahead (delivered 10..14): the own consumer must fetch them first
    assert [r.from_shared(A, o) for o in range(10, 15)] == [False] * 5
    assert r.to_shared() == []
    assert [r.from_own(A, o) for o in range(10, 14)] == [True] * 4
    assert r.to_shared() == []  # next 14 < shared 15
    assert r.from_own(A, 14)
    assert r.to_shared() == [A] and r.count(Feed.SHARED) == 1
    # from now on only the shared feed's records are taken, each once
    assert not r.from_own(A, 15)
    assert r.from_shared(A, 15) and not r.from_shared(A, 15)
    assert r.from_shared(A, 17)  # a compacted/marker gap in offsets is not a missing record


def test_own_consumer_ahead_of_the_shared_feed_drops_what_it_already_took() -> None:
    r = FeedRoutes()
    r.assign([A])
    assert all(r.from_own(A, o) for o in range(0, 20))
    r.from_shared(A, 4)  # the shared feed starts further back (the cache writer's start)
    assert r.to_shared() == [A]
    assert [r.from_shared(A, o) for o in range(5, 22)] == [False] * 15 + [True] * 2


def test_partition_never_seen_on_the_shared_feed_stays_on_its_own_consumer() -> None:
    r = FeedRoutes()
    r.assign([A, B])
    r.position(A, 3)
    r.position(B, 3)
    r.from_shared(A, 2)
    assert r.to_shared() == [A]
    assert r.count(Feed.OWN) == 1 and r.from_own(B, 3)


def test_fall_back_returns_every_shared_partition_at_its_next_offset() -> None:
    r = FeedRoutes()
    r.assign([A, B])
    r.position(A, 5)
    r.position(B, 7)
    r.from_shared(A, 4)
    r.from_shared(B, 6)
    assert sorted(r.to_shared()) == [A, B]
    assert r.from_shared(A, 5)
    assert sorted(r.to_own()) == [(A, 6), (B, 7)]
    assert r.count(Feed.SHARED) == 0 and r.fallbacks == 2
    assert not r.from_shared(A, 6) and r.from_own(A, 6)


def test_revoked_partition_takes_nothing_and_reassigned_starts_over() -> None:
    r = FeedRoutes()
    r.assign([A])
    assert r.from_own(A, 0)
    r.revoke([A])
    assert not r.from_own(A, 1) and not r.from_shared(A, 1) and r.to_shared() == []
    r.assign([A])
    assert r.from_own(A, 0)  # re-delivery from the committed offset: natural keys absorb it


@dataclass
class Rec:
    offset: int
    key: bytes | None = None
    value: bytes | None = None  # a tombstone: counted as a record, no row


class RecordingConsumer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def resume(self, *tps: object) -> None:
        self.calls += [("resume", tp) for tp in tps]

    def seek(self, tp: object, offset: int) -> None:
        self.calls.append(("seek", (tp, offset)))


async def test_full_queue_sends_shared_partitions_back_to_the_own_consumer() -> None:
    s = Settings.from_env()
    w = DbWriter(s, DbWriterConfig(group_id="g", batch_records=2, queue_batches=1))
    topic = w.topics.stream("trades")
    tp = (topic, 0)
    fake = RecordingConsumer()
    w._consumer = fake  # noqa: SLF001
    w.routes.assign([tp])
    w.routes.position(tp, 0)
    w.routes.from_shared(tp, -1)
    assert w.routes.to_shared() == [tp]
    w.queue.put_nowait(RowBatch())  # the database is behind: the queue is full
    w.offer(topic, 0, [Rec(0), Rec(1), Rec(2)])
    assert w.routes.count(Feed.SHARED) == 1 and fake.calls == []  # below twice a batch
    w.offer(topic, 0, [Rec(3)])
    assert w.routes.count(Feed.SHARED) == 0 and w.routes.fallbacks == 1
    assert [c[0] for c in fake.calls] == ["resume", "seek"]
    assert fake.calls[1][1][1] == 4  # type: ignore[index]
    assert w.counters.records_shared == 4
    w.offer(topic, 0, [Rec(4)])  # now the own consumer's
    assert w.counters.records_shared == 4

    # with room in the queue, a due batch is queued without waiting
    await w.queue.get()
    w2 = DbWriter(s, DbWriterConfig(group_id="g", batch_records=2, queue_batches=1))
    w2.routes.assign([tp])
    w2.routes.position(tp, 0)
    w2.routes.from_shared(tp, -1)
    w2.routes.to_shared()
    w2.offer(topic, 0, [Rec(0), Rec(1)])
    assert w2.queue.qsize() == 1 and w2.queue.get_nowait().records == 2
