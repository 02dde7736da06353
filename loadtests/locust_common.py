"""Pure helpers of the locust users (no locust import: importing locust monkey-patches the
standard library with gevent, which the unit tests of this module must not do)."""

from __future__ import annotations

import os
import random
from datetime import datetime
from typing import Any

DEFAULT_SYMBOLS = "BTC-USD,ETH-USD,LTC-USD"
CHANNEL_WEIGHTS = {"ticker": 5, "l2": 4, "trades": 3, "candles_1m": 1}


def symbols_from_env() -> list[str]:
    """``LOCUST_SYMBOLS``, else ``MD_SYMBOLS``, else the simulator's defaults; canonical spelling."""
    raw = os.environ.get("LOCUST_SYMBOLS") or os.environ.get("MD_SYMBOLS") or DEFAULT_SYMBOLS
    return [s.strip().upper().replace("/", "-") for s in raw.split(",") if s.strip()]


def parse_ts(ts: str) -> float:
    """ISO-8601 UTC with microseconds (``2026-11-24T06:51:12.123456Z``) -> POSIX seconds."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class SeqGap(Exception):
    pass


class StreamChecker:
    """Pure ``seq`` continuity per ``(channel, symbol)``: feed messages, read back verdicts.

    ``observe(msg)`` returns ``None`` for a message that continues its stream (or starts it),
    or a string describing the gap/duplicate. A snapshot (``*_snapshot`` type), a message flagged
    ``resync``, a stream seen for the first time or a changed ``epoch`` restarts the count.

    Subscription churn: after ``expect(key)`` (a subscribe was sent), messages of that stream
    still in flight from an earlier subscription are ignored until the server's ``subscribed``
    ack names it; the next message (the snapshot) then starts the count. A ``resync`` control
    message restarts its stream too.
    """

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], tuple[Any, int]] = {}
        self.pending: set[tuple[str, str]] = set()
        self.gaps = 0
        self.duplicates = 0
        self.missed = 0

    def forget(self, channel: str, symbol: str) -> None:
        self.last.pop((channel, symbol), None)

    def expect(self, channel: str, symbol: str) -> None:
        self.pending.add((channel, symbol))
        self.last.pop((channel, symbol), None)

    def reset(self) -> None:
        self.last.clear()
        self.pending.clear()

    def _control(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind in ("subscribed", "unsubscribed"):
            for name in msg.get("changed") or msg.get("channels") or []:
                ch, _, sym = str(name).partition(":")
                key = (ch, sym.split("@")[0].split("?")[0])
                self.pending.discard(key)
                self.last.pop(key, None)
        elif kind == "resync":
            self.forget(str(msg.get("channel")), str(msg.get("symbol")))

    def observe(self, msg: dict[str, Any]) -> str | None:
        seq = msg.get("seq")
        channel, symbol = msg.get("channel"), msg.get("symbol")
        if msg.get("type") in ("subscribed", "unsubscribed", "resync"):
            self._control(msg)
            return None
        if not isinstance(seq, int) or not channel or not symbol:
            return None
        key = (channel, symbol)
        if key in self.pending:  # in flight from before the (re)subscribe: not this subscription's
            return None
        epoch = msg.get("epoch")
        prev = self.last.get(key)
        self.last[key] = (epoch, seq)
        restart = (
            str(msg.get("type", "")).endswith("_snapshot")
            or msg.get("resync")
            or msg.get("snapshot")
        )
        if prev is None or restart or prev[0] != epoch:
            return None
        expected = prev[1] + 1
        if seq == expected:
            return None
        if seq < expected:
            self.duplicates += 1
            return f"{channel}:{symbol} seq {seq} after {prev[1]} (duplicate or reorder)"
        self.gaps += 1
        self.missed += seq - expected
        return f"{channel}:{symbol} gap: expected {expected}, got {seq} ({seq - expected} missed)"


def pick_subscriptions(rng: random.Random, symbols: list[str]) -> list[str]:
    """1-3 symbols, each with 1-3 channels drawn by weight: ``["l2:BTC-USD", "ticker:ETH-USD"]``."""
    chosen = rng.sample(symbols, k=min(len(symbols), rng.choice((1, 1, 2, 3))))
    names, weights = zip(*CHANNEL_WEIGHTS.items(), strict=True)
    subs: set[str] = set()
    for sym in chosen:
        for ch in rng.choices(names, weights=weights, k=rng.choice((1, 2, 3))):
            subs.add(f"{ch}:{sym}")
    return sorted(subs)


def is_data_message(msg: dict[str, Any]) -> bool:
    return (
        isinstance(msg.get("seq"), int) and "channel" in msg and "symbol" in msg and "data" in msg
    )
