"""A leader derives first the records of symbols some gateway reads (``_watched_first``): in a
tick of one record per symbol, a watched symbol's record no longer waits for the derivation of
records whose messages only go to Kafka (issue 10). Each partition's records keep their order."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition

from aggregator.service import Aggregator
from core.settings import Settings


@dataclass
class Rec:
    offset: int
    key: bytes | None


class Feed:
    def __init__(self, watched: frozenset[bytes] | None) -> None:
        self.watched = watched

    def watched_symbols(self) -> frozenset[bytes] | None:
        return self.watched


def batch() -> dict[TopicPartition, list[Rec]]:
    t = "md.in"
    return {
        TopicPartition(t, 3): [Rec(10, b"BTC-USD")],
        TopicPartition(t, 0): [Rec(7, b"LTC-USD"), Rec(8, b"EUR-USD")],
        TopicPartition(t, 5): [Rec(2, None)],
        TopicPartition(t, 2): [Rec(4, b"ETH-USD"), Rec(5, b"ETH-USD")],
    }


def order(agg: Aggregator, b: dict[TopicPartition, list[Rec]]) -> list[tuple[int, list[int]]]:
    return [(tp.partition, [r.offset for r in recs]) for tp, recs in agg._watched_first(b)]  # noqa: SLF001


def test_watched_partitions_come_first_each_group_and_partition_in_its_order() -> None:
    agg = Aggregator(Settings())
    agg.feed = Feed(frozenset({b"ETH-USD", b"EUR-USD"}))  # type: ignore[assignment]
    assert order(agg, batch()) == [(0, [7, 8]), (2, [4, 5]), (3, [10]), (5, [2])]
    agg.feed = Feed(frozenset({b"BTC-USD"}))  # type: ignore[assignment]
    assert order(agg, batch()) == [(3, [10]), (0, [7, 8]), (5, [2]), (2, [4, 5])]


def test_arrival_order_when_no_symbol_or_every_symbol_is_watched_or_there_is_no_feed() -> None:
    arrival = [(3, [10]), (0, [7, 8]), (5, [2]), (2, [4, 5])]
    agg = Aggregator(Settings())
    agg.feed = None
    assert order(agg, batch()) == arrival
    for watched in (None, frozenset(), frozenset({b"SOL-USD"})):
        agg.feed = Feed(watched)  # type: ignore[assignment]
        assert order(agg, batch()) == arrival
    agg.feed = Feed(frozenset({b"BTC-USD", b"LTC-USD", b"ETH-USD"}))  # type: ignore[assignment]
    assert order(agg, {tp: r for tp, r in batch().items() if tp.partition != 5}) == [
        (3, [10]),
        (0, [7, 8]),
        (2, [4, 5]),
    ]
