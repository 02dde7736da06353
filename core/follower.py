"""Follow the aggregator's streams: join the compacted snapshot topic with the stream topics.

Shared by every gateway (WebSocket, FIX) that serves "snapshot, then updates" from Kafka. The
contract is ``docs/internals.md`` ("Snapshot topic"): read the snapshot, then the stream from
an offset at or before it (``offsets_for_times(snapshot record timestamp - margin)``), drop
stream messages with ``seq <= snapshot.seq``. This module has two layers:

- :class:`StreamJoin`, pure and synchronous (no Kafka, no clock): records in, actions out
  (:class:`Deliver`, :class:`Reset`, :class:`Rewind`). Unit tests drive it directly.
- :class:`StreamFollower`, the thin asyncio shell: two manually assigned consumers (no group,
  every gateway process reads everything), startup positioning, the loops, a Kafka watchdog,
  and callbacks.

Theory of operation, per key ``(channel, symbol)``::

    NO_BASE --snapshot usable--> SYNCED --seq == last+1--> SYNCED (Deliver)
       ^                            |
       +---- gap / new epoch / -----+        seq <= last or retired epoch: dropped
             checksum mismatch

- Each kind of stream is one class in ``core/stream_kinds.py``: books (``l2``) are rebuilt in an
  :class:`~core.book.L2Book`; ``l3`` keeps the snapshot plus the updates since (a bounded tail,
  rebased on every newer snapshot of the same epoch), so the follower needs no knowledge of the
  L3 update shape; the latest message, or the last N trades, is the state of the others. What a
  key holds is declared in ``core/stream_state.py``.
- Self-contained channels (``ticker``, ``stats``, ``candles_*``, ``status``, ``trades``) need
  no base: after a gap or a new epoch the message itself becomes the new state.
- A book that loses continuity buffers its stream messages (bounded) until a snapshot of the
  new epoch is available; if that snapshot is older than the buffer, the partition is rewound
  to the snapshot's time (a :class:`Rewind`). Other keys of that partition drop the re-read
  messages by ``seq``, so a rewind is harmless to them.
- Epoch changes are driven by the stream; a snapshot with a different epoch is adopted only
  when it is newer (publish ``timestamp``) than the last applied message, so an idle stream
  still moves to the new epoch. A retired epoch's late messages are dropped.
- Every rebase emits :class:`Reset`: consumers send their clients a fresh snapshot, flagged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter, Gauge

from core.anonymize import apply as anonymize
from core.book import L2Book
from core.errors import CodecError
from core.feed import HEARTBEAT_PREFIX, FeedClient, parse_addresses
from core.kafka import Pacer, make_consumer, partitions_by_topic
from core.settings import Settings
from core.signing import sign
from core.stream_kinds import KINDS
from core.stream_state import HEAD, KeyState, Kind, Msg, Snap, State, kind_of
from core.topics import Topics

log = logging.getLogger(__name__)

#: The snapshot topic's read interval while the direct feed is whole (``MD_AGG_SNAPSHOT_MS`` is
#: 2000: a key has at most one new snapshot per read; only the newest is ever applied).
SNAPSHOT_WAIT_WHOLE_S = 1.0

BACKUP_PAUSED = Gauge(
    "md_follower_kafka_backup_paused",
    "1 while Kafka is left unread because the direct feed's heartbeats prove it whole",
)

COLD_HELD = Counter(
    "md_follower_cold_messages_total",
    "Messages of keys nobody in this process reads, kept as bytes (parsed only when asked for)",
)
COLD_WARMED = Counter(
    "md_follower_cold_warmups_total",
    "Cold keys brought up to date because a subscriber or a query asked for them",
)

Key = tuple[str, str]  # (channel, symbol)

# ---------------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Deliver:
    """A new in-order message: ``seq == previous seq + 1`` in the same epoch."""

    channel: str
    symbol: str
    seq: int
    raw: bytes
    parsed: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reset:
    """The key's state was rebuilt (first snapshot, gap, new epoch, bad checksum)."""

    channel: str
    symbol: str
    seq: int
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class Rewind:
    """Re-read ``topic``/``partition`` from ``timestamp_ms`` (a snapshot older than the buffer)."""

    topic: str
    partition: int
    timestamp_ms: int


Action = Deliver | Reset | Rewind


@dataclass(slots=True)
class Current:
    """What a new subscriber needs: ``messages`` (a snapshot, then updates) bring it to ``seq``."""

    channel: str
    symbol: str
    seq: int
    epoch: int
    messages: list[bytes]
    checksum: int | None
    timestamp: str | None


# ---------------------------------------------------------------------------------- pure join


def _parse(raw: bytes) -> Msg:
    raw = anonymize(raw)  # core/anonymize.py: what leaves a gateway, when installed
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"malformed JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise CodecError("message is not an object")
    seq, epoch = d.get("seq"), d.get("epoch", 0)
    if not isinstance(seq, int) or not isinstance(epoch, int):
        raise CodecError("message without integer seq/epoch")
    if not isinstance(d.get("channel"), str) or not isinstance(d.get("symbol"), str):
        raise CodecError("message without channel/symbol")
    # signed once here when a signer is installed (core/signing.py): every copy handed out is
    return Msg(sign(raw), d, seq, epoch, str(d.get("timestamp", "")))


class StreamJoin:
    """The pure snapshot+stream join for every key; see the module docstring.

    Bounds (each per key): ``buffer_max`` stream messages held while a book waits for a
    snapshot (an l2 update is ~200 B, so 10,000 is ~2 MB in the worst case, only during a
    resync); ``tail_max`` l3 updates between snapshots (rebased on each snapshot, which the
    aggregator refreshes often); ``trades_keep`` trades kept for "last N trades".
    """

    def __init__(
        self,
        *,
        channels: Iterable[str] | None = None,
        symbols: Iterable[str] | None = None,
        verify_checksum: bool = True,
        checksum_depth: int = 10,
        margin_ms: int = 5_000,
        buffer_max: int = 10_000,
        tail_max: int = 20_000,
        trades_keep: int = 100,
    ) -> None:
        self.channels = set(channels) if channels is not None else None
        self.symbols = set(symbols) if symbols is not None else None
        self.verify_checksum = verify_checksum
        self.checksum_depth = checksum_depth
        self.margin_ms = margin_ms
        self.buffer_max = buffer_max
        self.tail_max = tail_max
        self.trades_keep = trades_keep
        self.keys: dict[Key, KeyState] = {}
        self.malformed = 0
        self.dropped_dup = 0
        self.direct_taken = 0  # messages the direct feed brought first
        self.direct_skipped = 0  # direct messages left to Kafka (not in sync, other epoch, old)
        self.ahead_max = 2_000  # direct messages held per key while Kafka fills a hole
        self.feed_whole_at: int | None = None  # see on_feed_heartbeat
        # Which keys someone in this process reads (None: all). A key nobody reads is "cold":
        # its in-order messages are checked by their head and kept as bytes, and parsed,
        # applied and checksum-verified only when a subscriber or a query asks for the key
        # (issue 10: a gateway with no client spent most of its CPU keeping every book).
        self.interest: Callable[[str, str], bool] | None = None
        self.held_total = 0  # messages kept cold
        self.warmed = 0  # cold keys brought up to date on demand
        self.deferred: list[Action] = []  # what a warm-up inside a query produced (see current)

    # ----------------------------------------------------------------- inputs

    def wants(self, channel: str, symbol: str) -> bool:
        return (
            self.channels is None
            or channel in self.channels
            or (channel.startswith("candles_") and "candles" in self.channels)
        ) and (self.symbols is None or symbol in self.symbols)

    def _state(self, channel: str, symbol: str) -> KeyState:
        st = self.keys.get((channel, symbol))
        if st is None:
            kind = kind_of(channel)
            st = KeyState(channel, symbol, kind, book=L2Book() if kind is Kind.L2 else None)
            self.keys[(channel, symbol)] = st
        return st

    def on_snapshot(self, key: bytes | str | None, value: bytes | None, ts_ms: int) -> list[Action]:
        """A record of the compacted snapshot topic (``key`` = ``<channel>:<symbol>``)."""
        if key is None or value is None:  # tombstone or keyless: nothing to join
            return []
        k = key.decode() if isinstance(key, bytes) else key
        channel, sep, symbol = k.partition(":")
        if not sep or channel == "agg" or not self.wants(channel, symbol):
            return []  # private (agg:) or unknown keys are ignored per the contract
        st = self.keys.get((channel, symbol))
        pre: list[Action] = []
        if st is not None and st.state is State.SYNCED and self.interest is not None:
            if not self.interest(channel, symbol) and self._hold_snapshot(st, value, ts_ms):
                return []
            pre = self._warm(st)
        if st is not None and st.state is State.SYNCED and KINDS[st.kind].lazy_snapshots:
            h = HEAD.match(value)
            if h is not None and int(h[4]) == st.epoch:
                # in sync: only a later hole needs it, so it is parsed then (most never are)
                st.latest_snap = Snap(None, ts_ms, value)
                return pre
        try:
            m = _parse(value)
        except CodecError:
            self.malformed += 1
            return pre
        st = self._state(channel, symbol)
        st.latest_snap = Snap(m, ts_ms)
        if st.state is State.NO_BASE:
            return pre + self._try_base(st, st.pending_reason)
        if m.epoch != st.epoch and m.epoch not in st.retired and m.timestamp > st.last_ts:
            # an idle stream whose aggregator restarted: the snapshot is the newest truth
            st.retired.append(st.epoch)
            self._rebase(st, m)
            return [*pre, self._reset(st, "epoch")]
        if m.epoch == st.epoch:
            KINDS[st.kind].on_snapshot(st, m)
        return pre

    def _already_have(self, m: re.Match[bytes] | None) -> bool:
        """Whether a record is a copy of what this key already applied, read from its head
        without parsing it: with the direct feed ahead, most Kafka records are such copies.
        The aggregator writes ``type, channel, symbol, seq, epoch`` first (core/channels.py);
        anything else simply takes the full parse."""
        if m is None:
            return False
        st = self.keys.get((m[1].decode(), m[2].decode()))
        return (
            st is not None
            and st.state is State.SYNCED
            and int(m[4]) == st.epoch
            and int(m[3]) <= st.seq
        )

    def on_direct(self, value: bytes) -> list[Action]:
        """A message of the direct feed (``core/feed.py``). The exact next ``seq`` of a key in
        sync is applied at once; one further ahead is held until Kafka, which carries every
        message, fills the seqs below it (a startup, a lost frame), then released in order;
        anything else is left to Kafka."""
        if value.startswith(HEARTBEAT_PREFIX):
            self.on_feed_heartbeat(value)
            return []
        h = HEAD.match(value)
        key = None
        if h is not None:
            key = (h[1].decode(), h[2].decode())
            # the feed carries every stream: skip the ones not followed before parsing them
            # (the FIX gateway follows 3 of 11 channels)
            if (self.channels is not None or self.symbols is not None) and not self.wants(*key):
                return []
        done, pre = self._cold(h, value, key)
        if done:
            return pre
        try:
            m = _parse(value)
        except CodecError:
            self.malformed += 1
            return pre
        st = self.keys.get((m.parsed["channel"], m.parsed["symbol"]))
        if st is None or st.state is not State.SYNCED or m.epoch != st.epoch or m.seq <= st.seq:
            self.direct_skipped += 1
            return pre
        if m.seq > st.seq + 1:
            st.ahead[m.seq] = m
            if len(st.ahead) > self.ahead_max:
                del st.ahead[min(st.ahead)]
            return pre
        self.direct_taken += 1
        return pre + self._on_stream_msg(m, "", 0) + self._release_ahead(st)

    # ----------------------------------------------------------------- cold keys

    def _cold(
        self, h: re.Match[bytes] | None, value: bytes, key: tuple[str, str] | None = None
    ) -> tuple[bool, list[Action]]:
        """The cold-key gate in front of the full parse: ``(True, [])`` when the message was
        kept as bytes (or was a copy); otherwise what warming the key produced, before the
        message takes the ordinary path. ``key``: the head's (channel, symbol), if decoded."""
        if self.interest is None or h is None:
            return False, []
        if key is None:
            key = (h[1].decode(), h[2].decode())
        channel, symbol = key
        st = self.keys.get(key)
        if st is None or st.state is not State.SYNCED:
            return False, []
        if not self.interest(channel, symbol):
            seq, epoch = int(h[3]), int(h[4])
            if epoch == st.epoch and not st.ahead:
                if seq <= st.seq:
                    self.dropped_dup += 1
                    return True, []
                if seq == st.seq + 1 and self._hold(st, value, seq):
                    return True, []
        return False, self._warm(st)

    def _hold(self, st: KeyState, value: bytes, seq: int) -> bool:
        """Keep the next message of a cold key as bytes; False when the key must be warmed
        instead (a book's held run reached ``buffer_max``: bounded memory)."""
        held = st.held
        if not held and st.held_base is None:
            st.held_from = st.seq
        kind = st.kind
        if kind is Kind.LATEST:  # the newest message is the whole state
            st.held_base = value
            st.held_from = seq
        elif kind is Kind.TRADES:  # the last trades_keep messages are
            held.append(value)
            if len(held) >= self.trades_keep:
                st.held_base = held.pop(0)
                st.held_from += 1
        elif len(held) >= self.buffer_max:
            return False
        else:
            held.append(value)
        st.seq = seq
        self.held_total += 1
        COLD_HELD.inc()
        return True

    def _hold_snapshot(self, st: KeyState, value: bytes, ts_ms: int) -> bool:
        """A snapshot of a cold key: kept as bytes; one inside the held run replaces the
        messages it covers. False when it needs the ordinary path (another epoch)."""
        h = HEAD.match(value)
        if h is None or int(h[4]) != st.epoch:
            return False
        if KINDS[st.kind].self_contained:
            return True  # its own messages are its state: a snapshot adds nothing
        st.latest_snap = Snap(None, ts_ms, value)
        s = int(h[3])
        if st.held_from < s <= st.seq and (st.held or st.held_base is not None):
            del st.held[: s - st.held_from]
            st.held_base, st.held_from = value, s
        return True

    def _warm(self, st: KeyState) -> list[Action]:
        """Bring a cold key up to its head: what it held is parsed and applied through the
        ordinary path (checksums verified, a bad one resnapshots). The messages themselves are
        not delivered: nobody read the key while it was cold."""
        base, held = st.held_base, st.held
        if base is None and not held:
            return []
        st.held_base, st.held = None, []
        self.warmed += 1
        COLD_WARMED.inc()
        st.seq = st.held_from
        out: list[Action] = []
        if base is not None:
            try:
                bm = _parse(base)
            except CodecError:
                self.malformed += 1
                return self._lost_base(st, held)
            self._rebase(st, bm)
        for raw in held:
            try:
                m = _parse(raw)
            except CodecError:
                self.malformed += 1
                continue  # the next one is a gap: resnapshot, as for any malformed record
            out += [a for a in self._on_stream_msg(m, "", 0) if not isinstance(a, Deliver)]
        return out

    def _lost_base(self, st: KeyState, held: list[bytes]) -> list[Action]:
        """The held base (a snapshot inside the held run, or a latest-only message) does not
        parse: the key's state is older than ``held_from``, so nothing held after it may be
        applied, and claiming ``held_from`` would serve an old book under a new seq. As for a
        gap: wait for a snapshot that covers the lost base, the held messages as the buffer
        (a re-read finds the same bad record: no rewind)."""
        st.state = State.NO_BASE
        st.pending_reason = "gap"
        st.want_epoch = st.epoch
        st.buffer.clear()
        st.buffer_tp = None
        st.rewound_for = None
        st.rewind_exhausted = True
        st.min_snap_seq = st.held_from
        st.gaps += 1
        for raw in held:
            try:
                m = _parse(raw)
            except CodecError:
                self.malformed += 1
                continue
            if m.epoch == st.epoch:
                st.buffer[m.seq] = m
        return self._try_base(st, "gap")

    def on_feed_heartbeat(self, value: bytes) -> None:
        """The leader's heads: ``feed_whole_at`` is its clock at the last heartbeat that found
        every wanted key in sync and at or past its head (None: Kafka is needed). Keys of an
        epoch this join retired are stale heads of an old leader and are ignored."""
        try:
            d = orjson.loads(value)
            ts, heads = int(d["ts_ms"]), d["heads"]
            items = [(k, int(e), int(q)) for k, (e, q) in heads.items()]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            self.malformed += 1
            self.feed_whole_at = None
            return
        for k, epoch, seq in items:
            channel, _, symbol = k.partition(":")
            if not self.wants(channel, symbol):
                continue
            st = self.keys.get((channel, symbol))
            if st is not None and epoch in st.retired:
                continue
            if st is None or st.state is not State.SYNCED or st.epoch != epoch or st.seq < seq:
                self.feed_whole_at = None
                return
        self.feed_whole_at = ts

    def in_sync(self) -> bool:
        """Every key has a base and no direct message waits for Kafka to fill a hole."""
        return all(st.state is State.SYNCED and not st.ahead for st in self.keys.values())

    def _release_ahead(self, st: KeyState) -> list[Action]:
        ahead = st.ahead
        if not ahead:
            return []
        out: list[Action] = []
        for q in [q for q, m in ahead.items() if q <= st.seq or m.epoch != st.epoch]:
            del ahead[q]
        while st.state is State.SYNCED and st.seq + 1 in ahead:
            self.direct_taken += 1
            out += self._on_stream_msg(ahead.pop(st.seq + 1), "", 0)
        return out

    def on_stream(self, value: bytes, topic: str = "", partition: int = 0) -> list[Action]:
        """A record of a stream topic (value = the client-ready data message)."""
        h = HEAD.match(value)
        if self._already_have(h):
            self.dropped_dup += 1
            return []
        done, pre = self._cold(h, value)
        if done:
            return pre
        try:
            m = _parse(value)
        except CodecError:
            self.malformed += 1
            return pre
        acts = pre + self._on_stream_msg(m, topic, partition)
        st = self.keys.get((m.parsed["channel"], m.parsed["symbol"]))
        if st is not None and st.ahead:
            acts += self._release_ahead(st)
        return acts

    def _on_stream_msg(self, m: Msg, topic: str, partition: int) -> list[Action]:
        channel, symbol = m.parsed["channel"], m.parsed["symbol"]
        if not self.wants(channel, symbol):
            return []
        st = self._state(channel, symbol)
        if m.epoch in st.retired:
            self.dropped_dup += 1
            return []
        if KINDS[st.kind].self_contained:
            return self._on_self_contained(st, m)
        if st.state is State.SYNCED:
            if m.epoch == st.epoch:
                if m.seq <= st.seq:
                    self.dropped_dup += 1
                    return []
                if m.seq == st.seq + 1:
                    if self._apply(st, m):
                        return [Deliver(channel, symbol, m.seq, m.raw, m.parsed)]
                    reason = "checksum"
                else:
                    reason = "gap"
            else:
                reason = "epoch"
                st.retired.append(st.epoch)
            st.gaps += 1
            log.warning(
                "stream discontinuity, resnapshot",
                extra={
                    "channel": channel,
                    "symbol": symbol,
                    "reason": reason,
                    "seq": st.seq,
                    "got_seq": m.seq,
                    "epoch": st.epoch,
                    "got_epoch": m.epoch,
                },
            )
            st.state = State.NO_BASE
            st.pending_reason = reason
            st.want_epoch = m.epoch
            st.buffer.clear()
            st.rewound_for = None
            # Reading a partition in order, the missing messages are not in Kafka (gap) or
            # our base disagrees (checksum): only a snapshot at or after the hole helps, and
            # rewinding cannot. A new epoch starts from any snapshot of that epoch.
            st.min_snap_seq = {"gap": m.seq - 1, "checksum": m.seq}.get(reason, 0)
            st.rewind_exhausted = reason != "epoch"
            if reason == "checksum":
                return self._try_base(st, reason)
        # NO_BASE: buffer until a usable snapshot exists
        if st.want_epoch is not None and m.epoch != st.want_epoch:
            st.retired.append(st.want_epoch)
            st.buffer.clear()
            st.rewound_for = None
            st.rewind_exhausted = False
            st.min_snap_seq = 0
        st.want_epoch = m.epoch
        if m.seq in st.buffer and st.rewound_for is not None:
            st.rewind_exhausted = True  # the re-read reached what we had: the hole is real
        st.buffer[m.seq] = m
        st.buffer_tp = (topic, partition)
        if len(st.buffer) > self.buffer_max:
            del st.buffer[min(st.buffer)]
        return self._try_base(st, st.pending_reason)

    # ----------------------------------------------------------------- internals

    def _on_self_contained(self, st: KeyState, m: Msg) -> list[Action]:
        if st.state is State.SYNCED and m.epoch == st.epoch:
            if m.seq <= st.seq:
                self.dropped_dup += 1
                return []
            if m.seq == st.seq + 1:
                self._apply(st, m)
                return [Deliver(st.channel, st.symbol, m.seq, m.raw, m.parsed)]
        reason = (
            "snapshot" if st.state is State.NO_BASE else ("gap" if m.epoch == st.epoch else "epoch")
        )
        if reason == "epoch":
            st.retired.append(st.epoch)
        if reason != "snapshot":
            st.gaps += 1
        self._rebase(st, m)
        return [self._reset(st, reason)]

    def _snap(self, st: KeyState) -> Snap | None:
        """The key's newest snapshot, parsed now if it was kept as bytes."""
        snap = st.latest_snap
        if snap is not None and snap.msg is None:
            try:
                snap.msg = _parse(snap.raw)
            except CodecError:
                self.malformed += 1
                st.latest_snap = None
                return None
            snap.raw = b""
        return snap

    def _try_base(self, st: KeyState, reason: str) -> list[Action]:
        snap = self._snap(st)
        sm = snap.msg if snap is not None else None
        if KINDS[st.kind].self_contained:
            if sm is None:
                return []
            self._rebase(st, sm)
            return [self._reset(st, reason)]
        if (
            snap is None
            or sm is None
            or (st.want_epoch is not None and sm.epoch != st.want_epoch)
            or (sm.seq < st.min_snap_seq)
        ):
            return []
        s = sm.seq
        later = [q for q in st.buffer if q > s]
        if later and min(later) > s + 1:
            # the snapshot is older than what we buffered: re-read the stream from its time
            if st.rewound_for != s and st.buffer_tp is not None and not st.rewind_exhausted:
                st.rewound_for = s
                topic, part = st.buffer_tp
                return [Rewind(topic, part, max(0, snap.ts_ms - self.margin_ms))]
            return []  # wait for a newer snapshot
        self._rebase(st, sm)
        nxt = s + 1
        while nxt in st.buffer:
            if not self._apply(st, st.buffer[nxt]):
                break
            nxt += 1
        leftover = [q for q in st.buffer if q >= nxt]
        st.buffer.clear()
        if leftover:  # a hole inside the buffer: keep waiting from here (rare)
            log.warning("hole after rebase", extra={"channel": st.channel, "symbol": st.symbol})
        st.want_epoch = None
        st.pending_reason = "snapshot"
        st.min_snap_seq = 0
        st.rewound_for = None
        st.rewind_exhausted = False
        return [self._reset(st, reason)]

    def _rebase(self, st: KeyState, m: Msg) -> None:
        st.state = State.SYNCED
        st.seq, st.epoch, st.last_ts = m.seq, m.epoch, m.timestamp
        st.checksum = m.parsed.get("checksum")
        st.event_time = m.parsed.get("event_time")
        st.cache.clear()
        KINDS[st.kind].rebase(st, m, self)

    def _apply(self, st: KeyState, m: Msg) -> bool:
        """Apply an in-order message; False when the book's checksum disagrees."""
        st.cache.clear()
        if not KINDS[st.kind].apply(st, m, self):
            return False
        st.seq, st.last_ts = m.seq, m.timestamp
        st.event_time = m.parsed.get("event_time")
        if "checksum" in m.parsed:
            st.checksum = m.parsed["checksum"]
        return True

    def _reset(self, st: KeyState, reason: str) -> Reset:
        st.resets += 1
        return Reset(st.channel, st.symbol, st.seq, st.epoch, reason)

    # ----------------------------------------------------------------- queries

    def current(
        self,
        channel: str,
        symbol: str,
        *,
        depth: int | None = None,
        resync: bool = False,
        last: int | None = None,
    ) -> Current | None:
        """The state of a key as messages for a new subscriber, or None when not synced.

        ``depth`` limits an l2 snapshot; ``last`` the trades sent; ``resync`` adds
        ``"resync": true`` to the snapshot message. Results are encoded once and cached
        until the key changes, so a thousand subscribers joining share the same bytes.
        """
        st = self.keys.get((channel, symbol))
        if st is not None:
            self.deferred += self._warm(st)  # a no-op unless the key was kept cold
        if st is None or st.state is not State.SYNCED:
            return None
        msgs = KINDS[st.kind].messages(st, self, depth=depth, resync=resync, last=last)
        return Current(channel, symbol, st.seq, st.epoch, msgs, st.checksum, st.last_ts)

    def _flagged(self, st: KeyState, m: Msg, resync: bool) -> bytes:
        if not resync:
            return m.raw
        ck = (-m.seq, True)
        raw = st.cache.get(ck)
        if raw is None:
            raw = st.cache[ck] = sign(orjson.dumps({**m.parsed, "resync": True}))
        return raw

    def seq_of(self, channel: str, symbol: str) -> tuple[int, int, int | None] | None:
        """(seq, epoch, checksum) of a synced key: what a heartbeat reports."""
        st = self.keys.get((channel, symbol))
        if st is not None:
            self.deferred += self._warm(st)  # a no-op unless the key was kept cold
        if st is None or st.state is not State.SYNCED:
            return None
        return st.seq, st.epoch, st.checksum

    def symbols_seen(self) -> set[str]:
        return {s for (_, s) in self.keys}


# ---------------------------------------------------------------------------------- asyncio shell

DeliverCallback = Callable[[str, str, int, bytes, dict[str, Any]], None]
ResetCallback = Callable[[Reset], None]


class StreamFollower:
    """Keep the joined state of the aggregator's streams in memory and call back on changes.

    Usage::

        f = StreamFollower(settings, channels=["l2", "ticker"])
        f.add_callback(lambda ch, sym, seq, raw, parsed: ...)   # each new in-order message
        f.add_reset_callback(lambda reset: ...)                  # resnapshot your clients
        await f.start(); await f.ready.wait()
        cur = f.current("l2", "BTC-USD")   # snapshot message(s) + seq for a new subscriber
        ...
        await f.stop()

    Callbacks run synchronously on the event loop, in stream order, and must not block.
    ``ready`` is set once the streams are read up to their end offsets at start; ``connected``
    is False while the Kafka watchdog cannot reach the broker (``health()`` says why).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        channels: Iterable[str] | None = None,
        symbols: Iterable[str] | None = None,
        margin_ms: int = 5_000,
        lookback_ms: int = 10_000,
        watchdog_s: float = 2.0,
        **join_opts: Any,
    ) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        chans = list(channels) if channels is not None else None
        self.join = StreamJoin(
            channels=chans,
            symbols=symbols,
            margin_ms=margin_ms,
            checksum_depth=settings.book_checksum_depth,
            **join_opts,
        )
        names = chans or ["l2", "l3", "ticker", "trades", "stats", "candles_1m", "status"]
        self.stream_topics = sorted({self.topics.stream(c) for c in names})
        self.lookback_ms = lookback_ms
        self.yield_s = 0.002  # longest run of callbacks before the loop gets a turn
        self.watchdog_s = watchdog_s
        self.ready = asyncio.Event()
        self.connected = True
        self.last_error: str | None = None
        self.last_record_at = 0.0
        # per stream partition: end offset - next offset to read (a transaction marker after
        # the last record counts 1: approximate by design, for /health and alerts)
        self.lag: dict[str, int] = {}
        self._next_offset: dict[TopicPartition, int] = {}
        self._callbacks: list[DeliverCallback] = []
        self.delivered = 0  # Deliver actions run: the feed reader's cue (core/feed.py _deliver)
        self._reset_callbacks: list[ResetCallback] = []
        self._snap_consumer: AIOKafkaConsumer | None = None
        self._stream_consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stream_tps: list[TopicPartition] = []
        self._end_at_start: dict[TopicPartition, int] = {}
        self._feed: FeedClient | None = None
        self.backup_wait_ms = settings.get("MD_FOLLOWER_BACKUP_WAIT_MS", int, 100)
        # Kafka left unread while the direct feed proves itself whole (core/feed.py heartbeats):
        # most of a gateway's idle cost was fetching and dropping Kafka's copy of what the feed
        # had brought. Five missed feed heartbeats and Kafka is read again.
        self.feed_timeout_s = 5 * settings.get("MD_AGG_HEARTBEAT_MS", int, 100) / 1000
        self._beat_at = 0.0  # monotonic time of the last feed heartbeat
        self._whole_at: int | None = None  # leader clock (ms) of the last heartbeat found whole
        self.backup_paused = False
        self.backup_resumes = 0  # times Kafka was read again after a pause
        self._unwhole = asyncio.Event()  # a heartbeat found the feed not whole
        # the keys last told to the feeds; None: all, which a feed assumes of a silent receiver
        self._hot: frozenset[tuple[str, str]] | None = None

    def add_callback(self, cb: DeliverCallback) -> None:
        self._callbacks.append(cb)

    def add_reset_callback(self, cb: ResetCallback) -> None:
        self._reset_callbacks.append(cb)

    def set_interest(self, interest: Callable[[str, str], bool] | None) -> None:
        """Tell the join which keys this process reads (see ``StreamJoin.interest``): the
        others are kept as bytes until a subscriber or a query asks for them."""
        self.join.interest = interest
        self._announce()

    def _announce(self) -> None:
        """Tell the direct feeds which keys are read here (``core/feed.py``): the leader holds
        writes that carry none of them until its next heartbeat, so a gateway whose clients
        read BTC-USD is not woken for every other symbol's record. Recomputed on every feed
        heartbeat (subscriptions come and go) and at once when a query asks for a read key
        the feeds do not know yet (a new subscriber's snapshot)."""
        feed = self._feed
        if feed is None:
            return
        interest = self.join.interest
        hot = None if interest is None else frozenset(k for k in self.join.keys if interest(*k))
        if hot != self._hot:
            self._hot = hot
            feed.set_interest(None if hot is None else sorted(f"{c}:{s}" for c, s in hot))

    def _announce_if_new(self, channel: str, symbol: str) -> None:
        hot, interest = self._hot, self.join.interest
        if (
            hot is not None
            and interest is not None
            and (channel, symbol) not in hot
            and interest(channel, symbol)
        ):
            self._announce()

    def current(self, channel: str, symbol: str, **kw: Any) -> Current | None:
        cur = self.join.current(channel, symbol, **kw)
        self._run_deferred()
        self._announce_if_new(channel, symbol)
        return cur

    def seq_of(self, channel: str, symbol: str) -> tuple[int, int, int | None] | None:
        head = self.join.seq_of(channel, symbol)
        self._run_deferred()
        self._announce_if_new(channel, symbol)
        return head

    def _run_deferred(self) -> None:
        # a warm-up found a bad checksum and rebased: the Reset reaches the subscribers after
        # the query that caused it returned (as any rebase would reach them)
        if self.join.deferred:
            acts, self.join.deferred = self.join.deferred, []
            self._run(acts)

    def health(self) -> tuple[bool, dict[str, Any]]:
        # a loop that died (an exception it did not expect) freezes every book it serves:
        # that must fail /health and get the process restarted, not serve stale data
        dead = sorted(t.get_name() for t in self._tasks if t.done())
        return self.connected and self.ready.is_set() and not dead, {
            "kafka": "connected" if self.connected else "lost",
            "ready": self.ready.is_set(),
            "dead_loops": dead,
            "error": self.last_error,
            "keys": len(self.join.keys),
            "lag": sum(self.lag.values()),
            # the direct feed only accelerates (Kafka carries everything): informative, not a check
            "direct": dict(self._feed.connected) if self._feed is not None else None,
            "kafka_backup": "paused, direct feed whole" if self.backup_paused else "reading",
            "direct_taken": self.join.direct_taken,
        }

    # ----------------------------------------------------------------- lifecycle

    def _consumer(self) -> AIOKafkaConsumer:
        # no group: every gateway process reads everything, positioned by hand (start)
        return make_consumer(self.settings)

    async def start(self) -> None:
        """Read the snapshot topic to its end, position the streams, start following."""
        sc, tc = self._consumer(), self._consumer()
        self._snap_consumer, self._stream_consumer = sc, tc
        try:
            await self._start(sc, tc)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, sc: AIOKafkaConsumer, tc: AIOKafkaConsumer) -> None:
        await sc.start()
        await tc.start()
        parts = await self._partitions(sc)
        min_ts = await self._read_snapshots(sc, parts[self.topics.snapshot])
        tps = [TopicPartition(t, p) for t in self.stream_topics for p in sorted(parts[t])]
        tc.assign(tps)
        self._stream_tps = tps
        await self._position_streams(tc, tps, min_ts)
        self._end_at_start = await tc.end_offsets(tps)
        self._tasks = [
            asyncio.create_task(self._snapshot_loop(), name="follower-snapshots"),
            asyncio.create_task(self._stream_loop(), name="follower-streams"),
            asyncio.create_task(self._watchdog(), name="follower-watchdog"),
        ]
        feeds = parse_addresses(self.settings.get("MD_AGG_FEED", str, ""))
        if feeds:
            self._feed = FeedClient(feeds, self._on_direct, lambda: self.delivered)
            self._announce()
            self._feed.start()
        log.info(
            "follower started",
            extra={"topics": self.stream_topics, "snapshot_keys": len(self.join.keys)},
        )

    async def _partitions(self, sc: AIOKafkaConsumer) -> dict[str, set[int]]:
        """Partitions of the snapshot and stream topics. Topics created a moment ago may not be
        in the metadata yet: retry for a while."""
        wanted = [self.topics.snapshot, *self.stream_topics]
        for _ in range(49):
            parts = await partitions_by_topic(sc, wanted)
            if all(parts[t] for t in wanted):
                return parts
            await asyncio.sleep(0.2)
        parts = await partitions_by_topic(sc, wanted)
        missing = [t for t in wanted if not parts[t]]
        if missing:
            raise RuntimeError(f"topics missing in Kafka: {missing} (run python -m core.bootstrap)")
        return parts

    async def _read_snapshots(self, sc: AIOKafkaConsumer, partitions: set[int]) -> dict[str, int]:
        """Join the snapshot topic read to its end; returns, per stream topic, the oldest
        snapshot record time (where its stream must be read from)."""
        snap_tps = [TopicPartition(self.topics.snapshot, p) for p in sorted(partitions)]
        sc.assign(snap_tps)
        await sc.seek_to_beginning(*snap_tps)
        ends = await sc.end_offsets(snap_tps)
        pending = {tp for tp, end in ends.items() if end > 0}
        # Only the newest record per key counts: a compacted topic still holds older copies in
        # its active segment, and joining from those would re-read minutes of stream.
        newest: dict[bytes, tuple[bytes | None, int]] = {}
        while pending:
            batch = await sc.getmany(*pending, timeout_ms=500)
            for recs in batch.values():
                for r in recs:
                    if r.key is not None:
                        newest[r.key] = (r.value, r.timestamp)
            for tp in list(pending):
                if await sc.position(tp) >= ends[tp]:
                    pending.discard(tp)
        min_ts: dict[str, int] = {}
        for key, (value, ts) in newest.items():
            self._run(self.join.on_snapshot(key, value, ts))
            if value is not None and not key.startswith(b"agg:"):
                ch = key.decode(errors="replace").partition(":")[0]
                with contextlib.suppress(KeyError):
                    t = self.topics.stream(ch)
                    min_ts[t] = min(min_ts.get(t, ts), ts)
        return min_ts

    async def _position_streams(
        self, tc: AIOKafkaConsumer, tps: list[TopicPartition], min_ts: dict[str, int]
    ) -> None:
        """Each stream partition from its oldest snapshot's time minus the margin (the contract,
        docs/internals.md), or ``lookback_ms`` back when no snapshot names it."""
        now_ms = int(time.time() * 1000)
        start = {
            tp: (min_ts[tp.topic] - self.join.margin_ms)
            if tp.topic in min_ts
            else now_ms - self.lookback_ms
            for tp in tps
        }
        offsets = await tc.offsets_for_times({tp: max(0, ts) for tp, ts in start.items()})
        to_end = []
        for tp in tps:
            o = offsets.get(tp)
            if o is None:
                to_end.append(tp)
            else:
                tc.seek(tp, o.offset)
        if to_end:
            # one reset for all: each seek_to_end waits for the fetcher, which may be in a long
            # poll (MD_KAFKA_FETCH_WAIT_MS): one by one that was 24 x 0.5 s at a gateway's start
            await tc.seek_to_end(*to_end)

    async def stop(self) -> None:
        if self._feed is not None:
            await self._feed.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        for c in (self._snap_consumer, self._stream_consumer):
            if c is not None:
                with contextlib.suppress(Exception):
                    await c.stop()

    # ----------------------------------------------------------------- loops

    def _run(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Deliver):
                self.delivered += 1
                for cb in self._callbacks:
                    try:
                        cb(a.channel, a.symbol, a.seq, a.raw, a.parsed)
                    except Exception:  # one broken consumer must not stop the feed
                        log.exception("follower callback failed")
            elif isinstance(a, Reset):
                for rcb in self._reset_callbacks:
                    try:
                        rcb(a)
                    except Exception:
                        log.exception("follower reset callback failed")
            else:
                asyncio.get_running_loop().create_task(self._rewind(a))

    def _on_direct(self, raw: bytes) -> None:
        if raw.startswith(HEARTBEAT_PREFIX):
            self.join.on_feed_heartbeat(raw)
            self._announce()
            self._beat_at = time.monotonic()
            if self.join.feed_whole_at is not None:
                self._whole_at = self.join.feed_whole_at
            else:
                self._unwhole.set()  # a paused Kafka backup is needed now, not at its next look
            return
        self._run(self.join.on_direct(raw))

    def _direct_only(self) -> bool:
        """The direct feed alone suffices: its last heartbeat is recent and found nothing missing,
        and no key waits for a base or for Kafka to fill a hole."""
        return (
            self._feed is not None
            and self.ready.is_set()
            and self.join.feed_whole_at is not None
            and time.monotonic() - self._beat_at < self.feed_timeout_s
            and self.join.in_sync()
        )

    async def _resume_backup(self, tc: AIOKafkaConsumer) -> None:
        """Read Kafka again from shortly before the last heartbeat that found the feed whole:
        everything published before it was received; the margin covers clock skew between the
        leader's heartbeat and its producer's record timestamps. What the feed already brought
        is dropped by ``seq`` (a cheap head match)."""
        tps = self._stream_tps
        since = max(0, (self._whole_at or 0) - self.join.margin_ms)
        offsets = await tc.offsets_for_times({tp: since for tp in tps})
        to_end = []
        for tp in tps:
            o = offsets.get(tp)
            if o is None:
                to_end.append(tp)  # nothing as new as that: all of it was had
            elif o.offset > await tc.position(tp):
                tc.seek(tp, o.offset)
        if to_end:
            await tc.seek_to_end(*to_end)
        tc.resume(*tps)
        self.backup_paused = False
        self.backup_resumes += 1
        BACKUP_PAUSED.set(0)
        log.info("kafka backup resumed", extra={"since_ms": since})

    async def _rewind(self, a: Rewind) -> None:
        tc = self._stream_consumer
        assert tc is not None
        tp = TopicPartition(a.topic, a.partition)
        offs = await tc.offsets_for_times({tp: a.timestamp_ms})
        o = offs.get(tp)
        if o is not None and o.offset < await tc.position(tp):
            log.info(
                "rewinding stream",
                extra={"topic": a.topic, "partition": a.partition, "offset": o.offset},
            )
            tc.seek(tp, o.offset)

    async def _snapshot_loop(self) -> None:
        sc = self._snap_consumer
        assert sc is not None
        # snapshots only serve joins and resyncs: collect them per interval, do not chase each
        # one; while the direct feed is whole nothing needs one soon (a hole makes Kafka read
        # again, and the interval shortens with it)
        pacer = Pacer(self.backup_wait_ms / 1000)
        while True:
            pacer.interval_s = (
                SNAPSHOT_WAIT_WHOLE_S if self.backup_paused else self.backup_wait_ms / 1000
            )
            await pacer.wait()
            tps = sc.assignment()
            sc.resume(*tps)
            batch = await sc.getmany(timeout_ms=200, max_records=1000)
            # paused until the next read: otherwise aiokafka's fetcher fetches on in the
            # background, holds what it got and wakes on its 100 ms prefetch backoff, for records
            # read once a second (paused, an idle gateway's snapshot fetches halved: strace,
            # docs/benchmarks.md); what a fetch brings for a paused partition is dropped and read
            # again, never skipped
            sc.pause(*tps)
            for recs in batch.values():
                # only the newest record of a key counts (each replaces the one before)
                newest = {r.key: r for r in recs}
                for r in newest.values():
                    self._run(self.join.on_snapshot(r.key, r.value, r.timestamp))

    async def _stream_loop(self) -> None:
        tc = self._stream_consumer
        assert tc is not None
        join, run = self.join, self._run
        pacer = Pacer(self.backup_wait_ms / 1000)
        while True:
            if not await self._backup_needed(tc):
                if self.backup_paused:
                    await self._wait_while_whole()
                else:
                    await asyncio.sleep(self.backup_wait_ms / 1000)  # the broker may be away
                continue
            if self._feed is not None and self._feed.live():
                # a live direct feed brings the messages: Kafka only fills what it missed, so
                # one fetch per MD_FOLLOWER_BACKUP_WAIT_MS instead of one per produce (most of a
                # gateway's CPU was building and parsing those fetches)
                await pacer.wait()
            batch = await tc.getmany(timeout_ms=200, max_records=2000)
            if batch:
                self.last_record_at = time.monotonic()
            slice_start = time.monotonic()
            for tp, recs in batch.items():
                if recs:
                    self._next_offset[tp] = recs[-1].offset + 1
                for r in recs:
                    if r.value is not None:
                        run(join.on_stream(r.value, tp.topic, tp.partition))
                    if time.monotonic() - slice_start > self.yield_s:
                        # let transports flush and clients read between slices of a big
                        # batch: a burst must neither wait behind the whole batch nor look
                        # like a slow consumer
                        await asyncio.sleep(0)
                        slice_start = time.monotonic()
            if not self.ready.is_set():
                await self._check_caught_up(tc)

    async def _wait_while_whole(self) -> None:
        """While Kafka is left unread: until a heartbeat finds the feed not whole (a lost frame
        or a key without a base shows in the next heartbeat's heads), or half the feed timeout
        at most (a feed gone silent is a matter of time). Looking every
        ``MD_FOLLOWER_BACKUP_WAIT_MS`` instead cost every gateway process 10 wake-ups a second
        with nothing to do."""
        self._unwhole.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._unwhole.wait(), self.feed_timeout_s / 2)

    async def _backup_needed(self, tc: AIOKafkaConsumer) -> bool:
        """Whether to read Kafka now: pauses it while the direct feed is whole, resumes it
        (False until the resume succeeded: the broker may be away) when that ends."""
        if self._direct_only():
            if not self.backup_paused:
                tc.pause(*self._stream_tps)
                self.backup_paused = True
                BACKUP_PAUSED.set(1)
                log.info("kafka backup paused: the direct feed is whole")
            return False
        if self.backup_paused:
            try:
                await self._resume_backup(tc)
            except Exception as exc:  # noqa: BLE001 - the broker may be away: try again
                self.last_error = repr(exc)
                log.warning("kafka backup not resumed yet", extra={"error": repr(exc)})
                return False
        return True

    async def _check_caught_up(self, tc: AIOKafkaConsumer) -> None:
        """``ready`` once every stream partition was read to its end offset at start."""
        for tp, end in self._end_at_start.items():
            if await tc.position(tp) < end:
                return
        self.ready.set()
        log.info("follower caught up", extra={"keys": len(self.join.keys)})

    def probe_timeout(self, late: float) -> float:
        """How long a broker probe may go unanswered. A responsive loop whose probe hangs for 3/4
        of a period has lost the broker (issue 11: a 10 s cut was over before two 5 s timeouts
        declared it); a busy loop (its last sleep woke ``late`` > 0.25 s, thousands of
        handshakes) gets the generous timeout."""
        if late > 0.25:
            return max(5.0, self.watchdog_s * 2)
        return max(0.5, 0.75 * self.watchdog_s)

    async def _watchdog(self) -> None:
        """Probe the broker: aiokafka retries silently, so a lost feed is otherwise invisible."""
        tc = self._stream_consumer
        assert tc is not None
        failures = 0
        loop = asyncio.get_running_loop()
        late = 0.0  # how late the last sleep woke: a busy loop, not a lost broker
        while True:
            timeout = self.probe_timeout(late)
            try:
                ends = await asyncio.wait_for(tc.end_offsets(self._stream_tps), timeout)
                self.lag = {
                    f"{tp.topic}:{tp.partition}": 0
                    if self.backup_paused  # the feed is whole: nothing is behind
                    else max(0, end - self._next_offset.get(tp, end))
                    for tp, end in ends.items()
                }
                if not self.connected:
                    log.info("kafka feed restored")
                self.connected, self.last_error, failures = True, None, 0
            except Exception as exc:  # noqa: BLE001 - any failure to reach the broker counts
                failures += 1
                self.last_error = repr(exc)
                if failures >= 2 and self.connected:  # two probes in a row: lost
                    log.error("kafka feed lost", extra={"error": repr(exc)})
                    self.connected = False
            pause = self.watchdog_s if not failures else self.watchdog_s / 4  # confirm soon
            due = loop.time() + pause
            await asyncio.sleep(pause)
            late = loop.time() - due
