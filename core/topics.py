"""Kafka topic names and layout.

All topics are ``<prefix>.<name>`` (``MD_TOPIC_PREFIX``, default ``md``) so a test can run a
whole isolated pipeline on a unique prefix beside a running stack. Everything is keyed by
symbol, so each symbol's events stay ordered inside one partition.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import Settings

# channel -> topic name (without prefix); all candle intervals share one topic
STREAM_TOPIC = {
    "l2": "l2",
    "l3": "l3",
    "ticker": "ticker",
    "trades": "trades",
    "stats": "stats",
    "status": "status",
}
CANDLES_TOPIC = "candles"
PARTITIONS = 6  # md.in (the aggregator pairs split it: MD_AGG_PARTITIONS) and md.snapshot
# Each stream topic (md.l2 ... md.candles), unless MD_KAFKA_STREAM_PARTITIONS says otherwise.
# Every gateway and the cache writer read every partition of every stream topic (they join no
# consumer group); only database writers scaled out as a group (MD_STORAGE_WRITERS=db) share
# them. Each partition costs every produce and every fetch a batch, and the broker its
# per-partition work: 6 -> 1 took 4 points of a core off `make up` at the default rate (issue 10,
# docs/benchmarks.md), where one storage process writes everything. A cluster spreads a busy
# stream over its brokers and its database writers with more (docker-compose.yml, deploy/k8s: 6).
STREAM_PARTITIONS = 1


def stream_topic_name(channel: str) -> str:
    if channel.startswith("candles_"):
        return CANDLES_TOPIC
    return STREAM_TOPIC[channel]


@dataclass(frozen=True)
class Topics:
    prefix: str = "md"

    @classmethod
    def from_settings(cls, s: Settings) -> Topics:
        return cls(s.topic_prefix)

    def _t(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    @property
    def input(self) -> str:
        """Normalized upstream events from every source (retained: the replay log)."""
        return self._t("in")

    @property
    def snapshot(self) -> str:
        """Compacted: latest state per ``<channel>:<symbol>`` key, to rebuild without history."""
        return self._t("snapshot")

    @property
    def control(self) -> str:
        """One partition: the aggregator leader's heartbeats (``aggregator/leadership.py``)."""
        return self._t("agg")

    def stream(self, channel: str) -> str:
        return self._t(stream_topic_name(channel))

    def all_streams(self) -> list[str]:
        names = sorted(set(STREAM_TOPIC.values()) | {CANDLES_TOPIC})
        return [self._t(n) for n in names]

    def all(self) -> list[str]:
        return [self.input, self.snapshot, self.control, *self.all_streams()]
