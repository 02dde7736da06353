"""The per-key state of the stream join (``core/follower.py``): plain data, no behaviour.

Kept apart from the join so that the per-kind rules (``core/stream_kinds.py``) and the join
(``core/follower.py``) share one declaration of what a key holds.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from core.book import L2Book

#: Channels whose every message is a whole state (no base needed to apply it).
SELF_CONTAINED_PREFIXES = ("ticker", "stats", "candles_", "status", "trades")


class Kind(Enum):
    L2 = "l2"  # L2Book applied from l2_update changes
    TAIL = "tail"  # snapshot + bounded tail of updates (l3, unknown book-like channels)
    LATEST = "latest"  # latest message is the state (ticker, stats, candles, status)
    TRADES = "trades"  # last N messages


def kind_of(channel: str) -> Kind:
    if channel == "l2":
        return Kind.L2
    if channel == "trades":
        return Kind.TRADES
    if channel.startswith(SELF_CONTAINED_PREFIXES):
        return Kind.LATEST
    return Kind.TAIL


class State(Enum):
    NO_BASE = "no_base"
    SYNCED = "synced"


@dataclass(slots=True)
class Msg:
    raw: bytes
    parsed: dict[str, Any]
    seq: int
    epoch: int
    timestamp: str


@dataclass(slots=True)
class Snap:
    msg: Msg | None  # None until needed: ``raw`` is parsed by StreamJoin._snap
    ts_ms: int  # Kafka record timestamp of the snapshot record
    raw: bytes = b""


@dataclass(slots=True)
class KeyState:
    channel: str
    symbol: str
    kind: Kind
    state: State = State.NO_BASE
    seq: int = 0
    epoch: int = 0
    last_ts: str = ""  # publish timestamp of the last applied message
    checksum: int | None = None
    event_time: str | None = None
    book: L2Book | None = None
    base: Msg | None = None  # TAIL: the snapshot; LATEST: the latest message
    tail: deque[Msg] = field(default_factory=deque)  # TAIL updates since base / TRADES kept
    latest_snap: Snap | None = None
    want_epoch: int | None = None
    pending_reason: str = "snapshot"  # NO_BASE: why, reported by the Reset that ends it
    min_snap_seq: int = 0  # NO_BASE: a snapshot older than this cannot bridge the hole
    buffer: dict[int, Msg] = field(default_factory=dict)  # NO_BASE: seq -> message
    buffer_tp: tuple[str, int] | None = None
    rewound_for: int | None = None  # snapshot seq a rewind was requested for
    rewind_exhausted: bool = False
    retired: deque[int] = field(default_factory=lambda: deque(maxlen=8))
    cache: dict[tuple[int | None, bool], bytes] = field(default_factory=dict)
    resets: int = 0
    gaps: int = 0
    # direct-feed messages that came before Kafka filled the seqs below them: released in
    # order as soon as the key reaches them (the direct feed stays in step after any hole)
    ahead: dict[int, Msg] = field(default_factory=dict)
    # a cold key (no subscriber in this process, StreamJoin.interest): the in-order messages
    # after the applied state (seq ``held_from``), kept as bytes while ``seq`` follows the
    # stream's head; ``held_base``, a newer snapshot or self-contained message, replaces the
    # applied state first. Parsed and applied only when someone asks (StreamJoin._warm).
    held: list[bytes] = field(default_factory=list)
    held_from: int = 0
    held_base: bytes | None = None


HEAD = re.compile(
    rb'\{"type":"[a-z0-9_]+","channel":"([a-z0-9_]+)","symbol":"([^"]+)","seq":(\d+),"epoch":(\d+)'
)
