"""Channel names, message types and the data-message envelope (ARCHITECTURE "Contracts").

Every data message carries ``type``, ``channel``, ``symbol``, ``seq`` (per channel and symbol,
+1 per message), ``epoch`` (changes only when a stream's continuity is broken), ``timestamp``
(when the aggregator published, ISO-8601 UTC µs), ``event_time`` (upstream event time) and
``data``; book messages add ``checksum`` (see core.checksum). The shapes are declared in
core/messages.py.
"""

from __future__ import annotations

from typing import Any

from core.codec import iso_from_ns
from core.messages import Message, MessageType

CANDLE_INTERVALS: dict[str, int] = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "1h": 3600,
    "4h": 14400,
    "1d": 86400,
}
BOOK_CHANNELS = ("l2", "l3")
BASE_CHANNELS = ("ticker", "l2", "l3", "trades", "stats")
CANDLE_CHANNELS = tuple(f"candles_{i}" for i in CANDLE_INTERVALS)
DATA_CHANNELS = BASE_CHANNELS + CANDLE_CHANNELS


def snapshot_key(channel: str, symbol: str) -> str:
    """The key of ``channel:symbol``'s latest message on the compacted snapshot topic."""
    return f"{channel}:{symbol}"


def snapshot_key_channel(key: str) -> str:
    """The channel of a snapshot topic key (keys of other kinds, ``agg:...``, give theirs)."""
    return key.partition(":")[0]


def is_data_channel(channel: str) -> bool:
    return channel in DATA_CHANNELS


def data_message(
    *,
    type: MessageType,
    channel: str,
    symbol: str,
    seq: int,
    epoch: int,
    publish_ns: int,
    event_ns: int,
    data: Any,
    checksum: int | None = None,
) -> Message:
    """The envelope (core/messages.py ``Message``); ``data`` must have the shape of ``type``."""
    msg: Message = {
        "type": type,
        "channel": channel,
        "symbol": symbol,
        "seq": seq,
        "epoch": epoch,
        "timestamp": iso_from_ns(publish_ns),
        "event_time": iso_from_ns(event_ns),
        "data": data,
    }
    if checksum is not None:
        msg["checksum"] = checksum
    return msg


def error_message(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, **extra}
