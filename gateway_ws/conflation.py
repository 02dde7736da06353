"""Conflation (``"interval"`` on a subscription): one message per interval per group."""

from __future__ import annotations

from typing import Any

import orjson

from gateway_ws.protocol import Key


class Conflator:
    """One ``(channel, symbol, interval)``: what changed since the last flush, sent as one message.

    Books merge their changes by level (the last size of each level wins, which is what the
    book would show); whole-value channels (ticker, stats, candles) keep the latest message and
    send its original bytes. One encoding per flush serves every subscriber of the group.
    Pure: the fan-out core (:class:`gateway_ws.fanout.Group`) keeps its subscribers and timer.
    """

    def __init__(self, key: Key, interval_ms: int) -> None:
        self.key = key
        self.interval_ms = interval_ms
        self.changes: dict[tuple[str, str], str] = {}
        self.latest: tuple[int, bytes, dict[str, Any]] | None = None
        self.first_seq: int | None = None

    def add(self, seq: int, raw: bytes, parsed: dict[str, Any]) -> None:
        if self.key[0] == "l2":
            for side, price, size in (parsed.get("data") or {}).get("changes", ()):
                self.changes[(side, price)] = size
        if self.first_seq is None:
            self.first_seq = seq
        self.latest = (seq, raw, parsed)

    def reset(self) -> None:
        self.changes.clear()
        self.latest = None
        self.first_seq = None

    def take(self) -> tuple[int, bytes, dict[str, Any]] | None:
        if self.latest is None:
            return None
        seq, raw, parsed = self.latest
        if self.key[0] == "l2":
            msg = {
                **parsed,
                "data": {"changes": [[s, p, q] for (s, p), q in self.changes.items()]},
                "conflated": True,
                "first_seq": self.first_seq,
            }
            raw = orjson.dumps(msg)
            parsed = msg
        self.reset()
        return seq, raw, parsed
