"""Prometheus view of the writers' counters.

The writers keep plain integer counters (tests assert on them directly); this collector reads
them at scrape time, so the hot path never touches a metrics lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from storage.db_feed import Feed


class StorageCollector(Collector):
    def __init__(self, cache: Any | None, db: Any | None) -> None:
        self.cache = cache
        self.db = db

    def collect(self) -> Iterator[Any]:
        if self.cache is not None:
            fam = CounterMetricFamily(
                "md_storage_cache_events", "cache writer counters", labels=["counter"]
            )
            for name, v in {
                **asdict(self.cache.model.counters),
                **asdict(self.cache.counters),
            }.items():
                fam.add_metric([name], v)
            yield fam
            g = GaugeMetricFamily(
                "md_storage_cache_redis_up", "1 when the cache writer reaches Redis"
            )
            g.add_metric([], 1.0 if self.cache.redis_ok else 0.0)
            yield g
        if self.db is not None:
            fam = CounterMetricFamily(
                "md_storage_db_events", "database writer counters", labels=["counter"]
            )
            for name, v in asdict(self.db.counters).items():
                fam.add_metric([name], v)
            yield fam
            g = GaugeMetricFamily("md_storage_db_queue", "records waiting for the database")
            g.add_metric([], float(self.db.queue_size()))
            yield g
            up = GaugeMetricFamily("md_storage_db_up", "1 when the last database write succeeded")
            up.add_metric([], 1.0 if self.db.db_ok else 0.0)
            yield up
            feeds = GaugeMetricFamily(
                "md_storage_db_partitions",
                "assigned partitions by where their records come from (storage/db_feed.py)",
                labels=["feed"],
            )
            for feed in Feed:
                feeds.add_metric([feed.value], float(self.db.routes.count(feed)))
            yield feeds


_registered: StorageCollector | None = None


def register_storage_metrics(cache: Any | None, db: Any | None) -> None:
    global _registered
    if _registered is not None:
        REGISTRY.unregister(_registered)
    _registered = StorageCollector(cache, db)
    REGISTRY.register(_registered)
