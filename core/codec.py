"""orjson encoding and the platform's timestamp format.

Messages are encoded once by their producer; gateways forward those bytes unchanged.
Timestamps are ISO-8601 UTC with microseconds (``2026-11-24T06:51:12.123456Z``);
internally time travels as integer nanoseconds since the epoch.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from core.errors import CodecError

dumps = orjson.dumps


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"malformed JSON: {exc}") from exc


def now_ns() -> int:
    return time.time_ns()


#: seconds formatted recently -> their text. A flush formats the publish time and the event time
#: (one second, mostly) and each candle's start and end (other seconds): one remembered second
#: was thrashed by every candle message, two strftime calls a candle (issue 10)
_seconds: dict[int, str] = {}
_SECONDS_MAX = 256


#: instants formatted recently -> their text: every message of a record's flush carries the
#: same publish time and event time (a dozen messages a record), and the formatting was 6 % of
#: the aggregator's derivation in process (issue 10)
_instants: dict[int, str] = {}
_INSTANTS_MAX = 64


def iso_from_ns(ns: int) -> str:
    done = _instants.get(ns)
    if done is not None:
        return done
    s, rem = divmod(ns, 1_000_000_000)
    text = _seconds.get(s)
    if text is None:
        if len(_seconds) >= _SECONDS_MAX:
            _seconds.clear()
        text = _seconds[s] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
    if len(_instants) >= _INSTANTS_MAX:
        _instants.clear()
    done = _instants[ns] = f"{text}.{rem // 1000:06d}Z"
    return done


def ns_from_iso(text: str) -> int:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CodecError(f"bad timestamp {text!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000
