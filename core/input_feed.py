"""The source feed: each input record a source wrote to ``md.in``, pushed to the aggregator
leader once Kafka has acknowledged it, with the offset Kafka gave it.

Why: the leader used to see a record only through its own Kafka fetch, and on this 2-core host
the broker's produce -> fetch was 2.5-4 ms of the 5 ms that issue 10 allows from the upstream
``event_time`` to a client; the producer's acknowledgement comes ~1 ms after the send. This is
the same A/B arbitration the gateways do on the aggregator's output (``core/feed.py``), by
Kafka offset instead of ``seq``: the leader applies a pushed record only when it is exactly the
next offset of its partition, and skips the Kafka copy when it comes. Nothing changes what is
derived, only when: the record and its offset are Kafka's, already durable (``acks=all``), so
the standby, reading Kafka, derives the same messages. The leader keeps every record it took
from the push until Kafka's copy arrives and compares them byte for byte; a difference stops it
(``aggregator/service.py``), and the restart derives from Kafka alone.

Wire format (the contract; transport and framing as ``core/feed.py``: a 4-byte big-endian
length, then the frame): ``HEAD`` (offset i64, timestamp ms i64, partition i32, topic length
u16, key length u16; big-endian), the topic (UTF-8), the key, then the record's value as Kafka
holds it. The timestamp is the one Kafka stores (``CreateTime``, or the broker's
``LogAppendTime`` if the topic is so configured), as the producer's acknowledgement reports it.
"""

from __future__ import annotations

import struct

from core.errors import CodecError
from core.kafka_rd import Record

HEAD = struct.Struct("!qqiHH")


class InputFrameError(CodecError):
    """A source feed frame that cannot be a record (truncated, bad lengths, bad topic)."""


def encode_input_frame(
    topic: str, partition: int, offset: int, timestamp_ms: int, key: bytes | None, value: bytes
) -> bytes:
    t = topic.encode()
    k = key or b""
    return HEAD.pack(offset, timestamp_ms, partition, len(t), len(k)) + t + k + value


def decode_input_frame(raw: bytes) -> Record:
    if len(raw) < HEAD.size:
        raise InputFrameError(f"source feed frame of {len(raw)} bytes is shorter than its header")
    offset, ts, partition, tlen, klen = HEAD.unpack_from(raw)
    if offset < 0 or partition < 0:
        raise InputFrameError(f"source feed frame with offset {offset}, partition {partition}")
    start = HEAD.size + tlen + klen
    if start > len(raw):
        raise InputFrameError("source feed frame shorter than its topic and key lengths")
    try:
        topic = raw[HEAD.size : HEAD.size + tlen].decode()
    except UnicodeDecodeError as exc:
        raise InputFrameError("source feed frame with a topic that is not UTF-8") from exc
    key = raw[HEAD.size + tlen : start] if klen else None
    return Record(topic, partition, offset, ts, key, raw[start:])
