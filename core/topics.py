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
PARTITIONS = 6


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
