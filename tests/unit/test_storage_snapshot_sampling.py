"""The database writer samples book snapshots from the snapshot topic by their own timestamp
(storage/db_rows.py); given each record's Kafka time it skips parsing the ones that fall in an
already sampled bucket, and samples exactly the same messages as without it."""

from __future__ import annotations

from storage.db_rows import RowBatch, RowBuilder
from testkit import fake_aggregator as T

S = "BTC-USD"
BASE_NS = 1_795_500_000 * 10**9  # a multiple of 10 s
TOPIC = "p.snapshot"


def _records(lag_ns: int) -> list[tuple[bytes, bytes, int]]:
    """An l2 snapshot every 0.5 s for 35 s, each on Kafka ``lag_ns`` after its timestamp."""
    out = []
    for i in range(70):
        ts = BASE_NS + i * 500_000_000
        v = T.l2_snapshot(S, i + 1, [["100", "1"]], [["101", "1"]], ts_ns=ts)
        out.append((f"l2:{S}".encode(), v, (ts + lag_ns) // 1_000_000))
    return out


def _sample(records: list[tuple[bytes, bytes, int]], *, with_kafka_time: bool) -> RowBatch:
    rb = RowBuilder(snapshot_topic=TOPIC, l2_every_s=10, book_every_s=10.0)
    b = RowBatch()
    for off, (key, value, ts_ms) in enumerate(records):
        rb.add(b, TOPIC, 0, off, key, value, ts_ms if with_kafka_time else None)
    return b


def test_same_samples_with_and_without_the_kafka_time() -> None:
    for lag_ns in (0, 3_000_000, 900_000_000):
        recs = _records(lag_ns)
        fast, slow = _sample(recs, with_kafka_time=True), _sample(recs, with_kafka_time=False)
        assert [r[2] for r in fast.book_snapshots] == [r[2] for r in slow.book_snapshots]
        assert list(fast.snapshots) == list(slow.snapshots)
        # one per 10 s bucket: seq 1 (0 s), 21 (10 s), 41 (20 s), 61 (30 s)
        assert [r[3] for r in fast.book_snapshots] == [1, 21, 41, 61]


def test_a_record_inside_a_sampled_bucket_is_not_parsed() -> None:
    rb = RowBuilder(snapshot_topic=TOPIC, l2_every_s=10, book_every_s=10.0)
    b = RowBatch()
    first = T.l2_snapshot(S, 1, [["100", "1"]], [], ts_ns=BASE_NS)
    rb.add(b, TOPIC, 0, 0, f"l2:{S}".encode(), first, BASE_NS // 1_000_000)
    mid_ms = (BASE_NS + 5 * 10**9) // 1_000_000
    edge_ms = (BASE_NS + 9_500_000_000) // 1_000_000
    rb.add(b, TOPIC, 0, 1, f"l2:{S}".encode(), b"not json", mid_ms)  # skipped unread
    assert b.bad == 0
    rb.add(b, TOPIC, 0, 2, f"l2:{S}".encode(), b"not json", edge_ms)  # near the edge: parsed
    rb.add(b, TOPIC, 0, 3, f"l2:{S}".encode(), b"not json", None)  # no Kafka time: parsed
    assert b.bad == 2
    assert b.offsets == {(TOPIC, 0): 4}  # every record's offset still counts
    # another book (l3) or symbol has its own buckets: parsed
    rb.add(b, TOPIC, 0, 4, b"l3:BTC-USD", b"not json", mid_ms)
    rb.add(b, TOPIC, 0, 5, b"l2:ETH-USD", b"not json", mid_ms)
    assert b.bad == 4
