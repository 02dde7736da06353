"""The fake aggregator's builders, under the name the storage/REST tests and benchmarks import:
they live in testkit/fake_aggregator.py (one fake aggregator, outside the service packages)."""

from testkit.fake_aggregator import (
    EPOCH,
    candle,
    l2_snapshot,
    l2_update,
    msg,
    produce,
    produce_stream,
    stats,
    status,
    ticker,
    trade,
)

__all__ = [
    "EPOCH",
    "candle",
    "l2_snapshot",
    "l2_update",
    "msg",
    "produce",
    "produce_stream",
    "stats",
    "status",
    "ticker",
    "trade",
]
